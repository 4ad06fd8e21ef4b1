"""Group sampler: P prompts x G samples with a KV cache, one compiled decode loop.

  out = generate(model, prompts, group_size=G, max_new_tokens=N, temperature=1.0,
                 top_p=1.0, top_k=0, eos_ids=(2,), pad_id=0, rng=jax.random.key(0))

How it works (all inside ONE jitted function per shape bucket):
  1. prefill: the P distinct prompts (left-padded to a bucketed length Lb) run through
     `model.step` ONCE, without their last token (whose logits nobody needs: XLA drops
     the unused lm-head). Rows are prompt-major (row i*G+j = sample j of prompt i). The
     prompt cache stays shared by the G rows of a group: `Decoder.group_step` reads it once
     per group for all G*H/K queries; each row has its own response cache. (With
     shared_prompt_cache=False the prompt cache is repeated G times and decoding uses the
     generic `Decoder.step`.)
  2. decode, in chunks of `chunk_size` steps: each chunk is one jitted `lax.while_loop`
     feeding one token per row per iteration (the first one is the last prompt token) and
     sampling the next; it exits as soon as every row has emitted an EOS id, N tokens were
     generated or the chunk is full. The response cache holds only the slots needed up to the
     end of the current chunk (A < 1.5 (t + chunk_size) slots, see `_slots`, grown between chunks),
     so a step attends over ~the filled length, not over N. Between chunks, once at most half of the
     rows are still running, the running rows are re-packed into a smaller power-of-two batch
     (`compact=True`): finished rows stop costing. The iteration count is `num_steps`.
     (shared_prompt_cache=False keeps the single-loop reference: one while loop over the full
     N-slot cache, no chunks, no compaction.)
  3. sampling: greedy (temperature=0) or temperature -> top-k -> top-p (the order of
     transformers' logits warpers), then an inverse-CDF draw with ONE uniform per row per
     step from a blocked cumulative sum (no [B,V] Gumbel noise, no full-vocab sort).

Randomness: row r uses key split(rng, P*G)[r] (or rng[r] if `rng` holds P*G keys), and
step t uses fold_in(row_key, t): rows are independent, and a row's random draws do not depend
on the other rows, on padding, on the shape buckets, on the chunking or on compaction. Its
samples do not either, up to float rounding: each batch / cache shape is another compiled
program whose logits can differ in the last bits, so a draw that lands on a CDF boundary can
pick the neighbouring token (measured on SmolLM2-135M f32: 1-2 of 64 rows differ between
chunk sizes at 64 new tokens; the tiny test models agree exactly).

Log-probs: `logprobs` are log-probs under the *sampling* distribution (after temperature,
top-k, top-p; for greedy, where that distribution is a point mass, the raw model log-prob).
`model_logprobs` are the raw model log-probs (temperature 1, no truncation) of the same
tokens: compare them with `Decoder.token_logprobs` for the sampler-vs-trainer health metric.

Shapes: P prompts, G group size, L prompt length, N max_new_tokens, V vocab.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from models.sharding import gathered_layer_specs, put_global, to_host
from models import transformer
from models.warping import top_k_mask, top_p_mask

_BLOCK = 256  # vocab block of the two-level inverse CDF
_COMPILES = {"count": 0}
_SCHEDULE: list = []  # per-chunk record of the last generate call (last_decode_schedule)


class SampleOutput(NamedTuple):
  """Rollouts of P prompts x G samples, rows prompt-major (row i*G+j = sample j of prompt i).

  tokens int32 [P*G,N] (pad_id after the end), logprobs f32 [P*G,N] (sampling distribution,
  0 where masked), model_logprobs f32 [P*G,N] (raw model, temperature 1, 0 where masked),
  mask bool [P*G,N] (True = response token, the EOS token included), lengths int32 [P*G],
  stopped bool [P*G] (True = emitted an EOS id), prompt_tokens int32 [P*G,L] and
  prompt_mask bool [P*G,L] (left-padded), num_steps int32 scalar (decode iterations run).
  """
  tokens: jax.Array
  logprobs: jax.Array
  model_logprobs: jax.Array
  mask: jax.Array
  lengths: jax.Array
  stopped: jax.Array
  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  num_steps: jax.Array


def num_compilations() -> int:
  """How many times the sampler's jitted function was traced (= compiled) in this process."""
  return _COMPILES["count"]


def last_decode_schedule() -> list[dict]:
  """The chunks of the last `generate` call (shared prompt cache path): one dict per chunk with
  t0 (first step), steps (steps run), rows (batch rows decoded), slots (response-cache slots
  attended) and seconds (wall time of the chunk, including the host sync that ends it)."""
  return [dict(d) for d in _SCHEDULE]


