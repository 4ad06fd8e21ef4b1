"""The policy update: optimizer, trainer log-probs, and the jitted update over epochs x minibatches.

    tx, schedule = make_optimizer(config.optim, updates_per_step, total_steps)
    logp_fn = make_logp_fn(graphdef, sampling)                  # jitted; sampling = (temperature, top_k, top_p)
    old_logp = forward(logp_fn, params, arrays, micro, mesh)     # f32 [N,T] numpy, in micro-batches
    update = make_update_fn(graphdef, tx, loss_static(config.loss), sampling)
    params, opt_state, metrics = run_epochs(update, params, opt_state, arrays, loss_hparams(config.loss), ...)

`arrays` is a dict of numpy arrays named as the fields of `rl.rollout.Batch` (N rows, T response tokens,
L prompt tokens): prompt int32 [N,L], prompt_mask bool [N,L], tokens int32 [N,T], mask bool [N,T] (valid
response tokens), keep bool [N] (rows that enter the loss), adv f32 [N], logprobs f32 [N,T] (the sampler's
log-probs, for the mismatch correction), plus old_logp f32 [N,T] and optionally ref_logp f32 [N,T].

The trainer's log-probs are those of the distribution the sampler drew from: the same temperature and the
top-k / top-p masks replayed (`Decoder.token_logprobs(..., temperature, top_k, top_p)`).
"""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as PS

