"""models/ GGUF loading: a tiny GGUF written here with gguf.GGUFWriter, and the real SmolLM2-135M-Instruct."""

import os
import subprocess
import sys

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import models
from models.gguf_io import permute_qk, unpermute_qk
from models.loading import to_hf_state_dict


def test_permute_qk_hand_case():
  # llama.cpp pairs adjacent rows: HF rows [a0 a1 | b0 b1] (rotate_half halves) -> [a0 b0 a1 b1]
  w = np.arange(8, dtype=np.float32).reshape(8, 1)  # 2 heads, Dh=4
  np.testing.assert_array_equal(permute_qk(w, 2)[:, 0], [0, 2, 1, 3, 4, 6, 5, 7])
  np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 2), 2), w)


def _tiny_hf(family):
  kw = dict(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=5000.0, max_position_embeddings=64)
  if family == "llama":
    cfg = transformers.LlamaConfig(tie_word_embeddings=False, **kw)
    cls = transformers.LlamaForCausalLM
  else:
    cfg = transformers.Qwen3Config(tie_word_embeddings=True, head_dim=8, **kw)
    cls = transformers.Qwen3ForCausalLM
  torch.manual_seed(1)
  m = cls(cfg).eval()
  with torch.no_grad():
    for n, p in m.named_parameters():
      if "norm" in n:
        p.add_(0.1 * torch.randn_like(p))
  return m


def _write_gguf(hf, path, arch):
  """What llama.cpp's convert_hf_to_gguf does for these archs (metadata + renamed, Q/K-permuted tensors)."""
  c = hf.config
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_rope_freq_base(c.rope_parameters["rope_theta"])
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_vocab_size(c.vocab_size)
  hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
  w.add_key_length(hd)
  w.add_value_length(hd)
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
  layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
           "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
           "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
  for k, t in hf.state_dict().items():
    a = t.detach().numpy().astype(np.float32)
    if k == "lm_head.weight" and c.tie_word_embeddings:
      continue
    if k.startswith("model.layers."):
      _, _, i, *rest = k.split(".")
      mod, leaf = ".".join(rest[:-1]), rest[-1]
      if arch == "llama" and mod == "self_attn.q_proj":
        a = permute_qk(a, c.num_attention_heads)
      if arch == "llama" and mod == "self_attn.k_proj":
        a = permute_qk(a, c.num_key_value_heads)
      name = f"blk.{i}.{layer[mod]}.{leaf}"
    else:
      name = names[k]
    w.add_tensor(name, a)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tiny_gguf_loads_to_same_weights(tmp_path, arch):
  hf = _tiny_hf(arch)
  path = tmp_path / "tiny.gguf"
  _write_gguf(hf, path, arch)
  model, tok = models.load_pretrained(str(path))
  assert tok is None  # no tokenizer metadata in this file
  assert model.cfg.tie_embeddings == hf.config.tie_word_embeddings
  assert model.cfg.qk_norm == (arch == "qwen3")
  ours = to_hf_state_dict(model)
  ref = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  if hf.config.tie_word_embeddings:
    ref.pop("lm_head.weight")
  assert set(ours) == set(ref)
  for k in ref:
    np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


@pytest.fixture(scope="module")
def smollm2():
  path = models.smollm2_gguf_path()
  d, f = os.path.split(path)
  model, tok = models.load_pretrained(d, gguf_file=f)
  hf = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
  return model, tok, hf


def test_smollm2_gguf_logprobs_match_transformers(smollm2):
  model, tok, hf = smollm2
  assert model.cfg.num_layers == 30 and model.cfg.vocab_size == 49152 and model.cfg.tie_embeddings
  assert tok.chat_template and "<|im_start|>" in tok.chat_template
  ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                tokenize=True)
  ids = list(ids["input_ids"] if not isinstance(ids, list) else ids) + tok.encode("2+3 = 5.")
  ids = np.asarray([ids], np.int32)
  with torch.no_grad():
    ref = torch.log_softmax(hf(torch.tensor(ids, dtype=torch.long)).logits.double(), -1).numpy()
  ref_lp = np.take_along_axis(ref[:, :-1], ids[:, 1:, None], -1)[..., 0]
  lp, _ = model.token_logprobs(jnp.asarray(ids[:, :-1]), jnp.asarray(ids[:, 1:]), chunk_size=16)
  lp = np.asarray(lp)
  assert ref_lp[0, -4:].mean() > -3.0  # a sane pretrained model: the answer is likely
  np.testing.assert_allclose(lp, ref_lp, atol=1e-4)
  # our dequantisation + Q/K un-permutation gives exactly transformers' weights
  ours, sd = to_hf_state_dict(model), hf.state_dict()
  for k in ["model.layers.0.self_attn.q_proj.weight", "model.layers.29.self_attn.k_proj.weight",
            "model.embed_tokens.weight", "model.layers.7.mlp.down_proj.weight"]:
    np.testing.assert_array_equal(ours[k], sd[k].numpy(), err_msg=k)


def test_hf_dir_with_tokenizer_roundtrip(smollm2, tmp_path):
  """save_pretrained(..., tokenizer=tok) -> load_pretrained gives back the tokenizer and chat template."""
  _, tok, _ = smollm2
  hf = _tiny_hf("qwen3")
  from models import DecoderConfig, from_hf_state_dict
  small = from_hf_state_dict(DecoderConfig.from_hf(hf.config), {k: v.numpy() for k, v in hf.state_dict().items()})
  models.save_pretrained(small, str(tmp_path), tokenizer=tok)
  _, tok2 = models.load_pretrained(str(tmp_path))
  assert tok2 is not None and tok2.chat_template == tok.chat_template
  msgs = [{"role": "user", "content": "hi"}]
  assert tok2.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(msgs, tokenize=False)


def test_gguf_tokenizer_equals_transformers_and_needs_no_torch(smollm2):
  """Our torch-free GGUF tokenizer == transformers.AutoTokenizer(gguf_file=...), and loads with torch blocked."""
  _, tok, _ = smollm2
  d, f = os.path.split(models.smollm2_gguf_path())
  ref = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
  msgs = [{"role": "user", "content": "What is 12 + 7? Answer: \\boxed{19}.  Ünïcode ✓\n\tend"}]
  assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
      ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  text = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + " 12+7 = 19<|im_end|>"
  assert tok(text)["input_ids"] == ref(text)["input_ids"]
  assert (tok.eos_token, tok.bos_token, tok.pad_token) == (ref.eos_token, ref.bos_token, ref.pad_token)
  code = ("import sys; sys.modules['torch'] = None\n"
          "from models.gguf_io import load_gguf_tokenizer\n"
          f"t = load_gguf_tokenizer({models.smollm2_gguf_path()!r})\n"
          "print(t('What is 2+3?')['input_ids'])")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == str(ref("What is 2+3?")["input_ids"])
