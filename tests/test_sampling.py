"""Tests of sampling/: masks vs NumPy references, the sampler vs the model's full forward."""

import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

import models
import sampling
from sampling import sampler as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 300
EOS_NONE = ()


def _np_softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _np_top_k_keep(x, k):
  """transformers' TopK rule: drop logits < the k-th largest."""
  kth = np.sort(x, -1)[:, ::-1][:, min(k, x.shape[1]) - 1]
  return x >= kth[:, None]


def _np_top_p_keep(x, p):
  """transformers' TopP rule in float64: sort ascending, drop tokens with cumsum <= 1-p (keep >= 1)."""
  probs = _np_softmax(x)
  keep = np.zeros(x.shape, bool)
  for b in range(x.shape[0]):
    order = np.argsort(probs[b], kind="stable")
    remove = np.cumsum(probs[b, order]) <= 1 - p
    remove[-1] = False
    keep[b, order] = ~remove
  return keep


def _chi2_pvalue(counts, probs, min_expected=5.0):
  """Pearson chi-square goodness of fit; bins with expected < min_expected are pooled."""
  n = counts.sum()
  exp = probs * n
  big = exp >= min_expected
  obs = np.append(counts[big], counts[~big].sum())
  ex = np.append(exp[big], exp[~big].sum())
  if ex[-1] == 0:
    obs, ex = obs[:-1], ex[:-1]
  stat = ((obs - ex) ** 2 / ex).sum()
  return float(jax.scipy.stats.chi2.sf(stat, len(ex) - 1)), stat


def _tiny_model(pure=None):
  """A tiny random Llama built without eager JAX ops (no per-op compiles): params from NumPy.
  pure: a pure dict of parameters (as returned) to rebuild the same model. -> (model, pure)"""
  hf = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
  cfg = models.DecoderConfig.from_hf(hf)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0))))
  if pure is None:
    rng = np.random.default_rng(0)

    def init(path, a):
      name = str(path[-1])
      if "norm" in name:
        return (1.0 + 0.1 * rng.normal(size=a.shape)).astype(np.float32)
      # lm_head std 0.6: peaked next-token distributions (logit std ~3), so that greedy,
      # top-k and top-p are meaningful.
      return rng.normal(0, 0.6 if "lm_head" in name else 0.02, size=a.shape).astype(np.float32)

    pure = jax.tree_util.tree_map_with_path(init, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state), pure


@pytest.fixture(scope="module")
def tiny():
  return _tiny_model()


@pytest.fixture(scope="module")
def model(tiny):
  return tiny[0]


@pytest.fixture(scope="module")
def forward(model):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda t, m: nnx.merge(graphdef, state)(t, attention_mask=m))


FWD_LEN = 32


def _full_logits(forward, out, row):
  """Full-forward logits predicting each response token of `row`: f32 [N,V] (one compiled
  shape: the sequence is right-padded to FWD_LEN, which causal attention ignores)."""
  pt, pm = np.asarray(out.prompt_tokens[row]), np.asarray(out.prompt_mask[row])
  seq = np.concatenate([pt, np.asarray(out.tokens[row])])
  msk = np.concatenate([pm, np.ones(out.tokens.shape[1], bool)])
  n = seq.shape[0]
  seq, msk = np.pad(seq, (0, FWD_LEN - n))[None], np.pad(msk, (0, FWD_LEN - n))[None]
  logits = np.asarray(forward(jnp.asarray(seq), jnp.asarray(msk)))[0]
  L = pt.shape[0]
  return logits[L - 1:L - 1 + out.tokens.shape[1]]


PROMPTS = [[5, 6, 7], [11, 12, 13, 14, 15, 16, 17], [21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32]]


# ----------------------------------------------------------------------------- masks and the draw

def test_top_k_mask_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 50)).astype(np.float32)
  x[0, :10] = -np.inf
  for k in (1, 3, 17, 50, 80):
    got = np.asarray(jax.jit(S.top_k_mask, static_argnums=1)(jnp.asarray(x), k))
    np.testing.assert_array_equal(got, _np_top_k_keep(x, k), err_msg=f"k={k}")
    assert (got.sum(-1) == min(k, 50)).all() or k >= 40  # row 0 has only 40 finite