def bucket(n: int, minimum: int = 16) -> int:
  """Shape bucket: max(minimum, next power of two) up to 1024, then a multiple of 1024."""
  if n <= minimum:
    return minimum
  if n <= 1024:
    return 1 << (n - 1).bit_length()
  return -(-n // 1024) * 1024


# ----------------------------------------------------------------------------- masks

# top_k_mask / top_p_mask live in models.warping (Decoder.token_logprobs replays them); re-exported here.


def _inverse_cdf(x, u):
  """x f32 [B,V] logits (-inf allowed, one finite per row), u f32 [B] in [0,1) ->
  (token int32 [B] ~ softmax(x), logsumexp(x) f32 [B]).

  Two-level inverse CDF: cumulative sums over V/256 block sums, then inside the chosen
  256-block, so no V-long cumsum (slow on XLA:CPU) and one uniform per row.
  """
  B, V = x.shape
  m = jnp.max(x, axis=-1, keepdims=True)
  e = jnp.exp(x - m)
  nb = -(-V // _BLOCK)
  e = jnp.pad(e, ((0, 0), (0, nb * _BLOCK - V)))
  eb = e.reshape(B, nb, _BLOCK)
  bsum = eb.sum(-1)                                   # [B,nb]
  cb = jnp.cumsum(bsum, axis=-1)
  tot = cb[:, -1]
  t = u * tot
  last_b = nb - 1 - jnp.argmax(bsum[:, ::-1] > 0, axis=-1)
  blk = jnp.minimum(jnp.sum(cb <= t[:, None], axis=-1), last_b)
  prev = jnp.where(blk > 0, jnp.take_along_axis(cb, jnp.maximum(blk - 1, 0)[:, None], 1)[:, 0], 0.0)
  inner = jnp.take_along_axis(eb, blk[:, None, None], 1)[:, 0]   # [B,256]
  ci = prev[:, None] + jnp.cumsum(inner, axis=-1)
  last_j = _BLOCK - 1 - jnp.argmax(inner[:, ::-1] > 0, axis=-1)
  j = jnp.minimum(jnp.sum(ci <= t[:, None], axis=-1), last_j)
  tok = (blk * _BLOCK + j).astype(jnp.int32)
  # The chosen block and token have positive mass (the first cumulative sum above t, clamped to
  # the last positive one), so this guard should never fire; if rounding ever lands on a zero-
  # probability token it falls back to the block's most probable one (a [B,256] argmax, not [B,V]).
  bad = jnp.take_along_axis(e, tok[:, None], 1)[:, 0] <= 0
  tok = jnp.where(bad, blk * _BLOCK + jnp.argmax(inner, axis=-1).astype(jnp.int32), tok)
  return tok, m[:, 0] + jnp.log(tot)


def sample_logits(logits, u, temperature, top_p, *, greedy: bool, top_k: int, use_top_p: bool,
                  plain: bool = False):
  """One sampling step. logits f32 [B,V], u f32 [B] uniforms ->
  (tokens int32 [B], logp under the sampling distribution [B], raw model logp [B]).
  plain: promise that temperature == 1 and no top-k/top-p (raw logp == sampling logp)."""
  take = lambda a, tok: jnp.take_along_axis(a, tok[:, None], 1)[:, 0]
  if greedy:
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    lp = take(logits, tok) - jax.nn.logsumexp(logits, axis=-1)
    return tok, lp, lp
  x = logits / temperature
  if top_k:
    x = jnp.where(top_k_mask(x, top_k), x, -jnp.inf)
  if use_top_p:
    x = jnp.where(top_p_mask(x, top_p), x, -jnp.inf)
  tok, lse = _inverse_cdf(x, u)
  lp = take(x, tok) - lse
  if plain:
    return tok, lp, lp
  raw = take(logits, tok) - jax.nn.logsumexp(logits, axis=-1)
  return tok, lp, raw


# ----------------------------------------------------------------------------- the jitted core

def _batch_spec(mesh, ndim, axis=0):
  if mesh is None:
    return None
  names = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
  spec = [None] * ndim
  spec[axis] = names
  return NamedSharding(mesh, PartitionSpec(*spec))


def _constrain(x, mesh, axis=0):
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, _batch_spec(mesh, x.ndim, axis))


def _put_rows(a, mesh):
  """Host value (NumPy, or typed keys made on this process) -> an array on `mesh` with its rows split over the
  batch axes. Multi-process (jax.distributed): a global array built from each process's own rows; the
  values must be the same on every process (they are: the host loop runs the same program everywhere)."""
  if jax.process_count() > 1 and isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
    # typed keys travel as their uint32 data (multi-process device_put does not take key arrays)
    data = jax.random.key_data(a)
    data = data if not data.is_fully_addressable else np.asarray(data)
    return jax.random.wrap_key_data(put_global(data, _batch_spec(mesh, a.ndim + 1)), impl=jax.random.key_impl(a))
  return put_global(a, _batch_spec(mesh, np.ndim(a)))


def _auto_mesh(mesh):
  """The same devices and axes with AxisType.Auto (the sampler shards by constraints)."""
  return jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))


def _to_auto(x, mesh):
  """Moves an array onto `mesh` (Auto axes): keeps its PartitionSpec if it lives on the same
  devices (e.g. sharded by models.sharding), else replicates it."""
  sh = getattr(x, "sharding", None)
  if isinstance(sh, NamedSharding) and sh.mesh.axis_names == mesh.axis_names and \
      tuple(sh.mesh.devices.flat) == tuple(mesh.devices.flat):
    return jax.device_put(x, NamedSharding(mesh, sh.spec))
  return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))


