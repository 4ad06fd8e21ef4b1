"""Plans a run on a TPU slice from this (CPU-only) machine: compiles the trainer's own update step, its
log-prob forward and the sampler's program for a TPU topology, and prints per-chip HBM use, whether it
fits, compile time and a roofline estimate of the step time, tokens/s per chip and MFU.

  python -m experiments.plan --model experiments/model_configs/qwen2.5-math-1.5b.json --topology v5e:2x4 \
      --config experiments/configs/paper/prorl_qwen2.5_math_1.5b.py [--config.key=value ...] [--json out.json]

Needs libtpu (`pip install 'libtpu==0.0.42.*'`, the version jax[tpu]==0.10.2 pins): XLA then compiles for
abstract TPU devices (`jax.experimental.topologies`) without a TPU; libtpu's warnings about missing TPU_*
environment variables are harmless. No weights are read: parameters are `jax.eval_shape` structs with the
trainer's shardings. Compiles take minutes for 7B models, so every phase's result is cached as JSON in
--cache_dir, keyed by (model, topology, config, prompt length); a rerun skips what is done.

Phases (jitted programs, compiled as the trainer would run them):
  sample  `sampling.generate`'s programs: the chunked sampler runs a prefill program, then decode chunks of
          `chunk_size` steps (one program per response-cache size, the cache grown and the running rows
          re-packed between chunks). Compiled here: the prefill and the LARGEST chunk (all P x G rows, the full
          N-slot response cache): the chunk that holds the most HBM, as when no row finishes early. The
          phase's HBM is the larger of the two programs' (both are in the result). The decode's weights are
          gathered or left FSDP-split as `sampling.generate` decides for config.rollout.gather_weights on this
          chip's HBM (`sampler_gather`); the collectives left inside the compiled decode loop are read from its
          HLO (`loop_collectives`) and their ICI time is added to the sample time.
  logp    the trainer's log-prob forward on one micro-batch (old policy; again for the reference with KL)
  update  the trainer's update on one minibatch (micro-batch scan, loss, grad, AdamW; params donated)
A step = 1 sample + ceil(rows/micro) x logp (x2 with a KL reference) + ppo_epochs x minibatches updates.

Estimates. `cost_analysis()` counts a loop body once (the layer scan, the micro-batch scan and the decode
loop are loops), so FLOPs and HBM bytes are counted analytically here (`analytic_*`, checked against
`cost_analysis()` on loop-free programs in tests/test_plan.py). Time = max(FLOPs / peak, bytes / HBM
bandwidth) per chip (a roofline: no overlap losses, no ICI time); decoding is assumed to run all N steps
with every row (no early finish, no compaction), step t attending the response slots of its chunk
(bucket(t + chunk_size)). Attention at T >= models.transformer._FLASH_MIN_T is the flash attention: the
key blocks after the query block are skipped (causal pairs only, block granularity) and its backward
recomputes the block probabilities (7 block matmuls against the plain backward's 4).
MFU = model FLOPs (6 x params x tokens + causal attention, no remat) / (time x peak). The sample phase adds the
decode loop's ICI time: the bytes each chip sends in the loop's collectives per step (compiled HLO; an all-reduce
as a ring, 2 (g-1)/g x its size) / the chip's ICI bandwidth, x N steps, serial with the rest (the all-reduces sit
between a layer's matmuls); no per-collective latency, so a lower bound.
"""
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")   # the host backend stays the CPU; TPUs are only compiled for
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # compile-only: several planners (and tests) at once

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from models import Decoder, DecoderConfig
from models import sharding
from models import transformer
from models.transformer import param_shapes
from rl import config as rl_config, trainer, update as rl_update
from sampling import sampler

VERSION = 6   # the cache files' key: bump when every phase's programs or formulas change (invalidates the cache)
# per phase: bump one when only that phase changes; a cached phase of another version is recompiled, the rest kept
# (sample 7: the decode's gathered weights, rollout.gather_weights, and its in-loop collectives' ICI time)
PHASE_VERSION = {"sample": 7, "logp": 6, "update": 6}
GIB = 1024 ** 3

# Per chip: HBM (GiB), peak dense bf16 FLOP/s, HBM bandwidth and inter-chip interconnect (ICI) bandwidth (bytes/s,
# all links together: v4 2400, v5e 1600, v5p 4800, v6e 3584 Gbit/s); Google Cloud TPU spec sheets.
CHIPS = {
    "v4": dict(hbm_gib=32, peak_flops=275e12, hbm_bw=1228e9, ici_bw=300e9),
    "v5e": dict(hbm_gib=16, peak_flops=197e12, hbm_bw=819e9, ici_bw=200e9),
    "v5p": dict(hbm_gib=95, peak_flops=459e12, hbm_bw=2765e9, ici_bw=600e9),
    "v6e": dict(hbm_gib=32, peak_flops=918e12, hbm_bw=1640e9, ici_bw=448e9),
}


# ============================================================================ adapters (the only coupling)
# The planner compiles the project's own functions; these functions are where it gets them, so a refactor of
# the trainer (rl.update) or the sampler (sampling.sampler) is followed here (and only here).

def trainer_model_config(hf: dict, mc) -> DecoderConfig:
  """config.json dict + config.model -> the DecoderConfig the trainer builds (rl.trainer.build_model)."""
  return DecoderConfig.from_hf(hf, dtype=mc.dtype, param_dtype=mc.param_dtype or None, remat=mc.remat)


def sampling_key(c):
  """(temperature, top_k, top_p): the sampler's distribution that the trainer's log-probs replay (Trainer)."""
  return float(c.rollout.temperature), int(c.rollout.top_k), float(c.rollout.top_p)


def trainer_update_fn(graphdef, c, params, mesh):
  """-> (jitted update(params, opt_state, mb, hp), optax tx, hp): exactly what rl.trainer.Trainer runs."""
  updates_per_step = c.train.ppo_epochs * c.train.minibatches
  tx, _ = rl_update.make_optimizer(c.optim, updates_per_step, c.total_steps)
  fn = rl_update.make_update_fn(graphdef, tx, rl_update.loss_static(c.loss), sampling_key(c), donate=True,
                                shardings=rl_update.state_shardings(tx, params, mesh))
  return fn, tx, rl_update.loss_hparams(c.loss)