def test_top_p_mask_matches_numpy():
  rng = np.random.default_rng(1)
  x = (2.5 * rng.normal(size=(8, 700))).astype(np.float32)
  x[1, ::3] = -np.inf
  x[2] = 0.0                         # uniform row: top_p keeps ceil(p*V)-ish tokens
  x[3, 0] = 30.0                     # one dominant token: keeps exactly it
  f = jax.jit(S.top_p_mask)
  rows = [0, 1, 3, 4, 5, 6, 7]
  for p in (0.05, 0.3, 0.75, 0.9, 0.999):
    got = np.asarray(f(jnp.asarray(x), jnp.float32(p)))
    np.testing.assert_array_equal(got[rows], _np_top_p_keep(x, p)[rows], err_msg=f"p={p}")
    assert got[2].all()              # all tokens tied: nothing is strictly more probable, all kept
    assert got[3, 0] and got[3].sum() == 1
    assert not got[1, ::3].any()


def test_inverse_cdf_draw_matches_softmax():
  """The one-uniform blocked inverse-CDF draw reproduces softmax frequencies (chi-square)."""
  rng = np.random.default_rng(2)
  x = (1.5 * rng.normal(size=(1, 600))).astype(np.float32)   # 600: not a multiple of 256
  x[0, 250:270] = -np.inf                                    # impossible tokens inside a block
  n = 40000
  u = jax.random.uniform(jax.random.key(3), (n,))
  tok, lse = jax.jit(S._inverse_cdf)(jnp.broadcast_to(jnp.asarray(x), (n, 600)), u)
  tok = np.asarray(tok)
  counts = np.bincount(tok, minlength=600)
  assert counts[250:270].sum() == 0
  p, stat = _chi2_pvalue(counts, _np_softmax(x)[0])
  assert p > 1e-3, (p, stat)
  np.testing.assert_allclose(np.asarray(lse)[0], np.log(np.exp(x[0][np.isfinite(x[0])].astype(np.float64)).sum()),
                             rtol=1e-5)
  # u -> token is monotone (it is an inverse CDF): sorted u give sorted tokens.
  us = jnp.linspace(0.0, 0.999999, 512)
  ts = np.asarray(jax.jit(S._inverse_cdf)(jnp.broadcast_to(jnp.asarray(x), (512, 600)), us)[0])
  assert (np.diff(ts) >= 0).all()


# ----------------------------------------------------------------------------- the sampler

def test_greedy_equals_argmax_of_full_forward(model, forward):
  out = sampling.generate(model, PROMPTS, group_size=2, max_new_tokens=12, temperature=0.0,
                          rng=jax.random.key(0))
  assert out.tokens.shape == (6, 12) and out.mask.all() and (np.asarray(out.lengths) == 12).all()
  toks = np.asarray(out.tokens)
  np.testing.assert_array_equal(toks[0::2], toks[1::2])  # greedy: the G samples coincide
  for r in range(6):
    logits = _full_logits(forward, out, r)
    np.testing.assert_array_equal(toks[r], logits.argmax(-1))
    np.testing.assert_allclose(np.asarray(out.logprobs[r]),
                               _np_log_softmax(logits)[np.arange(12), toks[r]], atol=2e-4)


def test_sampled_logprobs_agree_with_model(model, forward):
  """Sampling log-probs vs NumPy log_softmax(logits/T) of the full forward; raw log-probs vs
  Decoder.token_logprobs (the trainer's log-probs), max abs diff reported."""
  T = 0.7
  out = sampling.generate(model, PROMPTS, group_size=2, max_new_tokens=12, temperature=T,
                          rng=jax.random.key(1))
  toks = np.asarray(out.tokens)
  for r in range(6):
    logits = _full_logits(forward, out, r)
    np.testing.assert_allclose(np.asarray(out.logprobs[r]),
                               _np_log_softmax(logits / T)[np.arange(12), toks[r]], atol=2e-4)
  seq = jnp.concatenate([out.prompt_tokens, out.tokens], axis=1)
  msk = jnp.concatenate([out.prompt_mask, out.mask], axis=1)
  graphdef, state = nnx.split(model)
  lp, _ = jax.jit(lambda i, t, m: nnx.merge(graphdef, state).token_logprobs(i, t, attention_mask=m))(
      seq[:, :-1], seq[:, 1:], msk[:, :-1])
  L = out.prompt_tokens.shape[1]
  diff = np.abs(np.asarray(lp[:, L - 1:]) - np.asarray(out.model_logprobs))[np.asarray(out.mask)]
  print(f"max |sampler - token_logprobs| = {diff.max():.2e}")
  assert diff.max() < 1e-4


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 40, 0.8)])
def test_first_token_frequencies_match_softmax(model, forward, temperature, top_k, top_p):
  G = 2048
  out = sampling.generate(model, [PROMPTS[1]], group_size=G, max_new_tokens=1, temperature=temperature,
                          top_k=top_k, top_p=top_p, rng=jax.random.key(7))
  logits = _full_logits(forward, out, 0)[0] / temperature
  keep = np.ones(V, bool)
  if top_k:
    keep &= _np_top_k_keep(logits[None], top_k)[0]
  x = np.where(keep, logits, -np.inf)
  if top_p < 1:
    keep &= _np_top_p_keep(x[None], top_p)[0]
  probs = _np_softmax(np.where(keep, logits, -np.inf)[None])[0]
  counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=V)
  assert counts[~keep].sum() == 0
  p, stat = _chi2_pvalue(counts, probs)
  assert p > 1e-3, (p, stat)
  np.testing.assert_allclose(np.asarray(out.logprobs[:, 0]), np.log(probs[np.asarray(out.tokens[:, 0])]),
                             atol=2e-4)


