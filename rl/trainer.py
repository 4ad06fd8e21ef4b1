"""The training loop: config -> parts by name -> loop. The only stateful place of the project.

    python experiments/run.py --config experiments/configs/tiny.py --workdir /tmp/tiny
    # or: from rl import config, trainer; trainer.train(config.from_file("experiments/configs/tiny.py"), workdir)

One step (`Trainer.train_step`; every method is a config of this one loop, see rl.algorithms.REGISTRY):
  rollout.collect      draw P prompts -> sampling.generate (G samples each) -> decode -> score (worker pool)
                       -> DAPO dynamic-sampling refill -> offline solution injection          => Batch
  algorithms.postprocess   reward shaping -> advantages + keep masks by config.algo -> DASH filter
  update.forward       old (and reference) log-probs of the sampling distribution, one jitted forward (no old
                       forward with one update per step: the update uses its own, train.fused_old_logp)
  update.run_epochs    ppo_epochs x minibatches of one jitted update each (micro-batches accumulated with
                       the minibatch's global loss denominators; rows that cannot change the update are left
                       out, train.skip_zero_adv_rows, and all-pad columns cut, train.trim_padding; an update
                       with a non-finite loss, gradient or result is not applied; `train.max_skipped_updates`
                       in a row stop the run)
  outputs.step_metrics the metrics row -> metrics.jsonl / TensorBoard / W&B; samples.jsonl

State: one pytree {params, opt_state, ref_params?, step, rng} + a JSON dict {data iterator position, reference
source, eval history}, checkpointed with Orbax every `checkpoint_every` steps. Everything random in a step comes
from fold_in(rng, step) and the data iterator, so a resumed run reproduces the same per-step metrics.
"""
import math
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import models
from models import sharding
from rl import algorithms, config as config_lib, data, evaluation, outputs, rollout, tasks, update
from rl import checkpoint as ckpt_lib


class TrainError(Exception):
  """The run cannot go on (or must not start); `str(e)` is one line. experiments/run.py exits 1 with it."""


# ============================================================================ parts by name

