"""Token log-probs, entropy, KL penalties and the policy loss (PPO-clip / REINFORCE) for RLVR.

Shapes: B sequences (rows), T response tokens, V vocabulary. ``mask`` [B, T] marks the valid response
tokens (bool or 0/1 float; the trainer folds sample keep-masks into it: ``mask & keep[:, None]``).

Micro-batching. ``policy_loss`` is a *sum over tokens divided by a denominator*, so the loss and gradient of
a batch equal the sum over its micro-batches (split along B) of the micro-batch losses, provided every
micro-batch is given the *global* denominators of the full batch. Compute them once on the full mask:

    denoms = loss_denominators(full_mask, agg, max_len=T_max)   # {"token_denom": ..., "seq_denom": ...}
    loss = sum(policy_loss(..., agg=agg, max_len=T_max, **denoms)[0] for each micro-batch)

  agg                        loss                                                 global denominators
  "token-mean"               sum_{b,t} m*l / token_denom                          token_denom = sum(mask)
  "seq-mean-token-mean"      sum_b [sum_t m*l / max(len_b, 1)] / seq_denom        seq_denom = #rows with len_b > 0
  "seq-mean-token-sum-norm"  sum_{b,t} m*l / (seq_denom * max_len)  (Dr.GRPO)     seq_denom = B (all rows)

(len_b = sum_t mask[b, t] is per row, so micro-batches must hold whole rows: split along B, not T.)
When the denominators are None they are computed from the given mask, i.e. the batch is the whole batch.
The KL and entropy terms are aggregated the same way, so the invariance covers the total loss.
Metrics are plain masked means over the tokens of the call (for logging; average them over micro-batches).
"""
import jax
import jax.numpy as jnp

AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3", "k3+")
LOSS_TYPES = ("ppo", "reinforce")
LOG_RATIO_CLAMP = 20.0


