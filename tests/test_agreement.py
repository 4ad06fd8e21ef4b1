"""Sampler-trainer agreement: `Decoder.token_logprobs` scores tokens under the distribution the sampler
drew from (temperature, top-k, top-p replayed), in float32 on a tiny random Llama."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

import models
import sampling
from rl import losses

V = 300
PROMPTS = [[5, 6, 7], [11, 12, 13, 14, 15, 16, 17], [21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32]]
WARP = dict(temperature=1.2, top_k=20, top_p=0.9)


def _tiny_model():
  """Tiny random Llama, params from NumPy; lm_head std 0.6 gives peaked next-token distributions
  (logit std ~3), so that top-k 20 and top-p 0.9 both cut."""
  hf = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
  cfg = models.DecoderConfig.from_hf(hf)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)

  def init(path, a):
    name = str(path[-1])
    if "norm" in name:
      return (1.0 + 0.1 * rng.normal(size=a.shape)).astype(np.float32)
    return rng.normal(0, 0.6 if "lm_head" in name else 0.02, size=a.shape).astype(np.float32)

  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(init, nnx.to_pure_dict(state)))
  return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def model():
  return _tiny_model()


@pytest.fixture(scope="module")
def truncated(model):
  """One rollout at temperature 1.2, top-k 20, top-p 0.9 (shared: a sampler compile is the slow part)."""
  return _rollout(model, **WARP)


@pytest.fixture(scope="module")
def trainer_lp(model, truncated):
  """The trainer-side log-probs at the sampler's settings, jitted once: (params, inputs, targets, attn) -> ..."""
  return jax.jit(_trainer_logprobs_fn(model, truncated[0].prompt_tokens.shape[1], **WARP))


@pytest.fixture(scope="module")
def full_logits(model, truncated):
  """Full-forward logits predicting each response token of the truncated rollout: f32 [P*G, N, V]."""
  out, seq, attn = truncated
  logits = jax.jit(lambda s, a: model(s, attention_mask=a))(seq[:, :-1], attn[:, :-1])
  return np.asarray(logits)[:, out.prompt_tokens.shape[1] - 1:]


def _rollout(model, **warp):
  out = sampling.generate(model, PROMPTS, group_size=4, max_new_tokens=20, rng=jax.random.key(3), **warp)
  seq = jnp.concatenate([out.prompt_tokens, out.tokens], axis=1)
  attn = jnp.concatenate([out.prompt_mask, out.mask], axis=1)
  return out, seq, attn


def _trainer_logprobs_fn(model, n_prompt, **warp):
  """-> f(params, inputs, targets, attn) = (logp, entropy) of the response tokens [P*G, N], as the trainer
  computes them (inputs/targets/attn [P*G, L+N-1]: the sequence without its last / first token)."""
  graphdef, _ = nnx.split(model, nnx.Param)

  def f(params, inputs, targets, attn):
    lp, ent = nnx.merge(graphdef, params).token_logprobs(inputs, targets, attention_mask=attn, chunk_size=8, **warp)
    return lp[:, n_prompt - 1:], ent[:, n_prompt - 1:]
  return f


