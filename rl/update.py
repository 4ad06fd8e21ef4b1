"""The policy update: optimizer, trainer log-probs, and the jitted update over epochs x minibatches.

    tx, schedule = make_optimizer(config.optim, updates_per_step, total_steps)
    logp_fn = make_logp_fn(graphdef, sampling)                  # jitted; sampling = (temperature, top_k, top_p)
    old_logp = forward(logp_fn, params, arrays, micro, mesh)     # f32 [N,T] numpy, in micro-batches
    update = make_update_fn(graphdef, tx, loss_static(config.loss), sampling)
    params, opt_state, metrics = run_epochs(update, params, opt_state, arrays, loss_hparams(config.loss), ...)

`arrays` is a dict of numpy arrays named as the fields of `rl.rollout.Batch` (N rows, T response tokens,
L prompt tokens): prompt int32 [N,L], prompt_mask bool [N,L], tokens int32 [N,T], mask bool [N,T] (valid
response tokens), keep bool [N] (rows that enter the loss), adv f32 [N], logprobs f32 [N,T] (the sampler's
log-probs, for the mismatch correction), optionally sampled bool [N] (rows the sampler drew: the others,
injected solutions and SFT rows, get no mismatch correction), old_logp f32 [N,T] and ref_logp f32 [N,T].

Work that cannot change the update is skipped, exactly (tests/test_update_skips.py):
  - without old_logp (one update per step: ppo_epochs = minibatches = 1) the old policy is the current one:
    the loss uses stop_gradient of the update's own forward (ratio 1), no separate forward pass;
  - `live_rows`: rows with keep False, no valid token, or (without a KL / entropy term) a zero advantage add
    exactly 0 to the loss and the gradient; run_epochs moves the others to the front of the minibatch and the
    update skips (lax.cond) the micro-batches left without a kept token, keeping the full minibatch's loss
    denominators and one compiled shape; a minibatch with no live row is not applied at all (no optimizer
    step; counted in `skipped_zero_adv`);
  - trim: the columns after the longest live response and before the longest live prompt (left padding) are
    cut, to bucketed widths (positions come from the attention mask, so cutting all-pad columns changes nothing);
  - share (train.share_prompt): the rows of a minibatch ordered by prompt, each micro-batch's distinct prompts
    run through the layers once (`group_prompts`, `Decoder.shared_prompt_logprobs`): causal attention makes
    the prompt's hidden states independent of the response;
  - always: the LM head only over the positions that predict a response token (not the prompt's).

The trainer's log-probs are those of the distribution the sampler drew from: the same temperature and the
top-k / top-p masks replayed (`Decoder.token_logprobs(..., temperature, top_k, top_p)`).
"""
import contextlib
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as PS

import sampling
from models import sharding, transformer
from rl import losses
from rl.outputs import note

SCHEDULES = ("constant", "linear", "cosine")
_SEEN = set()   # (function, shapes) already compiled in this process: announce only new compilations


def make_optimizer(oc, updates_per_step, total_steps):
  """config.optim -> (optax transform, schedule). The schedule counts optimizer updates."""
  total = max(1, updates_per_step * total_steps)
  warm = oc.warmup_steps * updates_per_step
  decay = {"constant": lambda: optax.constant_schedule(oc.lr),
           "linear": lambda: optax.linear_schedule(oc.lr, 0.0, max(1, total - warm)),
           "cosine": lambda: optax.cosine_decay_schedule(oc.lr, max(1, total - warm))}[oc.schedule]()
  sched = optax.join_schedules([optax.linear_schedule(0.0, oc.lr, warm), decay], [warm]) if warm else decay
  tx = optax.chain(optax.clip_by_global_norm(oc.grad_clip) if oc.grad_clip > 0 else optax.identity(),
                   optax.adamw(sched, b1=oc.b1, b2=oc.b2, eps=oc.eps, weight_decay=oc.weight_decay))
  return tx, sched


def opt_state_shardings(tx, params, mesh):
  """-> shardings of tx.init(params): every sub-tree shaped like `params` (AdamW's mu and nu) is sharded like
  the params, the rest (step counts) replicated. Needed because jit(tx.init) on its own leaves the moments on
  ONE device (they do not depend on the params' values, so nothing propagates their sharding).
  params may be arrays or jax.ShapeDtypeStructs with shardings (experiments/plan.py)."""
  pdef = jax.tree.structure(params)
  psh = jax.tree.map(lambda x: x.sharding, params)
  like = lambda x: jax.tree.structure(x) == pdef
  rep = NamedSharding(mesh, PS())
  return jax.tree.map(lambda x: psh if like(x) else rep, jax.eval_shape(tx.init, params), is_leaf=like)