def trainer_opt_state_shardings(tx, params, mesh):
  """-> the shardings rl.update.init_opt gives the optimizer state."""
  return rl_update.opt_state_shardings(tx, params, mesh)


def trainer_logp_fn(graphdef, c, mesh):
  """-> jitted (params, x) -> (logp, entropy): the trainer's old-policy / reference forward."""
  return rl_update.make_logp_fn(graphdef, sampling_key(c), mesh)


def update_batch(mesh, M, micro, prompt_len, N, use_ref):
  """Abstract minibatch of rl.update.run_epochs: arrays [M, micro, ...] sharded by rl.update.put(axis=1)."""
  sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding.batch_sharding(shape, mesh, 1))
  mb = dict(prompt=sds((M, micro, prompt_len), jnp.int32), prompt_mask=sds((M, micro, prompt_len), jnp.bool_),
            tokens=sds((M, micro, N), jnp.int32), mask=sds((M, micro, N), jnp.bool_),
            keep=sds((M, micro), jnp.bool_), adv=sds((M, micro), jnp.float32),
            logprobs=sds((M, micro, N), jnp.float32), old_logp=sds((M, micro, N), jnp.float32))
  if use_ref:
    mb["ref_logp"] = sds((M, micro, N), jnp.float32)
  return mb


def update_denoms(c, mesh):
  """The update's `denoms` argument as rl.update.run_epochs passes it: the whole minibatch's loss denominators
  (host_denominators, replicated scalars) when rows are skipped or columns trimmed, else None (computed inside)."""
  if not (c.train.skip_zero_adv_rows or c.train.trim_padding):
    return None
  d = rl_update.host_denominators(np.ones((1, 1), bool), c.loss.agg, 1)
  return {k: jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P())) for k in d}


def logp_batch(mesh, micro, prompt_len, N):
  """Abstract micro-batch of rl.update.forward (rl.update.put)."""
  sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding.batch_sharding(shape, mesh))
  return dict(prompt=sds((micro, prompt_len), jnp.int32), prompt_mask=sds((micro, prompt_len), jnp.bool_),
              tokens=sds((micro, N), jnp.int32), mask=sds((micro, N), jnp.bool_))


CHUNK = 128   # sampling.generate's default chunk_size, which rl.rollout uses
# sampler._chunk_jit (same function, static arguments and donation) with keep_unused=True: a chunk reads the
# per-layer weights that the prefill sliced out (`shared`), not the stacked params, and jit would drop those
# from its arguments; they stay in HBM while sampling, so they are counted here.
_chunk_keep_unused = jax.jit(sampler._chunk_core, static_argnames=(
    "graphdef", "n_steps", "greedy", "top_k", "use_top_p", "plain", "mesh", "gather"), donate_argnames=("resp",),
    keep_unused=True)


def sampler_shapes(prompts, group_size, prompt_len, max_new_tokens, n_dev):
  """sampling.generate's shape buckets: P prompts (padded to a multiple of the batch devices), L, N, B = P*G."""
  Pb = -(-sampler.bucket(prompts, 1) // n_dev) * n_dev
  return dict(P=Pb, L=sampler.bucket(prompt_len, 16), N=sampler.bucket(max_new_tokens, 16), B=Pb * group_size)


def sampler_gather(setting, cfg, params, mesh, chip, *, prompts, group_size, prompt_len, max_new_tokens):
  """config.rollout.gather_weights -> whether sampling.generate gathers the decode's weights on this topology
  (sampler.gather_weights_choice with the chip's HBM, which the abstract devices do not report)."""
  n_dev = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
  sh = sampler_shapes(prompts, group_size, prompt_len, max_new_tokens, n_dev)
  return sampler.gather_weights_choice(setting, cfg, params, mesh, prompts=sh["P"], prompt_len=sh["L"],
                                       rows=sh["B"], max_new=sh["N"], memory_bytes=chip["hbm_gib"] * GIB)


def sampler_programs(graphdef, params, mesh, *, prompts, group_size, prompt_len, max_new_tokens, temperature,
                     top_p, top_k, n_eos=2, chunk=CHUNK, gather=False):
  """-> ({"prefill": (jitted fn, args, kwargs), "chunk": a function of the compiled prefill -> (fn, args,
  kwargs)}, shapes) for the programs `sampling.generate` runs (shared prompt cache, chunked decoding) with
  abstract inputs: the prefill (sampler._prefill_jit, first response-cache size) and the largest decode chunk
  (sampler._chunk_jit over all B rows with the full N-slot response cache, its inputs sharded as the
  compiled prefill's outputs). Mirrors sampling.generate / sampler._decode_chunked's preparation. gather: the
  decode's weights gathered once in the prefill (`sampler_gather`)."""
  amesh = sampler._auto_mesh(mesh)
  n_dev = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
  shapes = sampler_shapes(prompts, group_size, prompt_len, max_new_tokens, n_dev)
  Pb, Lb, Nb, B = shapes["P"], shapes["L"], shapes["N"], shapes["B"]
  C = min(chunk, Nb)
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(amesh, a.sharding.spec)),
                       params)
  sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sampler._batch_spec(amesh, len(shape)))
  scalar = lambda dt: jax.ShapeDtypeStruct((), dt, sharding=NamedSharding(amesh, P()))
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), B))
  static = dict(greedy=temperature == 0, top_k=int(top_k), use_top_p=top_p < 1.0,
                plain=temperature == 1.0 and top_k == 0 and top_p >= 1.0)
  prefill = (sampler._prefill_jit, (graphdef, state, sds((Pb, Lb), jnp.int32), sds((Pb, Lb), jnp.bool_)),
             dict(group_size=group_size, n_slots=sampler._slots(0, C, Nb), mesh=amesh, gather=gather))

  def chunk_program(compiled_prefill):
    shared, resp, tok, pos = jax.tree.map(
        lambda o, s: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=s),
        jax.eval_shape(lambda *a: sampler._prefill_core(*a, **prefill[2]), *prefill[1]),
        compiled_prefill.output_shardings)
    grow = lambda a, axis: jax.ShapeDtypeStruct(a.shape[:axis] + (Nb,) + a.shape[axis + 1:], a.dtype,
                                                sharding=a.sharding)   # the last chunk's N-slot cache
    resp = {"rk": [grow(a, 3) for a in resp["rk"]], "rv": [grow(a, 2) for a in resp["rv"]]}
    carry = dict(t=scalar(jnp.int32), tok=tok, pos=pos, done=sds((B,), jnp.bool_), stopped=sds((B,), jnp.bool_))
    args = (graphdef, state, shared, resp, carry, sds(keys.shape, keys.dtype), scalar(jnp.int32),
            scalar(jnp.float32), scalar(jnp.float32), scalar(jnp.int32),
            jax.ShapeDtypeStruct((sampler.bucket(n_eos, 4),), jnp.int32, sharding=NamedSharding(amesh, P())))
    return _chunk_keep_unused, args, dict(n_steps=C, mesh=amesh, gather=gather, **static)

  return dict(prefill=prefill, chunk=chunk_program), dict(shapes, C=C)


