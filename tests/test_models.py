"""models/: parity with transformers (tiny random Llama / Qwen2 / Qwen3), cache, log-probs, save/load."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from models import Decoder, DecoderConfig, from_hf_state_dict, load_pretrained, save_pretrained

V = 97


def _hf_model(family, **kw):
  common = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                rms_norm_eps=1e-5, attn_implementation="eager")
  common.update(kw)
  if family == "llama":
    cfg = transformers.LlamaConfig(**common)
    cls = transformers.LlamaForCausalLM
  elif family == "qwen2":
    cfg = transformers.Qwen2Config(**common)
    cls = transformers.Qwen2ForCausalLM
  else:
    cfg = transformers.Qwen3Config(head_dim=16, **common)
    cls = transformers.Qwen3ForCausalLM
  torch.manual_seed(0)
  m = cls(cfg).eval()
  with torch.no_grad():  # biases / norms are zeros / ones at init: randomise them so they matter
    for n, p in m.named_parameters():
      if "norm" in n or n.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return m


def _sd(hf):
  return {k: v.detach().numpy() for k, v in hf.state_dict().items()}


def _batch(pad_side, B=3, T=9, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (B, T)).astype(np.int32)
  lens = np.array([T, T - 3, T - 5])[:B]
  mask = np.zeros((B, T), bool)
  for b, n in enumerate(lens):
    if pad_side == "left":
      mask[b, T - n:] = True
    else:
      mask[b, :n] = True
  tokens = np.where(mask, tokens, 0)
  return tokens, mask


def _hf_logprobs(hf, tokens, mask):
  """Reference: transformers forward -> log p(tokens[:, t+1] | :t+1) [B, T-1] and logits."""
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask.astype(np.int64)),
             position_ids=torch.tensor(pos, dtype=torch.long))
  logits = out.logits.double().numpy()
  lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
  tgt = np.take_along_axis(lp[:, :-1], tokens[:, 1:, None].astype(np.int64), -1)[..., 0]
  p = np.exp(lp)
  ent = -(p * lp).sum(-1)[:, :-1]
  return logits, tgt, ent


@pytest.fixture(scope="module")
def llama():
  hf = _hf_model("llama")
  cfg = DecoderConfig.from_hf(hf.config)
  return hf, from_hf_state_dict(cfg, _sd(hf))


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_llama_logits_match_transformers(llama, pad_side):
  hf, model = llama
  tokens, mask = _batch(pad_side)
  ref, _, _ = _hf_logprobs(hf, tokens, mask)
  ours = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
  assert ours.shape == ref.shape and ours.dtype == np.float32
  np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4)


def test_prefill_then_decode_equals_full_forward(llama):
  _, model = llama
  tokens, mask = _batch("left", T=10)
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  full = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
  P = 6
  step = nnx.jit(lambda m, t, p, c, am: m.step(t, p, c, attention_mask=am))
  cache = model.init_cache(tokens.shape[0], 16)
  assert cache["k"].shape == (2, 3, 16, 2, 8) and cache["valid"].shape == (3, 16)
  logits, cache = step(model, tokens[:, :P], pos[:, :P], cache, mask[:, :P])
  outs = [np.asarray(logits)]
  for t in range(P, tokens.shape[1]):
    logits, cache = step(model, tokens[:, t:t + 1], pos[:, t:t + 1], cache, mask[:, t:t + 1])
    outs.append(np.asarray(logits))
  assert int(cache["index"]) == tokens.shape[1]
  np.testing.assert_array_equal(np.asarray(cache["valid"])[:, :tokens.shape[1]], mask)
  got = np.concatenate(outs, 1)
  np.testing.assert_allclose(got[mask], full[mask], atol=1e-5)


def _valid_pairs(mask):
  """Positions t where both inputs[t] and targets[t]=tokens[t+1] are real tokens."""
  return mask[:, :-1] & mask[:, 1:]


FAMILIES = [("llama", dict(tie_word_embeddings=True)),
            ("qwen2", dict(tie_word_embeddings=False)),
            ("qwen3", dict(tie_word_embeddings=True))]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f for f, _ in FAMILIES])
def saved_family(request, tmp_path_factory):
  family, kw = request.param
  hf = _hf_model(family, **kw)
  d = tmp_path_factory.mktemp(family)
  hf.save_pretrained(d, max_shard_size="40KB")  # sharded: exercises the index file
  assert os.path.exists(d / "model.safetensors.index.json")
  model, tok = load_pretrained(str(d))
  assert tok is None  # weights-only directory
  return hf, model, d


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_load_pretrained_logprobs_match_transformers(saved_family, pad_side):
  hf, model, _ = saved_family
  assert model.cfg.model_type == hf.config.model_type
  assert model.cfg.qkv_bias == (hf.config.model_type == "qwen2")
  assert model.cfg.qk_norm == (hf.config.model_type == "qwen3")
  tokens, mask = _batch(pad_side, T=10, seed=1)
  _, ref_lp, ref_ent = _hf_logprobs(hf, tokens, mask)
  lp, ent = model.token_logprobs(jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:]),
                                 attention_mask=jnp.asarray(mask[:, :-1]), chunk_size=4)
  assert lp.shape == (3, 9) and lp.dtype == jnp.float32 and ent.dtype == jnp.float32
  ok = _valid_pairs(mask)
  np.testing.assert_allclose(np.asarray(lp)[ok], ref_lp[ok], atol=1e-4)
  np.testing.assert_allclose(np.asarray(ent)[ok], ref_ent[ok], atol=1e-4)


def test_save_pretrained_transformers_roundtrip(saved_family, tmp_path):
  hf, model, _ = saved_family
  save_pretrained(model, str(tmp_path))
  hf2 = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
  assert type(hf2) is type(hf)
  sd1, sd2 = _sd(hf), _sd(hf2)
  assert set(sd1) == set(sd2)
  for k in sd1:
    np.testing.assert_array_equal(sd1[k], sd2[k], err_msg=k)
  tokens, mask = _batch("left", seed=2)
  a, _, _ = _hf_logprobs(hf, tokens, mask)
  b, _, _ = _hf_logprobs(hf2, tokens, mask)
  np.testing.assert_array_equal(a, b)
  # and our loader reads our own files back to the same parameters
  again, _ = load_pretrained(str(tmp_path), tokenizer=False)
  for x, y in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


ROPES = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
}


@pytest.mark.parametrize("rope", sorted(ROPES))
def test_rope_scaling_matches_transformers(rope):
  hf = _hf_model("llama", num_hidden_layers=1, rope_scaling=dict(ROPES[rope]), rope_theta=500.0)
  cfg = DecoderConfig.from_hf(hf.config)
  assert cfg.rope_dict["rope_type"] == rope
  model = from_hf_state_dict(cfg, _sd(hf))
  tokens, mask = _batch("right", T=12, seed=3)
  ref, _, _ = _hf_logprobs(hf, tokens, mask)
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0) + 20  # far positions: the scaled frequencies matter
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask.astype(np.int64)),
             position_ids=torch.tensor(pos, dtype=torch.long)).logits.numpy()
  ours = np.asarray(model(jnp.asarray(tokens), positions=jnp.asarray(pos), attention_mask=jnp.asarray(mask)))
  np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4)


def test_token_logprobs_gradient_and_remat(llama):
  """Chunked log-probs give the same value and gradient as log_softmax over full logits; remat too."""
  _, model = llama
  tokens, mask = _batch("left", T=10, seed=4)
  inp, tgt, am = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:]), jnp.asarray(mask[:, :-1])
  w = jnp.asarray(_valid_pairs(mask), jnp.float32)
  graphdef, params = nnx.split(model, nnx.Param)

  def chunked(p, gd):
    lp, _ = nnx.merge(gd, p).token_logprobs(inp, tgt, attention_mask=am, chunk_size=4)
    return jnp.sum(lp * w)

  def full(p):
    logits = nnx.merge(graphdef, p)(inp, attention_mask=am)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1)[..., 0]
    return jnp.sum(lp * w)

  vg = jax.jit(jax.value_and_grad(chunked), static_argnums=1)
  v1, g1 = vg(params, graphdef)
  v2, g2 = jax.jit(jax.value_and_grad(full))(params)
  rgd = nnx.graphdef(Decoder(dataclass_replace(model.cfg, remat=True), rngs=nnx.Rngs(0)))
  v3, g3 = vg(params, rgd)
  fwd = lambda p, gd: nnx.merge(gd, p)(inp, attention_mask=am)
  full_remat = str(jax.make_jaxpr(fwd, static_argnums=1)(params, rgd))
  assert "remat" in full_remat and "policy=None" in full_remat   # layers are checkpointed, nothing saved
  # without remat the layers keep only their weight-matmul outputs for the backward (transformer._SAVE_DOTS)
  assert "DotsSaveable(only_if_no_batch_dims=True)" in str(jax.make_jaxpr(fwd, static_argnums=1)(params, graphdef))
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  np.testing.assert_allclose(v3, v1, rtol=1e-6)
  for a, b, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), jax.tree.leaves(g3)):
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(c, a, atol=1e-6)


def dataclass_replace(cfg, **kw):
  import dataclasses
  return dataclasses.replace(cfg, **kw)


def test_config_errors():
  with pytest.raises(ValueError, match="model_type"):
    DecoderConfig.from_hf({"model_type": "gpt2"})
  with pytest.raises(ValueError, match="dtype"):
    DecoderConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
                  num_kv_heads=1, head_dim=4, dtype="fp8")
  with pytest.raises(ValueError, match="missing key 'rms_norm_eps'"):
    DecoderConfig.from_hf({"model_type": "qwen2", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                           "num_hidden_layers": 1, "num_attention_heads": 2})
  bad = DecoderConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=4, qkv_bias=True, model_type="llama")
  with pytest.raises(ValueError, match="no transformers equivalent"):
    bad.to_hf_dict()
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_pretrained("/nonexistent_dir")


def test_bfloat16_params_and_compute(llama):
  hf, model32 = llama
  cfg = dataclass_replace(model32.cfg, dtype="bfloat16", param_dtype="bfloat16")
  model = from_hf_state_dict(cfg, _sd(hf))
  assert model.layers.wq[...].dtype == jnp.bfloat16 and model.init_cache(1, 4)["k"].dtype == jnp.bfloat16
  tokens, mask = _batch("left")
  ref = np.asarray(model32(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
  out = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
  assert out.dtype == jnp.float32
  err = np.abs(np.asarray(out) - ref)[mask]
  assert 0 < err.max() < 0.05  # bf16 rounding is visible but small


def test_bf16_safetensors_checkpoint(tmp_path):
  """A bf16 HF checkpoint is read without torch (ml_dtypes) to bit-identical bf16 params, and saved back."""
  hf = _hf_model("qwen2", num_hidden_layers=1).to(torch.bfloat16)
  hf.save_pretrained(tmp_path / "in")
  model, _ = load_pretrained(str(tmp_path / "in"), dtype="bfloat16")
  assert model.cfg.param_dtype == "bfloat16" and model.embed[...].dtype == jnp.bfloat16
  wq = np.asarray(model.layers.wq[...][0]).reshape(32, -1).T  # [H*Dh, D]
  ref = hf.model.layers[0].self_attn.q_proj.weight.detach().float().numpy()
  np.testing.assert_array_equal(wq.astype(np.float32), ref)
  save_pretrained(model, str(tmp_path / "out"))
  hf2 = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
  assert hf2.dtype == torch.bfloat16
  sd2 = hf2.state_dict()
  assert set(sd2) == set(hf.state_dict())
  for k, a in hf.state_dict().items():
    assert torch.equal(a, sd2[k]), k


def test_raw_config_json_llama31_rope():
  """A Llama-3.1-style config.json dict (old `rope_scaling` key) gives transformers' inverse frequencies."""
  from models.transformer import rope_inv_freq
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  d = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
       "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
       "max_position_embeddings": 131072, "eos_token_id": [5, 7], "tie_word_embeddings": False,
       "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
  cfg = DecoderConfig.from_hf(d)
  assert cfg.rope_theta == 500000.0 and cfg.eos_token_id == (5, 7) and cfg.head_dim == 32
  ref, ref_scale = ROPE_INIT_FUNCTIONS["llama3"](transformers.LlamaConfig(**d), "cpu")
  ours, scale = rope_inv_freq(cfg)
  np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
  assert scale == ref_scale


