"""rl/losses.py against NumPy re-derivations, plus micro-batch invariance and the NSR token-level analysis."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rl import losses as L


def np_log_softmax(z):
  z = z.astype(np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_policy_loss(logp, old, adv, mask, *, clip_low, clip_high, dual_clip=None, loss_type="ppo",
                   agg="token-mean", max_len=None, ref=None, kl_coef=0.0, kl_kind="k3", ent=None, ent_coef=0.0):
  """Straight from the formulas, float64, explicit loops over rows."""
  logp, old, mask = (np.asarray(x, np.float64) for x in (logp, old, mask))
  B, T = logp.shape
  adv = np.asarray(adv, np.float64)
  adv = np.repeat(adv[:, None], T, 1) if adv.ndim == 1 else adv
  ratio = np.exp(logp - old)
  if loss_type == "ppo":
    l = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - clip_low, 1 + clip_high))
    if dual_clip is not None:
      l = np.where(adv < 0, np.minimum(l, -adv * dual_clip), l)
  else:
    l = -adv * logp

  def agg_fn(v):
    if agg == "token-mean":
      return (v * mask).sum() / mask.sum()
    lens = mask.sum(1)
    if agg == "seq-mean-token-mean":
      rows = [(v[b] * mask[b]).sum() / lens[b] for b in range(B) if lens[b] > 0]
      return sum(rows) / len(rows)
    return (v * mask).sum() / (B * (max_len or T))

  out = {"pg_loss": agg_fn(l)}
  loss = out["pg_loss"]
  if ref is not None:
    d = logp - np.asarray(ref, np.float64)
    kl = {"k1": d, "k2": d ** 2 / 2, "k3": np.exp(-d) + d - 1, "k3+": np.exp(-d) + d - 1}[kl_kind]
    out["kl_loss"] = agg_fn(kl)
    out["ref_kl"] = (kl * mask).sum() / mask.sum()
    loss = loss + kl_coef * out["kl_loss"]
  if ent is not None:
    out["entropy_loss"] = agg_fn(np.asarray(ent, np.float64))
    loss = loss - ent_coef * out["entropy_loss"]
  n = mask.sum()
  out["clip_frac_low"] = ((adv < 0) & (ratio < 1 - clip_low) & (mask > 0)).sum() / n if loss_type == "ppo" else 0
  out["clip_frac_high"] = ((adv > 0) & (ratio > 1 + clip_high) & (mask > 0)).sum() / n if loss_type == "ppo" else 0
  out["approx_kl"] = ((ratio - 1 - np.log(ratio)) * mask).sum() / n
  out["zero_adv_frac"] = ((adv == 0) & (mask > 0)).sum() / n
  return loss, out


def make_batch(seed, B=6, T=7, per_token=False, ragged=True):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.05, 3.0, size=(B, T)).astype(np.float32)
  old = (logp + rng.normal(0, 0.4, size=(B, T))).astype(np.float32)  # ratios well beyond both clips
  adv = rng.normal(size=(B, T) if per_token else (B,)).astype(np.float32)
  adv[0] = 0.0
  lens = rng.integers(1, T + 1, size=B) if ragged else np.full(B, T)
  mask = np.arange(T)[None] < lens[:, None]
  ref = (logp + rng.normal(0, 0.3, size=(B, T))).astype(np.float32)
  ent = rng.uniform(0, 2, size=(B, T)).astype(np.float32)
  return logp, old, adv, mask, ref, ent


def test_token_logprobs_and_entropy_match_numpy():
  rng = np.random.default_rng(0)
  z = rng.normal(0, 3, size=(2, 8, 11)).astype(np.float32)
  y = rng.integers(0, 11, size=(2, 8))
  ref = np.take_along_axis(np_log_softmax(z), y[..., None], -1)[..., 0]
  np.testing.assert_allclose(jax.jit(L.token_logprobs)(z, y), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(L.token_logprobs(jnp.asarray(z), y, chunk_size=3), ref, rtol=1e-5, atol=1e-5)
  got_bf16 = L.token_logprobs(jnp.asarray(z, jnp.bfloat16), y)
  assert got_bf16.dtype == jnp.float32
  ref_bf16 = np.take_along_axis(np_log_softmax(np.asarray(jnp.asarray(z, jnp.bfloat16), np.float32)),
                                y[..., None], -1)[..., 0]
  np.testing.assert_allclose(got_bf16, ref_bf16, rtol=1e-2, atol=2e-2)
  p = np.exp(np_log_softmax(z))
  np.testing.assert_allclose(L.entropy_from_logits(z), -(p * np.log(p)).sum(-1), rtol=1e-5, atol=1e-5)
  # gradient of sum(logp) w.r.t. the logits is onehot(y) - softmax, also through the chunked path
  g = jax.grad(lambda x: L.token_logprobs(x, y, chunk_size=3).sum())(jnp.asarray(z))
  np.testing.assert_allclose(g, np.eye(11)[y] - p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "k3+"])
def test_kl_penalty_values_and_straight_through_gradient(kind):
  lp = jnp.array([-1.0, -0.5, -2.0, -0.1])
  rp = jnp.array([-1.2, -0.5, -1.0, -3.0])
  d = np.asarray(lp - rp, np.float64)
  want = {"k1": d, "k2": d ** 2 / 2, "k3": np.exp(-d) + d - 1, "k3+": np.exp(-d) + d - 1}[kind]
  np.testing.assert_allclose(L.kl_penalty(lp, rp, kind), want, rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda x: L.kl_penalty(x, rp, kind).sum())(lp)
  want_g = {"k1": np.ones_like(d), "k2": d, "k3": 1 - np.exp(-d), "k3+": d}[kind]
  np.testing.assert_allclose(g, want_g, rtol=1e-5, atol=1e-6)


_jit_loss = jax.jit(L.policy_loss, static_argnames=("loss_type", "agg", "kl_kind", "dual_clip", "max_len"))


@pytest.mark.parametrize("agg", L.AGG_MODES)
@pytest.mark.parametrize("per_token", [False, True])
def test_policy_loss_matches_numpy(agg, per_token):
  logp, old, adv, mask, ref, ent = make_batch(1, per_token=per_token)
  kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0)
  loss, met = _jit_loss(logp, old, adv, mask, agg=agg, ref_logp=ref, kl_coef=0.05, kl_kind="k3",
                        entropy=ent, entropy_coef=0.01, max_len=10 if agg.endswith("norm") else None, **kw)
  want, wm = np_policy_loss(logp, old, adv, mask, agg=agg, ref=ref, kl_coef=0.05, ent=ent, ent_coef=0.01,
                            max_len=10 if agg.endswith("norm") else None, **kw)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  for k, v in wm.items():
    np.testing.assert_allclose(met[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  assert 0 < float(met["clip_frac_low"]) and 0 < float(met["clip_frac_high"])  # the batch exercises both clips


def test_metric_keys_and_disabled_terms():
  logp, old, adv, mask, _, _ = make_batch(2)
  loss, met = L.policy_loss(jnp.asarray(logp), old, adv, mask)
  for k in ("clip_frac_low", "clip_frac_high", "approx_kl", "ref_kl", "entropy", "zero_adv_frac",
            "pg_loss", "kl_loss", "entropy_loss"):
    assert k in met
  assert float(met["kl_loss"]) == 0 and float(met["ref_kl"]) == 0 and float(met["entropy"]) == 0
  np.testing.assert_allclose(loss, met["pg_loss"])
  # kl_coef=0 with a reference: logged, not in the loss
  loss0, met0 = L.policy_loss(jnp.asarray(logp), old, adv, mask, ref_logp=logp - 0.5, kl_coef=0.0)
  np.testing.assert_allclose(loss0, loss)
  assert float(met0["ref_kl"]) > 0


def test_all_masked_is_finite_zero():
  logp, old, adv, mask, _, _ = make_batch(3)
  for agg in L.AGG_MODES:
    loss, _ = L.policy_loss(logp, old, adv, np.zeros_like(mask), agg=agg)
    assert float(loss) == 0.0


def test_bad_arguments_raise():
  logp, old, adv, mask, _, _ = make_batch(4)
  with pytest.raises(ValueError, match="agg must be one of"):
    L.policy_loss(logp, old, adv, mask, agg="mean")
  with pytest.raises(ValueError, match="loss_type"):
    L.policy_loss(logp, old, adv, mask, loss_type="grpo")
  with pytest.raises(ValueError, match="kl_kind"):
    L.policy_loss(logp, old, adv, mask, kl_kind="k4")
  with pytest.raises(ValueError, match="clip_low must be"):
    L.policy_loss(logp, old, adv, mask, clip_low=1.5)
  with pytest.raises(ValueError, match="dual_clip must be"):
    L.policy_loss(logp, old, adv, mask, dual_clip=0.5)
  with pytest.raises(ValueError, match="advantages must be"):
    L.policy_loss(logp, old, adv[:3], mask)


def test_reinforce_gradient_equals_ppo_gradient_on_policy():
  logp, _, adv, mask, _, _ = make_batch(5)
  for agg in L.AGG_MODES:
    g = [jax.grad(lambda x: L.policy_loss(x, logp, adv, mask, loss_type=t, agg=agg)[0])(jnp.asarray(logp))
         for t in ("ppo", "reinforce")]
    np.testing.assert_allclose(g[0], g[1], rtol=1e-5, atol=1e-7)


def test_log_ratio_is_clamped():
  logp = jnp.array([[0.0, -1.0]])
  loss, met = L.policy_loss(logp, logp - 1000.0, jnp.array([-1.0]), jnp.ones((1, 2)), dual_clip=None)
  assert np.isfinite(float(loss)) and np.isfinite(float(met["approx_kl"]))


@functools.partial(jax.jit, static_argnames=("agg",))
def _loss_and_grad(logp, old, adv, mask, ref, ent, token_denom, seq_denom, agg):
  f = lambda x: L.policy_loss(x, old, adv, mask, agg=agg, clip_low=0.2, clip_high=0.4, ref_logp=ref,
                              kl_coef=0.1, kl_kind="k3+", entropy=ent * jnp.exp(x), entropy_coef=0.01,
                              max_len=9, token_denom=token_denom, seq_denom=seq_denom)[0]
  return jax.value_and_grad(f)(logp)


@settings(max_examples=10)
@given(seed=st.integers(0, 1000), cut=st.sampled_from([2, 3]), agg=st.sampled_from(L.AGG_MODES))
def test_micro_batch_split_gives_same_loss_and_gradient(seed, cut, agg):
  logp, old, adv, mask, ref, ent = make_batch(seed, per_token=seed % 2 == 0)
  mask[seed % 6] = False  # an empty row (e.g. dropped by a keep mask)
  d = L.loss_denominators(mask, agg)
  td, sd = d["token_denom"], d["seq_denom"]
  full_l, full_g = _loss_and_grad(logp, old, adv, mask, ref, ent, td, sd, agg)
  parts = [slice(0, cut), slice(cut, 6)]
  ls, gs = zip(*[_loss_and_grad(logp[s], old[s], adv[s], mask[s], ref[s], ent[s], td, sd, agg) for s in parts])
  np.testing.assert_allclose(sum(ls), full_l, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.concatenate(gs), full_g, rtol=1e-5, atol=1e-7)


def test_nsr_gradient_wrt_logits_token_level_analysis():
  """'The Surprising Effectiveness of Negative Reinforcement', token-level analysis: with A = -1,
  d loss / d z_v = -A * (1[v = y] - pi_v) / n_tokens: the sampled token's logit goes down (gradient descent
  on a positive gradient), every other logit goes up in proportion to its probability."""
  rng = np.random.default_rng(7)
  B, T, V = 2, 3, 9
  z = rng.normal(0, 2, size=(B, T, V)).astype(np.float32)
  y = rng.integers(0, V, size=(B, T))
  mask = np.ones((B, T), bool)
  adv, _ = __import__("rl.advantages", fromlist=["x"]).psr_nsr_advantages(jnp.zeros(B, bool), mode="nsr")

  def loss_fn(logits, loss_type):
    lp = L.token_logprobs(logits, y)
    return L.policy_loss(lp, jax.lax.stop_gradient(lp), adv, mask, loss_type=loss_type)[0]

  pi = np.exp(np_log_softmax(z))
  onehot = np.eye(V)[y]
  want = -(-1.0) * (onehot - pi) / (B * T)
  for loss_type in ("reinforce", "ppo"):
    g = np.asarray(jax.grad(loss_fn)(jnp.asarray(z), loss_type))
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
    sampled = np.take_along_axis(g, y[..., None], -1)[..., 0]
    assert np.all(sampled > 0)  # descent lowers the sampled logit
    others = np.where(onehot > 0, np.nan, g / pi)
    np.testing.assert_allclose(others, np.where(onehot > 0, np.nan, -1.0 / (B * T)), rtol=1e-4)


# ----------------------------------------------------------------------------- GSPO, CISPO, mismatch corrections

def np_agg_weights(mask, agg, max_len=None):
  """W [B, T] with loss = sum_{b,t} W * l for every aggregation (float64)."""
  m = np.asarray(mask, np.float64)
  B, T = m.shape
  lens = m.sum(1, keepdims=True)
  if agg == "token-mean":
    return m / m.sum()
  if agg == "seq-mean-token-mean":
    return m / np.maximum(lens, 1) / (lens > 0).sum()
  return m / (B * (max_len or T))


def np_token_loss(kind, logp, old, adv, mask, *, clip=(0.2, 0.2), gspo_clip=(3e-4, 4e-4), cispo_clip_high=3.0):
  """Per-token loss l [B, T] and its derivative dl/dlogp_t (the gradient the loss feeds each token) in float64,
  straight from the papers' formulas (GSPO: the gradient of the GSPO-token objective)."""
  logp, old, m = (np.asarray(x, np.float64) for x in (logp, old, mask))
  T = logp.shape[1]
  adv = np.asarray(adv, np.float64)
  adv = np.repeat(adv[:, None], T, 1) if adv.ndim == 1 else adv
  r = np.exp(logp - old)
  if kind == "ppo":
    lo, hi = clip
    l = np.maximum(-adv * r, -adv * np.clip(r, 1 - lo, 1 + hi))
    active = ~(((adv > 0) & (r > 1 + hi)) | ((adv < 0) & (r < 1 - lo)))
    return l, np.where(active, -adv * r, 0.0), r
  if kind == "gspo":
    lo, hi = gspo_clip
    lens = np.maximum(m.sum(1, keepdims=True), 1)
    s = np.exp(((logp - old) * m).sum(1, keepdims=True) / lens) * np.ones_like(logp)
    l = np.maximum(-adv * s, -adv * np.clip(s, 1 - lo, 1 + hi))
    active = ~(((adv > 0) & (s > 1 + hi)) | ((adv < 0) & (s < 1 - lo)))
    return l, np.where(active, -adv * s, 0.0), s
  if kind == "cispo":
    w = np.minimum(r, 1 + cispo_clip_high)
    return -w * adv * logp, -w * adv, w
  if kind == "reinforce":
    return -adv * logp, -adv, None
  raise ValueError(kind)