def token_logprobs(logits, tokens, *, chunk_size=None):
  """log softmax(logits)[tokens], in float32.

  The log-sum-exp is computed as max + log(sum(exp(logits - max))) with the upcast inside the reduction, which
  XLA fuses under jit: no float32 copy of a bf16 [B, T, V] array is materialised. With ``chunk_size`` the
  sequence axis is processed in chunks of that many positions (sequentially, via lax.map) to bound memory
  further (T is padded to a multiple of chunk_size internally).

  Args:
    logits: [B, T, V] any float dtype.
    tokens: int [B, T].
  Returns:
    f32 [B, T].
  """
  if chunk_size is not None and chunk_size < logits.shape[1]:
    b, t, v = logits.shape
    n = -(-t // chunk_size)
    pad = n * chunk_size - t
    lg = jnp.pad(logits, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk_size, v).swapaxes(0, 1)
    tk = jnp.pad(tokens, ((0, 0), (0, pad))).reshape(b, n, chunk_size).swapaxes(0, 1)
    out = jax.lax.map(lambda xs: token_logprobs(*xs), (lg, tk))
    return out.swapaxes(0, 1).reshape(b, n * chunk_size)[:, :t]
  m = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
  m32 = m.astype(jnp.float32)
  lse = jnp.log(jnp.sum(jnp.exp(logits.astype(jnp.float32) - m32), axis=-1)) + m32[..., 0]
  picked = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked.astype(jnp.float32) - lse


def entropy_from_logits(logits):
  """Entropy of softmax(logits) along the last axis, in float32.

  Args:
    logits: [..., V].
  Returns:
    f32 [...]: H = logsumexp(z) - sum_v p_v z_v.
  """
  z = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(z, axis=-1)
  p = jnp.exp(z - lse[..., None])
  return lse - jnp.sum(p * z, axis=-1)


def kl_penalty(logp, ref_logp, kind="k3"):
  """Per-token KL(pi || ref) estimators on samples from pi, with delta = logp - ref_logp.

  kind: "k1" delta;  "k2" delta^2 / 2;  "k3" exp(-delta) + delta - 1 (>= 0);
        "k3+" straight-through: the value of k3 with the gradient of k2.
  delta is clamped to +-20 before exp.

  Args:
    logp, ref_logp: f32 [B, T].
  Returns:
    f32 [B, T].
  """
  delta = jnp.clip(logp - ref_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
  if kind == "k1":
    return delta
  k2 = 0.5 * delta ** 2
  if kind == "k2":
    return k2
  k3 = jnp.exp(-delta) + delta - 1.0
  if kind == "k3":
    return k3
  if kind == "k3+":
    return k2 + jax.lax.stop_gradient(k3 - k2)
  raise ValueError(f"kl_kind must be one of {KL_KINDS}, got {kind!r}")


def loss_denominators(mask, agg, max_len=None):
  """Global denominators of ``policy_loss`` for the full batch (pass them to every micro-batch call).

  Args:
    mask: [B, T] bool/float, the mask of the *whole* batch (after keep masks).
    agg: one of AGGS.  max_len: unused here, accepted for symmetry.
  Returns:
    dict(token_denom=f32 scalar, seq_denom=f32 scalar), see the module docstring.
  """
  del max_len
  m = jnp.asarray(mask).astype(jnp.float32)
  if agg not in AGGS:
    raise ValueError(f"agg must be one of {AGGS}, got {agg!r}")
  token_denom = m.sum()
  if agg == "seq-mean-token-sum-norm":
    seq_denom = jnp.asarray(m.shape[0], jnp.float32)
  else:
    seq_denom = (m.sum(axis=1) > 0).astype(jnp.float32).sum()
  return dict(token_denom=token_denom, seq_denom=seq_denom)


def aggregate(values, mask, agg, *, token_denom=None, seq_denom=None, max_len=None):
  """Aggregate per-token values [B, T] into a scalar as described in the module docstring.

  Denominators of 0 (an all-masked batch) give a loss of 0, not NaN.
  """
  m = jnp.asarray(mask).astype(jnp.float32)
  v = values * m
  defaults = loss_denominators(m, agg)
  if agg == "token-mean":
    denom = defaults["token_denom"] if token_denom is None else token_denom
    return v.sum() / jnp.maximum(denom, 1e-8)
  sd = defaults["seq_denom"] if seq_denom is None else seq_denom
  if agg == "seq-mean-token-mean":
    per_seq = v.sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
    return per_seq.sum() / jnp.maximum(sd, 1e-8)
  # seq-mean-token-sum-norm (Dr.GRPO): a constant normaliser, no length bias.
  ml = values.shape[1] if max_len is None else max_len
  return v.sum() / jnp.maximum(sd * ml, 1e-8)


def _masked_mean(x, m):
  return (x * m).sum() / jnp.maximum(m.sum(), 1.0)


def policy_loss(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.2, dual_clip=None,
                loss_type="ppo", agg="token-mean", max_len=None, ref_logp=None, kl_coef=0.0, kl_kind="k3",
                entropy=None, entropy_coef=0.0, token_denom=None, seq_denom=None):
  """Clipped policy-gradient loss with optional KL-to-reference and entropy terms.

  loss = pg_loss + kl_coef * kl_loss - entropy_coef * entropy_loss, each term aggregated by ``agg``.

  Per token, with ratio = exp(clamp(logp - old_logp, +-20)) and A the (stop-gradient) advantage:
    "ppo":       l = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))   (decoupled clip /
                 clip-higher: ProRL uses clip_low=0.2, clip_high=0.4); with dual_clip=c > 1, for A < 0 the loss
                 is further capped at -A * c (dual-clip PPO).
    "reinforce": l = -A * logp (no ratio, no clipping; for PSR / NSR / W-REINFORCE). Its gradient equals the
                 "ppo" gradient at ratio 1 (on-policy), its value differs.

  Args:
    logp: f32 [B, T] log-probs of the sampled tokens under the current policy (carries the gradient).
    old_logp: f32 [B, T] under the behaviour (sampling / old) policy; stop-gradient.
    advantages: f32 [B] (per sequence) or [B, T] (per token); stop-gradient.
    mask: [B, T] bool/float valid response tokens.
    clip_low, clip_high: the clip range [1 - clip_low, 1 + clip_high].
    dual_clip: None or c > 1.
    loss_type: "ppo" | "reinforce".
    agg: "token-mean" | "seq-mean-token-mean" | "seq-mean-token-sum-norm".
    max_len: normaliser of "seq-mean-token-sum-norm" (default T).
    ref_logp: f32 [B, T] reference-policy log-probs or None. ``ref_logp=None`` or ``kl_coef=0`` disables the
      KL loss (with ref_logp given, ``ref_kl`` is still logged).
    kl_coef, kl_kind: weight and estimator ("k1", "k2", "k3", "k3+") of the KL penalty, see ``kl_penalty``.
    entropy: f32 [B, T] per-token entropies (e.g. from ``Decoder.token_logprobs``) or None.
    entropy_coef: entropy bonus weight (the loss *subtracts* entropy_coef * entropy_loss).
    token_denom, seq_denom: global denominators for micro-batching (see ``loss_denominators``).
  Returns:
    (loss f32 scalar, metrics dict of f32 scalars):
      pg_loss, kl_loss, entropy_loss: the aggregated terms before their coefficients (kl_loss / entropy_loss
        are computed whenever ref_logp / entropy is given, even if the coefficient is 0, and are then only logged);
      clip_frac_low:  fraction of valid tokens with A < 0 and ratio < 1 - clip_low (the low clip is active);
      clip_frac_high: fraction of valid tokens with A > 0 and ratio > 1 + clip_high (the high clip is active);
      dual_clip_frac: fraction of valid tokens with A < 0 and ratio > dual_clip (0 without dual clip);
        (all three are 0 for loss_type="reinforce");
      approx_kl: masked mean of k3 = ratio - 1 - log ratio, an estimate of KL(old || current);
      ref_kl: masked mean of kl_penalty(logp, ref_logp, kl_kind) (0 without ref_logp);
      entropy: masked mean of ``entropy`` (0 without it);
      zero_adv_frac: fraction of valid tokens whose advantage is exactly 0;
      num_tokens: number of valid tokens in this call.
  """
  logp, old_logp, mask, advantages = (jnp.asarray(x) for x in (logp, old_logp, mask, advantages))
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
  if agg not in AGGS:
    raise ValueError(f"agg must be one of {AGGS}, got {agg!r}")
  if kl_kind not in KL_KINDS:
    raise ValueError(f"kl_kind must be one of {KL_KINDS}, got {kl_kind!r}")
  if logp.ndim != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
    raise ValueError(f"policy_loss: logp, old_logp, mask must all be [B, T]; got {logp.shape}, "
                     f"{old_logp.shape}, {mask.shape}")
  if advantages.shape not in (logp.shape[:1], logp.shape):
    raise ValueError(f"policy_loss: advantages must be [B] or [B, T]; got {advantages.shape} for logp {logp.shape}")
  for name, val in (("clip_low", clip_low), ("clip_high", clip_high)):
    if isinstance(val, (int, float)) and not 0.0 <= val < (1.0 if name == "clip_low" else float("inf")):
      rng = "in [0, 1)" if name == "clip_low" else ">= 0"
      raise ValueError(f"policy_loss: {name} must be {rng}, got {val}")
  if dual_clip is not None and not dual_clip > 1.0:
    raise ValueError(f"dual_clip must be None or > 1, got {dual_clip}")

  m = jnp.asarray(mask).astype(jnp.float32)
  adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
  if adv.ndim == 1:
    adv = adv[:, None]
  adv = jnp.broadcast_to(adv, logp.shape)
  old_logp = jax.lax.stop_gradient(old_logp)
  denoms = dict(token_denom=token_denom, seq_denom=seq_denom, max_len=max_len)

  log_ratio = jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
  ratio = jnp.exp(log_ratio)
  zero = jnp.zeros((), jnp.float32)
  if loss_type == "ppo":
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_tok = jnp.maximum(unclipped, clipped)
    if dual_clip is not None:
      per_tok = jnp.where(adv < 0, jnp.minimum(per_tok, -adv * dual_clip), per_tok)
      dual_frac = _masked_mean(((adv < 0) & (ratio > dual_clip)).astype(jnp.float32), m)
    else:
      dual_frac = zero
    clip_low_frac = _masked_mean(((adv < 0) & (ratio < 1.0 - clip_low)).astype(jnp.float32), m)
    clip_high_frac = _masked_mean(((adv > 0) & (ratio > 1.0 + clip_high)).astype(jnp.float32), m)
  else:
    per_tok = -adv * logp
    clip_low_frac = clip_high_frac = dual_frac = zero
  pg_loss = aggregate(per_tok, m, agg, **denoms)
  loss = pg_loss

  kl_loss, ref_kl = zero, zero
  if ref_logp is not None:
    kl_tok = kl_penalty(logp, jax.lax.stop_gradient(ref_logp), kl_kind)
    ref_kl = _masked_mean(jax.lax.stop_gradient(kl_tok), m)
    kl_loss = aggregate(kl_tok, m, agg, **denoms)
    if not (isinstance(kl_coef, (int, float)) and kl_coef == 0):
      loss = loss + kl_coef * kl_loss

  ent_loss, ent_mean = zero, zero
  if entropy is not None:
    ent_mean = _masked_mean(jax.lax.stop_gradient(entropy), m)
    ent_loss = aggregate(entropy, m, agg, **denoms)
    if not (isinstance(entropy_coef, (int, float)) and entropy_coef == 0):
      loss = loss - entropy_coef * ent_loss

  sg = jax.lax.stop_gradient
  metrics = dict(
      pg_loss=sg(pg_loss), kl_loss=sg(kl_loss), entropy_loss=sg(ent_loss),
      clip_frac_low=clip_low_frac, clip_frac_high=clip_high_frac, dual_clip_frac=dual_frac,
      approx_kl=_masked_mean(sg(ratio - 1.0 - log_ratio), m),
      ref_kl=ref_kl, entropy=ent_mean,
      zero_adv_frac=_masked_mean((adv == 0).astype(jnp.float32), m),
      num_tokens=m.sum(),
  )
  return loss, metrics


__all__ = ["token_logprobs", "entropy_from_logits", "kl_penalty", "loss_denominators", "aggregate",
           "policy_loss", "AGGS", "KL_KINDS", "LOSS_TYPES"]
