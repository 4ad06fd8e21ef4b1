"""Logit warping of the sampling distribution: temperature, then top-k, then top-p.

The sampler draws from `warp_logits(logits, ...)`'s softmax, and `Decoder.token_logprobs` replays
the same warping on the trainer's logits, so both score tokens under one distribution. The
masks live here (not in `sampling/`) because `models/` must not import `sampling/`.

Shapes: [..., V] (any leading axes), V vocabulary.
"""

import jax
import jax.numpy as jnp


def top_k_mask(logits, k: int):
  """logits f32 [..., V], static k >= 1 -> keep bool [..., V]: the k largest (ties with the k-th kept)."""
  k = min(int(k), logits.shape[-1])
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return logits >= kth


def top_p_mask(logits, top_p):
  """logits f32 [..., V] (-inf = excluded), top_p scalar in (0,1] -> keep bool [..., V].

  Keeps token i iff the probability mass of the tokens strictly more probable than i is
  < top_p: the smallest most-probable set reaching top_p (transformers' TopP rule; tokens
  tied at the boundary are all kept). Exact and sort-free: bisection over the int32 bit
  patterns of the probabilities (ordered like the floats), 32 masked sums over V.
  """
  probs = jax.nn.softmax(logits, axis=-1)
  bits = jax.lax.bitcast_convert_type(probs, jnp.int32)  # probs >= 0: int order == float order
  lead = logits.shape[:-1]

  def body(_, lohi):
    lo, hi = lohi  # invariant: mass_above(hi) < top_p (hi is a valid threshold), lo is not
    mid = lo + (hi - lo) // 2
    ok = jnp.sum(jnp.where(bits > mid[..., None], probs, 0.0), axis=-1) < top_p
    return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

  lo = jnp.full(lead, -1, jnp.int32)
  hi = jnp.full(lead, 0x7F800000, jnp.int32)  # +inf: nothing is above it
  _, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return bits >= hi[..., None]


def warp_logits(logits, temperature, top_k: int = 0, top_p: float = 1.0, *, keep=None):
  """The sampling distribution's logits: logits / temperature, then tokens outside the top-k,
  then outside the top-p of what is left, set to -inf (the order of transformers' warpers, and
  of `sampling.sampler.sample_logits`).

  Args:
    logits: f32 [..., V].
    temperature: > 0 (Python float or f32 scalar).
    top_k: static int, 0 = off.  top_p: static float in (0, 1], 1 = off.
    keep: optional bool [..., V] of tokens kept whatever the masks say (the trainer passes the
      sampled token, see `Decoder.token_logprobs`).
  Returns:
    f32 [..., V]; log_softmax of it is the sampling distribution's log-probs. The masks are
    computed on stop-gradient values: the gradient flows through the kept logits only.
  """
  x = logits / temperature
  if top_k:
    k_keep = top_k_mask(jax.lax.stop_gradient(x), top_k)
    k_keep = k_keep if keep is None else k_keep | keep
    x = jnp.where(k_keep, x, -jnp.inf)
  if top_p < 1.0:
    p_keep = top_p_mask(jax.lax.stop_gradient(x), top_p)
    p_keep = p_keep if keep is None else p_keep | keep
    x = jnp.where(p_keep, x, -jnp.inf)
  return x


__all__ = ["top_k_mask", "top_p_mask", "warp_logits"]
