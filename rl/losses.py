"""Token log-probs, entropy, KL penalties and the policy loss (PPO-clip, REINFORCE, GSPO, CISPO) with
sampler-trainer mismatch corrections (TIS / MIS) for RLVR.

Shapes: B sequences (rows), T response tokens, V vocabulary. ``mask`` [B, T] marks the valid response
tokens (bool or 0/1 float; the trainer folds sample keep-masks into it: ``mask & keep[:, None]``).

Micro-batching. ``policy_loss`` is a *sum over tokens divided by a denominator*, so the loss and gradient of
a batch equal the sum over its micro-batches (split along B) of the micro-batch losses, provided every
micro-batch is given the *global* denominators of the full batch. Compute them once on the full mask:

    denoms = loss_denominators(full_mask, agg)   # {"token_denom": ..., "seq_denom": ...}
    loss = sum(policy_loss(..., agg=agg, max_len=T_max, **denoms)[0] for each micro-batch)

  agg                        loss                                                 global denominators
  "token-mean"               sum_{b,t} m*l / token_denom                          token_denom = sum(mask)
  "seq-mean-token-mean"      sum_b [sum_t m*l / max(len_b, 1)] / seq_denom        seq_denom = #rows with len_b > 0
  "seq-mean-token-sum-norm"  sum_{b,t} m*l / (seq_denom * max_len)  (Dr.GRPO)     seq_denom = B (all rows)

(len_b = sum_t mask[b, t] is per row, so micro-batches must hold whole rows: split along B, not T. GSPO's
sequence ratio and the sequence-level IS weight are per row too, so the invariance holds for every loss_type.)
When the denominators are None they are computed from the given mask, i.e. the batch is the whole batch.
The KL and entropy terms are aggregated the same way, so the invariance covers the total loss.
Metrics are plain masked means over the tokens of the call (for logging; average them over micro-batches).
"""
import jax
import jax.numpy as jnp

# The enumerations of the keyword arguments (rl/config.py validates config values against them).
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
AGGS = AGG_MODES  # older name
KL_KINDS = ("k1", "k2", "k3", "k3+")
LOSS_TYPES = ("ppo", "reinforce", "gspo", "cispo")
IS_LEVELS = ("none", "token", "sequence")   # mismatch correction level (``is_level``)
IS_MODES = ("truncate", "mask")             # ... and what happens above the threshold (``is_mode``)
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


def loss_denominators(mask, agg):
  """Global denominators of ``policy_loss`` for the full batch (pass them to every micro-batch call).

  Args:
    mask: [B, T] bool/float, the mask of the *whole* batch (after keep masks).
    agg: one of AGG_MODES.
  Returns:
    dict(token_denom=f32 scalar, seq_denom=f32 scalar), see the module docstring.
  """
  m = jnp.asarray(mask).astype(jnp.float32)
  if agg not in AGG_MODES:
    raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")
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


def _check_scalar(name, val, ok, rule):
  """Validates a Python-number hyperparameter (traced values are the caller's responsibility)."""
  if isinstance(val, (int, float)) and not ok(val):
    raise ValueError(f"policy_loss: {name} must be {rule}, got {val}")


