"""Sharding a Decoder over a device mesh with axes ("data", "fsdp", "tensor").

  mesh = make_mesh(data=2, fsdp=4)                 # 8 devices; tensor=1 by default
  model = shard_model(model, mesh)                 # params placed with NamedSharding (in place)
  tokens = jax.device_put(tokens, NamedSharding(mesh, BATCH_SPEC))

Scheme (we place arrays explicitly: `nnx.state` + `jax.device_put`; no sharding
annotations inside the module, so the module code stays single-device code and
XLA's GSPMD propagates the layouts through jit):
  * "fsdp": every matrix is split over its hidden dimension D (ZeRO-3 style); XLA
    all-gathers a layer's weights inside the layer scan when it needs them.
  * "tensor": Megatron-style where cheap: attention heads, the MLP hidden dim F and
    the vocabulary are split (column-parallel in, row-parallel out).
  * "data" (and "fsdp"): the batch axis, BATCH_SPEC = P(("data", "fsdp")).
  The stacked layer axis L is never split. A dimension that an axis size does not
  divide is left unsplit along that axis (e.g. 3 KV heads on tensor=2).

Multi-process (jax.distributed, one process per host): every process runs the same host program with the same
NumPy values; `shard_batch` / `replicate` make global arrays from each process's own part of them
(jax.make_array_from_process_local_data), `to_host` brings a global array back to NumPy on every process
(a process_allgather when other processes hold some of its shards). With one process they are plain
device_put / np.asarray.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
from flax import nnx
from jax._src import distributed   # the coordination-service client: JAX 0.10 has no public barrier without
from jax.experimental import multihost_utils   # a device collective (see `barrier`)
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from models.transformer import Decoder, DecoderConfig, param_shapes

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")
BATCH_SPEC = P(BATCH)

# per-layer (without the leading L axis) logical specs
_LAYER_SPECS = {
    "attn_norm": P(None), "mlp_norm": P(None), "q_norm": P(None), "k_norm": P(None),
    "wq": P("fsdp", "tensor", None), "wk": P("fsdp", "tensor", None), "wv": P("fsdp", "tensor", None),
    "wo": P("tensor", None, "fsdp"),
    "bq": P("tensor", None), "bk": P("tensor", None), "bv": P("tensor", None), "bo": P(None),
    "w_gate": P("fsdp", "tensor"), "w_up": P("fsdp", "tensor"), "w_down": P("tensor", "fsdp"),
}


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> Mesh:
  """Mesh over `devices` (default all) with axes ("data","fsdp","tensor"); one size may be -1 (= the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError("make_mesh: at most one of data/fsdp/tensor may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"make_mesh: {len(devices)} devices not divisible by data*fsdp*tensor={known}")
    sizes[sizes.index(-1)] = len(devices) // known
  n = int(np.prod(sizes))
  if n > len(devices):
    raise ValueError(f"make_mesh: data*fsdp*tensor={n} but only {len(devices)} devices")
  return Mesh(np.asarray(devices[:n]).reshape(sizes), AXES)


def _fit(spec: P, shape, mesh: Mesh) -> P:
  """Drops mesh axes from `spec` where they do not divide the dimension."""
  out = []
  for dim, ax in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if ax is None else (ax if isinstance(ax, tuple) else (ax,))
    names = tuple(a for a in names if a in mesh.shape)
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    out.append(None if not names or dim % size else (names[0] if len(names) == 1 else names))
  return P(*out)


def param_partition_specs(cfg: DecoderConfig, mesh: Mesh) -> dict:
  """-> pure dict {embed, layers: {name: P}, final_norm[, lm_head]} matching nnx.state(model, nnx.Param)."""
  L, V, D = cfg.num_layers, cfg.vocab_size, cfg.hidden_size
  specs = {"embed": _fit(P("tensor", "fsdp"), (V, D), mesh), "final_norm": P(None),
           "layers": {n: _fit(P(None, *_LAYER_SPECS[n]), (L, *s), mesh) for n, s in param_shapes(cfg).items()}}
  if not cfg.tie_embeddings:
    specs["lm_head"] = _fit(P("fsdp", "tensor"), (D, V), mesh)
  return specs


def gathered_layer_specs(cfg: DecoderConfig, mesh: Mesh) -> dict:
  """Per-layer specs (no leading L axis) of a layer's weights gathered for decoding: replicated over the batch
  axes ("data", "fsdp"), the "tensor" split kept where it divides -> {name: P, "unembed": P of the [D,V] head}."""
  specs = {n: _fit(P(*(None if a == "fsdp" else a for a in _LAYER_SPECS[n])), s, mesh)
           for n, s in param_shapes(cfg).items()}
  specs["unembed"] = _fit(P(None, "tensor"), (cfg.hidden_size, cfg.vocab_size), mesh)
  return specs


def cache_partition_specs(cache: dict, mesh: Mesh) -> dict:
  """KV-cache specs: batch over ("data","fsdp"), KV heads over "tensor" where they divide."""
  k = cache["k"].shape
  kv = _fit(P(None, BATCH, None, "tensor", None), k, mesh)
  return {"k": kv, "v": kv, "valid": _fit(P(BATCH, None), cache["valid"].shape, mesh), "index": P()}


def shard_model(model: Decoder, mesh: Mesh) -> Decoder:
  """Places the model's parameters on `mesh` (in place; also returned)."""
  specs = param_partition_specs(model.cfg, mesh)
  state = nnx.state(model, nnx.Param)
  pure = state.to_pure_dict()
  placed = jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), pure, specs)
  nnx.replace_by_pure_dict(state, placed)
  nnx.update(model, state)
  return model