from models import sharding
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

  x: prompt [B,L] int32, prompt_mask [B,L] bool, tokens [B,T] int32, mask [B,T] bool.
  sampling: static (temperature, top_k, top_p) of the sampler. -> (logp [B,T], entropy [B,T]) f32.
  """
  temperature, top_k, top_p = sampling
  model = nnx.merge(graphdef, params)
  full = jnp.concatenate([x["prompt"], x["tokens"]], axis=1)
  attn = jnp.concatenate([x["prompt_mask"], x["mask"]], axis=1)
  logp, ent = model.token_logprobs(full[:, :-1], full[:, 1:], attention_mask=attn[:, :-1],
                                   temperature=temperature, top_k=top_k, top_p=top_p)
  n = x["tokens"].shape[1]
  return logp[:, -n:], ent[:, -n:]


_FN_CACHE = {}   # jitted functions shared by Trainers with the same model and loss/optimizer config


def cached(key, build):
  if key not in _FN_CACHE:
    _FN_CACHE[key] = build()
  return _FN_CACHE[key]


def make_logp_fn(graphdef, sampling):
  """-> jitted (params, x) -> (logp, entropy), see `seq_logprobs`."""
  return jax.jit(lambda params, x: seq_logprobs(graphdef, params, x, sampling))


def forward(logp_fn, params, arrays, micro, mesh):
  """Response log-probs f32 [N,T] (numpy) in micro-batches of `micro` rows (0 = all at once)."""
  n = len(arrays["tokens"])
  micro = micro or n
  keys = ("prompt", "prompt_mask", "tokens", "mask")
  parts = []
  for s in range(0, n, micro):
    piece = {k: arrays[k][s:s + micro] for k in keys}
    t0 = announce("the trainer's log-prob forward", logp_fn, piece)
    parts.append(sharding.to_host(logp_fn(params, put(piece, mesh))[0]))   # multi-process: gathered
    if t0 is not None:
      note(f"  compiled and ran in {time.perf_counter() - t0:.1f} s")
  return np.concatenate(parts, 0)


def loss_static(lc):
  """The compile-time part of config.loss (the coefficients are runtime `loss_hparams`)."""
  return dict(loss_type=lc.loss_type, agg=lc.agg, dual_clip=lc.dual_clip or None,
              kl_kind=lc.kl_kind if lc.kl_kind != "none" else "k3", is_level=lc.is_level, is_mode=lc.is_mode)


HPARAMS = ("clip_low", "clip_high", "kl_coef", "entropy_coef", "gspo_clip_low", "gspo_clip_high",
           "cispo_clip_high", "is_threshold")


def loss_hparams(lc):
  return {k: jnp.float32(lc[k]) for k in HPARAMS}


_SUMMED = ("pg_loss", "kl_loss", "entropy_loss", "num_tokens")   # global-denominator parts: sum over micro-batches
_MAXED = ("is_ratio_max",)


def all_finite(tree):
  """bool scalar: every float leaf of a pytree is free of NaN/inf (non-float leaves count as finite)."""
  flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def make_update_fn(graphdef, tx, static, sampling=(1.0, 0, 1.0), donate=False):
  """-> jitted update(params, opt_state, mb, hp) with mb arrays [M, micro, ...] (M micro-batches of a minibatch).

  mb: the `arrays` of the module docstring (old_logp required, ref_logp optional). hp: loss_hparams.
  static: loss_static. sampling: static (temperature, top_k, top_p).
  Returns (params, opt_state, metrics). The update is not applied (params/opt_state returned unchanged,
  metrics skipped=1) unless the loss, the gradient, the update (its global norm: lr=1e30 overflows it) and
  every leaf of the new params and optimizer state are finite: one fused reduction, no host sync.
  donate: donate the params and opt_state buffers to the outputs (the caller must not use the inputs
  afterwards: pass copies to keep them); without it every update allocates a second copy of both.
  """
  def loss_fn(params, x, hp, denoms, max_len):
    logp, ent = seq_logprobs(graphdef, params, x, sampling)
    m = (x["mask"] & x["keep"][:, None]).astype(jnp.float32)
    return losses.policy_loss(logp, x["old_logp"], x["adv"], m, max_len=max_len, ref_logp=x.get("ref_logp"),
                              entropy=ent, sampler_logp=x["logprobs"], **static, **hp, **denoms)

  @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else ())
  def update(params, opt_state, mb, hp):
    max_len = mb["tokens"].shape[-1]
    m = mb["mask"] & mb["keep"][..., None]
    denoms = losses.loss_denominators(m.reshape(-1, max_len), static["agg"])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(grads, x):
      (loss, met), g = grad_fn(params, x, hp, denoms, max_len)
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


def run_epochs(update, params, opt_state, arrays, hp, tc, *, seed, step, mesh):
  """config.train.ppo_epochs x minibatches updates over `arrays` (N rows) -> (params, opt_state, metrics).

  Minibatches are a fresh permutation of the rows per epoch (seeded by (seed, step)), each split into
  micro-batches of tc.micro_batch_size rows. metrics: floats averaged over the updates (is_ratio_max: max,
  skipped: summed; skipped_trailing: how many of the last updates were skipped in a row).
  """
  n = len(arrays["adv"])
  mb_rows = n // tc.minibatches
  micro = tc.micro_batch_size or mb_rows
  perm_rng = np.random.default_rng([seed, step])
  mets = []
  for _ in range(tc.ppo_epochs):
    order = perm_rng.permutation(n) if tc.minibatches > 1 else np.arange(n)
    for k in range(tc.minibatches):
      idx = order[k * mb_rows:(k + 1) * mb_rows]
      mb = {key: v[idx].reshape(mb_rows // micro, micro, *v.shape[1:]) for key, v in arrays.items()}
      t0 = announce("the update", update, mb)
      params, opt_state, met = update(params, opt_state, put(mb, mesh, axis=1), hp)
      if t0 is not None:
        jax.block_until_ready(met)
        note(f"  compiled and ran in {time.perf_counter() - t0:.1f} s")
      mets.append(met)
  mets = jax.tree.map(sharding.to_host, mets)
  out = {k: float(np.mean([x[k] for x in mets])) for k in mets[0]}
  out["is_ratio_max"] = float(np.max([x["is_ratio_max"] for x in mets]))
  out["skipped"] = float(np.sum([x["skipped"] for x in mets]))
  trailing = 0   # updates skipped in a row at the end of this step (the trainer adds them up across steps)
  for x in reversed(mets):
    if not x["skipped"]:
      break
    trailing += 1
  out["skipped_trailing"] = float(trailing)
  return params, opt_state, out