def _np_warped_logprobs(logits, temperature, top_k, top_p):
  """log-softmax of transformers' warpers in float64 (temperature, TopK: drop < k-th largest, TopP: drop the
  least probable tokens whose cumulative mass is <= 1 - top_p) -> [..., V] (-inf where dropped)."""
  x = np.asarray(logits, np.float64) / temperature
  kth = np.sort(x, -1)[..., -top_k][..., None]
  x = np.where(x >= kth, x, -np.inf)
  p = np.exp(x - x.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  order = np.argsort(p, -1, kind="stable")
  cum = np.cumsum(np.take_along_axis(p, order, -1), -1)
  drop_sorted = cum <= 1 - top_p
  drop_sorted[..., -1] = False
  drop = np.zeros_like(drop_sorted)
  np.put_along_axis(drop, order, drop_sorted, -1)
  x = np.where(drop, -np.inf, x)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_sampler_and_trainer_logprobs_agree_with_truncation(model, truncated, trainer_lp, full_logits):
  """T=1.2, top-k 20, top-p 0.9: the sampler's per-token log-probs equal token_logprobs within 1e-5 for every
  response token, and both equal a float64 NumPy replay of the warpers on the full forward's logits."""
  out, seq, attn = truncated
  mask = np.asarray(out.mask)
  lp, ent = trainer_lp(nnx.state(model, nnx.Param), seq[:, :-1], seq[:, 1:], attn[:, :-1])
  lp, sampler_lp = np.asarray(lp), np.asarray(out.logprobs)
  assert mask.sum() > 200
  np.testing.assert_allclose(lp[mask], sampler_lp[mask], atol=1e-5, rtol=0)

  logits = full_logits
  want_all = _np_warped_logprobs(logits, **WARP)
  tok = np.asarray(out.tokens)
  want = np.take_along_axis(want_all, tok[..., None], -1)[..., 0]
  np.testing.assert_allclose(lp[mask], want[mask], atol=1e-4)
  # both truncations cut: top-k 20 removes tokens top-p alone would keep, top-p removes some of the top 20;
  # the warped probabilities exceed the merely tempered ones (a normaliser over fewer tokens)
  kept = np.isfinite(want_all).sum(-1)[mask]
  kept_p_only = np.isfinite(_np_warped_logprobs(logits, 1.2, V, 0.9)).sum(-1)[mask]
  assert kept.max() <= 20 and (kept < 20).any() and (kept_p_only > 20).any()
  tempered = np.take_along_axis(_np_warped_logprobs(logits, 1.2, V, 1.0), tok[..., None], -1)[..., 0]
  assert np.all(lp[mask] > tempered[mask])
  # the entropy is the raw model's (temperature 1, no truncation)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(ent)[mask], -(p * np.log(p)).sum(-1)[mask], atol=1e-4)


def test_first_update_ratio_is_exactly_one(model, truncated):
  """old log-probs from token_logprobs (jitted, no gradient) and the current ones inside the jitted gradient of
  the PPO loss: the ratio is exactly 1 for every token at the first update (same params)."""
  out, seq, attn = truncated
  f = lambda p: _trainer_logprobs_fn(model, out.prompt_tokens.shape[1], **WARP)(p, seq[:, :-1], seq[:, 1:], attn[:, :-1])
  params = nnx.state(model, nnx.Param)
  old = jax.jit(lambda p: f(p)[0])(params)
  adv = jnp.asarray(np.random.default_rng(0).normal(size=out.tokens.shape[0]).astype(np.float32))

  def loss(p):
    logp, _ = f(p)
    l, met = losses.policy_loss(logp, old, adv, out.mask, clip_low=0.2, clip_high=0.2)
    return l, (jnp.exp(logp - old), met)

  (_, (ratio, met)), _ = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  ratio, mask = np.asarray(ratio), np.asarray(out.mask)
  assert np.all(ratio[mask] == 1.0), np.abs(ratio[mask] - 1).max()
  assert float(met["approx_kl"]) == 0.0 and float(met["clip_frac_low"]) == float(met["clip_frac_high"]) == 0.0


def test_plain_sampling_unchanged(model):
  """Temperature 1 without truncation: the sampler's log-probs and raw model log-probs are the raw model's,
  equal to token_logprobs' defaults."""
  out, seq, attn = _rollout(model)
  n_prompt = out.prompt_tokens.shape[1]
  params = nnx.state(model, nnx.Param)
  lp = np.asarray(jax.jit(_trainer_logprobs_fn(model, n_prompt))(params, seq[:, :-1], seq[:, 1:], attn[:, :-1])[0])
  mask = np.asarray(out.mask)
  np.testing.assert_allclose(lp[mask], np.asarray(out.logprobs)[mask], atol=1e-5, rtol=0)
  np.testing.assert_allclose(lp[mask], np.asarray(out.model_logprobs)[mask], atol=1e-5, rtol=0)


def test_targets_outside_the_truncated_set_stay_finite(model, truncated, trainer_lp, full_logits):
  """A target the masks would drop (e.g. an injected solution's token) is kept: its log-prob is its tempered
  logit minus the log-sum-exp over the kept set plus itself, not -inf."""
  out, seq, attn = truncated
  n_prompt = out.prompt_tokens.shape[1]
  worst = np.argmin(full_logits, -1)                                 # least probable: outside top-k and top-p
  targets = np.asarray(seq[:, 1:]).copy()
  targets[:, n_prompt - 1:] = worst
  lp = np.asarray(trainer_lp(nnx.state(model, nnx.Param), seq[:, :-1], jnp.asarray(targets), attn[:, :-1])[0])
  logits = np.asarray(full_logits, np.float64)
  kept = np.isfinite(_np_warped_logprobs(logits, **WARP))
  np.put_along_axis(kept, worst[..., None], True, -1)
  x = np.where(kept, logits / 1.2, -np.inf)
  m = x.max(-1, keepdims=True)
  want = np.take_along_axis(x - m - np.log(np.exp(x - m).sum(-1, keepdims=True)), worst[..., None], -1)[..., 0]
  mask = np.asarray(out.mask)
  assert np.all(np.isfinite(lp[mask]))
  np.testing.assert_allclose(lp[mask], want[mask], atol=1e-4)


def test_greedy_and_explicit_defaults_score_raw_model_logprobs(model):
  """temperature 0 (greedy): the sampler records raw model log-probs, and so does token_logprobs; so does an
  explicit temperature=1, top_k=0, top_p=1 (bit for bit the default call)."""
  seq = jnp.asarray([[5, 6, 7, 8, 9, 10]])
  graphdef, params = nnx.split(model, nnx.Param)
  lp = lambda **warp: np.asarray(jax.jit(lambda i, t: nnx.merge(graphdef, params).token_logprobs(i, t, **warp))(
      seq[:, :-1], seq[:, 1:])[0])
  b = lp()
  for warp in (dict(temperature=0.0, top_k=5, top_p=0.5), dict(temperature=1.0, top_k=0, top_p=1.0)):
    assert np.array_equal(lp(**warp), b)
  with pytest.raises(ValueError, match="top_p"):
    model.token_logprobs(seq[:, :-1], seq[:, 1:], top_p=0.0)