def test_group_sharing_equals_prefilling_each_copy(model):
  """Sharing the prompt cache across G samples == G separate copies of the prompt (same row keys)."""
  G = 2
  keys = jax.random.split(jax.random.key(11), 3 * G)
  shared = sampling.generate(model, PROMPTS, group_size=G, max_new_tokens=12, rng=keys)
  copies = sampling.generate(model, [p for p in PROMPTS for _ in range(G)], group_size=1, max_new_tokens=12,
                             rng=keys)
  np.testing.assert_array_equal(shared.tokens, copies.tokens)
  np.testing.assert_allclose(shared.logprobs, copies.logprobs, atol=1e-5)
  np.testing.assert_array_equal(shared.prompt_tokens, copies.prompt_tokens)
  # and the G samples of a prompt differ (independent randomness per row)
  assert len({tuple(r) for r in np.asarray(shared.tokens[:G])}) > 1
  # the sampler's shared-prompt-cache decode step == the generic Decoder.step path
  generic = sampling.generate(model, PROMPTS, group_size=G, max_new_tokens=12, rng=keys, shared_prompt_cache=False)
  np.testing.assert_array_equal(shared.tokens, generic.tokens)
  np.testing.assert_allclose(shared.logprobs, generic.logprobs, atol=1e-5)


def test_bf16_group_step_agrees_with_step_and_trainer(tiny):
  """bf16 compute (f32 params, as in training): the shared-prompt-cache decode path rounds the same
  values as Decoder.step and token_logprobs (matmul operands in bf16, f32 accumulation and residual),
  so the sampler's raw log-probs match the trainer's to float-accumulation noise, not bf16 noise."""
  model32, _ = tiny
  graphdef, state = nnx.split(model32)
  cfg = dataclasses.replace(model32.cfg, dtype="bfloat16")
  model = nnx.merge(nnx.split(nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0))))[0], state)
  keys = jax.random.split(jax.random.key(3), 3 * 2)
  out = sampling.generate(model, PROMPTS, group_size=2, max_new_tokens=12, rng=keys)
  generic = sampling.generate(model, PROMPTS, group_size=2, max_new_tokens=12, rng=keys, shared_prompt_cache=False)
  seq = jnp.concatenate([out.prompt_tokens, out.tokens], axis=1)
  msk = jnp.concatenate([out.prompt_mask, out.mask], axis=1)
  lp = jax.jit(lambda i, t, m: model.token_logprobs(i, t, attention_mask=m)[0])(seq[:, :-1], seq[:, 1:], msk[:, :-1])
  L = out.prompt_tokens.shape[1]
  m = np.asarray(out.mask)
  diff = np.abs(np.asarray(lp[:, L - 1:]) - np.asarray(out.model_logprobs))[m]
  # the same tokens under the f32 model: bf16 rounding itself is much larger than `diff`
  lp32 = jax.jit(lambda i, t, m: model32.token_logprobs(i, t, attention_mask=m)[0])(seq[:, :-1], seq[:, 1:], msk[:, :-1])
  bf16_effect = np.abs(np.asarray(lp32[:, L - 1:]) - np.asarray(out.model_logprobs))[m]
  print(f"bf16: max |sampler - token_logprobs| = {diff.max():.2e}, bf16 vs f32 = {bf16_effect.max():.2e}")
  assert diff.max() < 1e-4 and bf16_effect.max() > 100 * diff.max()
  same = np.asarray(out.tokens) == np.asarray(generic.tokens)
  assert same.mean() > 0.9  # a bf16 rounding flip can change a draw; the paths are the same model