def mismatch_weights(old_logp, sampler_logp, mask, *, level="token", mode="truncate", threshold=2.0):
  """Importance weights correcting for the sampler-trainer mismatch (TIS / MIS), stop-gradient.

  With rho_t = pi_old(y_t) / pi_sampler(y_t) = exp(old_logp - sampler_logp) (log-ratio clamped to +-20), C = threshold:
    level "token":    w_t = min(rho_t, C)                 ("truncate", token-TIS)
                      w_t = rho_t * 1[rho_t <= C]          ("mask", token-MIS)
    level "sequence": rho = exp(clamp(sum_t mask_t * log rho_t, +-20)), one per row, broadcast to its tokens;
                      w = min(rho, C) (seq-TIS) or rho * 1[rho <= C] (seq-MIS)
    level "none":     w = 1 (the metrics are still computed, for monitoring).
  These are verl's rollout correction weights in "decoupled" mode (docs/algo/rollout_corr.md: token
  rho_t = pi_old/pi_rollout with .clamp(max=rollout_is_threshold); sequence rho = prod_t rho_t; "mask" mode
  zeroes weights above the threshold), following Liu, Li et al. 2025, "When Speed Kills Stability:
  Demystifying RL Collapse from the Training-Inference Mismatch" (TIS / MIS); TRL's
  vllm_importance_sampling_correction is the token-truncate case. sampler_logp is the log-prob of the
  distribution actually sampled (``SampleOutput.logprobs``), old_logp the trainer's log-prob of the same
  tokens under the same sampling settings (``Decoder.token_logprobs``).

  Args:
    old_logp, sampler_logp: f32 [B, T].  mask: [B, T] bool/float valid tokens.
  Returns:
    (weights f32 [B, T], stop-gradient, all 1 for level "none"; metrics dict of f32 scalars):
      is_ratio_mean, is_ratio_max: mean / max of rho (rho_t over valid tokens for "token" and "none", the
        sequence rho over non-empty rows for "sequence"); a trainer averaging metrics over micro-batches
        should take the max of is_ratio_max rather than its mean;
      is_clip_frac: fraction of those tokens / rows with rho > C (truncated or masked; for "none": would be);
      is_weight_mean: mean weight over valid tokens;
      mismatch_kl: masked token mean of k3 = rho_t - 1 - log rho_t >= 0, an estimate of KL(sampler || trainer)
        per token on the sampler's samples (k3 rather than k1: non-negative, lower variance);
      mismatch_k1: masked token mean of k1 = -log rho_t = sampler_logp - old_logp (unbiased, can be < 0).
  """
  if level not in IS_LEVELS:
    raise ValueError(f"is_level must be one of {IS_LEVELS}, got {level!r}")
  if mode not in IS_MODES:
    raise ValueError(f"is_mode must be one of {IS_MODES}, got {mode!r}")
  _check_scalar("is_threshold", threshold, lambda v: v > 0, "> 0")
  sg = jax.lax.stop_gradient
  m = jnp.asarray(mask).astype(jnp.float32)
  log_rho = jnp.clip(sg(jnp.asarray(old_logp, jnp.float32)) - jnp.asarray(sampler_logp, jnp.float32),
                     -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
  rho_tok = jnp.exp(log_rho)
  if level == "sequence":
    rho_seq = jnp.exp(jnp.clip((log_rho * m).sum(axis=1), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))   # [B]
    rows = (m.sum(axis=1) > 0).astype(jnp.float32)
    rho = rho_seq[:, None]
    ratio_mean, ratio_max = _masked_mean(rho_seq, rows), jnp.max(jnp.where(rows > 0, rho_seq, 0.0))
    clip_frac = _masked_mean((rho_seq > threshold).astype(jnp.float32), rows)
  else:
    rho = rho_tok
    ratio_mean, ratio_max = _masked_mean(rho_tok, m), jnp.max(jnp.where(m > 0, rho_tok, 0.0))
    clip_frac = _masked_mean((rho_tok > threshold).astype(jnp.float32), m)
  if level == "none":
    w = jnp.ones_like(log_rho)
  elif mode == "truncate":
    w = jnp.broadcast_to(jnp.minimum(rho, threshold), log_rho.shape)
  else:
    w = jnp.broadcast_to(jnp.where(rho <= threshold, rho, 0.0), log_rho.shape)
  w = sg(w)
  metrics = dict(is_ratio_mean=ratio_mean, is_ratio_max=ratio_max, is_clip_frac=clip_frac,
                 is_weight_mean=_masked_mean(w, m), mismatch_kl=_masked_mean(rho_tok - 1.0 - log_rho, m),
                 mismatch_k1=_masked_mean(-log_rho, m))
  return w, jax.tree.map(sg, metrics)


def policy_loss(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.2, dual_clip=None,
                loss_type="ppo", agg="token-mean", max_len=None, ref_logp=None, kl_coef=0.0, kl_kind="k3",
                entropy=None, entropy_coef=0.0, token_denom=None, seq_denom=None,
                gspo_clip_low=3e-4, gspo_clip_high=4e-4, cispo_clip_high=3.0,
                sampler_logp=None, is_level="none", is_mode="truncate", is_threshold=2.0):
  """Policy-gradient loss (PPO-clip, REINFORCE, GSPO, CISPO) with optional KL-to-reference and entropy terms
  and an optional sampler-trainer mismatch correction.

  loss = pg_loss + kl_coef * kl_loss - entropy_coef * entropy_loss, each term aggregated by ``agg``.

  Per token, with ratio r_t = exp(clamp(logp - old_logp, +-20)), A the (stop-gradient) advantage, sg = stop-gradient:
    "ppo":       l = max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))   (decoupled clip /
                 clip-higher: ProRL uses clip_low=0.2, clip_high=0.4); with dual_clip=c > 1, for A < 0 the loss
                 is further capped at -A * c (dual-clip PPO).
    "reinforce": l = -A * logp (no ratio, no clipping; for PSR / NSR / W-REINFORCE). Its gradient equals the
                 "ppo" gradient at ratio 1 (on-policy), its value differs.
    "gspo":      GSPO (Zheng et al. 2025, arXiv:2507.18071), sequence-level, length-normalised ratio
                 s_i = exp(sum_t m_t (logp - old_logp) / |y_i|) (|y_i| = valid tokens of row i), in the
                 GSPO-token form s_{i,t} = sg(s_i) * exp(logp_t - sg(logp_t)) (value s_i, gradient
                 s_i * grad logp_t): l = max(-A * s_{i,t}, -A * clip(s_{i,t}, 1 - gspo_clip_low, 1 + gspo_clip_high)).
                 With a per-sequence A this has the gradient of the paper's sequence objective
                 max(-A s_i, -A clip(s_i, ...)) (as TRL's importance_sampling_level="sequence": every token of
                 a row carries the row's value); clipping decides per sequence. Defaults 3e-4 / 4e-4: the
                 paper's section 5.1. Per-token advantages are allowed (GSPO-token).
    "cispo":     CISPO (MiniMax-M1, arXiv:2506.13585, eq. 4-5): l = -sg(min(r, 1 + cispo_clip_high)) * A * logp.
                 The IS weight is clipped and detached instead of dropping the token's gradient; no lower bound,
                 as in the paper (which tunes only the upper one); default weight cap 4 = 1 + 3.0 (ScaleRL's
                 CISPO, arXiv:2510.13786, and Tinker's default). At r = 1 its gradient is REINFORCE's.
  Mismatch correction (``is_level`` != "none", needs ``sampler_logp``): l_t <- w_t * l_t with the
  stop-gradient weights of ``mismatch_weights(old_logp, sampler_logp, mask, ...)`` (token- or sequence-level
  TIS / MIS), on the policy-gradient term only, for every loss_type.

  Args:
    logp: f32 [B, T] log-probs of the sampled tokens under the current policy (carries the gradient).
    old_logp: f32 [B, T] under the behaviour (old) policy as the trainer computes it; stop-gradient.
    advantages: f32 [B] (per sequence) or [B, T] (per token); stop-gradient.
    mask: [B, T] bool/float valid response tokens.
    clip_low, clip_high: the "ppo" clip range [1 - clip_low, 1 + clip_high].
    dual_clip: None or c > 1 ("ppo" only; ignored by the other loss types).
    loss_type: one of LOSS_TYPES.
    agg: one of AGG_MODES ("token-mean" | "seq-mean-token-mean" | "seq-mean-token-sum-norm").
    max_len: normaliser of "seq-mean-token-sum-norm" (default T).
    ref_logp: f32 [B, T] reference-policy log-probs or None. ``ref_logp=None`` or ``kl_coef=0`` disables the
      KL loss (with ref_logp given, ``ref_kl`` is still logged).
    kl_coef, kl_kind: weight and estimator ("k1", "k2", "k3", "k3+") of the KL penalty, see ``kl_penalty``.
    entropy: f32 [B, T] per-token entropies (e.g. from ``Decoder.token_logprobs``) or None.
    entropy_coef: entropy bonus weight (the loss *subtracts* entropy_coef * entropy_loss).
    token_denom, seq_denom: global denominators for micro-batching (see ``loss_denominators``).
    gspo_clip_low, gspo_clip_high: the "gspo" clip range [1 - low, 1 + high] of s_i.
    cispo_clip_high: the "cispo" weight is min(r, 1 + cispo_clip_high).
    sampler_logp: f32 [B, T] log-probs of the distribution actually sampled (``SampleOutput.logprobs``) or None.
      Given, the mismatch metrics are computed even with is_level="none".
    is_level: one of IS_LEVELS; is_mode: one of IS_MODES; is_threshold: C > 0 (see ``mismatch_weights``).
  Returns:
    (loss f32 scalar, metrics dict of f32 scalars):
      pg_loss, kl_loss, entropy_loss: the aggregated terms before their coefficients (kl_loss / entropy_loss
        are computed whenever ref_logp / entropy is given, even if the coefficient is 0, and are then only logged);
      clip_frac_low:  fraction of valid tokens whose low clip is active: "ppo" A < 0 and r < 1 - clip_low,
        "gspo" A < 0 and s_i < 1 - gspo_clip_low, "cispo" 0 (no lower bound);
      clip_frac_high: fraction with the high clip active: "ppo" A > 0 and r > 1 + clip_high, "gspo" A > 0 and
        s_i > 1 + gspo_clip_high, "cispo" r > 1 + cispo_clip_high (the weight is capped, whatever A's sign);
      dual_clip_frac: fraction of valid tokens with A < 0 and ratio > dual_clip (0 without dual clip);
        (all three are 0 for loss_type="reinforce");
      approx_kl: masked mean of k3 = r - 1 - log r, an estimate of KL(old || current);
      ref_kl: masked mean of kl_penalty(logp, ref_logp, kl_kind) (0 without ref_logp);
      entropy: masked mean of ``entropy`` (0 without it);
      zero_adv_frac: fraction of valid tokens whose advantage is exactly 0;
      num_tokens: number of valid tokens in this call;
      is_ratio_mean, is_ratio_max, is_clip_frac, is_weight_mean, mismatch_kl, mismatch_k1: see
        ``mismatch_weights`` (without sampler_logp: ratios and weight 1, the others 0).
  """
  logp, old_logp, mask, advantages = (jnp.asarray(x) for x in (logp, old_logp, mask, advantages))
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
  if agg not in AGG_MODES:
    raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")
  if kl_kind not in KL_KINDS:
    raise ValueError(f"kl_kind must be one of {KL_KINDS}, got {kl_kind!r}")
  if is_level not in IS_LEVELS:
    raise ValueError(f"is_level must be one of {IS_LEVELS}, got {is_level!r}")
  if logp.ndim != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
    raise ValueError(f"policy_loss: logp, old_logp, mask must all be [B, T]; got {logp.shape}, "
                     f"{old_logp.shape}, {mask.shape}")
  if advantages.shape not in (logp.shape[:1], logp.shape):
    raise ValueError(f"policy_loss: advantages must be [B] or [B, T]; got {advantages.shape} for logp {logp.shape}")
  if sampler_logp is not None and jnp.shape(sampler_logp) != logp.shape:
    raise ValueError(f"policy_loss: sampler_logp must be [B, T] like logp {logp.shape}, got {jnp.shape(sampler_logp)}")
  if is_level != "none" and sampler_logp is None:
    raise ValueError(f"policy_loss: is_level={is_level!r} needs sampler_logp (the sampler's log-probs)")
  _check_scalar("clip_low", clip_low, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
  _check_scalar("clip_high", clip_high, lambda v: v >= 0.0, ">= 0")
  _check_scalar("gspo_clip_low", gspo_clip_low, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
  _check_scalar("gspo_clip_high", gspo_clip_high, lambda v: v >= 0.0, ">= 0")
  _check_scalar("cispo_clip_high", cispo_clip_high, lambda v: v >= 0.0, ">= 0")
  if dual_clip is not None and not dual_clip > 1.0:
    raise ValueError(f"dual_clip must be None or > 1, got {dual_clip}")

  m = jnp.asarray(mask).astype(jnp.float32)
  adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
  if adv.ndim == 1:
    adv = adv[:, None]
  adv = jnp.broadcast_to(adv, logp.shape)
  old_logp = jax.lax.stop_gradient(old_logp)
  denoms = dict(token_denom=token_denom, seq_denom=seq_denom, max_len=max_len)
  sg = jax.lax.stop_gradient

  log_ratio = jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
  ratio = jnp.exp(log_ratio)
  zero = jnp.zeros((), jnp.float32)
  clip_low_frac = clip_high_frac = dual_frac = zero
  if loss_type == "ppo":
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_tok = jnp.maximum(unclipped, clipped)
    if dual_clip is not None:
      per_tok = jnp.where(adv < 0, jnp.minimum(per_tok, -adv * dual_clip), per_tok)
      dual_frac = _masked_mean(((adv < 0) & (ratio > dual_clip)).astype(jnp.float32), m)
    clip_low_frac = _masked_mean(((adv < 0) & (ratio < 1.0 - clip_low)).astype(jnp.float32), m)
    clip_high_frac = _masked_mean(((adv > 0) & (ratio > 1.0 + clip_high)).astype(jnp.float32), m)
  elif loss_type == "reinforce":
    per_tok = -adv * logp
  elif loss_type == "gspo":
    log_s = (log_ratio * m).sum(axis=1, keepdims=True) / jnp.maximum(m.sum(axis=1, keepdims=True), 1.0)  # [B,1]
    s_tok = jnp.exp(sg(log_s) + (logp - sg(logp)))   # value s_i, gradient s_i * grad logp_t
    per_tok = jnp.maximum(-adv * s_tok, -adv * jnp.clip(s_tok, 1.0 - gspo_clip_low, 1.0 + gspo_clip_high))
    s = sg(jnp.broadcast_to(jnp.exp(log_s), logp.shape))
    clip_low_frac = _masked_mean(((adv < 0) & (s < 1.0 - gspo_clip_low)).astype(jnp.float32), m)
    clip_high_frac = _masked_mean(((adv > 0) & (s > 1.0 + gspo_clip_high)).astype(jnp.float32), m)
  else:  # cispo
    per_tok = -sg(jnp.minimum(ratio, 1.0 + cispo_clip_high)) * adv * logp
    clip_high_frac = _masked_mean((ratio > 1.0 + cispo_clip_high).astype(jnp.float32), m)

  one = jnp.ones((), jnp.float32)
  is_metrics = dict(is_ratio_mean=one, is_ratio_max=one, is_clip_frac=zero, is_weight_mean=one,
                    mismatch_kl=zero, mismatch_k1=zero)
  if sampler_logp is not None:
    w, is_metrics = mismatch_weights(old_logp, sampler_logp, m, level=is_level, mode=is_mode, threshold=is_threshold)
    if is_level != "none":
      per_tok = w * per_tok
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

  metrics = dict(
      pg_loss=sg(pg_loss), kl_loss=sg(kl_loss), entropy_loss=sg(ent_loss),
      clip_frac_low=clip_low_frac, clip_frac_high=clip_high_frac, dual_clip_frac=dual_frac,
      approx_kl=_masked_mean(sg(ratio - 1.0 - log_ratio), m),
      ref_kl=ref_kl, entropy=ent_mean,
      zero_adv_frac=_masked_mean((adv == 0).astype(jnp.float32), m),
      num_tokens=m.sum(),
      **is_metrics,
  )
  return loss, metrics


__all__ = ["token_logprobs", "entropy_from_logits", "kl_penalty", "loss_denominators", "aggregate",
           "mismatch_weights", "policy_loss", "AGG_MODES", "AGGS", "KL_KINDS", "LOSS_TYPES", "IS_LEVELS", "IS_MODES"]