def _sample_and_record(c, logits, t, col, row_keys, temperature, top_p, pad_id, eos, **kw):
  """The part of a decode step after the model: draw step t's token of every row and record it.

  c: loop carry with tok, pos int32 [B], done, stopped bool [B] and the records tokens int32,
  logp, raw f32, mask bool [B,W]; logits f32 [B,V]; col: the record column of step t; kw: the
  static `sample_logits` flags -> the updated t, tok, pos, done, stopped and records. Rows already
  done get pad_id / 0 / False; a row is done once it emits an id in eos int32 [E] (-1 = unused).
  """
  u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, t)))(row_keys)
  tok, lp, raw = sample_logits(logits, u, temperature, top_p, **kw)
  live = ~c["done"]
  tok = jnp.where(live, tok, pad_id)
  put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, col))
  hit = live & jnp.any(tok[:, None] == eos[None, :], axis=-1)
  return dict(t=t + 1, tok=tok, pos=c["pos"] + 1, done=c["done"] | hit, stopped=c["stopped"] | hit,
              tokens=put(c["tokens"], tok), logp=put(c["logp"], jnp.where(live, lp, 0.0)),
              raw=put(c["raw"], jnp.where(live, raw, 0.0)), mask=put(c["mask"], live))


def _generate_core(graphdef, state, prompt, pmask, row_keys, row_active, max_new, temperature, top_p,
                   pad_id, eos, *, group_size, n_bucket, greedy, top_k, use_top_p, plain, mesh):
  """The single-loop reference path (shared_prompt_cache=False): generic `Decoder.step` over one
  cache of Lb + n_bucket slots per row, one while loop, no chunks, no compaction.

  prompt int32 [Pb,Lb] left-padded, pmask bool [Pb,Lb] (last column True), row_keys [Pb*G]
  keys, row_active bool [Pb*G] (False = batch padding), max_new int32 <= n_bucket, eos int32 [E]
  (-1 = unused slot) ->
  (tokens [Pb*G,n_bucket], logp, raw logp, mask, stopped [Pb*G], num_steps)."""
  _COMPILES["count"] += 1
  logging.info("sampling: compiling generate #%d for prompts %s, group_size=%d, max_new_tokens "
               "bucket %d", _COMPILES["count"], prompt.shape, group_size, n_bucket)
  model = nnx.merge(graphdef, state)
  P, Lb = prompt.shape
  G, N = group_size, n_bucket
  B = P * G
  prompt, pmask = _constrain(prompt, mesh), _constrain(pmask, mesh)
  positions = jnp.maximum(jnp.cumsum(pmask, axis=-1) - 1, 0).astype(jnp.int32)

  # 1. prefill all but the last prompt token, once per distinct prompt, into one cache of Lb + N
  # slots, repeated to the P*G rows (Decoder.step).
  cache = model.init_cache(P, Lb + N)
  if Lb > 1:
    _, cache = model.step(prompt[:, :-1], positions[:, :-1], cache, attention_mask=pmask[:, :-1])
  cache = {"k": _constrain(jnp.repeat(cache["k"], G, axis=1), mesh, 1),
           "v": _constrain(jnp.repeat(cache["v"], G, axis=1), mesh, 1),
           "valid": _constrain(jnp.repeat(cache["valid"], G, axis=0), mesh),
           "index": cache["index"]}

  # 2. decode loop.
  tok0 = jnp.repeat(prompt[:, -1], G)
  pos0 = jnp.repeat(positions[:, -1], G)
  zeros = lambda dt: _constrain(jnp.zeros((B, N), dt), mesh)
  carry = dict(t=jnp.zeros((), jnp.int32), cache=cache, tok=tok0, pos=pos0, done=~row_active,
               stopped=jnp.zeros((B,), bool), tokens=_constrain(jnp.full((B, N), pad_id, jnp.int32), mesh),
               logp=zeros(jnp.float32),
               raw=zeros(jnp.float32), mask=zeros(bool))

  kw = dict(greedy=greedy, top_k=top_k, use_top_p=use_top_p, plain=plain)

  def cond(c):
    return (c["t"] < max_new) & ~jnp.all(c["done"])

  def body(c):
    t = c["t"]
    logits, cache = model.step(c["tok"][:, None], c["pos"][:, None], c["cache"])
    return dict(_sample_and_record(c, logits[:, 0], t, t, row_keys, temperature, top_p, pad_id, eos, **kw),
                cache=cache)

  c = jax.lax.while_loop(cond, body, carry)
  return c["tokens"], c["logp"], c["raw"], c["mask"], c["stopped"], c["t"]


_generate_jit = jax.jit(_generate_core, static_argnames=(
    "graphdef", "group_size", "n_bucket", "greedy", "top_k", "use_top_p", "plain", "mesh"))


# ----------------------------------------------------------------------------- chunked decoding

def _gather_layers(shared, cfg, mesh):
  """shared["layers"] and shared["unembed"] (the compute-dtype weights the decode reads) constrained to
  `models.sharding.gathered_layer_specs`: replicated over the batch axes, the "tensor" split kept."""
  specs = gathered_layer_specs(cfg, mesh)
  put = lambda a, spec: jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))
  return dict(shared, layers=[{n: put(a, specs[n]) for n, a in p.items()} for p in shared["layers"]],
              unembed=put(shared["unembed"], specs["unembed"]))