def test_different_prompt_lengths_batch_equals_alone(model):
  G = 2
  keys = jax.random.split(jax.random.key(5), 3 * G)
  batch = sampling.generate(model, PROMPTS, group_size=G, max_new_tokens=12, rng=keys)
  for i, p in enumerate(PROMPTS):
    alone = sampling.generate(model, [p], group_size=G, max_new_tokens=12, rng=keys[i * G:(i + 1) * G])
    np.testing.assert_array_equal(batch.tokens[i * G:(i + 1) * G], alone.tokens)
    np.testing.assert_allclose(batch.logprobs[i * G:(i + 1) * G], alone.logprobs, atol=1e-5)
    assert alone.prompt_tokens.shape == (G, len(p))


def test_deterministic_bucket_independent_and_compile_count(model):
  kw = dict(group_size=2, max_new_tokens=12)
  a = sampling.generate(model, PROMPTS, rng=jax.random.key(9), **kw)
  n = sampling.num_compilations()
  b = sampling.generate(model, PROMPTS, rng=jax.random.key(9), **kw)
  # P=4 and max_new_tokens=9 fall in the same buckets (P 4, L 16, N 16): no new compilation.
  c = sampling.generate(model, PROMPTS + [[1, 2]], rng=jax.random.key(9), group_size=2, max_new_tokens=9)
  assert sampling.num_compilations() == n
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert c.tokens.shape == (8, 9)
  assert not np.array_equal(a.tokens, sampling.generate(model, PROMPTS, rng=jax.random.key(10), **kw).tokens)
  exact = sampling.generate(model, PROMPTS, rng=jax.random.key(9), bucket_shapes=False, **kw)
  assert sampling.num_compilations() == n + 2  # a new prefill and a new decode chunk
  np.testing.assert_array_equal(a.tokens, exact.tokens)
  np.testing.assert_allclose(a.logprobs, exact.logprobs, atol=1e-5)


def test_eos_early_exit(model):
  N = 12
  keys = jax.random.split(jax.random.key(4), 6)
  free = sampling.generate(model, PROMPTS, group_size=2, max_new_tokens=N, rng=keys)
  ft = np.asarray(free.tokens)
  eos = tuple(sorted({int(ft[0, 2]), int(ft[2, 4]), int(ft[4, 1])}))  # rows 0, 2, 4 stop by these steps
  out = sampling.generate(model, PROMPTS, group_size=2, max_new_tokens=N, eos_ids=eos, pad_id=299, rng=keys)
  hit = np.isin(ft, eos)
  want_len = np.where(hit.any(1), hit.argmax(1) + 1, N)
  np.testing.assert_array_equal(out.lengths, want_len)
  np.testing.assert_array_equal(out.stopped, hit.any(1))
  np.testing.assert_array_equal(out.mask, np.arange(N)[None] < want_len[:, None])
  toks, m = np.asarray(out.tokens), np.asarray(out.mask)
  np.testing.assert_array_equal(toks[m], ft[m])           # same samples up to the stop
  assert (toks[~m] == 299).all() and (np.asarray(out.logprobs)[~m] == 0).all()
  assert int(free.num_steps) == N
  if hit.any(1).all():
    assert int(out.num_steps) == want_len.max() < N        # the loop ended early
  else:
    assert int(out.num_steps) == N
  # every row stopping at its first token: the loop runs exactly one step
  first = tuple(sorted(set(int(t) for t in ft[:, 0])))
  one = sampling.generate(model, PROMPTS, group_size=2, max_new_tokens=N, eos_ids=first, rng=keys)
  assert int(one.num_steps) == 1 and (np.asarray(one.lengths) == 1).all() and np.asarray(one.stopped).all()