def batch_sharding(shape, mesh: Mesh, axis: int = 0) -> NamedSharding:
  """The sharding `shard_batch` gives an array of this shape (experiments/plan.py builds abstract batches)."""
  return NamedSharding(mesh, _fit(P(*([None] * axis), BATCH), shape, mesh))


def shard_batch(x, mesh: Mesh, axis: int = 0):
  """Puts an array on the mesh with dimension `axis` (the batch) split over ("data","fsdp") where they divide it
  (replicated otherwise). Multi-process: x is the global (host) value, the same on every process; each process
  hands over only the rows its devices hold (see `put_global`)."""
  return put_global(x, batch_sharding(np.shape(x), mesh, axis))


def replicate(x, mesh: Mesh):
  """A (host) value -> a global array replicated on every device of `mesh` (all processes pass the same value)."""
  return put_global(x, NamedSharding(mesh, P()))


def process_slice(sharding, shape) -> tuple:
  """The box of the global array (slices per dimension) that this process's devices hold under `sharding`."""
  idx = list(sharding.addressable_devices_indices_map(tuple(shape)).values())
  box = []
  for d, n in enumerate(shape):
    spans = [s[d].indices(n)[:2] for s in idx]
    box.append(slice(min(a for a, _ in spans), max(b for _, b in spans)))
  return tuple(box)


def put_global(x, sharding):
  """Host value x (NumPy or a fully addressable jax.Array; the same on every process) -> a jax.Array with
  `sharding`. One process: jax.device_put. Several: jax.make_array_from_process_local_data with this process's
  box of x (`process_slice`), so no process transfers rows that other hosts' devices hold."""
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.device_put(x, sharding)   # already global: a reshard
  x = np.asarray(x)
  return jax.make_array_from_process_local_data(sharding, x[process_slice(sharding, x.shape)], x.shape)


def to_host(x) -> np.ndarray:
  """jax.Array (global or local) or NumPy -> NumPy with the global value, on every process. Multi-process this
  is a collective (process_allgather) when other processes hold shards of x: every process must call it."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


_BARRIER_IDS = itertools.count()


def barrier(name: str, timeout_s: float = 3600.0):
  """Waits until every process has reached this call (all call it in the same order). It goes through the
  jax.distributed coordination service, not a device collective, so a process may arrive much later (e.g.
  after a longer compile or a checkpoint write) without a collective timing out. One process: returns."""
  if jax.process_count() == 1:
    return
  distributed.global_state.client.wait_at_barrier(f"{name}#{next(_BARRIER_IDS)}", int(timeout_s * 1000))


def warm_up_collectives():
  """Multi-process on CPU: the first gloo collective over the devices sets up its context and fails when the
  processes reach it more than ~30 s apart (XLA's fixed key-value timeout; later collectives wait longer).
  This sets it up right after a barrier, before any program whose compile time differs between processes."""
  if jax.process_count() == 1:
    return
  barrier("models.sharding.warm_up_collectives")
  multihost_utils.process_allgather(np.int32(jax.process_index()))