# ============================================================================ abstract state

def topology_devices(name: str):
  """'v5e:2x4' -> list of abstract TPU devices (one per chip)."""
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
  except Exception as e:   # libtpu's errors are long C++ status strings
    raise ValueError(f"--topology {name!r}: libtpu cannot build it ({str(e).splitlines()[0][:200]})") from None


def chip_of(topology: str) -> dict:
  gen = topology.split(":")[0]
  if gen not in CHIPS:
    raise ValueError(f"--topology {topology!r}: generation {gen!r} not one of {sorted(CHIPS)}")
  return dict(CHIPS[gen], generation=gen)


def abstract_params(cfg: DecoderConfig, mesh):
  """-> (graphdef, params State of ShapeDtypeStructs sharded as models.sharding.shard_model places them)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  specs = sharding.param_partition_specs(cfg, mesh)
  pure = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, s)),
                      state.to_pure_dict(), specs)
  nnx.replace_by_pure_dict(state, pure)
  return graphdef, state


def abstract_opt_state(tx, params, mesh):
  """The trainer's optimizer state (Trainer._init_opt): moments sharded like the params, scalars replicated."""
  shardings = trainer_opt_state_shardings(tx, params, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      jax.eval_shape(tx.init, params), shardings)


# ============================================================================ analytic counts