def test_bad_input_errors(model):
  with pytest.raises(ValueError, match="LEFT-padded"):
    sampling.generate(model, np.array([[1, 2, 0]]), prompt_mask=np.array([[1, 1, 0]]), group_size=1,
                      max_new_tokens=2, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
    sampling.generate(model, [[1], []], group_size=1, max_new_tokens=2, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="top_p"):
    sampling.generate(model, [[1]], group_size=1, max_new_tokens=2, top_p=0.0, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="P\\*G=2 keys"):
    sampling.generate(model, [[1]], group_size=2, max_new_tokens=2, rng=jax.random.split(jax.random.key(0), 3))


def test_array_prompts_with_mask_equal_list_prompts(model):
  keys = jax.random.split(jax.random.key(8), 6)
  a = sampling.generate(model, PROMPTS, group_size=2, max_new_tokens=12, rng=keys)
  L = max(map(len, PROMPTS))
  arr = np.zeros((3, L), np.int32)
  msk = np.zeros((3, L), bool)
  for i, p in enumerate(PROMPTS):
    arr[i, L - len(p):], msk[i, L - len(p):] = p, True
  b = sampling.generate(model, arr, prompt_mask=msk, group_size=2, max_new_tokens=12, rng=keys)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(b.prompt_tokens, np.repeat(arr, 2, axis=0))


def test_mesh_sharded_matches_single_device(model, tiny, tmp_path):
  """8 emulated CPU devices, batch sharded over (data=4, fsdp=2): same samples as 1 device."""
  kw = dict(group_size=2, max_new_tokens=12, eos_ids=(3,))
  one = sampling.generate(model, PROMPTS, rng=jax.random.key(2), **kw)
  with open(tmp_path / "ref.pkl", "wb") as f:
    pickle.dump(dict(pure=tiny[1], kw=kw, tokens=np.asarray(one.tokens), mask=np.asarray(one.mask),
                     logprobs=np.asarray(one.logprobs)), f)
  code = textwrap.dedent(f"""
      import os, pickle
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
      os.environ["JAX_PLATFORMS"] = "cpu"
      import jax, numpy as np
      import sampling
      from test_sampling import _tiny_model
      ref = pickle.load(open({str(tmp_path / "ref.pkl")!r}, "rb"))
      m, _ = _tiny_model(ref["pure"])
      from models import sharding
      mesh = sharding.make_mesh(data=4, fsdp=2)          # params fsdp-sharded by the model's specs
      sh = sampling.generate(sharding.shard_model(m, mesh), {PROMPTS!r}, mesh=mesh, rng=jax.random.key(2),
                             **ref["kw"])
      assert len(jax.devices()) == 8 and len(sh.tokens.sharding.device_set) == 8, sh.tokens.sharding
      np.testing.assert_array_equal(ref["tokens"], sh.tokens)
      np.testing.assert_array_equal(ref["mask"], sh.mask)
      np.testing.assert_allclose(ref["logprobs"], sh.logprobs, atol=1e-5)
      # an Explicit-axes mesh from jax.make_mesh, replicated params: same samples
      ex = sampling.generate(m, {PROMPTS!r}, mesh=jax.make_mesh((8,), ("data",)), rng=jax.random.key(2),
                             **ref["kw"])
      np.testing.assert_array_equal(ref["tokens"], ex.tokens)
      print("OK", sh.tokens.sharding)
  """)
  tests_dir = os.path.dirname(os.path.abspath(__file__))   # for `from test_sampling import ...`
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, tests_dir, os.environ.get("PYTHONPATH", "")]))
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