def _prefill_core(graphdef, state, prompt, pmask, *, group_size, n_slots, mesh, gather=False):
  """prompt int32 [P,Lb] left-padded, pmask bool [P,Lb] (last column True) ->
  (shared, resp, tok0 int32 [P*G], pos0 int32 [P*G]): `Decoder.group_decode_init` state with
  `n_slots` response slots after prefilling all but the last prompt token once per prompt.
  gather: the per-layer weights of `shared` are gathered here, once per call (see `generate`)."""
  _COMPILES["count"] += 1
  model = nnx.merge(graphdef, state)
  P, Lb = prompt.shape
  G = group_size
  prompt, pmask = _constrain(prompt, mesh), _constrain(pmask, mesh)
  positions = jnp.maximum(jnp.cumsum(pmask, axis=-1) - 1, 0).astype(jnp.int32)
  pc = model.init_cache(P, max(Lb - 1, 1))
  if Lb > 1:
    _, pc = model.step(prompt[:, :-1], positions[:, :-1], pc, attention_mask=pmask[:, :-1])
  shared, resp = model.group_decode_init(pc, G, n_slots)
  if gather and mesh is not None:
    shared = _gather_layers(shared, model.cfg, mesh)
  shared.update(pk=[_constrain(a, mesh) for a in shared["pk"]], pv=[_constrain(a, mesh) for a in shared["pv"]],
                valid=_constrain(shared["valid"], mesh))
  resp = jax.tree.map(lambda a: _constrain(a, mesh), resp)
  return shared, resp, jnp.repeat(prompt[:, -1], G), jnp.repeat(positions[:, -1], G)


def _chunk_core(graphdef, state, shared, resp, carry, row_keys, stop_at, temperature, top_p, pad_id, eos, *,
                n_steps, greedy, top_k, use_top_p, plain, mesh, gather=False):
  """Up to `n_steps` decode steps of B rows, from step carry["t"] while t < stop_at and a row runs.

  shared/resp: `group_step` state (resp has A >= stop_at slots); carry: t int32 scalar, tok, pos
  int32 [B], done, stopped bool [B]; row_keys [B] -> (resp, carry, (tokens int32 [B,n_steps],
  logp f32, raw logp f32, mask bool)), column j = step carry["t"] + j (pad/0/False where not run).
  gather: `shared` holds gathered weights (`_prefill_core`); the model is traced under the mesh, so its
  activations stay split over the batch axes (`models.transformer.split_rows`).
  """
  _COMPILES["count"] += 1
  logging.info("sampling: compiling a decode chunk of %d steps for %d rows, %d response slots",
               n_steps, carry["tok"].shape[0], resp["rv"][0].shape[2])
  model = nnx.merge(graphdef, state)
  B = carry["tok"].shape[0]
  t0 = carry["t"]
  zeros = lambda dt: _constrain(jnp.zeros((B, n_steps), dt), mesh)
  c = dict(carry, resp=resp, tokens=_constrain(jnp.full((B, n_steps), pad_id, jnp.int32), mesh),
           logp=zeros(jnp.float32), raw=zeros(jnp.float32), mask=zeros(bool))

  kw = dict(greedy=greedy, top_k=top_k, use_top_p=use_top_p, plain=plain)

  def cond(c):
    return (c["t"] < stop_at) & ~jnp.all(c["done"])

  def body(c):
    t = c["t"]
    with _rows_split(mesh if gather else None):
      logits, resp = model.group_step(c["tok"], c["pos"], t, shared, c["resp"])
    return dict(_sample_and_record(c, logits, t, t - t0, row_keys, temperature, top_p, pad_id, eos, **kw),
                resp=resp)

  c = jax.lax.while_loop(cond, body, c)
  carry = {k: c[k] for k in carry}
  return c["resp"], carry, (c["tokens"], c["logp"], c["raw"], c["mask"])


def _repack_core(shared, resp, carry, row_keys, idx, keep, *, n_slots, mesh):
  """Grows the response cache to `n_slots` slots and, if idx is given, keeps rows idx int32 [B']
  (keep bool [B']: False = filler row, marked done). A group-shared prompt cache becomes a
  per-row one (row b of P*G rows reads prompt b // G). -> (shared, resp, carry, row_keys)."""
  _COMPILES["count"] += 1
  resp = _grow(resp, n_slots)
  if idx is not None:
    G = carry["tok"].shape[0] // shared["valid"].shape[0]
    pidx = idx // G
    rows = lambda a: _constrain(jnp.take(a, idx, axis=0), mesh)
    prows = lambda a: _constrain(jnp.take(a, pidx, axis=0), mesh)
    shared = dict(shared, pk=[prows(a) for a in shared["pk"]], pv=[prows(a) for a in shared["pv"]],
                  valid=prows(shared["valid"]))
    resp = jax.tree.map(rows, resp)
    carry = dict(t=carry["t"], tok=rows(carry["tok"]), pos=rows(carry["pos"]),
                 done=rows(carry["done"]) | ~keep, stopped=rows(carry["stopped"]) & keep)
    row_keys = rows(row_keys)
  return shared, resp, carry, row_keys