def init_opt(tx, params, mesh):
  """Optimizer state on the mesh: moments sharded like params, scalars replicated (as the update returns)."""
  return jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params, mesh))(params)


def state_shardings(tx, params, mesh):
  """-> the update's out_shardings (make_update_fn's `shardings`): (params' own shardings, `opt_state_shardings`,
  replicated metrics). params: arrays or jax.ShapeDtypeStructs with shardings (experiments/plan.py)."""
  return (jax.tree.map(lambda x: x.sharding, params), opt_state_shardings(tx, params, mesh),
          NamedSharding(mesh, PS()))


def put(tree, mesh, axis=0):
  """numpy arrays -> device arrays with dimension `axis` (rows) split over the mesh's batch axes."""
  return jax.tree.map(lambda a: sharding.shard_batch(a, mesh, axis), tree)


def announce(what, fn, tree):
  """Prints 'compiling <what>' before the first call of `fn` with these shapes in this process."""
  key = (id(fn), tuple((k, v.shape) for k, v in sorted(tree.items())))
  if key not in _SEEN:
    _SEEN.add(key)
    note(f"compiling {what} (first call with these shapes)...")
    return time.perf_counter()
  return None


# ============================================================================ jitted functions

def seq_logprobs(graphdef, params, x, sampling=(1.0, 0, 1.0)):
  """Log-probs of the response tokens under the sampling distribution, and the model's entropy.

  x: prompt [B,L] int32, prompt_mask [B,L] bool, tokens [B,T] int32, mask [B,T] bool; or, with prompt_idx
  int32 [B] (`group_prompts`), prompt / prompt_mask [U,L] holding each distinct prompt once (row b's prompt is
  prompt[prompt_idx[b]]; the prompt part of the forward and backward then runs once per distinct prompt,
  `Decoder.shared_prompt_logprobs`, except at widths that need the blockwise attention).
  sampling: static (temperature, top_k, top_p) of the sampler. -> (logp [B,T], entropy [B,T]) f32.
  """
  temperature, top_k, top_p = sampling
  model = nnx.merge(graphdef, params)
  prompt, prompt_mask = x["prompt"], x["prompt_mask"]
  chunk = max(1, HEAD_TOKENS // x["tokens"].shape[0])   # time steps per [B,chunk,V] LM-head block
  if "pk_tok" in x:   # packed responses (`pack_minibatch`)
    pack = {k[3:]: x[k] for k in x if k.startswith("pk_")}
    return model.packed_prompt_logprobs(prompt, prompt_mask, x["prompt_idx"], x["tokens"], x["mask"], pack,
                                        temperature=temperature, top_k=top_k, top_p=top_p,
                                        chunk_size=max(1, HEAD_TOKENS // x["pk_tok"].shape[0]))
  if "prompt_idx" in x:
    if prompt.shape[1] + x["tokens"].shape[1] - 1 < transformer._FLASH_MIN_T:
      return model.shared_prompt_logprobs(prompt, prompt_mask, x["prompt_idx"], x["tokens"], x["mask"],
                                          temperature=temperature, top_k=top_k, top_p=top_p, chunk_size=chunk)
    prompt, prompt_mask = prompt[x["prompt_idx"]], prompt_mask[x["prompt_idx"]]   # long: the flash path
  full = jnp.concatenate([prompt, x["tokens"]], axis=1)
  attn = jnp.concatenate([prompt_mask, x["mask"]], axis=1)
  # the LM head only where a response token is predicted: input positions L-1 .. L+T-2
  return model.token_logprobs(full[:, :-1], full[:, 1:], attention_mask=attn[:, :-1], temperature=temperature,
                              top_k=top_k, top_p=top_p, start=prompt.shape[1] - 1, chunk_size=chunk)


HEAD_TOKENS = 256   # tokens per LM-head block: one [256, V] f32 logits block is 50 MB at V = 49152 (the update
                    # keeps ~6 such blocks live in its backward pass)


_FN_CACHE = {}   # jitted functions shared by Trainers with the same model and loss/optimizer config


def cached(key, build):
  if key not in _FN_CACHE:
    _FN_CACHE[key] = build()
  return _FN_CACHE[key]


def in_mesh(mesh):
  """Context for tracing the model under `mesh` (an abstract mesh: allowed inside jit), so its activations stay
  split over the batch axes (models.transformer.split_rows); mesh None: no context (nothing constrained)."""
  return contextlib.nullcontext() if mesh is None else jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def make_logp_fn(graphdef, sampling, mesh=None):
  """-> jitted (params, x) -> (logp, entropy), see `seq_logprobs`; mesh: the params' mesh (`in_mesh`)."""
  def logp(params, x):
    with in_mesh(mesh):
      return seq_logprobs(graphdef, params, x, sampling)
  return jax.jit(logp)


def forward(logp_fn, params, arrays, micro, mesh, rows=None, trim=False, share=False):
  """Response log-probs f32 [N,T] (numpy) in micro-batches of `micro` rows (0 = all at once).

  rows: bool [N] or None (all): only these rows are computed (compacted to a bucketed count, see `compact`);
  the others are 0. trim: cut all-pad response / prompt columns first (see `compact`). share: rows ordered by
  prompt and each micro-batch's distinct prompts computed once (`group_prompts`)."""
  keys = ("prompt", "prompt_mask", "tokens", "mask")
  n, T = arrays["tokens"].shape
  sub = {k: arrays[k] for k in keys}
  idx = np.arange(n) if rows is None else np.nonzero(rows)[0]
  if not len(idx):
    return np.zeros((n, T), np.float32)
  micro = split_micro(micro, n, rows is not None)
  if share:
    idx = idx[np.argsort(prompt_groups(sub)[idx], kind="stable")]
  if rows is not None or trim or share:   # a Python loop over micro-batches of one shape: pad to a multiple of micro
    sub = compact(sub, idx, -(-len(idx) // micro) * micro, trim=trim)
  m = len(sub["tokens"])
  if share:
    sub = group_prompts({k: v.reshape(m // micro, micro, *v.shape[1:]) for k, v in sub.items()})
  parts = []
  for s in range(0, m, micro):
    piece = ({k: v[s // micro] for k, v in sub.items()} if share else {k: v[s:s + micro] for k, v in sub.items()})
    t0 = announce("the trainer's log-prob forward", logp_fn, piece)
    parts.append(sharding.to_host(logp_fn(params, put(piece, mesh))[0]))   # multi-process: gathered
    if t0 is not None:
      note(f"  compiled and ran in {time.perf_counter() - t0:.1f} s")
  out = np.zeros((n, T), np.float32)
  logp = np.concatenate(parts, 0)[:len(idx)]
  out[idx, :logp.shape[1]] = logp
  return out


# ============================================================================ exact skips (host side)

def live_rows(arrays, zero_adv_grad):
  """bool [N]: the rows that can change the update: kept, with a valid token and, unless `zero_adv_grad`, a
  non-zero advantage (adv [N] or [N,T]). Every policy-gradient term of rl.losses.policy_loss is a multiple of the
  advantage (also after clipping, dual clip, GSPO / CISPO and the mismatch weights), so a zero-advantage row adds
  exactly 0 to the loss and the gradient unless a KL or entropy term is on: zero_adv_grad = kl_coef != 0 with
  a reference, or entropy_coef != 0 (`zero_adv_has_gradient`)."""
  live = np.asarray(arrays["keep"], bool) & np.asarray(arrays["mask"], bool).any(1)
  if not zero_adv_grad:
    adv = np.asarray(arrays["adv"])
    live &= (adv != 0) if adv.ndim == 1 else (adv != 0).any(1)   # NaN != 0: NaN rows stay (the guard sees them)
  return live


def zero_adv_has_gradient(lc):
  """config.loss -> whether zero-advantage rows still carry a gradient (KL to a reference, entropy bonus)."""
  return bool((lc.kl_kind != "none" and lc.kl_coef != 0) or lc.entropy_coef != 0)


def split_micro(micro, rows, skipping):
  """Rows per micro-batch: config.train.micro_batch_size, or with 0 (the whole minibatch at once) a quarter of the
  minibatch when rows are skipped (whole micro-batches without a live row are then not computed, at one compiled
  shape; exact: the loss denominators are the minibatch's) and `rows` splits in 4, else all `rows`."""
  if micro:
    return micro
  return rows // 4 if skipping and rows % 4 == 0 and rows >= 8 else rows


def compact(arrays, idx, n_rows, *, trim, trim_response=True):
  """The rows `idx` of arrays [N,...], padded to n_rows by copies of row idx[-1] with keep = sampled = False
  (finite inputs, zero loss weight; the last row's prompt, so `group_prompts` adds no distinct prompt),
  optionally with all-pad columns cut (trim_response=False: the prompt columns only).

  trim: response columns (axis 1 of tokens, mask, logprobs, old_logp, ref_logp) cut after the longest response
  among idx (bucketed: sampling.bucket(., 16)), prompt columns (prompt, prompt_mask) cut before the longest prompt
  (bucketed: sampling.bucket(., 8)); both never wider than before.
  """
  idx = np.asarray(idx)
  pad = n_rows - len(idx)
  take = np.concatenate([idx, np.full(pad, idx[-1])]) if pad > 0 else idx
  out = {k: v[take] for k, v in arrays.items()}
  if pad > 0:
    for k in ("keep", "sampled"):
      if k in out:
        out[k] = out[k].copy()
        out[k][len(idx):] = False
  if trim:
    T, L = out["tokens"].shape[1], out["prompt"].shape[1]
    cols = np.nonzero(out["mask"][:len(idx)].any(0))[0]
    t = min(T, sampling.bucket(int(cols[-1]) + 1 if len(cols) else 1, 16)) if trim_response else T
    pcols = np.nonzero(out["prompt_mask"][:len(idx)].any(0))[0]
    l = min(L, sampling.bucket(L - int(pcols[0]) if len(pcols) else 1, 8))
    for k in ("tokens", "mask", "logprobs", "old_logp", "ref_logp"):
      if k in out:
        out[k] = out[k][:, :t]
    for k in ("prompt", "prompt_mask"):
      out[k] = out[k][:, L - l:]
  return out


def prompt_groups(arrays):
  """int [N]: the same id for rows with the same prompt (tokens and mask), ids in order of first appearance."""
  key = np.concatenate([np.asarray(arrays["prompt"]), np.asarray(arrays["prompt_mask"], np.int32) * -1], 1)
  _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
  rank = np.empty(len(first), np.int64)
  rank[np.argsort(first, kind="stable")] = np.arange(len(first))
  return rank[inv.reshape(-1)]


def group_prompts(mb):
  """Micro-batches mb [M, micro, ...] -> the same with each micro-batch's distinct prompts stored once: prompt /
  prompt_mask [M,U,L] and prompt_idx int32 [M,micro] (row b of micro-batch m: prompt[m, prompt_idx[m, b]]), U = the
  most distinct prompts in a micro-batch, bucketed to a power of two (unused slots: copies of the first prompt,
  attended by no row). Returns mb unchanged when that saves nothing (U would be `micro`).
  Exact: causal attention makes the prompt's part of the forward independent of the response (see
  `Decoder.shared_prompt_logprobs`)."""
  M, micro, L = mb["prompt"].shape
  ids = [prompt_groups({"prompt": p, "prompt_mask": m}) for p, m in zip(mb["prompt"], mb["prompt_mask"])]
  u = max(int(i.max()) + 1 for i in ids)
  U = 1 << (u - 1).bit_length()
  if U >= micro:
    return mb
  prompt = np.empty((M, U, L), mb["prompt"].dtype)
  pmask = np.empty((M, U, L), bool)
  for m, i in enumerate(ids):
    first = np.zeros(U, np.int64)                       # slot -> a row holding that prompt (slot 0 for unused)
    first[i[::-1]] = np.arange(micro)[::-1]
    prompt[m], pmask[m] = mb["prompt"][m][first], mb["prompt_mask"][m][first]
  return {**mb, "prompt": prompt, "prompt_mask": pmask, "prompt_idx": np.stack(ids).astype(np.int32)}


PACK_PER_ROW = 8   # responses per packed row at most: a micro-batch's row arrays are then a fixed [8 R, T]


def pack_minibatch(sub, n_live, R, M):
  """A minibatch whose first n_live rows are the live ones, ordered by prompt (`compact` after the prompt sort)
  -> M micro-batches with the responses PACKED (`Decoder.packed_prompt_logprobs`): every response's inputs
  (its n_b - 1 tokens before the last valid one, at least one column) go first-fit-decreasing into packed rows of
  width W = T holding responses of one prompt (at most PACK_PER_ROW each); the packed rows fill the M micro-batches
  in order, R per micro-batch (fixed: one compiled shape for any number of packed rows; `run_epochs` uses
  R = micro / 4, so the update computes the live packed rows in steps of a quarter micro-batch and skips the
  empty micro-batches).

  sub: the `arrays` [N, ...] of the module docstring (N >= n_live). Returns a dict of [M, ...] arrays:
    the row arrays (tokens, mask, keep, adv, ...) [M,C,...]: the responses of each micro-batch, padded to
      C = PACK_PER_ROW * R with copies of row n_live - 1 with keep = sampled = False (zero loss weight);
    prompt / prompt_mask [M,U,L]: each micro-batch's distinct prompts (U a power of two), prompt_idx int32 [M,C];
    pk_tok, pk_tgt, pk_seg, pk_pos int32, pk_ok bool [M,R,W]; pk_prompt int32 [M,R]; pk_row, pk_off int32 [M,C]
      (the `pack` argument of `Decoder.packed_prompt_logprobs`, per micro-batch).
  Micro-batches after the last used one hold only padding rows (the update skips them). Exact: a packed query
  attends only to its prompt and its own response, the loss sees the unpacked [C,T] log-probs, and the loss
  denominators are the whole minibatch's (`host_denominators`).
  """
  tokens, mask = np.asarray(sub["tokens"]), np.asarray(sub["mask"], bool)
  T, L = tokens.shape[1], sub["prompt"].shape[1]
  W = T
  live = np.arange(n_live)
  last = np.where(mask[:n_live].any(1), T - np.argmax(mask[:n_live, ::-1], 1), 1)     # n_b: last valid + 1
  slots = np.maximum(last - 1, 1)
  groups = prompt_groups({"prompt": sub["prompt"][:n_live], "prompt_mask": sub["prompt_mask"][:n_live]})
  bins = []   # [group, fill, [(row, offset), ...]]
  for g in range(int(groups.max()) + 1 if n_live else 0):
    mine = []
    for b in sorted(live[groups == g], key=lambda b: -slots[b]):
      box = next((x for x in mine if x[1] + slots[b] <= W and len(x[2]) < PACK_PER_ROW), None)
      if box is None:
        box = [g, 0, []]
        mine.append(box)
      box[2].append((b, box[1]))
      box[1] += slots[b]
    bins += mine
  if len(bins) > R * M:
    raise AssertionError(f"pack_minibatch: {len(bins)} packed rows do not fit {M} micro-batches of {R}")
  per_mb = [bins[i * R:(i + 1) * R] for i in range(M)]
  C = PACK_PER_ROW * R
  U = 1 << (max(1, max(len({x[0] for x in mbins}) for mbins in per_mb)) - 1).bit_length()
  pad_row = max(n_live - 1, 0)
  take = np.full((M, C), pad_row)
  alive = np.zeros((M, C), bool)
  slot_g = np.zeros((M, U), np.int64)                     # micro-batch prompt slot -> group
  out = {k: np.zeros((M, R, W), np.int32) for k in ("pk_tok", "pk_tgt", "pk_pos")}
  out["pk_seg"] = np.full((M, R, W), -1, np.int32)
  out["pk_ok"] = np.zeros((M, R, W), bool)
  out["pk_prompt"] = np.zeros((M, R), np.int32)
  out["pk_row"] = np.zeros((M, C), np.int32)
  out["pk_off"] = np.zeros((M, C), np.int32)
  prompt_idx = np.zeros((M, C), np.int32)
  plen = np.asarray(sub["prompt_mask"], bool).sum(1)
  for m, mbins in enumerate(per_mb):
    gslot, c = {}, 0
    for r, (g, _, members) in enumerate(mbins):
      u = gslot.setdefault(g, len(gslot))
      slot_g[m, u] = g
      out["pk_prompt"][m, r] = u
      for b, off in members:
        n = slots[b]
        valid = mask[b, :n]
        out["pk_tok"][m, r, off:off + n] = tokens[b, :n]
        out["pk_tgt"][m, r, off:off + n] = tokens[b, 1:n + 1] if n + 1 <= T else np.append(tokens[b, 1:n + 1], 0)
        out["pk_pos"][m, r, off:off + n] = np.maximum(plen[b] + np.cumsum(valid) - 1, 0)
        out["pk_ok"][m, r, off:off + n] = valid
        out["pk_seg"][m, r, off:off + n] = c
        take[m, c], alive[m, c] = b, True
        out["pk_row"][m, c], out["pk_off"][m, c], prompt_idx[m, c] = r, off, u
        c += 1
  first_of = np.zeros(int(groups.max()) + 1 if n_live else 1, np.int64)   # group -> a row holding its prompt
  first_of[groups[::-1]] = live[::-1]
  rows = {k: np.asarray(v)[take] for k, v in sub.items() if k not in ("prompt", "prompt_mask")}
  for k in ("keep", "sampled"):
    if k in rows:
      rows[k] = rows[k] & alive
  pk = first_of[slot_g]                                                   # [M,U] source rows of the prompts
  return {**rows, **out, "prompt": np.asarray(sub["prompt"])[pk], "prompt_mask": np.asarray(sub["prompt_mask"])[pk],
          "prompt_idx": prompt_idx}


def host_denominators(mask, agg, max_len):
  """Loss denominators of a whole minibatch (mask & keep, bool [n,T]) as device scalars, plus max_len (the
  Dr.GRPO normaliser: the uncut response width) -> dict for update(..., denoms)."""
  d = losses.loss_denominators(np.asarray(mask, np.float32), agg)
  return {**{k: jnp.float32(v) for k, v in d.items()}, "max_len": jnp.float32(max_len)}


def loss_static(lc):
  """The compile-time part of config.loss (the coefficients are runtime `loss_hparams`)."""
  return dict(loss_type=lc.loss_type, agg=lc.agg, dual_clip=lc.dual_clip or None,
              kl_kind=lc.kl_kind if lc.kl_kind != "none" else "k3", is_level=lc.is_level, is_mode=lc.is_mode)


HPARAMS = ("clip_low", "clip_high", "kl_coef", "entropy_coef", "gspo_clip_low", "gspo_clip_high",
           "cispo_clip_high", "is_threshold")


def loss_hparams(lc):
  return {k: jnp.float32(lc[k]) for k in HPARAMS}


_SUMMED = ("pg_loss", "kl_loss", "entropy_loss", "num_tokens", "lp_gap_sum", "lp_gap_tokens")   # sums over micro-batches
_MAXED = ("is_ratio_max",)


def all_finite(tree):
  """bool scalar: every float leaf of a pytree is free of NaN/inf (non-float leaves count as finite)."""
  flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def make_update_fn(graphdef, tx, static, sampling=(1.0, 0, 1.0), donate=False, shardings=None):
  """-> jitted update(params, opt_state, mb, hp, denoms=None) with mb arrays [M, micro, ...] (M micro-batches).

  mb: the `arrays` of the module docstring. Without old_logp the old policy is the current one: the loss uses
  stop_gradient of this forward (on-policy ratio 1; only valid for one update per batch). With `sampled`, rows
  not drawn by the sampler use the old log-probs as sampler log-probs (no mismatch correction for them).
  hp: loss_hparams. denoms: None (the loss denominators of mb itself) or `host_denominators` of the whole
  minibatch mb was compacted from. static: loss_static. sampling: static (temperature, top_k, top_p).
  Returns (params, opt_state, metrics); metrics include lp_gap_sum / lp_gap_tokens: sum of |sampler - old|
  log-prob over the sampled kept tokens and their count. A micro-batch without any kept valid token is not
  computed (lax.cond: its loss, gradient and metrics are exactly 0), so compacted minibatches padded with such
  rows cost only their live micro-batches. The update is not applied (params/opt_state returned
  unchanged, metrics skipped=1) unless the loss, the gradient, the update (its global norm: lr=1e30 overflows
  it) and every leaf of the new params and optimizer state are finite: one fused reduction, no host sync.
  donate: donate the params and opt_state buffers to the outputs (the caller must not use the inputs
  afterwards: pass copies to keep them); without it every update allocates a second copy of both.
  shardings: the outputs' shardings, `state_shardings(tx, params, mesh)` of the params and optimizer state the
  update is called with, so that what it returns is what it was called with: its next call reuses the compiled
  executable. None: XLA picks the outputs' shardings, which can differ from the inputs' (the norms' and lm_head's
  specs, P() instead of an equivalent spec on size-1 axes), so feeding the outputs back compiles the update a
  second time (the trainer's step 2; minutes for a 7B model on a TPU).
  """
  sg = jax.lax.stop_gradient

  def loss_fn(params, x, hp, denoms):
    logp, ent = seq_logprobs(graphdef, params, x, sampling)
    m = x["mask"] & x["keep"][:, None]
    old = x["old_logp"] if "old_logp" in x else sg(logp)
    slp, drawn = x["logprobs"], m
    if "sampled" in x:
      slp = jnp.where(x["sampled"][:, None], slp, sg(old))
      drawn = m & x["sampled"][:, None]
    loss, met = losses.policy_loss(logp, old, x["adv"], m.astype(jnp.float32), ref_logp=x.get("ref_logp"),
                                   entropy=ent, sampler_logp=slp, **static, **hp, **denoms)
    drawn = drawn.astype(jnp.float32)
    met["lp_gap_sum"] = (jnp.abs(x["logprobs"] - sg(old)) * drawn).sum()
    met["lp_gap_tokens"] = drawn.sum()
    return loss, met

  @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else (),
                     **({} if shardings is None else dict(out_shardings=shardings)))
  def update(params, opt_state, mb, hp, denoms=None):
    with in_mesh(None if shardings is None else shardings[2].mesh):
      return update_in_mesh(params, opt_state, mb, hp, denoms)

  def update_in_mesh(params, opt_state, mb, hp, denoms):
    max_len = mb["tokens"].shape[-1]
    if denoms is None:
      m = mb["mask"] & mb["keep"][..., None]
      denoms = dict(losses.loss_denominators(m.reshape(-1, max_len), static["agg"]), max_len=jnp.float32(max_len))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(grads, x):
      def nothing(x):   # no kept token: exactly zero loss and gradient, zero metrics (num_tokens 0: weight 0)
        shapes = jax.eval_shape(grad_fn, params, x, hp, denoms)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      (loss, met), g = jax.lax.cond((x["mask"] & x["keep"][:, None]).any(),
                                    lambda x: grad_fn(params, x, hp, denoms), nothing, x)
      return jax.tree.map(jnp.add, grads, g), (loss, met)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (loss, mets) = jax.lax.scan(micro, zeros, mb)
    ntok = mets["num_tokens"]
    w = ntok / jnp.maximum(ntok.sum(), 1.0)
    met = {k: (v.sum() if k in _SUMMED else v.max() if k in _MAXED else (v * w).sum()) for k, v in mets.items()}
    met["loss"] = loss.sum()
    met["grad_norm"] = optax.global_norm(grads)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    met["update_norm"] = optax.global_norm(updates)
    finite = (jnp.isfinite(met["loss"]) & jnp.isfinite(met["grad_norm"]) & jnp.isfinite(met["update_norm"])
              & all_finite(new_params) & all_finite(new_opt))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    met["skipped"] = (~finite).astype(jnp.float32)
    return keep(new_params, params), keep(new_opt, opt_state), met

  return update


def run_epochs(update, params, opt_state, arrays, hp, tc, *, seed, step, mesh, rows=None, trim=False,
               agg="token-mean", share=False, pack=False):
  """config.train.ppo_epochs x minibatches updates over `arrays` (N rows) -> (params, opt_state, metrics).

  Minibatches are a fresh permutation of the rows per epoch (seeded by (seed, step)), each split into
  micro-batches of tc.micro_batch_size rows (`split_micro`). rows: bool [N] (`live_rows`) or None (all): each
  minibatch moves these rows to its front (`compact`; the update skips the micro-batches left without a kept
  token), with the loss denominators of the whole minibatch (agg: config.loss.agg); a minibatch without any is
  not applied. trim: cut all-pad columns (`compact`). share: each minibatch's rows ordered by prompt (the sum
  over rows does not depend on their order) and each micro-batch's distinct prompts computed once
  (`group_prompts`). pack (with share, at prompt + response widths below the flash threshold): the responses of a
  prompt packed into shared rows (`pack_minibatch`) of the full response width T (trim then cuts only prompt
  columns), run as micro-batches of micro_batch_size / 4 packed rows (`pack_minibatch`).
  metrics: floats averaged over the applied updates (is_ratio_max: max, skipped: summed; skipped_trailing: how
  many of the last updates were skipped in a row; skipped_zero_adv: minibatches with no live row, not applied;
  sampler_logp_diff: mean |sampler - old| log-prob over the sampled tokens of the rows that were forwarded;
  update_rows: rows computed per epoch (whole micro-batches with a kept token; padding included);
  update_prompt_rows: prompt rows computed per epoch (update_rows, or with `share` the distinct prompts);
  update_width: largest prompt + response width).
  """
  n, T = arrays["tokens"].shape
  mb_rows = n // tc.minibatches
  micro = split_micro(tc.micro_batch_size, mb_rows, rows is not None)
  perm_rng = np.random.default_rng([seed, step])
  groups = prompt_groups(arrays) if share else None
  mets, skipped_zero, fwd_rows, prompt_rows, width = [], 0, 0, 0, 0
  for epoch in range(tc.ppo_epochs):
    order = perm_rng.permutation(n) if tc.minibatches > 1 else np.arange(n)
    for k in range(tc.minibatches):
      idx = order[k * mb_rows:(k + 1) * mb_rows]
      if share:
        idx = idx[np.argsort(groups[idx], kind="stable")]
      denoms, sub = None, {key: v[idx] for key, v in arrays.items()}
      n_live = len(idx)
      # packed: the response width stays T (packing removes the padding; one compiled width fewer)
      use_pack = share and pack and arrays["prompt"].shape[1] + T - 1 < transformer._FLASH_MIN_T
      if rows is not None or trim:
        denoms = host_denominators(sub["mask"] & sub["keep"][:, None], agg, T)
        live = np.nonzero(rows[idx] if rows is not None else np.ones(len(idx), bool))[0]
        if not len(live):
          skipped_zero += 1
          continue
        sub, n_live = compact(sub, live, mb_rows, trim=trim, trim_response=not use_pack), len(live)
      width = max(width, sub["prompt"].shape[1] + sub["tokens"].shape[1])
      if use_pack:
        if denoms is None:
          denoms = host_denominators(sub["mask"] & sub["keep"][:, None], agg, T)
        R = max(1, micro // 4)
        mb = pack_minibatch(sub, n_live, R, -(-mb_rows // R))
        computed = mb["pk_tok"].shape[1]
      else:
        mb = {key: v.reshape(mb_rows // micro, micro, *v.shape[1:]) for key, v in sub.items()}
        if share:
          mb = group_prompts(mb)
        computed = micro
      busy = (mb["mask"] & mb["keep"][..., None]).any(-1).any(-1)   # micro-batches computed
      if epoch == 0:
        fwd_rows += int(busy.sum()) * computed
        prompt_rows += int(busy.sum()) * mb["prompt"].shape[1]
      t0 = announce("the update", update, mb)
      params, opt_state, met = update(params, opt_state, put(mb, mesh, axis=1), hp, denoms)
      if t0 is not None:
        jax.block_until_ready(met)
        note(f"  compiled and ran in {time.perf_counter() - t0:.1f} s")
      mets.append(met)
  mets = jax.tree.map(sharding.to_host, mets)   # multi-process: gathered
  out = {"skipped_zero_adv": float(skipped_zero), "update_rows": float(fwd_rows),
         "update_prompt_rows": float(prompt_rows), "update_width": float(width)}
  if not mets:   # nothing could change the parameters: no optimizer step at all
    return params, opt_state, {**dict.fromkeys(metric_keys(), 0.0), "is_ratio_max": 1.0, "is_ratio_mean": 1.0,
                               "is_weight_mean": 1.0, "skipped": 0.0, "skipped_trailing": 0.0,
                               "sampler_logp_diff": 0.0, **out}
  out.update({k: float(np.mean([x[k] for x in mets])) for k in mets[0]})
  out["is_ratio_max"] = float(np.max([x["is_ratio_max"] for x in mets]))
  out["skipped"] = float(np.sum([x["skipped"] for x in mets]))
  gap_tokens = float(np.sum([x["lp_gap_tokens"] for x in mets]))
  out["sampler_logp_diff"] = float(np.sum([x["lp_gap_sum"] for x in mets])) / max(gap_tokens, 1.0)
  trailing = 0   # updates skipped in a row at the end of this step (the trainer adds them up across steps)
  for x in reversed(mets):
    if not x["skipped"]:
      break
    trailing += 1
  out["skipped_trailing"] = float(trailing)
  return params, opt_state, out


@functools.cache
def metric_keys():
  """The names of the update's metrics (those of a step whose every minibatch was skipped are 0)."""
  loss_keys = jax.eval_shape(lambda: losses.policy_loss(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros((1,)),
                                                        jnp.ones((1, 1)), sampler_logp=jnp.zeros((1, 1))))[1]
  return tuple(loss_keys) + ("loss", "grad_norm", "update_norm", "lp_gap_sum", "lp_gap_tokens")
