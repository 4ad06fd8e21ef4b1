"""Advantages for group-sampled RLVR: GRPO / Dr.GRPO / RLOO / PSR / NSR / W-REINFORCE and keep masks.

Layout everywhere: N = P * G rows, prompt-major, so row ``i * G + j`` is sample ``j`` of prompt ``i``
(the layout ``sampling.generate`` returns). ``group_size`` (G) is a static Python int.

All functions are pure and jit-able (``group_size``, ``mode``, ``keep`` are static).
Keep masks are bool ``[N]``; the trainer multiplies the response mask by ``keep[:, None]``.
"""
import jax.numpy as jnp


def _groups(x, group_size):
  """[N] -> [P, G] after checking that N is a multiple of G."""
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_size must be a positive int, got {group_size!r}")
  n = x.shape[0]
  if x.ndim != 1 or n % group_size:
    raise ValueError(f"rewards must be 1-D with length a multiple of group_size={group_size}, got shape {x.shape}")
  return x.reshape(n // group_size, group_size)


def _centered(rewards, group_size):
  """(r - group mean) [P, G] and a [P, 1] bool 'group is constant' (exact, no float round-off)."""
  r = _groups(jnp.asarray(rewards, jnp.float32), group_size)
  const = (r.max(axis=1, keepdims=True) == r.min(axis=1, keepdims=True))
  centered = r - r.mean(axis=1, keepdims=True)
  return jnp.where(const, 0.0, centered), const


def grpo_advantages(rewards, group_size, *, normalize_std=True, eps=1e-6):
  """GRPO advantages: (r - group mean) / (group std + eps).

  Args:
    rewards: f32 [N], N = P * G, prompt-major.
    group_size: G (static int).
    normalize_std: divide by the Bessel-corrected (ddof=1) group std; False gives Dr.GRPO (mean-centred only).
    eps: added to the std.
  Returns:
    f32 [N]. Rows of a constant group (all rewards equal, includes G == 1) are exactly 0.
  """
  centered, const = _centered(rewards, group_size)
  if normalize_std:
    g = group_size
    var = (centered ** 2).sum(axis=1, keepdims=True) / max(g - 1, 1)
    centered = jnp.where(const, 0.0, centered / (jnp.sqrt(var) + eps))
  return centered.reshape(-1)


def rloo_advantages(rewards, group_size):
  """REINFORCE leave-one-out: A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - group mean).

  Args:
    rewards: f32 [N], N = P * G, prompt-major; G >= 2.
  Returns:
    f32 [N]; exactly 0 for constant groups.
  """
  if group_size < 2:
    raise ValueError(f"rloo_advantages needs group_size >= 2, got {group_size}")
  centered, _ = _centered(rewards, group_size)
  return (centered * (group_size / (group_size - 1))).reshape(-1)


PSR_NSR_MODES = ("psr", "nsr", "weighted", "reinforce")


def psr_nsr_advantages(correct, *, mode, lam=0.1):
  """Positive / negative sample reinforcement ("The Surprising Effectiveness of Negative Reinforcement").

  No mean/std normalisation (it would cancel the constant advantage).

  Args:
    correct: bool [N] (anything castable to bool).
    mode: "psr"       A = +1 on correct, keep only correct;
          "nsr"       A = -1 on incorrect, keep only incorrect;
          "weighted"  (W-REINFORCE) A = lam on correct, -1 on incorrect, keep all;
          "reinforce" A = +1 on correct, -1 on incorrect, keep all (weighted with lam = 1).
    lam: weight of positive samples for mode="weighted".
  Returns:
    (advantages f32 [N], keep bool [N]). Dropped rows have advantage 0.
  """
  c = jnp.asarray(correct).astype(bool)
  one = jnp.ones(c.shape, jnp.float32)
  if mode == "psr":
    keep = c
    adv = jnp.where(c, one, 0.0)
  elif mode == "nsr":
    keep = ~c
    adv = jnp.where(c, 0.0, -one)
  elif mode in ("weighted", "reinforce"):
    pos = lam if mode == "weighted" else 1.0
    keep = jnp.ones(c.shape, bool)
    adv = jnp.where(c, pos * one, -one)
  else:
    raise ValueError(f"psr_nsr_advantages: mode must be one of {PSR_NSR_MODES}, got {mode!r}")
  return adv, keep


def sign_mask(advantages, keep="positive"):
  """Positive-only / negative-only training ("Dissecting Long Reasoning Models").

  Normalise over the *full* group first (e.g. ``grpo_advantages``), then keep one sign.

  Args:
    advantages: f32 [N] (or any shape).
    keep: "positive" keeps A > 0, "negative" keeps A < 0 (A == 0 is dropped either way).
  Returns:
    bool mask, same shape as ``advantages``.
  """
  if keep == "positive":
    return advantages > 0
  if keep == "negative":
    return advantages < 0
  raise ValueError(f"sign_mask: keep must be 'positive' or 'negative', got {keep!r}")


def gradient_filter_mask(advantages, tau):
  """DASH gradient filter: keep samples with |A| > tau (drop |A| <= tau).

  Args:
    advantages: f32 [N].  tau: scalar >= 0.
  Returns:
    bool [N].
  """
  return jnp.abs(advantages) > tau


def zero_variance_groups(rewards, group_size):
  """DAPO dynamic sampling: which groups have all rewards equal (zero advantage for every sample).

  Args:
    rewards: f32 [N], N = P * G, prompt-major.
  Returns:
    bool [P]; True = constant group (to be filtered / resampled).
  """
  r = _groups(jnp.asarray(rewards), group_size)
  return r.max(axis=1) == r.min(axis=1)


def zero_advantage_fraction(advantages):
  """Fraction of samples with exactly zero advantage (DASH: 'over half the samples have A = 0').

  Args:
    advantages: f32 [N].
  Returns:
    f32 scalar in [0, 1].
  """
  return jnp.mean((advantages == 0).astype(jnp.float32))


__all__ = [
    "grpo_advantages", "rloo_advantages", "psr_nsr_advantages", "sign_mask", "gradient_filter_mask",
    "zero_variance_groups", "zero_advantage_fraction",
]