def param_counts(cfg: DecoderConfig) -> dict:
  """-> {total, matmul (per token fwd FLOPs / 2, lm head included), layer_matmul}. Embedding lookups are not matmuls."""
  shapes = param_shapes(cfg)
  per_layer = sum(math.prod(s) for s in shapes.values())
  layer_mm = sum(math.prod(shapes[n]) for n in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"))
  D, V = cfg.hidden_size, cfg.vocab_size
  total = cfg.num_layers * per_layer + V * D + D + (0 if cfg.tie_embeddings else D * V)
  return dict(total=total, layer_matmul=layer_mm, matmul=cfg.num_layers * layer_mm + D * V)


def attention_pairs(T: int) -> dict:
  """Query-key pairs the full-sequence attention computes per row and head at T positions:
  {pairs, flash}. Below _FLASH_MIN_T, `_attend` scores all T x T (masked ones too); from it on,
  `flash_attention` visits key blocks 0..i for query block i (blocks of c = min(_FLASH_BLOCK, T), T padded
  to n x c): n (n + 1) / 2 x c^2 pairs, ~T^2 / 2."""
  if T < transformer._FLASH_MIN_T:
    return dict(pairs=T * T, flash=False)
  c = min(transformer._FLASH_BLOCK, T)
  n = -(-T // c)
  return dict(pairs=n * (n + 1) // 2 * c * c, flash=True)


def analytic_forward_flops(cfg, rows, t_new, s_keys):
  """FLOPs of a forward over rows x t_new tokens, each attending s_keys slots (as executed: masked slots are
  computed too): 2 x matmul params per token + QK^T and PV (4 x H x Dh per query-key pair per layer)."""
  pc = param_counts(cfg)
  return 2 * rows * t_new * pc["matmul"] + 4 * rows * t_new * s_keys * cfg.num_layers * cfg.num_heads * cfg.head_dim


def _bytes(name):
  return jnp.dtype(name).itemsize


def analytic_update(cfg, c, rows, micro, T, n_chips, tensor, scored=None):
  """One minibatch update: rows = minibatch size, T = prompt + response - 1 positions, scored = positions where
  the LM head runs (the response: `Decoder.token_logprobs(start=)`; default T). Per chip.

  FLOPs executed: matmuls x (3, or 4 with remat: the layer forward is recomputed in the backward), the
  log-prob chunks are rematerialised too. Attention (`attention_pairs`): the plain one costs 1 forward + 2
  (its backward: 4 matmuls) per computed pair (+1 with remat); the flash attention 1 forward + 3.5 (its
  backward recomputes the scores and dP in both the dq and the dk/dv pass: 7 block matmuls) (+1 with remat).
  Model FLOPs: 3 x forward with causal attention (half the pairs).
  HBM bytes (rough, see docs/scaling.md): weights read in the compute dtype per micro-batch and pass
  (gathered: full size / tensor), f32 gradient written per micro-batch, optimizer read/write of params,
  grads and 2 moments on the chip's shard, per-token activations (~24 B x elements of one layer's
  intermediates), the f32 score blocks per computed pair (16 B per forward pass; backward 22 B plain, 48 B
  flash: p, dp, ds in each of its two passes) and logits (44 B x V).
  """
  L, H, Dh, D, V, F, K = (cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.hidden_size, cfg.vocab_size,
                          cfg.intermediate_size, cfg.num_kv_heads)
  pc = param_counts(cfg)
  passes = 4 if cfg.remat else 3
  scored = T if scored is None else scored
  mm = 2 * rows * (T * (pc["matmul"] - D * V) + scored * D * V)
  ap = attention_pairs(T)
  attn = 4 * rows * ap["pairs"] * L * H * Dh            # one attention forward (QK^T and PV)
  fwd_passes = 2 if cfg.remat else 1
  flops = (passes * mm + (fwd_passes + (3.5 if ap["flash"] else 2)) * attn) / n_chips
  model = 3 * (2 * rows * T * pc["matmul"] + 4 * rows * T * (T / 2) * L * H * Dh)
  cb, pb = _bytes(cfg.dtype), _bytes(cfg.param_dtype)
  M = rows // micro
  weights = M * (passes - 1) * pc["total"] * cb / tensor + M * pc["total"] * 4 / tensor
  optim = pc["total"] * (4 * pb + 3 * pb + 4 * 2) / n_chips   # p, grad, m, v read; p, m, v written; accumulate
  elems = 2 * D + (H + 2 * K) * Dh + H * Dh + 3 * F + D
  acts = rows * T * L * 24 * elems / n_chips
  scores = rows * L * H * ap["pairs"] * (16 * fwd_passes + (48 if ap["flash"] else 22)) / n_chips
  logits = rows * T * 44 * V / n_chips
  return dict(flops=flops, model_flops=model / n_chips, bytes=weights + optim + acts + scores + logits,
              tokens=rows * (T + 1))


def analytic_logp(cfg, rows, T, n_chips, tensor, scored=None):
  """The log-prob forward of one micro-batch (per chip): weights once, activations, scores, logits."""
  L, H, Dh, D, V, F, K = (cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.hidden_size, cfg.vocab_size,
                          cfg.intermediate_size, cfg.num_kv_heads)
  pc = param_counts(cfg)
  pairs = attention_pairs(T)["pairs"]
  scored = T if scored is None else scored   # the LM head runs only over the response positions
  fwd = 2 * rows * (T * (pc["matmul"] - D * V) + scored * D * V) + 4 * rows * pairs * L * H * Dh
  model = 2 * rows * T * pc["matmul"] + 4 * rows * T * (T / 2) * L * H * Dh
  elems = 2 * D + (H + 2 * K) * Dh + H * Dh + 3 * F + D
  b = (pc["total"] * _bytes(cfg.dtype) / tensor + (rows * T * L * 6 * elems + rows * L * H * pairs * 16
                                                   + rows * T * 12 * V) / n_chips)
  return dict(flops=fwd / n_chips, model_flops=model / n_chips, bytes=b, tokens=rows * (T + 1))


def analytic_sample(cfg, shapes, n_chips, tensor, cache_bytes, gathered=True):
  """Prefill (P prompts x L) + N decode steps of B = P*G rows in chunks of C steps, per chip. Decode step t
  reads the weights (gathered: full size / tensor; else the chip's FSDP shard, 1 / n_chips, and the
  activations cross chips instead: the compiled program's collectives, `loop_collectives`), the prompt KV of
  the chip's prompts and the A(t) = bucket(chunk end) response slots of its rows (masked, not skipped, when
  unwritten), and writes one slot. Every row runs all N steps (no early finish, so no compaction): an upper
  bound."""
  Pn, Lb, Nb, B, C = shapes["P"], shapes["L"], shapes["N"], shapes["B"], shapes["C"]
  L, H, Dh, K, V = cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.num_kv_heads, cfg.vocab_size
  pc = param_counts(cfg)
  pre_flops = analytic_forward_flops(cfg, Pn, Lb - 1, 2 * (Lb - 1)) / n_chips   # _attend2: cache + new keys
  pre_bytes = pc["total"] * _bytes(cfg.dtype) / tensor + Pn * Lb * L * 2 * K * Dh * cache_bytes / n_chips
  slots = [sampler._slots(t0, C, Nb) for t0 in range(0, Nb, C) for _ in range(min(C, Nb - t0))]  # A(t)
  kv_slot = L * 2 * K * Dh * cache_bytes
  w_bytes = pc["total"] * _bytes(cfg.dtype) / (tensor if gathered else n_chips)
  dec_flops = sum(2 * B * pc["matmul"] + 4 * B * (Lb + a) * L * H * Dh for a in slots) / n_chips
  dec_bytes = sum(w_bytes + ((Pn * Lb + B * a) * kv_slot + B * V * 12) / n_chips for a in slots)
  model = 2 * Pn * Lb * pc["matmul"] + Nb * (2 * B * pc["matmul"] + 4 * B * (Lb + Nb / 2) * L * H * Dh)
  # the decode's least possible HBM traffic: weights + the filled KV slots (step t: prompt + t + 1 written
  # response slots) per step; decode_roofline_frac = that / what the program reads (unfilled slots of its
  # chunk's bucket, logits), i.e. the fraction of the weights + KV bandwidth roofline the decode reaches
  ideal = sum(w_bytes + (Pn * Lb + B * (t + 1)) * kv_slot / n_chips for t in range(Nb))
  # the largest chunk's live HBM besides its arguments (the caches and the compute-dtype weights, gathered or
  # not, are arguments): a few [B, V] f32 logits blocks of the chip's rows
  temp = B * V * 4 * 3 / n_chips
  return dict(flops=pre_flops + dec_flops, bytes=pre_bytes + dec_bytes, model_flops=model / n_chips, gathered=gathered,
              last_step_flops=(2 * B * pc["matmul"] + 4 * B * (Lb + slots[-1]) * L * H * Dh) / n_chips,
              last_step_bytes=w_bytes + ((Pn * Lb + B * slots[-1]) * kv_slot + B * V * 12) / n_chips,
              tokens=B * Nb, temp_bytes=temp, decode_roofline_frac=ideal / dec_bytes, decode_bytes=dec_bytes,
              decode_ideal_bytes=ideal)


def roofline(est, chip):
  """max(FLOPs / peak, bytes / HBM bandwidth), plus est["ici_s"] (the decode loop's collectives: serial, between
  the layers' matmuls) where the phase has one."""
  t_c, t_m, t_i = est["flops"] / chip["peak_flops"], est["bytes"] / chip["hbm_bw"], est.get("ici_s", 0.0)
  t = max(t_c, t_m) + t_i
  bound = "ici" if t_i > max(t_c, t_m) else "compute" if t_c >= t_m else "memory"
  return dict(compute_s=t_c, memory_s=t_m, ici_s=t_i, time_s=t, bound=bound,
              mfu=est["model_flops"] / (t * chip["peak_flops"]) if t else 0.0)


# ============================================================================ collectives in a compiled loop

_COLLECTIVE = re.compile(r"= (.*?) (all-reduce|all-reduce-start|all-gather|all-gather-start|reduce-scatter|all-to-all|"
                         r"collective-permute|collective-permute-start)\(")
_CALLS = re.compile(r"(?:calls|body|condition|to_apply|branch_computations|called_computations)=(\{[^}]*\}|%[\w.\-]+)")
_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16)\[([\d,]*)\]")


def _array_bytes(type_text):
  """'(f32[8,128]{1,0}, bf16[4])' -> [bytes of each array in it]."""
  out = []
  for dt, dims in _SHAPE.findall(type_text):
    size = 1 if dt == "pred" else int(re.sub(r"\D", "", dt)) // 8 if dt != "bf16" else 2
    out.append(size * math.prod(int(d) for d in dims.split(",") if d))
  return out


def _group_size(line, n_default):
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
  if m:
    return len(m.group(1).split(","))
  m = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line)
  if m:
    sizes = {k.strip("' "): int(v) for k, v in (x.split("=") for x in m.group(1).split(","))}
    return math.prod(sizes[a.strip("' ")] for a in m.group(2).split(","))
  return n_default


def loop_collectives(hlo_text: str, n_chips: int) -> list[dict]:
  """The collectives a compiled program runs inside its while loops (body and condition, and every computation
  they call), from `compiled.as_text()`: one dict per instruction {op, bytes (its result arrays), group (devices
  taking part), wire (bytes each chip sends: all-reduce 2 (g-1)/g x bytes, as a ring; the others (g-1)/g),
  line}."""
  comps, cur = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(", line)
    if m and line.rstrip().endswith("{"):
      cur = comps.setdefault(m.group(1), [])
    elif line.startswith("}"):
      cur = None
    elif cur is not None:
      cur.append(line)
  callees = lambda lines: {n for ln in lines for g in _CALLS.findall(ln) for n in re.findall(r"%([\w.\-]+)", g)}
  todo = [n for lines in comps.values() for ln in lines if " while(" in ln
          for n in re.findall(r"(?:body|condition)=%([\w.\-]+)", ln)]
  seen = set()
  while todo:
    n = todo.pop()
    if n not in seen and n in comps:
      seen.add(n)
      todo.extend(callees(comps[n]))
  out = []
  for n in sorted(seen):
    for ln in comps[n]:
      m = _COLLECTIVE.search(ln)
      if not m:
        continue
      arrays = _array_bytes(m.group(1))
      b = max(arrays) if m.group(2).endswith("-start") else sum(arrays)   # -start: (operand, result) tuples
      g = _group_size(ln, n_chips)
      wire = b * (g - 1) / g * (2 if m.group(2).startswith("all-reduce") else 1)
      out.append(dict(op=m.group(2), bytes=b, group=g, wire=wire, line=ln.strip()[:160]))
  return out


# ============================================================================ compile

def memory(compiled) -> dict:
  """-> per-chip bytes {args, temp, out, alias, code, total}: total = args + out - alias + temp + code."""
  m = compiled.memory_analysis()
  d = dict(args=m.argument_size_in_bytes, temp=m.temp_size_in_bytes, out=m.output_size_in_bytes,
           alias=m.alias_size_in_bytes, code=m.generated_code_size_in_bytes)
  d["total"] = d["args"] + d["out"] - d["alias"] + d["temp"] + d["code"]
  return d


def xla_cost(compiled) -> dict:
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  return {k: float(ca.get(k, 0.0)) for k in ("flops", "bytes accessed", "optimal_seconds")}


def _compile(fn, args, kwargs=None):
  """-> (compiled, seconds); a program XLA cannot fit in HBM -> ({args, temp, ..., total, oom}, seconds) with
  the temporaries XLA asked for (its RESOURCE_EXHAUSTED message) and the arguments from the inputs."""
  t0 = time.perf_counter()
  lowered = fn.lower(*args, **(kwargs or {}))
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    m = re.search(r"temporaries \(([\d.]+)([KMGT])\)", str(e))
    if "RESOURCE_EXHAUSTED" not in str(e) or not m:
      raise
    temp = float(m.group(1)) * 1024 ** "KMGT".index(m.group(2)) * 1024
    args_b = sum(_per_chip_bytes(a) for a in jax.tree.leaves(args) if hasattr(a, "shape"))
    mem = dict(args=args_b, temp=temp, out=0, alias=0, code=0, total=args_b + temp, oom=str(e).splitlines()[0][:300])
    return mem, time.perf_counter() - t0
  return compiled, time.perf_counter() - t0


def _per_chip_bytes(a) -> float:
  """Bytes of one chip's shard of a ShapeDtypeStruct with a NamedSharding."""
  sh = getattr(a, "sharding", None)
  shape = sh.shard_shape(a.shape) if sh is not None else a.shape
  if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):   # the sampler's row keys: uint32[2] each
    return math.prod(shape) * 8
  return math.prod(shape) * jnp.dtype(a.dtype).itemsize


def plan_phases(hf: dict, topology: str, c, *, prompt_len: int, phases=("sample", "logp", "update"),
                done=None, on_phase=None) -> dict:
  """Compiles each phase for `topology` -> {"setup": ..., phase: result}. done: phase results to skip
  (from the cache); on_phase(results so far) is called after each compile (the cache writer)."""
  chip = chip_of(topology)
  devices = topology_devices(topology)
  mesh = trainer.make_mesh(c.mesh, devices=devices)
  n, tensor = mesh.devices.size, mesh.shape["tensor"]
  cfg = trainer_model_config(hf, c.model)
  cfg = dataclasses.replace(cfg, cache_dtype=cfg.dtype)   # what the default rule picks on an accelerator
  graphdef, params = abstract_params(cfg, mesh)
  rows = c.rollout.prompts_per_step * c.rollout.group_size
  mb_rows = rows // c.train.minibatches
  micro = c.train.micro_batch_size or mb_rows
  N = c.rollout.max_new_tokens
  T = prompt_len + N - 1
  pc = param_counts(cfg)
  use_ref = c.loss.kl_kind != "none"
  out = dict(done or {})
  out["setup"] = dict(topology=topology, chips=n, mesh=dict(mesh.shape), chip=chip, params=pc["total"],
                      dtype=cfg.dtype, param_dtype=cfg.param_dtype, remat=cfg.remat, rows=rows,
                      minibatch_rows=mb_rows, micro=micro, prompt_len=prompt_len, max_new_tokens=N,
                      updates_per_step=c.train.ppo_epochs * c.train.minibatches,
                      logp_calls_per_step=-(-rows // micro) * (2 if use_ref else 1))

  cpu0 = [time.process_time()]   # CPU seconds of this process (all threads) since the phase started

  def finish(name, compiled, secs, est):
    mem = memory(compiled) if not isinstance(compiled, dict) else compiled
    if est.get("temp_bytes", 0) > mem["temp"]:
      # XLA:TPU's memory_analysis() reported 0 temporaries for a small sampler program (its KV-cache carry
      # uncounted) though it counts them at scale: take the analytic live set when larger, keep XLA's figure.
      mem = dict(mem, xla_temp=mem["temp"], temp=est["temp_bytes"])
      mem["total"] = mem["args"] + mem["out"] - mem["alias"] + mem["temp"] + mem["code"]
    r = dict(hbm=mem, hbm_gib={k: v / GIB for k, v in mem.items() if k != "oom"}, fits=mem["total"] <= chip["hbm_gib"] * GIB,
             compile_s=secs, compile_cpu_s=time.process_time() - cpu0[0], est=est, roofline=roofline(est, chip),
             xla_cost=xla_cost(compiled) if not isinstance(compiled, dict) else {})
    r["tokens_per_s_chip"] = est["tokens"] / r["roofline"]["time_s"] / n
    r["version"] = PHASE_VERSION[name]
    out[name] = r
    cpu0[0] = time.process_time()
    if on_phase:
      on_phase(out)

  if "update" in phases and "update" not in out:
    update, tx, hp = trainer_update_fn(graphdef, c, params, mesh)
    opt = abstract_opt_state(tx, params, mesh)
    mb = update_batch(mesh, mb_rows // micro, micro, prompt_len, N, use_ref)
    hp = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in hp}
    compiled, secs = _compile(update, (params, opt, mb, hp, update_denoms(c, mesh)))
    finish("update", compiled, secs, analytic_update(cfg, c, mb_rows, micro, T, n, tensor, N))
  if "logp" in phases and "logp" not in out:
    compiled, secs = _compile(trainer_logp_fn(graphdef, c, mesh), (params, logp_batch(mesh, micro, prompt_len, N)))
    finish("logp", compiled, secs, analytic_logp(cfg, micro, T, n, tensor, N))
  if "sample" in phases and "sample" not in out:
    r = c.rollout
    gather = sampler_gather(r.get("gather_weights", "auto"), cfg, params, mesh, chip, prompts=r.prompts_per_step,
                            group_size=r.group_size, prompt_len=prompt_len, max_new_tokens=N)
    progs, shapes = sampler_programs(graphdef, params, mesh, prompts=r.prompts_per_step,
                                     group_size=r.group_size, prompt_len=prompt_len, max_new_tokens=N,
                                     temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, gather=gather)
    est = dict(analytic_sample(cfg, shapes, n, tensor, _bytes(cfg.cache_dtype), gathered=gather), shapes=shapes)
    pre, secs = _compile(*progs["prefill"])
    if isinstance(pre, dict):   # the prefill alone does not fit: no shardings to build the chunk from
      finish("sample", pre, secs, est)
    else:
      chunk, secs2 = _compile(*progs["chunk"](pre))
      mems = dict(prefill=memory(pre), chunk=memory(chunk) if not isinstance(chunk, dict) else chunk)
      est["programs_hbm_gib"] = {k: m["total"] / GIB for k, m in mems.items()}
      if not isinstance(chunk, dict):
        est.update(decode_step_ici(loop_collectives(chunk.as_text(), n), chip, shapes))
        # the decode-bandwidth target with the loop's ICI time counted: ideal HBM time / (HBM time + ICI time)
        est["decode_roofline_frac_ici"] = (est["decode_ideal_bytes"] / chip["hbm_bw"]) / (
            est["decode_bytes"] / chip["hbm_bw"] + est["ici_s"])
      # the phase's figure: the program that needs more HBM (the largest chunk, unless the prompts dominate)
      finish("sample", chunk if mems["chunk"]["total"] >= mems["prefill"]["total"] else pre, secs + secs2, est)
  return out


def decode_step_ici(colls, chip, shapes) -> dict:
  """The decode chunk's in-loop collectives (`loop_collectives`) -> est keys: decode_collectives (count per
  step), decode_ici_bytes (bytes each chip sends per step), decode_ici_step_s (at the chip's ICI bandwidth, no
  latency: a lower bound) and ici_s (x the N decode steps of the phase)."""
  wire = sum(x["wire"] for x in colls)
  step_s = wire / chip["ici_bw"]
  return dict(decode_collectives=len(colls), decode_ici_bytes=wire, decode_ici_step_s=step_s,
              ici_s=step_s * shapes["N"],
              decode_collective_ops={op: sum(1 for x in colls if x["op"] == op) for op in sorted({x["op"] for x in colls})})


def analytic_plan(hf: dict, topology: str, c, *, prompt_len: int) -> dict:
  """The analytic estimates of plan_phases without compiling (no HBM figures): needs no libtpu."""
  chip = chip_of(topology)
  n = math.prod(int(x) for x in topology.split(":")[1].split("x"))
  mc = c.mesh
  sizes = [mc.data, mc.fsdp, mc.tensor]
  if -1 in sizes:
    sizes[sizes.index(-1)] = n // math.prod(x for x in sizes if x != -1)
  data, fsdp, tensor = sizes
  cfg = dataclasses.replace(trainer_model_config(hf, c.model), cache_dtype="")
  cfg = dataclasses.replace(cfg, cache_dtype=cfg.dtype)
  rows = c.rollout.prompts_per_step * c.rollout.group_size
  mb_rows = rows // c.train.minibatches
  micro = c.train.micro_batch_size or mb_rows
  N = c.rollout.max_new_tokens
  T = prompt_len + N - 1
  shapes = sampler_shapes(c.rollout.prompts_per_step, c.rollout.group_size, prompt_len, N, data * fsdp)
  shapes["C"] = min(CHUNK, shapes["N"])
  use_ref = c.loss.kl_kind != "none"
  out = dict(setup=dict(topology=topology, chips=n, mesh=dict(data=data, fsdp=fsdp, tensor=tensor), chip=chip,
                        params=param_counts(cfg)["total"], dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                        remat=cfg.remat, rows=rows, minibatch_rows=mb_rows, micro=micro, prompt_len=prompt_len,
                        max_new_tokens=N, updates_per_step=c.train.ppo_epochs * c.train.minibatches,
                        logp_calls_per_step=-(-rows // micro) * (2 if use_ref else 1)))
  # sampler.gather_weights_choice's "auto" rule by hand (no mesh here): f32 shards + gathered weights + caches
  pc, kv = param_counts(cfg)["total"], cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * _bytes(cfg.cache_dtype)
  need = (pc * _bytes(cfg.param_dtype) / n + pc * _bytes(cfg.dtype) / tensor
          + ((shapes["P"] * shapes["L"] + shapes["B"] * shapes["N"]) * kv + shapes["B"] * cfg.vocab_size * 12) / (data * fsdp))
  setting = c.rollout.get("gather_weights", "auto")
  gathered = setting == "true" or (setting == "auto" and fsdp > 1 and need <= sampler.GATHER_HEADROOM * chip["hbm_gib"] * GIB)
  for name, est in (("sample", analytic_sample(cfg, shapes, n, tensor, _bytes(cfg.cache_dtype), gathered)),
                    ("logp", analytic_logp(cfg, micro, T, n, tensor, N)),
                    ("update", analytic_update(cfg, c, mb_rows, micro, T, n, tensor, N))):
    rf = roofline(est, chip)
    out[name] = dict(est=est, roofline=rf, tokens_per_s_chip=est["tokens"] / rf["time_s"] / n, fits=None)
  return out


def step_summary(res) -> dict:
  """Per-step estimate from the phases: time, generated tokens/s per chip, MFU, fits everywhere."""
  s = res["setup"]
  if not all(k in res for k in ("sample", "logp", "update")):
    return {}
  parts = dict(sample=res["sample"]["roofline"]["time_s"],
               logp=s["logp_calls_per_step"] * res["logp"]["roofline"]["time_s"],
               update=s["updates_per_step"] * res["update"]["roofline"]["time_s"])
  t = sum(parts.values())
  model = (res["sample"]["est"]["model_flops"] + s["logp_calls_per_step"] * res["logp"]["est"]["model_flops"]
           + s["updates_per_step"] * res["update"]["est"]["model_flops"])
  return dict(step_s=t, parts_s=parts, gen_tokens_per_s_chip=s["rows"] * s["max_new_tokens"] / t / s["chips"],
              mfu=model / (t * s["chip"]["peak_flops"]),
              fits=all(res[p]["fits"] for p in ("sample", "logp", "update"))
              if all(res[p]["fits"] is not None for p in ("sample", "logp", "update")) else None)


def format_table(res, label="") -> str:
  s = res["setup"]
  lines = [f"{label} {s['topology']}: {s['chips']} chips {s['chip']['generation']} "
           f"({s['chip']['hbm_gib']} GiB HBM, {s['chip']['peak_flops'] / 1e12:.0f} TFLOP/s bf16, "
           f"{s['chip']['hbm_bw'] / 1e9:.0f} GB/s per chip), mesh {s['mesh']}, {s['params'] / 1e9:.2f}B params "
           f"({s['param_dtype']} params, {s['dtype']} compute, remat={s['remat']})",
           f"{'phase':<7} {'args':>6} {'temp':>6} {'out':>6} {'alias':>6} {'total':>6} GiB/chip {'fits':>5} "
           f"{'compile':>8} {'TFLOP/chip':>10} {'GB/chip':>8} {'time':>8} {'bound':>7} {'tok/s/chip':>10} {'MFU':>5}"]
  for p in ("sample", "logp", "update"):
    if p not in res:
      continue
    r, g = res[p], res[p]["hbm_gib"]
    lines.append(f"{p:<7} {g['args']:6.2f} {g['temp']:6.2f} {g['out']:6.2f} {g['alias']:6.2f} {g['total']:6.2f}"
                 f"          {'yes' if r['fits'] else 'NO':>5} {r['compile_s']:7.0f}s {r['est']['flops'] / 1e12:10.1f} "
                 f"{r['est']['bytes'] / 1e9:8.1f} {r['roofline']['time_s']:7.2f}s {r['roofline']['bound']:>7} "
                 f"{r['tokens_per_s_chip']:10.0f} {r['roofline']['mfu']:5.1%}")
  st = step_summary(res)
  if st:
    lines.append(f"step: {st['step_s']:.1f} s (sample {st['parts_s']['sample']:.1f}, logp {st['parts_s']['logp']:.1f}, "
                 f"update {st['parts_s']['update']:.1f}), {st['gen_tokens_per_s_chip']:.0f} generated tokens/s/chip, "
                 f"MFU {st['mfu']:.1%}, fits: {'yes' if st['fits'] else 'NO'}")
  if "decode_roofline_frac" in res.get("sample", {}).get("est", {}):
    lines.append(f"decode: {res['sample']['est']['decode_roofline_frac']:.0%} of the weights + KV bandwidth roofline "
                 f"(the rest: unfilled response-cache slots of each chunk's bucket, logits)")
  e = res.get("sample", {}).get("est", {})
  if "decode_ici_bytes" in e:
    lines.append(f"decode loop: weights {'gathered' if e.get('gathered') else 'FSDP-split'}; {e['decode_collectives']} "
                 f"collectives per step ({e['decode_ici_bytes'] / 1e6:.2f} MB sent per chip, "
                 f"{e['decode_ici_step_s'] * 1e3:.3f} ms at the ICI bandwidth); with that ICI time "
                 f"{e['decode_roofline_frac_ici']:.0%} of the bandwidth roofline")
  return "\n".join(lines)


def markdown_table(results) -> str:
  """Cached plan results -> the markdown table of docs/scaling.md (one row per model x config x topology x phase)."""
  rows = ["| model | config | topology (chips) | mesh d/f/t | phase | HBM GiB/chip (args+temp+out-alias) | fits | "
          "compile s | est. s | est. tokens/s/chip | MFU | bound |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    s = r["setup"]
    mesh = "/".join(str(s["mesh"][a]) for a in ("data", "fsdp", "tensor"))
    current = all(r.get(p, {}).get("version", VERSION) == PHASE_VERSION[p] for p in PHASE_VERSION)
    st = step_summary(r) if current else {}
    for p in ("sample", "logp", "update"):
      if p not in r or r[p].get("version", VERSION) != PHASE_VERSION[p]:   # not rendered: compiled by older code
        continue
      x, g = r[p], r[p]["hbm_gib"]
      hbm = (f"{g['total']:.1f} ({g['args']:.1f}+{g['temp']:.1f}+{g['out']:.1f}-{g['alias']:.1f})"
             if "oom" not in r[p]["hbm"] else f">{g['total']:.1f} (XLA: temporaries {g['temp']:.1f})")
      rows.append(f"| {r.get('model', '')[:-5]} | {r.get('label', '')} | {s['topology']} ({s['chips']}) | {mesh} | {p} | "
                  f"{hbm} | {'yes' if x['fits'] else '**no**'} | {x['compile_s']:.0f} | {x['roofline']['time_s']:.2f} | "
                  f"{x['tokens_per_s_chip']:.0f} | {x['roofline']['mfu']:.0%} | {x['roofline']['bound']}"
                  f"{'' if p != 'sample' else ', weights gathered' if x['est'].get('gathered') else ', weights split'} |")
    if st:
      rows.append(f"| | | | | **step** | | {'yes' if st['fits'] else '**no**'} | | {st['step_s']:.1f} | "
                  f"{st['gen_tokens_per_s_chip']:.0f} generated | {st['mfu']:.0%} | |")
  return "\n".join(rows)


# ============================================================================ CLI with a cache

# The config keys the compiled programs and the estimates depend on (None: the whole section). The cache key hashes
# only these, so a config key added for something else (rewards, logging, the trainer's host-side options) does
# not invalidate finished compiles; a change to the programs' code bumps VERSION instead.
PROGRAM_KEYS = {"model": ("dtype", "param_dtype", "remat"), "mesh": None, "loss": None, "optim": None,
                "rollout": ("prompts_per_step", "group_size", "max_new_tokens", "temperature", "top_k", "top_p",
                            "gather_weights"),
                "train": ("ppo_epochs", "minibatches", "micro_batch_size", "skip_zero_adv_rows", "trim_padding"),
                "total_steps": None}
# program keys added after files were cached: hashed only when not at this default (so the files stay valid; the
# phases they change are recompiled through PHASE_VERSION)
ADDED_KEYS = {("rollout", "gather_weights"): "auto"}


def cache_key(hf: dict, topology: str, c, prompt_len: int) -> str:
  d = c.to_dict()
  prog = {k: (d[k] if keys is None else {x: d[k][x] for x in keys if x in d[k]}) for k, keys in PROGRAM_KEYS.items()}
  for (k, x), default in ADDED_KEYS.items():
    if prog[k].get(x, default) == default:
      prog[k].pop(x, None)
  blob = json.dumps([VERSION, hf, topology, prog, prompt_len], sort_keys=True, default=str)
  return hashlib.sha1(blob.encode()).hexdigest()[:12]


def plan_cached(model_path, topology, c, *, prompt_len, cache_dir, phases, label=""):
  """plan_phases with a JSON file per (model, topology, config, prompt length) holding finished phases."""
  with open(model_path) as f:
    hf = json.load(f)
  name = f"{os.path.basename(model_path)[:-5]}_{topology.replace(':', '-')}_{label or 'config'}_" \
         f"{cache_key(hf, topology, c, prompt_len)}.json"
  path = os.path.join(cache_dir, name)
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      done = {k: v for k, v in json.load(f).items()
              if k in PHASE_VERSION and v.get("version", VERSION) == PHASE_VERSION[k]}   # older phases: recompiled

  def save(res):
    os.makedirs(cache_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(dict(res, model=os.path.basename(model_path), label=label), f, indent=1, default=float)
    os.replace(path + ".tmp", path)

  res = plan_phases(hf, topology, c, prompt_len=prompt_len, phases=phases, done=done, on_phase=save)
  res.update(model=os.path.basename(model_path), label=label)
  with open(path, "w") as f:
    json.dump(res, f, indent=1, default=float)
  return res, path


_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/paper/prorl_qwen2.5_math_1.5b.py",
                                          "Python config file (get_config()).", lock_config=True)
_MODEL = flags.DEFINE_string("model", None, "config.json of the model (experiments/model_configs/*.json)")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x4", "libtpu topology name, e.g. v5e:2x4, v5p:2x2x2, v6e:2x4")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 512, "prompt tokens (left-padded width)")
_PHASES = flags.DEFINE_list("phases", ["sample", "logp", "update"], "phases to compile")
_CACHE = flags.DEFINE_string("cache_dir", "runs/plan_cache", "JSON cache of finished phases")
_JSON = flags.DEFINE_string("json", "", "also write the result here")
_TABLE = flags.DEFINE_string("table", "", "print the markdown table of the cached results in this directory, compile nothing")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _TABLE.value:
    results = []
    for name in sorted(os.listdir(_TABLE.value)):
      if name.endswith(".json"):
        with open(os.path.join(_TABLE.value, name)) as f:
          results.append(json.load(f))
    print(markdown_table([r for r in results if "setup" in r]))
    return
  c = _CONFIG.value
  try:
    rl_config.validate(c)
  except ValueError as e:
    sys.exit(f"plan.py: error: {e}")
  model = _MODEL.value or os.path.join(c.model.path, "config.json")
  if not os.path.exists(model):
    sys.exit(f"plan.py: error: --model {model!r} not found (a config.json, e.g. experiments/model_configs/*.json)")
  bad = set(_PHASES.value) - {"sample", "logp", "update"}
  if bad:
    sys.exit(f"plan.py: error: --phases {sorted(bad)} not among sample, logp, update")
  label = os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]))[:-3]
  res, path = plan_cached(model, _TOPOLOGY.value, c, prompt_len=_PROMPT_LEN.value, cache_dir=_CACHE.value,
                          phases=tuple(_PHASES.value), label=label)
  print(format_table(res, label=f"{res['model']} {label}"))
  print(f"(cached in {path})")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(dict(res, step=step_summary(res)), f, indent=1, default=float)


if __name__ == "__main__":
  app.run(main)