def np_mismatch(old, samp, mask, level, mode, C):
  """TIS / MIS weights [B, T] and the ratios they come from (float64)."""
  old, samp, m = (np.asarray(x, np.float64) for x in (old, samp, mask))
  rho_t = np.exp(old - samp)
  if level == "sequence":
    rho = np.exp(((old - samp) * m).sum(1, keepdims=True)) * np.ones_like(old)
  else:
    rho = rho_t
  w = np.minimum(rho, C) if mode == "truncate" else np.where(rho <= C, rho, 0.0)
  return w, rho, rho_t


_jit_loss_new = jax.jit(L.policy_loss, static_argnames=("loss_type", "agg", "kl_kind", "dual_clip", "max_len",
                                                         "is_level", "is_mode"))


@pytest.mark.parametrize("loss_type", ["gspo", "cispo"])
@pytest.mark.parametrize("agg", L.AGG_MODES)
def test_gspo_cispo_loss_and_gradient_match_numpy(loss_type, agg):
  """Per-token advantages (the general case; GSPO-token); the per-sequence case of GSPO is the next test."""
  logp, old, adv, mask, _, _ = make_batch(11, B=16, per_token=True)
  old = (logp + (old - logp) * 0.3).astype(np.float32)   # GSPO: sequence ratios around its clip range
  kw = dict(gspo_clip_low=0.05, gspo_clip_high=0.05, cispo_clip_high=0.1)
  max_len = 10 if agg.endswith("norm") else None
  f = lambda x: _jit_loss_new(x, old, adv, mask, loss_type=loss_type, agg=agg, max_len=max_len, **kw)
  (loss, met), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp))
  l, dl, aux = np_token_loss(loss_type, logp, old, adv, mask, gspo_clip=(0.05, 0.05), cispo_clip_high=0.1)
  W = np_agg_weights(mask, agg, max_len)
  np.testing.assert_allclose(loss, (W * l).sum(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(met["pg_loss"], (W * l).sum(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g, W * dl, rtol=1e-4, atol=1e-7)
  n = mask.sum()
  a = np.repeat(adv[:, None], logp.shape[1], 1) if adv.ndim == 1 else adv
  if loss_type == "gspo":
    want_hi, want_lo = ((a > 0) & (aux > 1.05) & mask).sum() / n, ((a < 0) & (aux < 0.95) & mask).sum() / n
    assert 0 < want_hi and 0 < want_lo   # the batch exercises both clips
  else:
    want_hi, want_lo = ((np.exp(logp.astype(np.float64) - old) > 1.1) & mask).sum() / n, 0.0
    assert 0 < want_hi
  np.testing.assert_allclose(met["clip_frac_high"], want_hi, rtol=1e-6)
  np.testing.assert_allclose(met["clip_frac_low"], want_lo, rtol=1e-6)


def test_gspo_gradient_is_the_sequence_objective_gradient():
  """With per-sequence advantages the GSPO-token form has the gradient of the paper's sequence-level
  objective max(-A s_i, -A clip(s_i)) given to every token of row i: central finite differences of that
  objective in float64 (agg "seq-mean-token-mean" makes it the paper's 1/G sum_i)."""
  logp, old, adv, mask, _, _ = make_batch(12, B=16)
  old = (logp + (old - logp) * 0.3).astype(np.float32)
  lo, hi = 0.05, 0.05
  W = np_agg_weights(mask, "seq-mean-token-mean")

  def seq_objective(x):
    return (W * np_token_loss("gspo", x, old, adv, mask, gspo_clip=(lo, hi))[0]).sum()

  x0 = logp.astype(np.float64)
  fd = np.zeros_like(x0)
  for idx in np.ndindex(*x0.shape):
    e = np.zeros_like(x0)
    e[idx] = 1e-6
    fd[idx] = (seq_objective(x0 + e) - seq_objective(x0 - e)) / 2e-6
  g = jax.jit(jax.grad(lambda x: L.policy_loss(x, old, adv, mask, loss_type="gspo", agg="seq-mean-token-mean",
                                               gspo_clip_low=lo, gspo_clip_high=hi)[0]))(jnp.asarray(logp))
  np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-7)
  s = np_token_loss("gspo", logp, old, adv, mask, gspo_clip=(lo, hi))[2][:, 0]
  clipped = ((adv > 0) & (s > 1 + hi)) | ((adv < 0) & (s < 1 - lo))
  assert clipped.any() and (~clipped & (adv != 0) & mask.any(1)).any()   # both kinds of rows


@pytest.mark.parametrize("loss_type, level, mode", [("ppo", "token", "truncate"), ("reinforce", "token", "mask"),
                                                     ("gspo", "sequence", "truncate"), ("cispo", "sequence", "mask")])
def test_mismatch_correction_matches_numpy(loss_type, level, mode):
  """TIS / MIS on top of every loss (each loss type, level and mode once: the weights do not depend on the
  loss): the per-token loss times the NumPy weights, and the gradient of the uncorrected loss times the same
  (stop-gradient) weights; metrics against NumPy."""
  logp, old, adv, mask, _, _ = make_batch(13, B=16)
  samp = (old + np.random.default_rng(13).normal(0, 0.5 if level == "token" else 0.4, old.shape)).astype(np.float32)
  C = 1.5
  kw = dict(loss_type=loss_type, agg="token-mean", clip_low=0.2, clip_high=0.28, gspo_clip_low=0.1, gspo_clip_high=0.1)
  f = lambda x, **k: _jit_loss_new(x, old, adv, mask, **kw, **k)
  (loss, met), g = jax.value_and_grad(lambda x: f(x, sampler_logp=samp, is_level=level, is_mode=mode,
                                                  is_threshold=C), has_aux=True)(jnp.asarray(logp))
  (loss0, met0), g0 = jax.value_and_grad(lambda x: f(x), has_aux=True)(jnp.asarray(logp))
  # sampler_logp == old_logp: every weight is exactly 1, the loss and gradient are bit-identical to no correction
  (loss1, _), g1 = jax.value_and_grad(lambda x: f(x, sampler_logp=old, is_level=level, is_mode=mode,
                                                  is_threshold=1.0), has_aux=True)(jnp.asarray(logp))
  assert float(loss1) == float(loss0) and np.array_equal(g1, g0)
  w, rho, rho_t = np_mismatch(old, samp, mask, level, mode, C)
  per_tok = np_token_loss(loss_type, logp, old, adv, mask, clip=(0.2, 0.28), gspo_clip=(0.1, 0.1))[0]
  W = np_agg_weights(mask, "token-mean")
  np.testing.assert_allclose(loss, (W * w * per_tok).sum(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g, w * np.asarray(g0), rtol=1e-5, atol=1e-7)
  mb = mask > 0
  rows = mb.any(1)
  unit = rho[:, 0][rows] if level == "sequence" else rho[mb]
  np.testing.assert_allclose(met["is_ratio_mean"], unit.mean(), rtol=1e-5)
  np.testing.assert_allclose(met["is_ratio_max"], unit.max(), rtol=1e-5)
  np.testing.assert_allclose(met["is_clip_frac"], (unit > C).mean(), rtol=1e-6)
  assert 0 < float(met["is_clip_frac"]) < 1
  np.testing.assert_allclose(met["is_weight_mean"], w[mb].mean(), rtol=1e-5)
  np.testing.assert_allclose(met["mismatch_kl"], (rho_t - 1 - np.log(rho_t))[mb].mean(), rtol=1e-4)
  np.testing.assert_allclose(met["mismatch_k1"], -np.log(rho_t)[mb].mean(), rtol=1e-4, atol=1e-7)
  assert float(met0["is_weight_mean"]) == 1.0 and float(met0["mismatch_kl"]) == 0.0


@functools.partial(jax.jit, static_argnames=("agg", "loss_type", "level", "mode"))
def _mb_loss_and_grad(logp, old, adv, mask, samp, token_denom, seq_denom, agg, loss_type, level, mode):
  f = lambda x: L.policy_loss(x, old, adv, mask, agg=agg, loss_type=loss_type, max_len=9, gspo_clip_low=0.1,
                              gspo_clip_high=0.1, sampler_logp=samp, is_level=level, is_mode=mode, is_threshold=2.0,
                              token_denom=token_denom, seq_denom=seq_denom)[0]
  return jax.value_and_grad(f)(logp)


@pytest.mark.parametrize("seed, cut, agg, loss_type, level, mode", [
    (0, 2, "seq-mean-token-mean", "gspo", "sequence", "mask"), (1, 3, "token-mean", "cispo", "token", "truncate"),
    (2, 3, "seq-mean-token-sum-norm", "gspo", "token", "mask")])
def test_micro_batch_invariance_new_losses_and_corrections(seed, cut, agg, loss_type, level, mode):
  """GSPO's sequence ratio and the sequence-level IS weight are per row: splitting along B with the global
  denominators gives the same loss and gradient."""
  logp, old, adv, mask, samp, _ = make_batch(seed, per_token=seed % 2 == 0)
  mask[seed % 6] = False
  d = L.loss_denominators(mask, agg)
  args = lambda s: (logp[s], old[s], adv[s], mask[s], samp[s], d["token_denom"], d["seq_denom"])
  static = dict(agg=agg, loss_type=loss_type, level=level, mode=mode)
  full_l, full_g = _mb_loss_and_grad(*args(slice(0, 6)), **static)
  ls, gs = zip(*[_mb_loss_and_grad(*args(s), **static) for s in (slice(0, cut), slice(cut, 6))])
  np.testing.assert_allclose(sum(ls), full_l, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.concatenate(gs), full_g, rtol=1e-5, atol=1e-7)


def test_mismatch_bad_arguments_raise():
  logp, old, adv, mask, _, _ = make_batch(15)
  with pytest.raises(ValueError, match="needs sampler_logp"):
    L.policy_loss(logp, old, adv, mask, is_level="token")
  with pytest.raises(ValueError, match="is_level must be one of"):
    L.policy_loss(logp, old, adv, mask, sampler_logp=old, is_level="seq")
  with pytest.raises(ValueError, match="is_mode must be one of"):
    L.policy_loss(logp, old, adv, mask, sampler_logp=old, is_level="token", is_mode="clip")
  with pytest.raises(ValueError, match="is_threshold must be > 0"):
    L.policy_loss(logp, old, adv, mask, sampler_logp=old, is_level="token", is_threshold=0.0)
  with pytest.raises(ValueError, match="sampler_logp must be"):
    L.policy_loss(logp, old, adv, mask, sampler_logp=old[:, :3])
  with pytest.raises(ValueError, match="gspo_clip_low must be"):
    L.policy_loss(logp, old, adv, mask, loss_type="gspo", gspo_clip_low=1.0)
