"""Read llama.cpp GGUF files (any quantisation the `gguf` package dequantises) as HF-named tensors.

  cfg_dict, tensors = load_gguf(path)   # transformers-style config dict, {HF name: f32 np.ndarray}

llama.cpp's converter permutes the rows of Q and K for Llama-family models (its RoPE
kernel pairs adjacent dims, HF's pairs dim i with i + Dh/2); we undo it here
(`unpermute_qk`). Qwen2 / Qwen3 files are not permuted (NEOX-style RoPE).
"""

from __future__ import annotations

import numpy as np

_ARCHS = ("llama", "qwen2", "qwen3")
_LAYER = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """HF layout -> llama.cpp layout for Q/K rows ([n_head*Dh, ...]); as llama.cpp's convert script."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of permute_qk: llama.cpp layout -> HF layout."""
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(gguf_name: str) -> str | None:
  """GGUF tensor name -> HF name (None for tensors we do not use, e.g. rope_freqs)."""
  if gguf_name in _TOP:
    return _TOP[gguf_name]
  parts = gguf_name.split(".")
  if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER:
    return f"model.layers.{parts[1]}.{_LAYER[parts[2]]}.{parts[3]}"
  return None


def _meta(reader):
  out = {}
  for k, f in reader.fields.items():
    if k.startswith("tokenizer.ggml.") and k not in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
      if k == "tokenizer.ggml.tokens":
        out[k + ".count"] = len(f.data)
      continue
    try:
      out[k] = f.contents()
    except Exception:  # exotic field types we do not need
      pass
  return out


def load_gguf(path: str, reader=None) -> tuple[dict, dict[str, np.ndarray]]:
  """-> (transformers-style config dict, {HF tensor name: float32 array [out, in]}).

  reader: an open `gguf.GGUFReader` of `path`, to parse the file once when the tokenizer is read too.
  """
  import gguf

  reader = reader or gguf.GGUFReader(path)
  m = _meta(reader)
  arch = m.get("general.architecture")
  if arch not in _ARCHS:
    raise ValueError(f"{path}: general.architecture={arch!r} not supported ({', '.join(_ARCHS)})")
  g = lambda key, default=None: m.get(f"{arch}.{key}", default)
  for key in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count"):
    if g(key) is None:
      raise ValueError(f"{path}: metadata key {arch}.{key} missing")
  names = {t.name for t in reader.tensors}
  if "rope_freqs.weight" in names:
    raise ValueError(f"{path}: tensor rope_freqs.weight (llama3 rope scaling baked into GGUF) not supported")
  heads = int(g("attention.head_count"))
  kv_heads = int(g("attention.head_count_kv", heads))
  hidden = int(g("embedding_length"))
  cfg = {
      "model_type": arch, "hidden_act": "silu",
      "vocab_size": int(g("vocab_size") or m.get("tokenizer.ggml.tokens.count") or 0),
      "hidden_size": hidden, "intermediate_size": int(g("feed_forward_length")),
      "num_hidden_layers": int(g("block_count")), "num_attention_heads": heads,
      "num_key_value_heads": kv_heads, "head_dim": int(g("attention.key_length", hidden // heads)),
      "rope_theta": float(g("rope.freq_base", 10000.0)),
      "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
      "max_position_embeddings": int(g("context_length", 4096)),
      "tie_word_embeddings": "output.weight" not in names,
      "gguf_has_tokenizer": "tokenizer.ggml.tokens.count" in m,
      "bos_token_id": m.get("tokenizer.ggml.bos_token_id"), "eos_token_id": m.get("tokenizer.ggml.eos_token_id"),
  }
  if arch == "llama":
    cfg["attention_bias"] = "blk.0.attn_q.bias" in names
  scaling = g("rope.scaling.type")
  if scaling and scaling != "none":
    if scaling != "linear":
      raise ValueError(f"{path}: {arch}.rope.scaling.type={scaling!r} not supported (linear)")
    cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(g("rope.scaling.factor"))}
  tensors = {}
  for t in reader.tensors:
    name = hf_name(t.name)
    if name is None:
      continue
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    w = w.reshape(tuple(int(d) for d in reversed(t.shape)))  # GGUF dims are innermost-first
    if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
      w = unpermute_qk(w, heads)
    elif arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
      w = unpermute_qk(w, kv_heads)
    tensors[name] = w
  if not cfg["vocab_size"]:
    cfg["vocab_size"] = tensors["model.embed_tokens.weight"].shape[0]
  return cfg, tensors



def load_gguf_tokenizer(gguf_path: str, reader=None):
  """The tokenizer (with its chat template) stored in a GGUF file, built without torch.

  `transformers.AutoTokenizer.from_pretrained(dir, gguf_file=...)` goes through transformers' GGUF reader,
  which imports torch; here the metadata is read with the `gguf` package and handed to transformers'
  own GGUF tokenizer converter, so the result is the same tokenizer (tested) and torch stays a test-only
  dependency. Returns a `PreTrainedTokenizerFast`, or None if the file holds no tokenizer.
  reader: as in `load_gguf`.
  """
  import gguf
  from transformers import PreTrainedTokenizerFast
  from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping

  reader = reader or gguf.GGUFReader(gguf_path)
  meta = {name: field.contents() for name, field in reader.fields.items()
          if name.startswith("tokenizer.") or name == "general.architecture"}
  if "tokenizer.ggml.tokens" not in meta:
    return None
  groups = {group: {new: meta[f"tokenizer.{old}"] for old, new in renames.items() if f"tokenizer.{old}" in meta}
            for group, renames in mapping.GGUF_TOKENIZER_MAPPING.items()}
  tok_dict, tok_config = groups["tokenizer"], groups["tokenizer_config"]
  if tok_dict.get("tokenizer_type") == "llama":   # sentencepiece files without the flag: llama.cpp adds BOS
    tok_config.setdefault("add_bos_token", True)
  for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                    ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
    i = meta.get(f"tokenizer.ggml.{key}")
    tok_config[name] = tok_dict["tokens"][i] if i is not None else None
  backend, extra = mapping.convert_gguf_tokenizer(meta["general.architecture"], tok_dict)
  return PreTrainedTokenizerFast(tokenizer_object=backend, **tok_config, **extra)