def maybe_initialize_distributed():
  """jax.distributed.initialize() when launched multi-process, before anything touches a device:
  JAX_COORDINATOR_ADDRESS=host:port with JAX_NUM_PROCESSES and JAX_PROCESS_ID (any machines; on CPU the
  cross-process collectives are gloo, JAX's default), or a cluster JAX detects by itself (a multi-host Cloud TPU
  slice: TPU_WORKER_HOSTNAMES; SLURM; Open MPI)."""
  env = os.environ
  multi = ("JAX_COORDINATOR_ADDRESS" in env or int(env.get("SLURM_NTASKS", "1")) > 1
           or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", ""))
  if not multi or jax.distributed.is_initialized():
    return
  kw = {}
  if "JAX_NUM_PROCESSES" in env or "JAX_PROCESS_ID" in env:
    try:
      kw = dict(num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
    except (KeyError, ValueError):
      raise ValueError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must both be integers (the number of processes and "
                       f"this one's index), got {env.get('JAX_NUM_PROCESSES')!r}, {env.get('JAX_PROCESS_ID')!r}") \
          from None
  jax.distributed.initialize(**kw)
  sharding.warm_up_collectives()


def make_mesh(mc, devices=None):
  """config.mesh {data, fsdp, tensor} (one may be -1 = the remaining devices) -> Mesh ("data", "fsdp", "tensor").
  devices: default jax.devices() (experiments/plan.py passes abstract TPU devices)."""
  try:
    return sharding.make_mesh(data=mc.data, fsdp=mc.fsdp, tensor=mc.tensor, devices=devices)
  except ValueError as e:
    raise ValueError(f"config.mesh (data={mc.data}, fsdp={mc.fsdp}, tensor={mc.tensor}): {e}") from None


def build_model(mc, seed):
  """config.model -> (Decoder, tokenizer); mc.source is one of rl.config.MODEL_SOURCES. With mc.init_from (an HF
  directory of the same architecture, e.g. a run's workdir/hf) the weights are read from there instead."""
  model, tok = _build_source_model(mc, seed)
  if not mc.init_from:
    return model, tok
  if not os.path.exists(os.path.join(mc.init_from, "config.json")):
    raise FileNotFoundError(f"config.model.init_from={mc.init_from!r} has no config.json (an HF directory, e.g. a "
                            f"finished run's workdir/hf)")
  init, _ = models.load_pretrained(mc.init_from, dtype=mc.dtype, param_dtype=mc.param_dtype or None, remat=mc.remat,
                                   tokenizer=False)
  a, b = nnx.state(model, nnx.Param), nnx.state(init, nnx.Param)
  shapes = lambda st: (jax.tree.structure(st), [x.shape for x in jax.tree.leaves(st)])
  if shapes(a) != shapes(b):
    raise ValueError(f"config.model.init_from={mc.init_from!r}: its architecture differs from config.model's")
  return init, tok


def _build_source_model(mc, seed):
  if mc.source == "tiny_llama":
    return models.tiny_llama(hidden_size=mc.hidden_size, num_layers=mc.num_layers, num_heads=mc.num_heads,
                             num_kv_heads=mc.num_kv_heads, intermediate_size=mc.intermediate_size, dtype=mc.dtype,
                             param_dtype=mc.param_dtype or None, remat=mc.remat, seed=seed)
  path = mc.path or (models.smollm2_gguf_path() if mc.source == "gguf" else "")
  if not path:
    raise FileNotFoundError("config.model.path is empty (a local directory / GGUF file or a Hub repo id 'org/name')")
  path = models.resolve_path(path)   # a Hub repo id -> its snapshot in the local Hub cache (one-line error if absent)
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.model.path={path!r} does not exist")
  model, tok = models.load_pretrained(path, dtype=mc.dtype, param_dtype=mc.param_dtype or None, remat=mc.remat)
  if tok is None:
    raise ValueError(f"config.model.path={path!r} has no tokenizer")
  return model, tok


def build_task(tc):
  """config.task -> rl.tasks.Task."""
  try:
    task = tasks.make(tc.name, **tc.kwargs.to_dict())
  except TypeError as e:
    raise ValueError(f"config.task.kwargs: {e}") from None
  if tc.num_train:
    task.train_problems = task.train_problems[:tc.num_train]
  if tc.num_eval:
    task.eval_problems = task.eval_problems[:tc.num_eval]
  if not task.eval_problems:
    raise ValueError(f"config.task.name={tc.name!r} has no eval problems (set config.task.kwargs)")
  return task


# ============================================================================ the trainer

class Trainer:
  """Holds the parts built from the config; `train()` runs the loop. See the module docstring."""

  def __init__(self, config, workdir):
    self.c = c = config_lib.validate(config)
    self.workdir = os.path.abspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    maybe_initialize_distributed()
    self.mesh = make_mesh(c.mesh)
    model, self.tok = build_model(c.model, c.seed)
    self.task = build_task(c.task)
    self.graphdef, params = nnx.split(sharding.shard_model(model, self.mesh), nnx.Param)
    self.ctx = rollout.Context.build(c, self.tok, self.task, model, self.graphdef, self.mesh, self.workdir)
    self.algo = algorithms.REGISTRY[c.algo]
    self.updates_per_step = c.train.ppo_epochs * c.train.minibatches
    opt_key = (tuple(sorted(c.optim.to_dict().items())), self.updates_per_step,
               c.total_steps if c.optim.schedule != "constant" else 0)
    self.tx, self.schedule = update.cached(("opt", opt_key), lambda: update.make_optimizer(
        c.optim, self.updates_per_step, c.total_steps))
    # the trainer's log-probs replay the sampler's distribution (temperature, top-k, top-p)
    sampling_key = (float(c.rollout.temperature), int(c.rollout.top_k), float(c.rollout.top_p))
    static = update.loss_static(c.loss)
    # donated: run_epochs's params/opt_state inputs are deleted by each update (no second copy of either);
    # its outputs pinned to the shardings of the state it is called with (else step 2 compiles it again)
    self.update = update.cached(
        ("update", self.graphdef, self.mesh, opt_key, tuple(sorted(static.items())), sampling_key),
        lambda: update.make_update_fn(self.graphdef, self.tx, static, sampling_key, donate=True,
                                      shardings=update.state_shardings(self.tx, params, self.mesh)))
    self.logp_fn = update.cached(("logp", self.graphdef, self.mesh, sampling_key),
                                 lambda: update.make_logp_fn(self.graphdef, sampling_key, self.mesh))
    self.hp = update.loss_hparams(c.loss)
    self.use_ref = c.loss.kl_kind != "none" or c.ref.reset_every > 0 or c.ref.reset_patience > 0
    # step and rng replicated on the mesh: global arrays when multi-process (Orbax saves them like the rest)
    self.state = {"params": params, "opt_state": update.init_opt(self.tx, params, self.mesh),
                  "step": sharding.replicate(np.int32(0), self.mesh),
                  "rng": sharding.replicate(np.asarray(jax.random.PRNGKey(c.seed)), self.mesh)}
    if self.use_ref:
      self.state["ref_params"] = jax.tree.map(jnp.copy, params)
    self.it = data.PromptIterator(self.task.train_problems, c.rollout.prompts_per_step, seed=c.seed)
    self.meta = {"ref_source": "initial", "ref_source_step": 0, "evals": [], "best_eval": None,
                 "evals_since_best": 0}

  # ------------------------------------------------------------------------ one step
  def train_step(self, state, step):
    """One RL step -> (new state, metrics dict, Batch). Deterministic given (state, data iterator position)."""
    c, t0, cpu0 = self.c, time.perf_counter(), time.process_time()
    rng = jax.random.fold_in(state["rng"], step)
    batch, info = rollout.collect(self.ctx, state["params"], self.it, rng)   # sample, score, refill, inject
    cpu_generate = time.process_time() - cpu0
    batch, filter_info = algorithms.postprocess(c, batch)                    # shaping, advantages, keep masks
    arrays, times = self.logprobs(state, batch)                              # old (+ reference) log-probs
    t1, cpu1 = time.perf_counter(), time.process_time()
    params, opt_state, upd = update.run_epochs(self.update, state["params"], state["opt_state"], arrays, self.hp,
                                               c.train, seed=c.seed, step=step, mesh=self.mesh,
                                               rows=arrays.pop("live", None), trim=c.train.trim_padding,
                                               agg=c.loss.agg, share=c.train.share_prompt,
                                               pack=c.train.pack_responses)   # optax
    times["time/update"], times["time/step"] = time.perf_counter() - t1, time.perf_counter() - t0
    # CPU seconds of this process (all its threads; the reward workers excluded): on a shared machine the wall
    # times above depend on the load, these much less (what an idle machine's wall time is estimated from)
    times["cpu/update"], times["cpu/step"] = time.process_time() - cpu1, time.process_time() - cpu0
    times["cpu/generate"] = cpu_generate
    times["tokens_per_s"] = float(batch.mask.sum()) / max(times["time/step"], 1e-9)
    times.update({"updates/skipped_zero_adv": int(upd["skipped_zero_adv"]), "update/rows": int(upd["update_rows"]),
                  "update/prompt_rows": int(upd["update_prompt_rows"]),
                  "update/width": int(upd["update_width"])})
    row = outputs.step_metrics(batch, None, upd, {**info, **filter_info, **times},
                               lr=float(self.schedule(step * self.updates_per_step)), is_sft=not self.algo.rollout)
    row["ref/source_step"] = self.meta["ref_source_step"]
    self._guard(step + 1, row, upd)
    new_state = dict(state, params=params, opt_state=opt_state, step=sharding.replicate(np.int32(step + 1), self.mesh))
    return new_state, row, batch

  def _guard(self, step, row, upd):
    """Counts updates skipped in a row (TrainError at train.max_skipped_updates) and flags gradient-norm spikes:
    row["spike/grad_norm_ratio"] = grad_norm / its running mean (EMA over earlier steps, kept in the checkpoint
    meta so a resumed run writes the same rows); a warning when it exceeds train.spike_threshold."""
    tc, g = self.c.train, self.meta.setdefault("guard", {"skipped_in_a_row": 0, "grad_norm_ema": None, "n": 0})
    n_updates = self.updates_per_step
    if row["updates/skipped"]:
      g["skipped_in_a_row"] = (g["skipped_in_a_row"] + n_updates if row["updates/skipped"] == n_updates
                               else int(upd["skipped_trailing"]))
      outputs.note(f"step {step}: {row['updates/skipped']} of {n_updates} update(s) skipped (non-finite loss, "
                   f"gradient or result); {g['skipped_in_a_row']} in a row")
      if g["skipped_in_a_row"] >= tc.max_skipped_updates:
        raise TrainError(f"step {step}: {g['skipped_in_a_row']} updates in a row were skipped (non-finite loss, "
                         f"gradient or result; train.max_skipped_updates={tc.max_skipped_updates}); stopping without "
                         f"saving this state (lower optim.lr?)")
    else:
      g["skipped_in_a_row"] = 0
    gn = row["grad_norm"]
    ratio = gn / g["grad_norm_ema"] if g["grad_norm_ema"] and math.isfinite(gn) else 0.0
    row["spike/grad_norm_ratio"] = ratio
    if tc.spike_threshold and g["n"] >= 5 and ratio > tc.spike_threshold:
      outputs.note(f"step {step}: gradient-norm spike: grad_norm {gn:.4g} is {ratio:.1f}x its running mean "
                   f"(loss {row['loss/total']:.4g})")
    if math.isfinite(gn) and not row["updates/skipped"]:
      g["grad_norm_ema"] = gn if g["grad_norm_ema"] is None else 0.9 * g["grad_norm_ema"] + 0.1 * gn
      g["n"] += 1

  def logprobs(self, state, batch):
    """The Batch's arrays for rl.update (+ `live` bool [N]: the rows that can change the update, when
    train.skip_zero_adv_rows) plus old_logp f32 [N,T] unless the update computes it itself (one update per step
    and train.fused_old_logp), and ref_logp f32 [N,T] with a KL term -> (arrays, timings).
    Rows outside `live` get no old / reference forward (their log-probs are 0)."""
    c = self.c
    arrays = {k: getattr(batch, k) for k in ("prompt", "prompt_mask", "tokens", "mask", "keep", "adv", "logprobs")}
    # rows the sampler did not draw (injected solutions, SFT) have no sampler log-probs: no mismatch correction
    arrays["sampled"] = ~batch.injected & self.algo.rollout
    live = update.live_rows(arrays, update.zero_adv_has_gradient(c.loss)) if c.train.skip_zero_adv_rows else None
    fwd = dict(micro=c.train.micro_batch_size, mesh=self.mesh, rows=live, trim=c.train.trim_padding,
               share=c.train.share_prompt)
    t0 = time.perf_counter()
    if not (c.train.fused_old_logp and self.updates_per_step == 1):
      arrays["old_logp"] = update.forward(self.logp_fn, state["params"], arrays, **fwd)
    t1 = time.perf_counter()
    if self.use_ref and c.loss.kl_kind != "none":
      arrays["ref_logp"] = update.forward(self.logp_fn, state["ref_params"], arrays, **fwd)
    if live is not None:
      arrays["live"] = live
    return arrays, {"time/old_logp": t1 - t0, "time/reference": time.perf_counter() - t1}

  # ------------------------------------------------------------------------ evaluation
  def evaluate(self, params, step, writer):
    """n samples per held-out problem, R runs -> pass@k / maj@k for k = 1, 2, 4, .. n (mean and std over runs),
    accuracy, the number of uncertain problems (0 < accuracy < 1 over all samples and runs), the entropy estimate
    (mean negative log-prob of the sampled tokens), the mean response length (all / correct responses), and
    the per-problem correct counts in workdir/eval_counts.jsonl (one row per evaluation: what pass@k at any
    k <= n, and comparisons on the same problems across runs, are computed from)."""
    problems, t0, cpu0 = self.task.eval_problems, time.perf_counter(), time.process_time()
    rng = jax.random.fold_in(jax.random.PRNGKey(self.c.seed + 1), step)
    correct, preds, first, stats = rollout.evaluate(self.ctx, params, problems, rng)
    res = evaluation.evaluate_runs(correct, preds, problem_ids=[p.id for p in problems])
    out = evaluation.flat_metrics(res, prefix="eval/")
    out.update({"eval/num_problems": len(problems), "eval/n_samples": self.c.eval.n_samples,
                "eval/runs": self.c.eval.runs, "eval/entropy": stats["nll"], "eval/response_length": stats["length"],
                "eval/response_length_correct": stats["length_correct"], "time/eval": time.perf_counter() - t0,
                "cpu/eval": time.process_time() - cpu0})
    if outputs.is_main():   # one writer: two processes replacing the file through the same .tmp name race
      evaluation.append_counts(os.path.join(self.workdir, "eval_counts.jsonl"), step, [p.id for p in problems],
                               correct)
    self.meta["evals"].append({"step": step, **{k: v for k, v in out.items() if not k.startswith(("time/", "cpu/"))}})
    outputs.write_samples(self.workdir, step, first, "eval")
    outputs.print_samples(first, self.c.log.samples_printed, step)
    if outputs.is_main():
      png = evaluation.plot_pass_at_k_curves(self.meta["evals"], res["ks"], os.path.join(self.workdir, "pass_at_k.png"))
      writer.image("eval/pass_at_k", png, step)
    return out

  # ------------------------------------------------------------------------ reference resets
  def reset_reference(self, state, step, reason):
    path = ckpt_lib.snapshot_path(self.workdir, step)
    ckpt_lib.save_snapshot(path, state["params"])
    state = dict(state, ref_params=ckpt_lib.load_snapshot(path, state["params"]))
    if self.c.ref.reset_optimizer:
      state["opt_state"] = update.init_opt(self.tx, state["params"], self.mesh)
    self.meta.update(ref_source=path, ref_source_step=step)
    print(f"step {step}: reference reset ({reason}); reference <- {path}"
          f"{'; optimizer state reset' if self.c.ref.reset_optimizer else ''}", file=sys.stderr)
    return state

  def _plateau(self, pass1):
    best = self.meta["best_eval"]
    if best is None or pass1 > best:
      self.meta["best_eval"], self.meta["evals_since_best"] = pass1, 0
      return False
    self.meta["evals_since_best"] += 1
    if self.meta["evals_since_best"] >= self.c.ref.reset_patience:
      self.meta["evals_since_best"], self.meta["best_eval"] = 0, None   # new reference: a fresh plateau window
      return True
    return False

  def _refuse_silent_restart(self):
    """No usable checkpoint: starting over would truncate the logs of an earlier run; refuse unless config.restart."""
    found = []
    for name in ("metrics.jsonl", "config.json"):
      path = os.path.join(self.workdir, name)
      if os.path.exists(path) and os.path.getsize(path) > 0:
        found.append(name)
    if found and not self.c.restart:
      raise TrainError(f"{self.workdir} holds {' and '.join(found)} of an earlier run but no checkpoint in "
                       f"{os.path.join(self.workdir, 'checkpoints')}; refusing to start over at step 0 (that would "
                       f"truncate metrics.jsonl): pass --config.restart=True to do so, or use a new --workdir")

  # ------------------------------------------------------------------------ the loop
  def train(self):
    c = self.c
    ckpt = ckpt_lib.Checkpointer(self.workdir, keep=c.keep_checkpoints)
    try:   # the newest checkpoint that verifies (damaged newer ones: one line each, moved aside)
      found = ckpt.restore_latest(self.state)
    except ckpt_lib.DamagedCheckpointError as e:
      ckpt.close()
      raise TrainError(f"{e}; nothing was moved or deleted") from None
    start = found[0] if found else 0
    if not start:
      self._refuse_silent_restart()
    sharding.barrier("rl.trainer: workdir checked")   # by every process, before process 0 writes to it
    config_lib.save(c, self.workdir, resuming=bool(start))
    state = self.state
    if start:
      _, state, meta = found
      self.meta.update(meta["trainer"])
      self.it.restore(meta["data"])
      print(f"resumed from {ckpt.dir}/{start} (reference: {self.meta['ref_source']})", file=sys.stderr)
    writer = outputs.MetricsWriter(self.workdir, start, c)
    save = lambda st, s: ckpt.save(s, st, {"data": self.it.state(), "trainer": self.meta})

    interrupted = []
    def on_sigint(signum, frame):
      interrupted.append(signum)
      signal.signal(signal.SIGINT, signal.default_int_handler)   # a second Ctrl-C stops at once
      print("\nCtrl-C: finishing this step, writing a checkpoint, then exiting", file=sys.stderr)
    try:
      old_handler = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:   # not the main thread
      old_handler = None

    first_eval = last_eval = None
    bar = tqdm(total=c.total_steps, initial=start, desc="train", dynamic_ncols=True, disable=not outputs.is_main())
    step = start
    try:
      if start == 0 and c.eval_at_start:
        first_eval = last_eval = self.evaluate(state["params"], 0, writer)
        writer.write(0, first_eval)
      while step < c.total_steps and not interrupted:
        state, row, batch = self.train_step(state, step)
        self.state = state   # the previous state's params/opt_state were donated to the update: never keep them
        step += 1
        if c.log.samples_every and step % c.log.samples_every == 0:
          outputs.write_samples(self.workdir, step, batch, "train")
        if (c.eval_every and step % c.eval_every == 0) or step == c.total_steps:
          last_eval = self.evaluate(state["params"], step, writer)
          row.update(last_eval)
          if c.ref.reset_patience and self._plateau(last_eval["eval/pass@1"]):
            state = self.reset_reference(state, step, f"eval pass@1 plateau for {c.ref.reset_patience} evals")
            row["ref/reset"] = 1
        if c.ref.reset_every and step % c.ref.reset_every == 0 and step < c.total_steps and "ref/reset" not in row:
          state = self.reset_reference(state, step, f"every {c.ref.reset_every} steps")
          row["ref/reset"] = 1
        row.setdefault("ref/reset", 0)
        row["ref/source_step"] = self.meta["ref_source_step"]
        writer.write(step, row)
        if (c.checkpoint_every and step % c.checkpoint_every == 0) or step == c.total_steps or interrupted:
          save(state, step)
        bar.set_postfix(reward=f"{row['reward/mean']:.3f}", acc=f"{row['acc/mean']:.3f}")
        bar.update(1)
    finally:
      bar.close()
      writer.close()
      ckpt.close()
      if old_handler is not None:
        signal.signal(signal.SIGINT, old_handler)
    if interrupted:
      raise KeyboardInterrupt(f"interrupted at step {step}; checkpoint written")
    self.state = state
    if c.export_hf:
      params = jax.tree.map(sharding.to_host, state["params"])   # every process (a gather), process 0 writes
      path = outputs.export_hf(nnx.merge(self.graphdef, params), self.tok, os.path.join(self.workdir, "hf"))
      outputs.note(f"final policy (Hugging Face layout): {path}")
    if first_eval and last_eval:
      outputs.print_change(first_eval, last_eval)
    return {"first_eval": first_eval, "last_eval": last_eval, "step": step}


def train(config, workdir):
  """Trains from `config` in `workdir` (resuming from its latest checkpoint) -> summary dict."""
  return Trainer(config, workdir).train()