def _grow(resp, n_slots):
  """The response cache grown to `n_slots` slots (zeros after the filled part)."""
  grow = lambda a, axis: jnp.pad(a, [(0, n_slots - a.shape[axis]) if i == axis else (0, 0) for i in range(a.ndim)])
  return {"rk": [grow(a, 3) for a in resp["rk"]], "rv": [grow(a, 2) for a in resp["rv"]]}


def _grow_core(resp, *, n_slots):
  _COMPILES["count"] += 1
  return _grow(resp, n_slots)


def _repack(shared, resp, carry, row_keys, idx, keep, *, n_slots, mesh):
  """`_repack_core` as run between chunks. Growth only (idx None): the prompt cache, the carry and the keys are
  not passed through a program, which would copy them (the prompt cache holds the layers' weights)."""
  if idx is None:
    return shared, _grow_jit(resp, n_slots=n_slots), carry, row_keys
  return _repack_jit(shared, resp, carry, row_keys, idx, keep, n_slots=n_slots, mesh=mesh)


def _rows_split(mesh):
  """Context tracing the model under `mesh` (abstract: allowed inside jit); None: no context."""
  return contextlib.nullcontext() if mesh is None else jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


_prefill_jit = jax.jit(_prefill_core, static_argnames=("graphdef", "group_size", "n_slots", "mesh", "gather"))
_chunk_jit = jax.jit(_chunk_core, static_argnames=(
    "graphdef", "n_steps", "greedy", "top_k", "use_top_p", "plain", "mesh", "gather"), donate_argnames=("resp",))
_repack_jit = jax.jit(_repack_core, static_argnames=("n_slots", "mesh"))
_grow_jit = jax.jit(_grow_core, static_argnames=("n_slots",))