# ----------------------------------------------------------------------------- blockwise attention

def _attn_inputs(B=3, T=21, H=4, K=2, Dh=8, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, Dh)).astype(np.float32)) for n in (H, K, K))
  valid = np.ones((B, T), bool)
  valid[1, :5] = False   # left padding
  valid[2, :12] = False
  return q, k, v, jnp.asarray(valid)


def test_flash_attention_equals_dense_value_and_gradient(monkeypatch):
  """Blockwise online-softmax attention (blocks of 8, T=21 not a multiple, GQA, left padding) ==
  the dense `_attend` with the causal & padding mask, and so are its gradients (custom VJP), at
  every query with a valid key."""
  from models import transformer as tr
  monkeypatch.setattr(tr, "_FLASH_BLOCK", 8)
  q, k, v, valid = _attn_inputs()
  T = q.shape[1]
  cfg = DecoderConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4,
                      num_kv_heads=2, head_dim=8)
  dense = lambda q, k, v: tr._attend(cfg, q, k, v, jnp.tril(jnp.ones((T, T), bool))[None] & valid[:, None, :])
  flash = lambda q, k, v: tr.flash_attention(q, k, v, valid)
  ok = np.asarray(valid)  # a query has a valid key iff it is itself valid (left padding)
  np.testing.assert_allclose(np.asarray(flash(q, k, v))[ok], np.asarray(dense(q, k, v))[ok], atol=1e-5)
  w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape).astype(np.float32)) * valid[:, :, None, None]
  loss = lambda f: (lambda q, k, v: jnp.sum(f(q, k, v) * w))
  g_flash = jax.jit(jax.grad(loss(flash), argnums=(0, 1, 2)))(q, k, v)
  g_dense = jax.jit(jax.grad(loss(dense), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_flash, g_dense):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  # no [T,T] (here [.., 21, 21] / [.., 24, 24]) buffer anywhere in the compiled gradient
  hlo = jax.jit(jax.grad(loss(flash), argnums=(0, 1, 2))).lower(q, k, v).as_text()
  assert "21x21x" not in hlo and "24x24x" not in hlo and "8x8xf32" in hlo


def test_long_sequence_path_matches_transformers(llama, monkeypatch):
  """hidden_states switches to blockwise attention at T >= _FLASH_MIN_T: logits still match
  transformers and the dense path (its gradient is tested on the attention itself above)."""
  from models import transformer as tr
  hf, model = llama
  tokens, mask = _batch("left", T=20, seed=3)
  ref, _, _ = _hf_logprobs(hf, tokens, mask)
  graphdef, params = nnx.split(model, nnx.Param)
  fwd = lambda p: nnx.merge(graphdef, p)(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
  dense = np.asarray(jax.jit(fwd)(params))
  monkeypatch.setattr(tr, "_FLASH_MIN_T", 8)   # read when tracing: the new jit below takes the flash path
  monkeypatch.setattr(tr, "_FLASH_BLOCK", 8)
  flash = np.asarray(jax.jit(fwd)(params))
  np.testing.assert_allclose(flash[mask], ref[mask], atol=1e-4)
  np.testing.assert_allclose(flash[mask], dense[mask], atol=2e-5)
