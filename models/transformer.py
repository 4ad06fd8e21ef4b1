"""A decoder-only transformer (Llama / Qwen2 / Qwen3 family) in Flax NNX.

One file, one module. Parameters of the L layers are stored *stacked* (leading
axis L) and the layers run under `jax.lax.scan`, so a 30-layer model compiles
one layer body, remat is one `jax.checkpoint` around it, and the KV cache is a
single [L, B, S, Hkv, Dh] array per K and V. The sampler's decode step (`group_step`) is the
exception: it unrolls the layers over weights sliced once per call, with per-layer caches,
because a scan's per-step weight slices are copies on XLA:CPU.

Numerics: `dtype` is the dtype of every matmul's operands (weights and the activations going
into them, K/V included); matmuls accumulate in f32 and return f32, and the residual stream,
norms, RoPE and softmax are f32. With dtype="float32" everything is f32.

Shapes: B batch, T new tokens, S cache slots, D hidden, H query heads,
K kv heads (GQA groups G = H // K), Dh head dim, F MLP hidden, V vocab, L layers.

Interface (docs/interfaces.md):
  logits = model(tokens[B,T], positions=None, attention_mask=None)  -> f32 [B,T,V]
  cache = model.init_cache(batch, max_len)
  logits, cache = model.step(tokens[B,T], positions[B,T], cache, attention_mask=None)
  shared, resp = model.group_decode_init(prompt_cache, G, N)     # sampler: G rows per prompt
  logits, resp = model.group_step(tokens[B], positions[B], t, shared, resp)
  logp, ent = model.token_logprobs(inputs[B,T], targets[B,T], ..., start=0)   -> f32 [B,T-start] x2
  logp, ent = model.shared_prompt_logprobs(prompt[U,L], prompt_mask, prompt_idx[B], tokens[B,T], mask)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.warping import warp_logits

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_NEG = -1e30  # finite "minus infinity": fully masked rows give a uniform softmax, never NaN.


def _dtype(name: str):
  if name not in _DTYPES:
    raise ValueError(f"DecoderConfig dtype/param_dtype must be one of {sorted(_DTYPES)}, got {name!r}")
  return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture + numerics of a decoder LM. Hashable (usable as a jit static arg)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  # rope_scaling: tuple of sorted (key, value) items of HF's rope dict, e.g.
  # (("factor", 8.0), ("rope_type", "llama3"), ...); () = plain RoPE.
  rope_scaling: tuple = ()
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = False
  qkv_bias: bool = False       # Qwen2 (and Llama attention_bias=True)
  o_bias: bool = False         # Llama attention_bias=True
  qk_norm: bool = False        # Qwen3
  max_position_embeddings: int = 4096
  model_type: str = "llama"    # "llama" | "qwen2" | "qwen3": used by save_pretrained
  bos_token_id: int | None = None
  eos_token_id: Any = None     # int or tuple of ints
  dtype: str = "float32"       # compute dtype
  param_dtype: str = "float32"
  remat: bool = False          # jax.checkpoint each layer (training memory)
  # storage dtype of the sampler's KV caches (group_decode_init); "" = the compute dtype, except
  # float32 when the default backend is the CPU (see group_decode_init). Set it explicitly to
  # compile an accelerator program on a CPU host (experiments/plan.py does).
  cache_dtype: str = ""

  def __post_init__(self):
    _dtype(self.dtype), _dtype(self.param_dtype)
    if self.cache_dtype:
      _dtype(self.cache_dtype)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
    rt = self.rope_dict.get("rope_type", "default")
    if rt not in ("default", "linear", "llama3", "yarn"):
      raise ValueError(f"rope_scaling.rope_type={rt!r} not supported (default, linear, llama3, yarn)")

  @property
  def rope_dict(self) -> dict:
    return dict(self.rope_scaling)

  @classmethod
  def from_hf(cls, hf_config, *, dtype: str = "float32", param_dtype: str | None = None,
              remat: bool = False) -> "DecoderConfig":
    """Builds a config from a transformers LlamaConfig / Qwen2Config / Qwen3Config (or its dict)."""
    c = hf_config if not isinstance(hf_config, dict) else _Attr(hf_config)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "rms_norm_eps"):
      if getattr(c, key, None) is None and getattr(c, "model_type", None) in ("llama", "qwen2", "qwen3", "mistral"):
        raise ValueError(f"config.json is missing key {key!r}")
    mt = getattr(c, "model_type", None)
    if mt not in ("llama", "qwen2", "qwen3", "mistral"):
      raise ValueError(f"config.json model_type={mt!r} not supported (llama, qwen2, qwen3, mistral)")
    act = getattr(c, "hidden_act", "silu")
    if act != "silu":
      raise ValueError(f"config.json hidden_act={act!r} not supported (silu)")
    if getattr(c, "mlp_bias", False):
      raise ValueError("config.json mlp_bias=True not supported")
    if getattr(c, "use_sliding_window", False) or (mt == "mistral" and getattr(c, "sliding_window", None)):
      raise ValueError("config.json sliding-window attention not supported")
    rope = dict(getattr(c, "rope_parameters", None) or {})
    old = getattr(c, "rope_scaling", None)  # transformers<5 configs / raw config.json dicts
    if old and not rope.get("rope_type"):
      rope.update(old)
    rope_theta = float(rope.pop("rope_theta", None) or getattr(c, "rope_theta", None) or 10000.0)
    if "type" in rope and "rope_type" not in rope:
      rope["rope_type"] = rope.pop("type")
    rope.pop("type", None)
    if rope.get("rope_type", "default") == "default":
      rope = {}
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
      raise ValueError("config.json partial_rotary_factor != 1 not supported")
    rope.pop("partial_rotary_factor", None)
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    eos = getattr(c, "eos_token_id", None)
    if isinstance(eos, list):
      eos = tuple(eos)
    attn_bias = bool(getattr(c, "attention_bias", False))
    return cls(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_layers=c.num_hidden_layers, num_heads=heads,
        num_kv_heads=getattr(c, "num_key_value_heads", None) or heads, head_dim=head_dim,
        rope_theta=rope_theta, rope_scaling=tuple(sorted(rope.items())),
        rms_norm_eps=float(c.rms_norm_eps), tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        qkv_bias=(mt == "qwen2") or attn_bias, o_bias=(mt != "qwen2") and attn_bias,
        qk_norm=(mt == "qwen3"), max_position_embeddings=int(getattr(c, "max_position_embeddings", 4096)),
        model_type=mt, bos_token_id=getattr(c, "bos_token_id", None), eos_token_id=eos,
        dtype=dtype, param_dtype=param_dtype or dtype, remat=remat)

  def to_hf_dict(self) -> dict:
    """config.json contents for transformers (inverse of from_hf)."""
    mt = self.model_type
    ok = {"llama": self.qkv_bias == self.o_bias and not self.qk_norm,
          "mistral": not (self.qkv_bias or self.o_bias or self.qk_norm),
          "qwen2": self.qkv_bias and not (self.o_bias or self.qk_norm),
          "qwen3": self.qk_norm and not (self.qkv_bias or self.o_bias)}.get(mt, False)
    if not ok:
      raise ValueError(f"DecoderConfig(model_type={mt!r}, qkv_bias={self.qkv_bias}, o_bias={self.o_bias}, "
                       f"qk_norm={self.qk_norm}) has no transformers equivalent; set model_type accordingly")
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
            "mistral": "MistralForCausalLM"}[self.model_type]
    rope = {"rope_type": "default", **self.rope_dict, "rope_theta": self.rope_theta}
    d = dict(
        architectures=[arch], model_type=self.model_type, vocab_size=self.vocab_size,
        hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim, hidden_act="silu",
        rms_norm_eps=self.rms_norm_eps, tie_word_embeddings=self.tie_embeddings,
        max_position_embeddings=self.max_position_embeddings, rope_theta=self.rope_theta,
        rope_parameters=rope, rope_scaling=None if rope["rope_type"] == "default" else rope,
        bos_token_id=self.bos_token_id,
        eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
        torch_dtype=self.param_dtype, dtype=self.param_dtype, use_cache=True)
    if self.model_type == "llama":
      d.update(attention_bias=self.qkv_bias, mlp_bias=False)
    if self.model_type == "qwen3":
      d.update(attention_bias=False)
    if self.model_type in ("qwen2", "qwen3"):
      d.update(use_sliding_window=False, sliding_window=None)
    return d


class _Attr:
  def __init__(self, d):
    self.__dict__.update(d)


# ----------------------------------------------------------------------------- RoPE

def rope_inv_freq(cfg: DecoderConfig) -> tuple[np.ndarray, float]:
  """-> (inv_freq f32 [Dh/2], attention_factor) following HF's rope_type formulas."""
  dim, base, r = cfg.head_dim, cfg.rope_theta, cfg.rope_dict
  exps = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
  inv = (1.0 / (np.float32(base) ** exps)).astype(np.float32)
  rt, scale = r.get("rope_type", "default"), 1.0
  if rt == "linear":
    inv = inv / np.float32(r["factor"])
  elif rt == "llama3":
    f, lo, hi, old = r["factor"], r["low_freq_factor"], r["high_freq_factor"], r["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > old / lo, inv / f, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / f + smooth * out
    medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
    inv = np.where(medium, smoothed, out).astype(np.float32)
  elif rt == "yarn":
    old = r["original_max_position_embeddings"]
    f = r.get("factor") or cfg.max_position_embeddings / old
    mscale = lambda s, m=1.0: 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0
    scale = r.get("attention_factor")
    if scale is None:
      m, mad = r.get("mscale"), r.get("mscale_all_dim")
      scale = mscale(f, m) / mscale(f, mad) if (m and mad) else mscale(f)
    fast, slow = r.get("beta_fast") or 32, r.get("beta_slow") or 1
    corr = lambda rot: dim * math.log(old / (rot * 2 * math.pi)) / (2 * math.log(base))
    lo, hi = corr(fast), corr(slow)
    if r.get("truncate", True):
      lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
      hi += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1)
    extra = 1 - ramp
    inv = ((inv / f) * (1 - extra) + inv * extra).astype(np.float32)
  return inv, float(scale)