def test_chunked_compacted_decode_equals_single_loop(model):
  """Chunked decoding (cache grown between chunks) with early-finish compaction gives the same
  samples as without compaction and as the single-loop reference (full-length cache, generic
  Decoder.step), for the same keys; the schedule shows rows re-packed and slots tracking t."""
  G, N = 4, 24
  keys = jax.random.split(jax.random.key(21), 3 * G)
  kw = dict(group_size=G, max_new_tokens=N, rng=keys, temperature=0.9)
  ft = np.asarray(sampling.generate(model, PROMPTS, **kw).tokens)
  eos = tuple(sorted({int(ft[r, 2]) for r in range(9)}))  # >= 9 of the 12 rows stop by step 3
  hit = np.isin(ft, eos)
  assert hit[:, :3].any(1).sum() >= 9 and not hit[:, :4].any(1).all()  # some rows run past the 1st chunk
  kw.update(eos_ids=eos, pad_id=299)
  ref = sampling.generate(model, PROMPTS, shared_prompt_cache=False, **kw)
  runs = {}
  for compact in (True, False):
    runs[compact] = sampling.generate(model, PROMPTS, chunk_size=4, compact=compact, **kw)
    runs[compact, "schedule"] = S.last_decode_schedule()
  for out in (runs[True], runs[False]):
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.mask, ref.mask)
    np.testing.assert_array_equal(out.stopped, ref.stopped)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
    np.testing.assert_allclose(out.model_logprobs, ref.model_logprobs, atol=1e-5)
    assert int(out.num_steps) == int(ref.num_steps)
  want_len = np.where(hit.any(1), hit.argmax(1) + 1, N)
  np.testing.assert_array_equal(ref.lengths, want_len)
  full, small = runs[False, "schedule"], runs[True, "schedule"]
  assert [d["rows"] for d in full] == [16] * len(full)   # 3 prompts -> bucket 4 prompts x G
  assert small[0]["rows"] == 16 and small[1]["rows"] <= 4  # <= 3 running rows: re-packed to <= 4
  assert all(a["rows"] >= b["rows"] for a, b in zip(small, small[1:]))
  for d in small:  # each chunk attends the slots up to its end (< 1.5x, a multiple of 4), not the N bucket (32)
    n = d["t0"] + 4
    assert n <= d["slots"] < max(1.5 * n, n + 4) and d["slots"] % 4 == 0 and d["steps"] <= 4
  assert sum(d["steps"] for d in small) == int(ref.num_steps)


def test_gathered_decode_weights_give_the_same_samples(tiny, tmp_path):
  """8 emulated CPU devices, params FSDP-split over fsdp=4 (data=2): the decode with its weights gathered once
  per call (gather_weights=True: replicated over the batch axes, each device decoding its own rows) draws the
  same samples as with the weights left split (False, every layer all-reducing partial sums), for the same rng;
  "auto" does not gather on the CPU (no device memory to check against). The prefill's output shows which."""
  with open(tmp_path / "pure.pkl", "wb") as f:
    pickle.dump(tiny[1], f)
  code = textwrap.dedent(f"""
      import os, pickle
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
      os.environ["JAX_PLATFORMS"] = "cpu"
      import jax, numpy as np
      import sampling
      from sampling import sampler as S
      from models import sharding
      from test_sampling import _tiny_model
      m, _ = _tiny_model(pickle.load(open({str(tmp_path / "pure.pkl")!r}, "rb")))
      mesh = sharding.make_mesh(data=2, fsdp=4)
      m = sharding.shard_model(m, mesh)
      assert m.layers.wq[...].sharding.spec[1] == "fsdp"      # [L, D/4, H, Dh] per device
      seen, prefill = [], S._prefill_jit
      def spy(*a, **k):
        out = prefill(*a, **k)
        w = out[0]["layers"][0]["w_up"]
        seen.append((k["gather"], w.sharding.is_fully_replicated, w.sharding.shard_shape(w.shape)))
        return out
      S._prefill_jit = spy
      kw = dict(group_size=4, max_new_tokens=40, eos_ids=tuple(range(3, 23)), temperature=0.9, top_p=0.95, rng=jax.random.key(5))
      split = sampling.generate(m, {PROMPTS!r}, mesh=mesh, gather_weights=False, **kw)
      gath = sampling.generate(m, {PROMPTS!r}, mesh=mesh, gather_weights=True, **kw)
      auto = sampling.generate(m, {PROMPTS!r}, mesh=mesh, **kw)
      assert [s[:2] for s in seen] == [(False, False), (True, True), (False, False)], seen
      assert seen[1][2] == (32, 64) and seen[0][2] == (8, 64), seen       # w_up [D, F]: whole vs split on D
      assert 0 < np.asarray(split.stopped).sum() < 12, split.lengths   # some rows stop early (compaction), not all
      for o in (gath, auto):
        np.testing.assert_array_equal(split.tokens, o.tokens)
        np.testing.assert_array_equal(split.mask, o.mask)
        np.testing.assert_allclose(split.logprobs, o.logprobs, atol=1e-5)
        np.testing.assert_allclose(split.model_logprobs, o.model_logprobs, atol=1e-5)
      print("OK")
  """)
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, tests_dir, os.environ.get("PYTHONPATH", "")]))
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


def test_gather_weights_setting_is_checked(model):
  with pytest.raises(ValueError, match="gather_weights"):
    sampling.generate(model, [[1]], group_size=1, max_new_tokens=2, rng=jax.random.key(0), gather_weights="yes")