def _slots(t: int, chunk: int, n_bucket: int) -> int:
  """Response-cache slots for a chunk starting at step t: n = t + chunk rounded up to a multiple of
  g = a quarter of the power of two at or above n (at least `chunk`, at most 1024), at most n_bucket.
  So a chunk attends < 1.5 n slots (power-of-two buckets: up to 2 n) with few distinct sizes to compile:
  with chunk 128, 128, 256, 384, 512, 768, 1024, 1536, 2048, then multiples of 1024."""
  n = t + chunk
  g = min(1024, max(chunk, 1 << max((n - 1).bit_length() - 2, 0)))
  return min(n_bucket, -(-n // g) * g)


def _decode_chunked(graphdef, state, toks_b, mask_b, keys, active, max_new, sample_args, *, G, Nb, chunk,
                    compact, n_dev, mesh, static, gather=False):
  """Host loop over decode chunks (see the module docstring). -> numpy (tokens, logp, raw, mask
  [Pb*G, max_new], stopped [Pb*G]) and num_steps."""
  B = toks_b.shape[0] * G
  C = min(chunk, Nb)
  A = _slots(0, C, Nb)
  shared, resp, tok, pos = _prefill_jit(graphdef, state, toks_b, mask_b, group_size=G, n_slots=A, mesh=mesh,
                                        gather=gather)
  put = (lambda a: _put_rows(a, mesh)) if mesh is not None else jnp.asarray   # sharded (multi-process: global)
  carry = dict(t=jnp.zeros((), jnp.int32), tok=tok, pos=pos, done=put(~to_host(active)),
               stopped=put(np.zeros((B,), bool)))
  pad_id = int(sample_args[2])
  out = dict(tokens=np.full((B, max_new), pad_id, np.int32), logp=np.zeros((B, max_new), np.float32),
             raw=np.zeros((B, max_new), np.float32), mask=np.zeros((B, max_new), bool))
  stopped = np.zeros((B,), bool)
  rows = np.arange(B)  # original row of each decoded row (-1: filler)
  t = 0
  _SCHEDULE.clear()
  repacked = False
  while True:
    tic = time.perf_counter()
    resp, carry, cols = _chunk_jit(graphdef, state, shared, resp, carry, keys, jnp.int32(min(t + C, max_new)),
                                   *sample_args, n_steps=C, mesh=mesh, gather=gather, **static)
    t_end = int(carry["t"])
    done = to_host(carry["done"])   # to_host: every process gets all rows (a gather when multi-process)
    _SCHEDULE.append(dict(t0=t, steps=t_end - t, rows=len(rows), slots=A, seconds=time.perf_counter() - tic))
    if repacked:   # the caches the last re-pack replaced are freed now: hand their pages back before the next
      release_host_memory()   # (larger) one, or glibc keeps every size's blocks (2048 tokens: 12.1 GB peak RSS)
      repacked = False
    real = rows >= 0
    for name, col in zip(("tokens", "logp", "raw", "mask"), cols):
      out[name][rows[real], t:t_end] = to_host(col)[real, :t_end - t]
    stopped[rows[real]] = to_host(carry["stopped"])[real]
    t = t_end
    if t >= max_new or done.all():
      break
    A_next = _slots(t, C, Nb)
    live = np.flatnonzero(~done)
    n_rows = -(-(1 << (len(live) - 1).bit_length()) // n_dev) * n_dev
    idx = keep = None
    if compact and n_rows < len(rows):
      idx = np.concatenate([live, np.full(n_rows - len(live), live[0])]).astype(np.int32)
      keep = np.arange(n_rows) < len(live)
      rows = np.where(keep, rows[idx], -1)
      if mesh is not None:
        idx, keep = (_put_rows(a, mesh) for a in (idx, keep))
    if idx is not None or A_next > A:
      shared, resp, carry, keys = _repack(shared, resp, carry, keys, idx, keep, n_slots=A_next, mesh=mesh)
      A, repacked = A_next, True
  return out, stopped, t


# ----------------------------------------------------------------------------- gathered weights

GATHER_HEADROOM = 0.95   # "auto" gathers when the decode's estimated bytes per device are <= this x its memory


def _shard_bytes(a, sharding=None) -> int:
  """Bytes of one device's shard of array (or ShapeDtypeStruct) `a` under `sharding` (default: its own)."""
  sh = sharding if sharding is not None else getattr(a, "sharding", None)
  shape = sh.shard_shape(a.shape) if hasattr(sh, "shard_shape") else a.shape
  return math.prod(shape) * jnp.dtype(a.dtype).itemsize


def decode_bytes(cfg, state, mesh, *, prompts: int, prompt_len: int, rows: int, max_new: int, gather: bool) -> dict:
  """Estimated bytes per device while decoding (the largest chunk): {params, weights, caches, logits, total}.

  cfg: the model's DecoderConfig; state: its params (arrays or ShapeDtypeStructs with shardings on `mesh`);
  prompts x prompt_len: the (bucketed) prefill batch; rows = prompts x G decoded rows, each with a
  max_new-slot response cache. params: the resident shards of `state`; weights: the compute-dtype copy of the
  layers and the LM head the decode reads (gathered: whole on every device but for a "tensor" split; else
  split like the params); caches: prompt + response KV caches (rows split over the batch axes); logits: a few
  f32 [rows, V] blocks of the device's rows.
  """
  n = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.axis_names)
  cdt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
  sdt = cfg.cache_dtype or (jnp.float32 if jax.default_backend() == "cpu" else cdt)
  kv = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(sdt).itemsize
  params = sum(_shard_bytes(a) for a in jax.tree.leaves(state) if hasattr(a, "shape"))
  weights = 0
  specs = gathered_layer_specs(cfg, mesh)
  for name, shape in transformer.param_shapes(cfg).items():
    full = jax.ShapeDtypeStruct((cfg.num_layers, *shape), pdt if "norm" in name else cdt)
    spec = PartitionSpec(None, *specs[name]) if gather else None
    weights += _shard_bytes(full, NamedSharding(mesh, spec)) if gather else math.prod(full.shape) * full.dtype.itemsize // n
  head = cfg.hidden_size * cfg.vocab_size * cdt.itemsize
  weights += _shard_bytes(jax.ShapeDtypeStruct((cfg.hidden_size, cfg.vocab_size), cdt),
                          NamedSharding(mesh, specs["unembed"])) if gather else head // n
  caches = (prompts * prompt_len + rows * max_new) * kv // n
  logits = rows * cfg.vocab_size * 4 * 3 // n
  return dict(params=params, weights=weights, caches=caches, logits=logits,
              total=params + weights + caches + logits)


def device_memory(mesh):
  """Bytes of memory of one of `mesh`'s devices (this process's), or None where the backend does not say
  (the CPU; abstract TPU devices)."""
  try:
    dev = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    stats = dev.memory_stats()
  except Exception:   # noqa: BLE001 -- abstract devices, backends without memory stats
    return None
  return (stats or {}).get("bytes_limit")


def gather_weights_choice(setting, cfg, state, mesh, *, prompts: int, prompt_len: int, rows: int, max_new: int,
                          memory_bytes=None) -> bool:
  """Whether the decode gathers the layers' weights (see `generate`'s gather_weights).

  setting: True / False / "auto" (also "true" / "false"). "auto" gathers when the mesh splits the weights over
  "fsdp" (size > 1) and `decode_bytes(..., gather=True)["total"]` is at most GATHER_HEADROOM x the device's
  memory (memory_bytes, default `device_memory(mesh)`); a device whose memory is not known (the CPU, where the
  "interconnect" is a memory copy and the devices share the host's RAM) does not gather.
  """
  if setting in (True, "true"):
    return mesh is not None
  if setting in (False, "false"):
    return False
  if setting != "auto":
    raise ValueError(f"generate: gather_weights must be 'auto', True or False, got {setting!r}")
  if mesh is None or mesh.shape.get("fsdp", 1) <= 1:
    return False
  memory_bytes = memory_bytes if memory_bytes is not None else device_memory(mesh)
  if not memory_bytes:
    return False
  need = decode_bytes(cfg, state, mesh, prompts=prompts, prompt_len=prompt_len, rows=rows, max_new=max_new,
                      gather=True)["total"]
  return need <= GATHER_HEADROOM * memory_bytes


# ----------------------------------------------------------------------------- public API

def release_host_memory():
  """Returns the host memory freed by the decode loop to the OS (glibc `malloc_trim`; a no-op elsewhere).
  The sampler's host-side temporaries (chunk outputs, re-packed caches) are freed but glibc keeps the pages:
  on SmolLM2-135M at 64 rows x 64 tokens the process stayed 1.4-1.6 GB above its live memory after a call,
  and the update's temporaries came on top of that (peak RSS of a bench_step run 8.7 -> 4.9 GB, together
  with the update's smaller temporaries)."""
  if _LIBC is not None:
    _LIBC.malloc_trim(0)


def _load_libc():
  try:
    libc = ctypes.CDLL("libc.so.6")
    return libc if hasattr(libc, "malloc_trim") else None
  except OSError:   # not glibc (macOS, musl): nothing to do
    return None


_LIBC = _load_libc()


def left_pad(seqs, pad_id: int = 0, width: int | None = None):
  """list of P non-empty token lists -> (int32 [P,W], bool [P,W]) left-padded numpy, W = width or the longest
  (a longer sequence keeps its last W tokens)."""
  if not seqs:
    raise ValueError("generate: prompts is empty")
  lens = [len(p) for p in seqs]
  if min(lens) == 0:
    raise ValueError(f"generate: prompts[{lens.index(0)}] is empty")
  W = width or max(lens)
  toks = np.full((len(seqs), W), pad_id, np.int32)
  mask = np.zeros((len(seqs), W), bool)
  for i, p in enumerate(seqs):
    p = np.asarray(p, np.int32)[-W:]
    toks[i, W - len(p):] = p
    mask[i, W - len(p):] = True
  return toks, mask


def _left_pad(prompts, prompt_mask, pad_id):
  """list of token lists, or int [P,L] (+ mask) -> (int32 [P,L], bool [P,L]) left-padded numpy."""
  if isinstance(prompts, (list, tuple)):
    return left_pad(prompts, pad_id)
  toks = np.asarray(prompts)
  if toks.ndim != 2 or not np.issubdtype(toks.dtype, np.integer):
    raise ValueError(f"generate: prompts must be int [P,L] or a list of token lists, got {toks.dtype} {toks.shape}")
  mask = np.ones(toks.shape, bool) if prompt_mask is None else np.asarray(prompt_mask).astype(bool)
  if mask.shape != toks.shape:
    raise ValueError(f"generate: prompt_mask shape {mask.shape} != prompts shape {toks.shape}")
  if not mask[:, -1].all():
    raise ValueError("generate: prompts must be LEFT-padded (prompt_mask[:, -1] all True)")
  return toks.astype(np.int32), mask


def _row_keys(rng, n_rows):
  """rng: one key (typed or raw uint32[2]) or n_rows keys -> typed keys [n_rows]."""
  if not jax.dtypes.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(jnp.asarray(rng, jnp.uint32))
  if rng.ndim == 0:
    return jax.random.split(rng, n_rows)
  if rng.shape != (n_rows,):
    raise ValueError(f"generate: rng must be one key or P*G={n_rows} keys, got key shape {rng.shape}")
  return rng


def generate(model, prompts, *, group_size: int, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, eos_ids: Sequence[int] = (), pad_id: int = 0,
             rng, prompt_mask=None, mesh=None, bucket_shapes: bool = True,
             shared_prompt_cache: bool = True, chunk_size: int = 128, compact: bool = True,
             gather_weights="auto") -> SampleOutput:
  """Samples `group_size` responses for each prompt. See the module docstring.

  model: a `models.Decoder` (or a `(graphdef, state)` pair from `nnx.split(model)`).
  prompts: int [P,L] left-padded (with `prompt_mask` bool [P,L]) or a list of P token lists.
  temperature: 0 = greedy. top_k: 0 = off. top_p: 1 = off. eos_ids: () = never stop early.
  rng: a key (rows use split(rng, P*G)) or P*G keys (one per row).
  mesh: optional `jax.sharding.Mesh`; the batch is sharded over its ("data", "fsdp") axes.
  bucket_shapes: round P, L and max_new_tokens up to buckets (few compilations); outputs are
    sliced back, and the samples do not depend on the buckets.
  shared_prompt_cache: decode with the prompt KV cache shared by the G rows of a group (read once
    per group; needs a `models.Decoder`). False: the generic `model.step` on a cache repeated G times,
    in one while loop over the full max_new_tokens cache (the reference path: no chunks, no compaction).
  chunk_size: decode steps per compiled chunk (shared path); the response cache attended in a chunk
    holds under 1.5 (t + chunk_size) slots, so per-step attention tracks the filled length.
  compact: between chunks, re-pack the running rows into a batch of the next power of two once at
    most half of the rows run (same samples: row keys and per-row math do not depend on the batch).
  gather_weights: with a mesh (shared prompt cache path), True gathers the compute-dtype copy of the layers'
    weights and the LM head once per call (replicated over the batch axes "data"/"fsdp", a "tensor" split
    kept) and decodes each device's own rows with them: no per-layer all-reduce of all rows' activations in
    the decode loop, at the cost of the whole weights on every device. False: they stay split like the params
    (FSDP) and every layer of every step all-reduces partial sums of all rows. "auto": True when the mesh
    splits the weights over "fsdp" and the estimate fits the device's memory (`gather_weights_choice`).
    The samples are the same either way (up to float summation order).
  -> SampleOutput with P*G rows and N = max_new_tokens columns.
  """
  if group_size < 1:
    raise ValueError(f"generate: group_size must be >= 1, got {group_size}")
  if max_new_tokens < 1:
    raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0:
    raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
  if top_k < 0:
    raise ValueError(f"generate: top_k must be >= 0, got {top_k}")
  if chunk_size < 1:
    raise ValueError(f"generate: chunk_size must be >= 1, got {chunk_size}")
  if not any(gather_weights is v or gather_weights == v for v in ("auto", "true", "false", True, False)):
    raise ValueError(f"generate: gather_weights must be 'auto', True or False, got {gather_weights!r}")
  if isinstance(model, tuple):
    graphdef, state = model
  else:
    graphdef, state = nnx.split(model)
  toks, mask = _left_pad(prompts, prompt_mask, pad_id)
  P, L = toks.shape
  G = group_size
  n_dev = 1
  if mesh is not None:
    n_dev = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.axis_names)
  if bucket_shapes:
    Pb, Lb, Nb = bucket(P, 1), bucket(L, 16), bucket(max_new_tokens, 16)
  else:
    Pb, Lb, Nb = P, L, max_new_tokens
  Pb = -(-Pb // n_dev) * n_dev  # the prefill batch is sharded too
  # left-pad to Lb, then add dummy prompts (one pad token) up to Pb.
  toks = np.concatenate([np.full((P, Lb - L), pad_id, np.int32), toks], axis=1)
  mask = np.concatenate([np.zeros((P, Lb - L), bool), mask], axis=1)
  dummy_t = np.full((Pb - P, Lb), pad_id, np.int32)
  dummy_m = np.zeros((Pb - P, Lb), bool)
  dummy_m[:, -1] = True
  toks_b, mask_b = np.concatenate([toks, dummy_t]), np.concatenate([mask, dummy_m])

  keys = _row_keys(rng, P * G)
  if Pb > P:
    extra = jax.random.split(jax.random.fold_in(keys[0], 0x7FFFFFFF), (Pb - P) * G)
    keys = jnp.concatenate([keys, extra])
  active = np.arange(Pb * G) < P * G
  eos_ids = [int(e) for e in eos_ids]
  if any(e < 0 for e in eos_ids):
    raise ValueError(f"generate: eos_ids must be >= 0, got {eos_ids}")
  eos = np.full(bucket(len(eos_ids), 4), -1, np.int32)  # a runtime array: no recompilation per EOS set
  eos[:len(eos_ids)] = eos_ids
  args = (toks_b, mask_b, keys, active)
  gather = False
  if mesh is not None:
    mesh = _auto_mesh(mesh)
    args = tuple(_put_rows(a, mesh) for a in args)
    state = jax.tree.map(lambda x: _to_auto(x, mesh), state)
    if shared_prompt_cache:
      cfg = model.cfg if not isinstance(model, tuple) else nnx.merge(graphdef, state).cfg
      gather = gather_weights_choice(gather_weights, cfg, state, mesh, prompts=Pb, prompt_len=Lb, rows=Pb * G,
                                     max_new=Nb)

  sample_args = (jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p), jnp.int32(pad_id),
                 jnp.asarray(eos, jnp.int32))
  static = dict(greedy=temperature == 0, top_k=int(top_k), use_top_p=top_p < 1.0,
                plain=temperature == 1.0 and top_k == 0 and top_p >= 1.0)
  if shared_prompt_cache:
    o, stopped, steps = _decode_chunked(graphdef, state, *args, max_new_tokens, sample_args, G=G, Nb=Nb,
                                        chunk=int(chunk_size), compact=compact, n_dev=n_dev, mesh=mesh,
                                        static=static, gather=gather)
    put = (lambda a: _put_rows(a, mesh)) if mesh is not None else jnp.asarray
    tokens, logp, raw, rmask, stopped = (put(a) for a in (o["tokens"], o["logp"], o["raw"], o["mask"], stopped))
    steps = jnp.int32(steps)
  else:
    tokens, logp, raw, rmask, stopped, steps = _generate_jit(
        graphdef, state, *args, jnp.int32(max_new_tokens), *sample_args, group_size=G, n_bucket=Nb,
        mesh=mesh, **static)
  release_host_memory()
  R, N = P * G, max_new_tokens
  rmask = rmask[:R, :N]
  return SampleOutput(
      tokens=tokens[:R, :N], logprobs=logp[:R, :N], model_logprobs=raw[:R, :N], mask=rmask,
      lengths=rmask.sum(-1).astype(jnp.int32), stopped=stopped[:R],
      prompt_tokens=jnp.repeat(jnp.asarray(toks[:, Lb - L:]), G, axis=0),
      prompt_mask=jnp.repeat(jnp.asarray(mask[:, Lb - L:]), G, axis=0), num_steps=steps)