def rope_cos_sin(cfg: DecoderConfig, positions):
  """positions int [B,T] -> cos, sin f32 [B,T,Dh/2] (only for the given positions)."""
  inv, scale = rope_inv_freq(cfg)
  ang = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv)
  return jnp.cos(ang) * scale, jnp.sin(ang) * scale


def apply_rope(x, cos, sin):
  """x [B,T,N,Dh], cos/sin [B,T,Dh/2] -> [B,T,N,Dh] (HF 'rotate_half' layout)."""
  h = x.shape[-1] // 2
  x1, x2 = x[..., :h].astype(jnp.float32), x[..., h:].astype(jnp.float32)
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def split_rows(x):
  """x [B, ...] constrained to be split over the batch axes ("data", "fsdp") of the context mesh
  (`jax.sharding.use_abstract_mesh`, entered by rl.update's jitted functions); unchanged without one, or
  when B does not divide. Without it GSPMD propagates the FSDP weights' split of D to the activations:
  every chip then holds the MLP intermediates and logits of ALL rows (8x the memory on 8 chips) and
  all-reduces them each layer, instead of gathering the layer's weights (docs/scaling.md)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  names = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
  if not names or x.shape[0] % math.prod(mesh.shape[a] for a in names):
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(names))


def rms_norm(x, w, eps):
  """x [..., D], w [D] -> [..., D] in x.dtype (variance in f32, as HF)."""
  xf = x.astype(jnp.float32)
  xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return w.astype(x.dtype) * xf.astype(x.dtype)


# ----------------------------------------------------------------------------- layer

def _mm(spec, x, w, dt):
  """One projection: operands rounded to the compute dtype `dt`, f32 accumulation and result."""
  return jnp.einsum(spec, x.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)


def _qkv(cfg, p, x, cos, sin):
  """x f32 [B,T,D] -> q [B,T,H,Dh], k, v [B,T,K,Dh] (normed + rotated) in the compute dtype."""
  dt = _dtype(cfg.dtype)
  h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
  q, k, v = (_mm("btd,dhk->bthk", h, p[w], dt) for w in ("wq", "wk", "wv"))
  if cfg.qkv_bias:
    q, k, v = q + p["bq"].astype(dt), k + p["bk"].astype(dt), v + p["bv"].astype(dt)
  if cfg.qk_norm:
    q, k = rms_norm(q, p["q_norm"], cfg.rms_norm_eps), rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
  return apply_rope(q, cos, sin).astype(dt), apply_rope(k, cos, sin).astype(dt), v.astype(dt)


def _attend(cfg, q, k, v, mask):
  """q [B,T,H,Dh], k/v [B,S,K,Dh], mask bool [B,T,S] -> f32 [B,T,H,Dh]. GQA without repeating K/V."""
  B, T, H, Dh = q.shape
  K = k.shape[2]
  q = q.reshape(B, T, K, H // K, Dh)
  s = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) / math.sqrt(Dh)
  s = jnp.where(mask[:, None, None], s, _NEG)
  w = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  return jnp.einsum("bkgts,bskd->btkgd", w, v, preferred_element_type=jnp.float32).reshape(B, T, H, Dh)


# Causal self-attention at long T: blockwise with an online softmax (flash attention), so no
# [B,H,T,T] scores exist, forward or backward. Used by `hidden_states` when T >= _FLASH_MIN_T.
_FLASH_MIN_T = 1024
_FLASH_BLOCK = 256


def _flash_blocks(q, k, v, kv_valid, block):
  """Pads T to a multiple of `block` and splits it: q [B,T,H,Dh] -> [n,B,K,G,c,Dh]; k/v [B,T,K,Dh] ->
  [n,B,K,c,Dh]; kv_valid bool [B,T] -> [n,B,c]."""
  B, T, H, Dh = q.shape
  K = k.shape[2]
  n = -(-T // block)
  pad = lambda a: jnp.pad(a, [(0, 0), (0, n * block - T)] + [(0, 0)] * (a.ndim - 2))
  qb = pad(q).reshape(B, n, block, K, H // K, Dh).transpose(1, 0, 3, 4, 2, 5)
  kb = pad(k).reshape(B, n, block, K, Dh).transpose(1, 0, 3, 2, 4)
  vb = pad(v).reshape(B, n, block, K, Dh).transpose(1, 0, 3, 2, 4)
  mb = pad(kv_valid).reshape(B, n, block).transpose(1, 0, 2)
  return qb, kb, vb, mb


def _flash_scores(qi, kj, mj, i, j, block, scale):
  """Scores of query block i vs key block j: qi [B,K,G,c,Dh], kj [B,K,c,Dh], mj bool [B,c] ->
  f32 [B,K,G,c,c] (masked: _NEG; key index > query index or key not valid)."""
  s = jnp.einsum("bkgqd,bkcd->bkgqc", qi, kj, preferred_element_type=jnp.float32) * scale
  causal = (j * block + jnp.arange(block))[None, :] <= (i * block + jnp.arange(block))[:, None]
  return jnp.where(causal[None, None, None] & mj[:, None, None, None, :], s, _NEG)


def _flash_fwd_blocks(qb, kb, vb, mb, block, scale):
  """-> out f32 [n,B,K,G,c,Dh], lse f32 [n,B,K,G,c]. Query block i visits key blocks 0..i only."""
  def q_block(args):
    i, qi = args

    def kv_step(j, acc):
      m, l, o = acc
      s = _flash_scores(qi, kb[j], mb[j], i, j, block, scale)
      m_new = jnp.maximum(m, s.max(-1))
      corr = jnp.exp(m - m_new)
      p = jnp.exp(s - m_new[..., None])
      pv = jnp.einsum("bkgqc,bkcd->bkgqd", p.astype(vb.dtype), vb[j], preferred_element_type=jnp.float32)
      return m_new, l * corr + p.sum(-1), o * corr[..., None] + pv

    shp = qi.shape[:-1]
    m0 = jnp.full(shp, _NEG, jnp.float32)
    m, l, o = jax.lax.fori_loop(0, i + 1, kv_step, (m0, jnp.zeros(shp, jnp.float32),
                                                      jnp.zeros(qi.shape, jnp.float32)))
    return o / l[..., None], m + jnp.log(l)

  return jax.lax.map(q_block, (jnp.arange(qb.shape[0]), qb))


@jax.custom_vjp
def _flash_core(q, k, v, kv_valid):
  return _flash_fwd(q, k, v, kv_valid)[0]


def _flash_fwd(q, k, v, kv_valid):
  B, T, H, Dh = q.shape
  block = min(_FLASH_BLOCK, T)
  qb, kb, vb, mb = _flash_blocks(q, k, v, kv_valid, block)
  ob, lse = _flash_fwd_blocks(qb, kb, vb, mb, block, 1.0 / math.sqrt(Dh))
  n = qb.shape[0]
  out = ob.transpose(1, 0, 4, 2, 3, 5).reshape(B, n * block, H, Dh)[:, :T]
  return out, (q, k, v, kv_valid, out, lse)


def _flash_bwd(res, g):
  """Recomputes the block probabilities: dq by query block (key blocks <= i), dk/dv by key block
  (query blocks >= j). Nothing [T,T] is stored."""
  q, k, v, kv_valid, out, lse = res
  B, T, H, Dh = q.shape
  block = min(_FLASH_BLOCK, T)
  scale = 1.0 / math.sqrt(Dh)
  qb, kb, vb, mb = _flash_blocks(q, k, v, kv_valid, block)
  gb, ob = (_flash_blocks(a, k, v, kv_valid, block)[0] for a in (g.astype(jnp.float32), out))
  n = qb.shape[0]
  delta = jnp.sum(gb * ob, -1)  # [n,B,K,G,c]

  def probs(i, j):
    s = _flash_scores(qb[i], kb[j], mb[j], i, j, block, scale)
    return jnp.exp(s - lse[i][..., None])  # [B,K,G,c,c]

  def dscores(i, j):
    p = probs(i, j)
    dp = jnp.einsum("bkgqd,bkcd->bkgqc", gb[i], vb[j].astype(jnp.float32))
    return p, p * (dp - delta[i][..., None])

  def dq_block(i):
    def step(j, dq):
      _, ds = dscores(i, j)
      return dq + jnp.einsum("bkgqc,bkcd->bkgqd", ds, kb[j].astype(jnp.float32)) * scale
    return jax.lax.fori_loop(0, i + 1, step, jnp.zeros(qb.shape[1:], jnp.float32))

  def dkv_block(j):
    def step(i, acc):
      dk, dv = acc
      p, ds = dscores(i, j)
      dv = dv + jnp.einsum("bkgqc,bkgqd->bkcd", p.astype(vb.dtype).astype(jnp.float32), gb[i])
      dk = dk + jnp.einsum("bkgqc,bkgqd->bkcd", ds, qb[i].astype(jnp.float32)) * scale
      return dk, dv
    z = jnp.zeros(kb.shape[1:], jnp.float32)
    return jax.lax.fori_loop(j, n, step, (z, z))

  dqb = jax.lax.map(dq_block, jnp.arange(n))
  dkb, dvb = jax.lax.map(dkv_block, jnp.arange(n))
  K = k.shape[2]
  dq = dqb.transpose(1, 0, 4, 2, 3, 5).reshape(B, n * block, H, Dh)[:, :T]
  dk, dv = (a.transpose(1, 0, 3, 2, 4).reshape(B, n * block, K, Dh)[:, :T] for a in (dkb, dvb))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_flash_core.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, kv_valid):
  """Causal self-attention without [T,T] buffers. q [B,T,H,Dh], k/v [B,T,K,Dh] (compute dtype),
  kv_valid bool [B,T] (key t may be attended) -> f32 [B,T,H,Dh].

  Same as `_attend` with mask = causal & kv_valid[:, None, :] (same operand roundings: scores and
  softmax in f32, weights rounded to v's dtype before the value matmul) at every query that has at
  least one valid key; a query with none (left padding) gets an unspecified finite output. Blocks
  of _FLASH_BLOCK queries x keys, online softmax, key blocks after the query block skipped; the
  backward pass (custom VJP) recomputes the block probabilities from the saved log-sum-exp.
  """
  return _flash_core(q, k, v, kv_valid.astype(bool))


def _attend2(q, ks, vs, mask):
  """Attention over two key/value blocks without concatenating them (cache + new tokens).

  q [B,T,H,Dh]; ks, vs: tuples of [B,S_i,K,Dh]; mask bool [B,T,sum S_i] -> f32 [B,T,H,Dh].
  """
  B, T, H, Dh = q.shape
  K = ks[0].shape[2]
  q = q.reshape(B, T, K, H // K, Dh)
  s = jnp.concatenate([jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) for k in ks], -1)
  s = jnp.where(mask[:, None, None], s / math.sqrt(Dh), _NEG)
  w = jax.nn.softmax(s, axis=-1).astype(vs[0].dtype)
  out, off = 0, 0
  for v in vs:
    out = out + jnp.einsum("bkgts,bskd->btkgd", w[..., off:off + v.shape[1]], v, preferred_element_type=jnp.float32)
    off += v.shape[1]
  return out.reshape(B, T, H, Dh)


def _group_attend(q, pk, pv, pvalid, rk, rv, resp_ok):
  """Decode attention of B = P*G rows over their prompt (shared by the G rows of a prompt) and
  their own response slots.

  q [B,H,Dh] (compute dtype), pk/pv [P,K,S,Dh], pvalid bool [P,S], rk [B,K,Dh,N], rv [B,K,N,Dh],
  resp_ok bool [N] -> f32 [B,H,Dh]. The softmax runs over the S + N slots together (two blocks,
  never concatenated); its weights are rounded to q's dtype before the value matmul, as in `_attend`.
  """
  P, K, S, Dh = pk.shape
  B, H = q.shape[:2]
  G, Hg = B // P, H // K
  f32 = jnp.float32
  sdt = pk.dtype
  qr = q.astype(sdt).reshape(B, K, Hg, Dh)
  s_p = jnp.einsum("pgkhd,pksd->pgkhs", qr.reshape(P, G, K, Hg, Dh), pk, preferred_element_type=f32)
  s_p = jnp.where(pvalid[:, None, None, None, :], s_p / math.sqrt(Dh), _NEG).reshape(B, K, Hg, S)
  s_r = jnp.einsum("bkhd,bkdn->bkhn", qr, rk, preferred_element_type=f32)
  s_r = jnp.where(resp_ok, s_r / math.sqrt(Dh), _NEG)
  m = jnp.maximum(s_p.max(-1, keepdims=True), s_r.max(-1, keepdims=True))
  e_p, e_r = jnp.exp(s_p - m), jnp.exp(s_r - m)
  den = e_p.sum(-1, keepdims=True) + e_r.sum(-1, keepdims=True)
  w = lambda e: (e / den).astype(q.dtype).astype(sdt)
  o_p = jnp.einsum("pgkhs,pksd->pgkhd", w(e_p).reshape(P, G, K, Hg, S), pv, preferred_element_type=f32)
  o_r = jnp.einsum("bkhn,bknd->bkhd", w(e_r), rv, preferred_element_type=f32)
  return (o_p.reshape(B, K, Hg, Dh) + o_r).reshape(B, H, Dh)


def _finish(cfg, p, x, o):
  """Attention output projection + residual + MLP + residual. x f32 [B,T,D], o [B,T,H,Dh] -> f32 [B,T,D]."""
  dt = _dtype(cfg.dtype)
  a = _mm("bthk,hkd->btd", o, p["wo"], dt)
  if cfg.o_bias:
    a = a + p["bo"].astype(dt)
  x = x + a
  h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
  g = _mm("btd,df->btf", h, p["w_gate"], dt)
  u = _mm("btd,df->btf", h, p["w_up"], dt)
  return x + _mm("btf,fd->btd", jax.nn.silu(g) * u, p["w_down"], dt)


# What a layer keeps for the backward pass without cfg.remat: the outputs of its weight matmuls (q/k/v/o, gate,
# up, down); the elementwise ops (norms, RoPE, SiLU, products) and the attention (scores, softmax) are
# recomputed from them. Letting XLA keep everything stored ~6 [B,T,F] f32 MLP intermediates per layer
# (1.1 GB of the 4.6 GB of temporaries of the SmolLM2-135M update at 16 rows x 127 tokens) for a recompute
# of a few % of the layer's FLOPs. No effect outside differentiation.
_SAVE_DOTS = jax.checkpoint_policies.dots_with_no_batch_dims_saveable


def _layer_full(cfg, p, x, cos, sin, mask, kv_valid=None):
  """mask bool [B,T,T] -> `_attend`; or mask None and kv_valid bool [B,T] -> causal `flash_attention`."""
  q, k, v = _qkv(cfg, p, x, cos, sin)
  o = _attend(cfg, q, k, v, mask) if mask is not None else flash_attention(q, k, v, kv_valid)
  return _finish(cfg, p, x, o)


def param_shapes(cfg: DecoderConfig) -> dict[str, tuple]:
  """Per-layer parameter name -> shape (without the leading L axis)."""
  D, H, K, Dh, F = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
  s = {"attn_norm": (D,), "wq": (D, H, Dh), "wk": (D, K, Dh), "wv": (D, K, Dh), "wo": (H, Dh, D),
       "mlp_norm": (D,), "w_gate": (D, F), "w_up": (D, F), "w_down": (F, D)}
  if cfg.qkv_bias:
    s.update(bq=(H, Dh), bk=(K, Dh), bv=(K, Dh))
  if cfg.o_bias:
    s.update(bo=(D,))
  if cfg.qk_norm:
    s.update(q_norm=(Dh,), k_norm=(Dh,))
  return s


class Layers(nnx.Module):
  """The L decoder layers' parameters, stacked on a leading axis L."""

  def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
    pdt = _dtype(cfg.param_dtype)
    for name, shape in param_shapes(cfg).items():
      full = (cfg.num_layers, *shape)
      if "norm" in name:
        val = jnp.ones(full, pdt)
      elif name.startswith("b"):
        val = jnp.zeros(full, pdt)
      else:
        val = 0.02 * jax.random.normal(rngs.params(), full, jnp.float32)
      setattr(self, name, nnx.Param(val.astype(pdt)))
    self._names = tuple(param_shapes(cfg))

  def values(self) -> dict:
    return {n: getattr(self, n)[...] for n in self._names}


class Decoder(nnx.Module):
  """Decoder-only LM. See module docstring for the interface."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pdt = _dtype(cfg.param_dtype)
    self.embed = nnx.Param((0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size))).astype(pdt))
    self.layers = Layers(cfg, rngs)
    self.final_norm = nnx.Param(jnp.ones((cfg.hidden_size,), pdt))
    if not cfg.tie_embeddings:
      self.lm_head = nnx.Param(
          (0.02 * jax.random.normal(rngs.params(), (cfg.hidden_size, cfg.vocab_size))).astype(pdt))

  # -- pieces
  def _unembed_matrix(self):
    """-> [D,V] in compute dtype."""
    w = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
    return w.astype(_dtype(self.cfg.dtype))

  def _logits(self, h, w=None):
    """h f32 [..., D] (final-normed), w: the [D,V] unembedding if already at hand -> logits f32 [..., V]."""
    w = self._unembed_matrix() if w is None else w
    return jnp.einsum("...d,dv->...v", h.astype(w.dtype), w, preferred_element_type=jnp.float32)

  def _embed(self, tokens):
    """-> f32 [..., D]: the residual stream is f32 (only matmul operands use the compute dtype)."""
    return jnp.take(self.embed[...], tokens, axis=0).astype(_dtype(self.cfg.dtype)).astype(jnp.float32)

  @staticmethod
  def _defaults(tokens, positions, attention_mask):
    if attention_mask is None:
      attention_mask = jnp.ones(tokens.shape, bool)
    attention_mask = attention_mask.astype(bool)
    if positions is None:
      positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
    return positions.astype(jnp.int32), attention_mask

  def hidden_states(self, tokens, positions=None, attention_mask=None):
    """tokens int [B,T] -> final-normed hidden states f32 [B,T,D]. T >= _FLASH_MIN_T uses the
    blockwise `flash_attention` (no [T,T] scores); positions whose query has no valid key (left
    padding) are then unspecified, as they are meaningless either way."""
    cfg = self.cfg
    positions, attention_mask = self._defaults(tokens, positions, attention_mask)
    T = tokens.shape[1]
    if T >= _FLASH_MIN_T:  # blockwise: no [B,H,T,T] scores
      mask = None
    else:
      mask = jnp.tril(jnp.ones((T, T), bool))[None] & attention_mask[:, None, :]  # [B,T,S=T]
    cos, sin = rope_cos_sin(cfg, positions)

    def body(x, p):
      return _layer_full(cfg, p, split_rows(x), cos, sin, mask, attention_mask), None

    body = jax.checkpoint(body, policy=None if cfg.remat else _SAVE_DOTS)
    x, _ = jax.lax.scan(body, self._embed(tokens), self.layers.values())
    return split_rows(rms_norm(x, self.final_norm[...], cfg.rms_norm_eps))

  def __call__(self, tokens, positions=None, attention_mask=None):
    """tokens int32 [B,T] -> logits f32 [B,T,V]."""
    h = self.hidden_states(tokens, positions, attention_mask)
    return self._logits(h)

  # -- inference
  def init_cache(self, batch: int, max_len: int) -> dict:
    """-> {k, v: [L,B,S,K,Dh] compute dtype, valid: bool [B,S], index: int32 scalar}."""
    cfg = self.cfg
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    dt = _dtype(cfg.dtype)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt),
            "valid": jnp.zeros((batch, max_len), bool), "index": jnp.zeros((), jnp.int32)}

  def step(self, tokens, positions, cache, attention_mask=None):
    """Writes T new tokens at cache slots [index, index+T) and returns their logits.

    tokens int [B,T], positions int [B,T] (None: index + arange(T)), attention_mask bool [B,T]
    -> (logits f32 [B,T,V], new cache). Query at slot index+t attends slots s <= index+t
    with valid[b, s].
    """
    cfg = self.cfg
    B, T = tokens.shape
    index = cache["index"]
    if attention_mask is None:
      attention_mask = jnp.ones((B, T), bool)
    if positions is None:
      positions = jnp.broadcast_to(index + jnp.arange(T, dtype=jnp.int32), (B, T))
    attention_mask = attention_mask.astype(bool)
    S = cache["valid"].shape[1]
    # Old slots s < index (valid ones) + the T new tokens (causal among themselves). The new K/V
    # are attended directly and written into the cache once, after the layer scan, so the
    # [L,B,S,K,Dh] cache is only read inside the loop (never copied).
    mask_old = jnp.broadcast_to(((jnp.arange(S) < index)[None, :] & cache["valid"])[:, None, :], (B, T, S))
    mask_new = jnp.tril(jnp.ones((T, T), bool))[None] & attention_mask[:, None, :]
    mask = jnp.concatenate([mask_old, mask_new], axis=-1)  # [B,T,S+T]
    cos, sin = rope_cos_sin(cfg, positions.astype(jnp.int32))

    def body(x, xs):
      p, kc, vc = xs  # kc, vc [B,S,K,Dh]: this layer's cache
      q, k, v = _qkv(cfg, p, x, cos, sin)
      k, v = k.astype(kc.dtype), v.astype(vc.dtype)
      o = _attend2(q, (kc, k), (vc, v), mask)
      return _finish(cfg, p, x, o), (k, v)

    x, (k_new, v_new) = jax.lax.scan(body, self._embed(tokens), (self.layers.values(), cache["k"], cache["v"]))
    kc = jax.lax.dynamic_update_slice(cache["k"], k_new, (0, 0, index, 0, 0))
    vc = jax.lax.dynamic_update_slice(cache["v"], v_new, (0, 0, index, 0, 0))
    valid = jax.lax.dynamic_update_slice(cache["valid"], attention_mask, (0, index))
    logits = self._logits(rms_norm(x, self.final_norm[...], cfg.rms_norm_eps))
    return logits, {"k": kc, "v": vc, "valid": valid, "index": index + T}

  # -- group decoding (the sampler's inner loop)
  def group_decode_init(self, prompt_cache: dict, group_size: int, max_new: int) -> tuple[dict, dict]:
    """Prompt cache of P prompts (from `step`) -> (shared, resp), the state of `group_step`,
    which decodes G = group_size rows per prompt (row i*G+j = sample j of prompt i).

    shared (read-only while decoding):
      layers: L per-layer parameter dicts, sliced out of the stacked weights ONCE here (and the
        matmul weights cast to the compute dtype), so the decode loop never slices them: on
        XLA:CPU a per-step slice of the stacked weights is a copy of all of them;
      pk, pv: L x [P,K,S,Dh] prompt keys/values, kept once per prompt (not G times);
      valid: bool [P,S] (prompt slots holding a real token).
    resp (updated every step): rk: L x [B,K,Dh,N] response keys (stored transposed, so the score
      matmul needs no transpose), rv: L x [B,K,N,Dh] response values, B = P*G, N = max_new.
    Storage dtype: cfg.cache_dtype if set, else the compute dtype, except f32 when the default
    backend is the CPU, where XLA turns an in-place update of a bf16 cache into a full copy; the
    values are rounded to the compute dtype either way.
    """
    cfg = self.cfg
    dt = _dtype(cfg.dtype)
    sdt = _dtype(cfg.cache_dtype) if cfg.cache_dtype else (jnp.float32 if jax.default_backend() == "cpu" else dt)
    P = prompt_cache["valid"].shape[0]
    B, K, Dh, L = P * group_size, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
    stacked = self.layers.values()
    layers = [{n: (a[l] if "norm" in n else a[l].astype(dt)) for n, a in stacked.items()} for l in range(L)]
    head_major = lambda c: [c[l].swapaxes(1, 2).astype(sdt) for l in range(L)]  # [P,S,K,Dh] -> [P,K,S,Dh]
    shared = {"layers": layers, "pk": head_major(prompt_cache["k"]), "pv": head_major(prompt_cache["v"]),
              "valid": prompt_cache["valid"], "unembed": self._unembed_matrix()}
    resp = {"rk": [jnp.zeros((B, K, Dh, max_new), sdt) for _ in range(L)],
            "rv": [jnp.zeros((B, K, max_new, Dh), sdt) for _ in range(L)]}
    return shared, resp

  def group_step(self, tokens, positions, t, shared: dict, resp: dict):
    """One decode step of B = P*G rows. tokens, positions int [B] (the tokens going into response
    slot t), t int32 scalar, (shared, resp) from `group_decode_init` -> (logits f32 [B,V], resp).

    Same math as `step` on a cache holding the prompt and then the response: each query attends
    the valid slots of its own prompt and response slots <= t. The prompt keys/values are read
    once per group and multiplied by its G*H/K queries together. The layers are unrolled (a
    Python loop): a `lax.scan` would slice the stacked weights and caches every step.
    Under a mesh context (`jax.sharding.use_abstract_mesh`) the residual stream and the logits are
    constrained to the batch axes (`split_rows`): with the layers' weights gathered (replicated over the
    batch axes) each chip then decodes only its own rows and no activation crosses chips.
    """
    cfg = self.cfg
    cos, sin = rope_cos_sin(cfg, positions[:, None].astype(jnp.int32))
    resp_ok = jnp.arange(resp["rv"][0].shape[2]) <= t
    x = self._embed(tokens[:, None])  # [B,1,D] f32
    rk, rv = list(resp["rk"]), list(resp["rv"])
    for l, p in enumerate(shared["layers"]):
      x = split_rows(x)   # under a mesh context (the sampler's gathered-weights decode): the chip's own rows
      q, k, v = _qkv(cfg, p, x, cos, sin)  # [B,1,H|K,Dh]
      rk[l] = jax.lax.dynamic_update_slice(rk[l], k[:, 0, :, :, None].astype(rk[l].dtype), (0, 0, 0, t))
      rv[l] = jax.lax.dynamic_update_slice(rv[l], v[:, 0, :, None, :].astype(rv[l].dtype), (0, 0, t, 0))
      o = _group_attend(q[:, 0], shared["pk"][l], shared["pv"][l], shared["valid"], rk[l], rv[l], resp_ok)
      x = _finish(cfg, p, x, o[:, None])
    logits = self._logits(split_rows(rms_norm(x[:, 0], self.final_norm[...], cfg.rms_norm_eps)), shared["unembed"])
    return split_rows(logits), {"rk": rk, "rv": rv}

  # -- training
  def token_logprobs(self, inputs, targets, positions=None, attention_mask=None, chunk_size: int = 128,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, start: int = 0):
    """log p(targets[b,t] | inputs[b,:t+1]) under the *sampling* distribution, and the raw model entropy.

    inputs, targets int [B,T] -> (logp f32 [B,T-start], entropy f32 [B,T-start]) (positions start..T-1).
    start: static; the layers run over all T inputs, the unembedding / log-softmax / entropy only over
      positions >= start (the RL trainer scores only the response: start = prompt width - 1).

    logp: log-probs under the distribution the sampler draws from with the same settings
      (`models.warping.warp_logits`: logits / temperature, then the top-k and top-p masks,
      recomputed here from this forward's logits). temperature=1, top_k=0, top_p=1 is the raw
      model; temperature=0 (greedy) also gives the raw model log-probs, as the sampler records.
      The target token is always kept in the masks: when this forward's logits differ from the
      sampler's by float noise, a token at the top-p / top-k boundary can fall on the other side;
      the sampled token then still has a finite log-prob (see `models.warping` for why the masks
      are recomputed and what a boundary flip costs). Tokens the sampler never drew (e.g. injected
      solutions) are scored the same way, with a finite log-prob.
    entropy: of the raw model distribution (temperature 1, no truncation), what the trainer logs.

    The unembedding, log-softmax and entropy run over chunks of `chunk_size` time steps under a
    rematerialised `lax.map`, so at most one [B,chunk,V] f32 block exists at a time (also in the
    backward pass). temperature, top_k, top_p are static Python numbers.
    """
    h = self.hidden_states(inputs, positions, attention_mask)[:, start:]  # [B,T-start,D]
    return self.head_logprobs(h, targets[:, start:], chunk_size, temperature, top_k, top_p)

  def shared_prompt_logprobs(self, prompt, prompt_mask, prompt_idx, tokens, mask, chunk_size: int = 128,
                             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """`token_logprobs` of B responses whose prompts are stored once: row b is prompt[prompt_idx[b]] followed by
    tokens[b] (several rows may share a prompt, e.g. the G samples of a group).

    prompt int [U,L], prompt_mask bool [U,L] (LEFT-padded: the last column is a real token), prompt_idx int [B]
    in [0,U), tokens int [B,T], mask bool [B,T] (valid response tokens) -> (logp f32 [B,T], entropy f32 [B,T]):
    the log-prob of tokens[b,t] given prompt + tokens[b,:t], as `token_logprobs(concat(prompt, tokens)[:, :-1],
    concat(...)[:, 1:], attention_mask=concat(masks)[:, :-1], start=L-1)` on the row-expanded batch.

    Causal attention makes a prompt's hidden states, keys and values independent of the response, so the
    layers run over the U prompt rows [U,L] and the B response rows [B,T-1] (inputs tokens[:, :-1]); response
    queries attend to their prompt's keys/values (gathered per row) and their own earlier response keys. The
    gradient reaches each prompt's computation from all its rows (the gather's transpose adds them up).
    The LM head runs only where a response token is predicted: the prompt's last position and the T-1
    response inputs. Attention is the plain [T,S] form (no blockwise flash path: for long sequences use
    `token_logprobs`).
    """
    cfg = self.cfg
    B, T = tokens.shape
    prompt_mask, mask = prompt_mask.astype(bool), mask.astype(bool)
    pos_p, _ = self._defaults(prompt, None, prompt_mask)                      # [U,L]
    plen = prompt_mask.sum(-1).astype(jnp.int32)[prompt_idx]                  # [B]
    r_in, r_m = tokens[:, :-1], mask[:, :-1]                                  # [B,T-1]
    pos_r = jnp.maximum(plen[:, None] + jnp.cumsum(r_m, axis=-1, dtype=jnp.int32) - 1, 0)
    L, R = prompt.shape[1], T - 1
    mask_p = jnp.tril(jnp.ones((L, L), bool))[None] & prompt_mask[:, None, :]               # [U,L,L]
    mask_r = jnp.concatenate([jnp.broadcast_to(prompt_mask[prompt_idx][:, None, :], (B, R, L)),
                              jnp.tril(jnp.ones((R, R), bool))[None] & r_m[:, None, :]], -1)  # [B,R,L+R]
    cs_p, cs_r = rope_cos_sin(cfg, pos_p), rope_cos_sin(cfg, pos_r)

    def body(xs, p):
      xp, xr = xs
      qp, kp, vp = _qkv(cfg, p, xp, *cs_p)
      qr, kr, vr = _qkv(cfg, p, xr, *cs_r)
      op = _attend(cfg, qp, kp, vp, mask_p)
      o_r = _attend2(qr, (kp[prompt_idx], kr), (vp[prompt_idx], vr), mask_r)
      return (_finish(cfg, p, xp, op), _finish(cfg, p, xr, o_r)), None

    body = jax.checkpoint(body, policy=None if cfg.remat else _SAVE_DOTS)
    (xp, xr), _ = jax.lax.scan(body, (self._embed(prompt), self._embed(r_in)), self.layers.values())
    h = jnp.concatenate([xp[:, -1][prompt_idx][:, None], xr], axis=1)         # [B,T,D]
    h = rms_norm(h, self.final_norm[...], cfg.rms_norm_eps)
    return self.head_logprobs(h, tokens, chunk_size, temperature, top_k, top_p)

  def packed_prompt_logprobs(self, prompt, prompt_mask, prompt_idx, tokens, mask, pack, chunk_size: int = 128,
                             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """`shared_prompt_logprobs` with the responses PACKED: several responses of one prompt share a packed row,
    so the padding after short responses is not run through the layers.

    prompt int [U,L], prompt_mask bool [U,L] (left-padded), prompt_idx int [B], tokens int [B,T], mask bool [B,T]
    as in `shared_prompt_logprobs`. pack (`pack_responses` builds it) places response b's inputs tokens[b, :n_b-1]
    (n_b = its last valid position + 1) at packed row pack["row"][b], columns pack["off"][b] .. + n_b - 2:
      tok int [R,W]   the packed input tokens          tgt int [R,W]  the token each position predicts
      seg int [R,W]   the response (b) of a position, -1 for unused columns
      pos int [R,W]   its absolute position (prompt length + index among the response's valid tokens - 1)
      ok bool [R,W]   the input token is a valid response token (a key others may attend to)
      prompt int [R]  the prompt of the packed row (all its responses share it)
      row, off int [B]
    -> (logp f32 [B,T], entropy f32 [B,T]): position 0 from the prompt's last hidden state, positions t >= 1
    from packed column off[b] + t - 1; equal to `shared_prompt_logprobs` within float tolerance where mask is
    True (0 after a response's last valid token). A packed query attends to its prompt and to the earlier valid
    positions of its own segment only, so packing changes no log-prob.
    """
    cfg = self.cfg
    B, T = tokens.shape
    prompt_mask, mask = prompt_mask.astype(bool), mask.astype(bool)
    R, W = pack["tok"].shape
    pos_p, _ = self._defaults(prompt, None, prompt_mask)                      # [U,L]
    L = prompt.shape[1]
    seg = pack["seg"]
    mask_p = jnp.tril(jnp.ones((L, L), bool))[None] & prompt_mask[:, None, :]                  # [U,L,L]
    own = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0) & pack["ok"][:, None, :]
    mask_r = jnp.concatenate([jnp.broadcast_to(prompt_mask[pack["prompt"]][:, None, :], (R, W, L)),
                              own & jnp.tril(jnp.ones((W, W), bool))[None]], -1)               # [R,W,L+W]
    cs_p, cs_r = rope_cos_sin(cfg, pos_p), rope_cos_sin(cfg, pack["pos"])

    def body(xs, p):
      xp, xr = xs
      qp, kp, vp = _qkv(cfg, p, xp, *cs_p)
      qr, kr, vr = _qkv(cfg, p, xr, *cs_r)
      op = _attend(cfg, qp, kp, vp, mask_p)
      o_r = _attend2(qr, (kp[pack["prompt"]], kr), (vp[pack["prompt"]], vr), mask_r)
      return (_finish(cfg, p, xp, op), _finish(cfg, p, xr, o_r)), None

    body = jax.checkpoint(body, policy=None if cfg.remat else _SAVE_DOTS)
    (xp, xr), _ = jax.lax.scan(body, (self._embed(prompt), self._embed(pack["tok"])), self.layers.values())
    norm = lambda h: rms_norm(h, self.final_norm[...], cfg.rms_norm_eps)
    lp0, ent0 = self.head_logprobs(norm(xp[:, -1][prompt_idx][:, None]), tokens[:, :1], chunk_size,
                                   temperature, top_k, top_p)                 # [B,1]
    lpp, entp = self.head_logprobs(norm(xr), pack["tgt"], chunk_size, temperature, top_k, top_p)   # [R,W]
    cols = jnp.clip(pack["off"][:, None] + jnp.arange(T - 1)[None], 0, W - 1)                     # [B,T-1]
    inside = jnp.arange(1, T)[None] <= jnp.max(jnp.where(mask, jnp.arange(T)[None], 0), axis=1)[:, None]
    un = lambda a: jnp.where(inside, a[pack["row"][:, None], cols], 0.0)
    return jnp.concatenate([lp0, un(lpp)], 1), jnp.concatenate([ent0, un(entp)], 1)

  def head_logprobs(self, h, targets, chunk_size: int = 128, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0):
    """The unembedding, log-softmax and entropy of `token_logprobs` from final-normed hidden states:
    h f32 [B,T,D], targets int [B,T] -> (logp f32 [B,T], entropy f32 [B,T])."""
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
      raise ValueError(f"token_logprobs: need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got "
                       f"temperature={temperature}, top_k={top_k}, top_p={top_p}")
    raw = temperature == 0.0 or (temperature == 1.0 and not top_k and top_p >= 1.0)
    w = self._unembed_matrix()
    B, T, D = h.shape
    c = max(1, min(chunk_size, T))
    n = -(-T // c)
    pad = n * c - T
    hp = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(B, n, c, D).swapaxes(0, 1)
    tp = jnp.pad(targets, ((0, 0), (0, pad))).reshape(B, n, c).swapaxes(0, 1)

    @jax.checkpoint
    def chunk(args):
      hc, tc = args
      hc, tc = split_rows(hc), split_rows(tc.astype(jnp.int32))
      logits = self._logits(hc, w)
      lse = jax.nn.logsumexp(logits, axis=-1)
      probs = jax.nn.softmax(logits, axis=-1)
      ent = lse - jnp.sum(probs * logits, axis=-1)
      if raw:
        tgt = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        return tgt - lse, ent
      keep = jnp.arange(logits.shape[-1]) == tc[..., None]
      x = warp_logits(logits, temperature, top_k, top_p, keep=keep)
      tgt = jnp.take_along_axis(x, tc[..., None], axis=-1)[..., 0]
      return tgt - jax.nn.logsumexp(x, axis=-1), ent

    logp, ent = jax.lax.map(chunk, (hp, tp))
    un = lambda a: a.swapaxes(0, 1).reshape(B, n * c)[:, :T]
    return un(logp), un(ent)
