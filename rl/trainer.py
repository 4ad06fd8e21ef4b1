"""The training loop: config -> parts by name -> loop. The only stateful place of the project.

    python experiments/run.py --config experiments/configs/tiny.py --workdir /tmp/tiny
    # or: from rl import trainer; trainer.train(config, workdir)

One step (all methods are configs of this one loop):
  draw P prompts -> sampling.generate (G samples each) -> decode -> rewards (worker pool) -> shaping
  -> advantages by `algo` -> filters (DAPO dynamic sampling, DASH gradient filter, PSR/NSR/sign keep masks,
  offline sample injection) -> old log-probs (one jitted forward) [+ reference log-probs]
  -> ppo_epochs x minibatches of one jitted update each (gradients accumulated over micro-batches with the
  minibatch's global token/sequence denominators, so micro-batching does not change the loss; AdamW,
  grad-norm clip, LR schedule; a non-finite loss or gradient skips the update).

State: one pytree {params, opt_state, ref_params?, step, rng} + a JSON dict {data iterator position, reference
source, eval history}, checkpointed with Orbax every `checkpoint_every` steps. Everything random in a step comes
from fold_in(rng, step) and the data iterator, so a resumed run reproduces the same per-step metrics.

Rows of N = P*G samples are prompt-major (row i*G+j = sample j of prompt i) everywhere.
"""
import functools
import json
import math
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as PS

from rl import advantages as adv_lib
from rl import checkpoint as ckpt_lib
from rl import losses

TIME_KEYS_PREFIX = ("time/", "tokens_per_s")   # wall-clock metrics (differ between otherwise identical runs)


# ============================================================================ parts by name

def maybe_initialize_distributed():
  """jax.distributed.initialize() when launched multi-process (coordinator / cluster env vars present)."""
  env = os.environ
  multi = ("JAX_COORDINATOR_ADDRESS" in env or int(env.get("SLURM_NTASKS", "1")) > 1
           or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", ""))
  if multi and not getattr(jax.distributed, "is_initialized", lambda: False)():
    jax.distributed.initialize()


def make_mesh(mc, devices=None):
  """config.mesh {data, fsdp, tensor} (one may be -1 = the remaining devices) -> Mesh ("data", "fsdp", "tensor").
  devices: default jax.devices() (experiments/plan.py passes abstract TPU devices)."""
  from models import sharding
  try:
    return sharding.make_mesh(data=mc.data, fsdp=mc.fsdp, tensor=mc.tensor, devices=devices)
  except ValueError as e:
    raise ValueError(f"config.mesh (data={mc.data}, fsdp={mc.fsdp}, tensor={mc.tensor}): {e}") from None


def build_model(mc, seed):
  """config.model -> (Decoder, tokenizer)."""
  import models
  if mc.source == "tiny_llama":
    from rl import toy
    tok = toy.CharTokenizer()
    hf = dict(   # the fields of a transformers LlamaConfig / config.json (no transformers import needed)
        model_type="llama", vocab_size=len(tok), hidden_size=mc.hidden_size, intermediate_size=mc.intermediate_size,
        num_hidden_layers=mc.num_layers, num_attention_heads=mc.num_heads, num_key_value_heads=mc.num_kv_heads,
        max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False)
    cfg = models.DecoderConfig.from_hf(hf, dtype=mc.dtype, param_dtype=mc.param_dtype or None, remat=mc.remat)
    return random_decoder(cfg, seed), tok
  if mc.source == "gguf":
    path = mc.path or models.smollm2_gguf_path()
  else:
    path = mc.path
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"config.model.path={path!r} does not exist")
  model, tok = models.load_pretrained(path, dtype=mc.dtype, param_dtype=mc.param_dtype or None, remat=mc.remat)
  if tok is None:
    raise ValueError(f"config.model.path={path!r} has no tokenizer")
  return model, tok


def random_decoder(cfg, seed):
  """A Decoder with N(0, 0.02) weights and unit norms drawn with NumPy (no per-parameter XLA compilations)."""
  import models
  from models.transformer import param_shapes
  r = np.random.default_rng(seed)
  init = lambda shape, norm: (np.ones(shape) if norm else 0.02 * r.standard_normal(shape)).astype(np.float32)
  pure = {"embed": init((cfg.vocab_size, cfg.hidden_size), False), "final_norm": init((cfg.hidden_size,), True),
          "layers": {k: init((cfg.num_layers, *s), k.endswith("norm")) for k, s in param_shapes(cfg).items()}}
  if not cfg.tie_embeddings:
    pure["lm_head"] = init((cfg.hidden_size, cfg.vocab_size), False)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  return nnx.merge(graphdef, state)


def build_task(tc):
  """config.task -> rl.tasks.Task."""
  if tc.name in ("toy_last_digit", "toy_parity"):
    from rl import toy
    task = toy.make_task(tc.name[4:])
  else:
    from rl import tasks
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


def encode_text(tok, text):
  if hasattr(tok, "prompt"):   # toy CharTokenizer
    return tok.encode(text)
  return list(tok(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tok, question, pc):
  if hasattr(tok, "prompt"):
    return tok.prompt(question)
  from rl import data
  return data.build_prompt(tok, question, system=pc.system or None, suffix=pc.suffix or None,
                           template=pc.template or None, use_chat_template=pc.use_chat_template)


def special_ids(tok, model):
  """-> (eos_ids tuple, pad_id)."""
  eos = {tok.eos_token_id} if getattr(tok, "eos_token_id", None) is not None else set()
  e = model.cfg.eos_token_id
  eos |= set(e if isinstance(e, tuple) else ([] if e is None else [e]))
  for t in ("<|im_end|>", "<|endoftext|>"):   # chat end-of-turn tokens of common instruct models
    i = tok.convert_tokens_to_ids(t) if hasattr(tok, "convert_tokens_to_ids") else None
    if isinstance(i, int) and i != getattr(tok, "unk_token_id", None):
      eos.add(i)
  pad = getattr(tok, "pad_token_id", None)
  pad = pad if pad is not None else min(eos) if eos else 0
  return tuple(sorted(eos)), int(pad)


def make_optimizer(oc, updates_per_step, total_steps):
  """config.optim -> (optax transform, schedule). The schedule counts optimizer updates."""
  total = max(1, updates_per_step * total_steps)
  warm = oc.warmup_steps * updates_per_step
  if oc.schedule == "constant":
    decay = optax.constant_schedule(oc.lr)
  elif oc.schedule == "linear":
    decay = optax.linear_schedule(oc.lr, 0.0, max(1, total - warm))
  else:
    decay = optax.cosine_decay_schedule(oc.lr, max(1, total - warm))
  sched = optax.join_schedules([optax.linear_schedule(0.0, oc.lr, warm), decay], [warm]) if warm else decay
  tx = optax.chain(optax.clip_by_global_norm(oc.grad_clip) if oc.grad_clip > 0 else optax.identity(),
                   optax.adamw(sched, b1=oc.b1, b2=oc.b2, eps=oc.eps, weight_decay=oc.weight_decay))
  return tx, sched


def opt_state_shardings(tx, params, mesh):
  """-> shardings of tx.init(params): every sub-tree shaped like `params` (AdamW's mu and nu) is sharded like
  the params, the rest (step counts) replicated. Needed because jit(tx.init) on its own leaves the moments on
  ONE device (they do not depend on the params' values, so nothing propagates their sharding)."""
  pdef = jax.tree.structure(params)
  psh = jax.tree.map(lambda x: x.sharding, params)
  like = lambda x: jax.tree.structure(x) == pdef
  rep = NamedSharding(mesh, PS())
  return jax.tree.map(lambda x: psh if like(x) else rep, jax.eval_shape(tx.init, params), is_leaf=like)


def left_pad(seqs, length, pad_id):
  """list of token lists -> (int32 [P,length], bool [P,length]) left-padded."""
  toks = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), bool)
  for i, s in enumerate(seqs):
    s = s[-length:]
    toks[i, length - len(s):] = s
    mask[i, length - len(s):] = True
  return toks, mask


# ============================================================================ jitted functions

def seq_logprobs(graphdef, params, b):
  """log p and entropy of the response tokens.

  b: prompt [B,L] int32, prompt_mask [B,L] bool, resp [B,N] int32, resp_mask [B,N] f32 -> ([B,N], [B,N]) f32.
  """
  model = nnx.merge(graphdef, params)
  full = jnp.concatenate([b["prompt"], b["resp"]], axis=1)
  attn = jnp.concatenate([b["prompt_mask"], b["resp_mask"] > 0], axis=1)
  logp, ent = model.token_logprobs(full[:, :-1], full[:, 1:], attention_mask=attn[:, :-1])
  n = b["resp"].shape[1]
  return logp[:, -n:], ent[:, -n:]


_FN_CACHE = {}   # jitted functions shared by Trainers with the same model and loss/optimizer config


def _cached(key, build):
  if key not in _FN_CACHE:
    _FN_CACHE[key] = build()
  return _FN_CACHE[key]


def loss_static(lc):
  """The compile-time part of config.loss (the coefficients are runtime `loss_hparams`)."""
  return dict(loss_type=lc.loss_type, agg=lc.agg, dual_clip=lc.dual_clip or None,
              kl_kind=lc.kl_kind if lc.kl_kind != "none" else "k3")


def loss_hparams(lc):
  return {k: jnp.float32(lc[k]) for k in ("clip_low", "clip_high", "kl_coef", "entropy_coef")}


def make_update_fn(graphdef, tx, static, donate=False):
  """-> jitted update(params, opt_state, mb, hp) with mb arrays [M, micro, ...] (M micro-batches of a minibatch).

  mb: prompt, prompt_mask, resp, resp_mask (response mask x keep, f32), old_logp [.., N], adv [.., ] f32,
      optionally ref_logp. hp: loss_hparams. static: loss_static.
  Returns (params, opt_state, metrics); params/opt_state unchanged if the loss or gradient is non-finite.
  donate: donate the params and opt_state buffers to the outputs (the caller must not use the inputs
  afterwards); without it every update allocates a second copy of both.
  """
  def loss_fn(params, x, hp, denoms, max_len):
    logp, ent = seq_logprobs(graphdef, params, x)
    return losses.policy_loss(logp, x["old_logp"], x["adv"], x["resp_mask"], max_len=max_len,
                              ref_logp=x.get("ref_logp"), entropy=ent, **static, **hp, **denoms)

  @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else ())
  def update(params, opt_state, mb, hp):
    max_len = mb["resp"].shape[-1]
    m = mb["resp_mask"]
    denoms = losses.loss_denominators(m.reshape(-1, max_len), static["agg"])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(grads, x):
      (loss, met), g = grad_fn(params, x, hp, denoms, max_len)
      return jax.tree.map(jnp.add, grads, g), (loss, met)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (loss, mets) = jax.lax.scan(micro, zeros, mb)
    ntok = mets["num_tokens"]
    w = ntok / jnp.maximum(ntok.sum(), 1.0)
    summed = ("pg_loss", "kl_loss", "entropy_loss", "num_tokens")   # global-denominator parts: sum them
    met = {k: (v.sum() if k in summed else (v * w).sum()) for k, v in mets.items()}
    met["loss"] = loss.sum()
    met["grad_norm"] = optax.global_norm(grads)
    finite = jnp.isfinite(met["loss"]) & jnp.isfinite(met["grad_norm"])
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    met["skipped"] = (~finite).astype(jnp.float32)
    return keep(new_params, params), keep(new_opt, opt_state), met

  return update


# ============================================================================ metrics output

class MetricsWriter:
  """One JSON object per step in workdir/metrics.jsonl and the same scalars in TensorBoard (process 0 only)."""

  def __init__(self, workdir, start_step):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if not self.active:
      return
    if os.path.exists(self.path):   # resuming: drop rows written after the checkpoint we resume from
      with open(self.path) as f:   # (a fresh start, start_step 0, drops them all)
        rows = [l for l in f if l.strip() and start_step and json.loads(l)["step"] <= start_step]
      with open(self.path + ".tmp", "w") as f:
        f.writelines(rows)
      os.replace(self.path + ".tmp", self.path)
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1 if start_step else None)
    except ImportError:  # pragma: no cover
      self.tb = None

  def write(self, step, row):
    if not self.active:
      return
    row = {"step": int(step), **{k: _py(v) for k, v in sorted(row.items())}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self.tb.add_scalar(k.replace("@", "_at_"), v, step)
      self.tb.flush()

  def close(self):
    if self.tb is not None:
      self.tb.close()


def _py(v):
  if isinstance(v, (np.generic, np.ndarray, jax.Array)):
    v = np.asarray(v).item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


# ============================================================================ the trainer

class Trainer:
  """Holds the parts built from the config; `train()` runs the loop. See the module docstring."""

  def __init__(self, config, workdir):
    from experiments.configs import common
    common.validate(config)
    self.c = c = config
    self.workdir = os.path.abspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    maybe_initialize_distributed()
    self.mesh = make_mesh(c.mesh)
    model, self.tok = build_model(c.model, c.seed)
    self.task = build_task(c.task)
    self.eos_ids, self.pad_id = special_ids(self.tok, model)
    from models import sharding
    self.graphdef, params = nnx.split(sharding.shard_model(model, self.mesh), nnx.Param)
    self.n = c.rollout.prompts_per_step * c.rollout.group_size
    self.updates_per_step = c.train.ppo_epochs * c.train.minibatches
    opt_key = (tuple(sorted(c.optim.to_dict().items())), self.updates_per_step,
               c.total_steps if c.optim.schedule != "constant" else 0)
    self.tx, self.schedule = _cached(("opt", opt_key), lambda: make_optimizer(c.optim, self.updates_per_step,
                                                                                c.total_steps))
    static = loss_static(c.loss)
    self.update = _cached(("update", self.graphdef, opt_key, tuple(sorted(static.items()))),
                          lambda: make_update_fn(self.graphdef, self.tx, static, donate=True))
    self.hp = loss_hparams(c.loss)
    graphdef = self.graphdef
    self.logp_fn = _cached(("logp", graphdef), lambda: jax.jit(functools.partial(seq_logprobs, graphdef)))
    self.use_ref = c.loss.kl_kind != "none" or c.ref.reset_every > 0 or c.ref.reset_patience > 0
    self.state = {"params": params, "opt_state": self._init_opt(params), "step": jnp.zeros((), jnp.int32),
                  "rng": jax.random.PRNGKey(c.seed)}
    if self.use_ref:
      self.state["ref_params"] = jax.tree.map(jnp.copy, params)
    from rl import data
    self.it = data.PromptIterator(self.task.train_problems, c.rollout.prompts_per_step, seed=c.seed)
    self.meta = {"ref_source": "initial", "ref_source_step": 0, "evals": [], "best_eval": None,
                 "evals_since_best": 0}
    self.solutions = self._load_solutions() if c.osi.enabled else None
    self._prompt_cache = {}

  # ------------------------------------------------------------------------ helpers
  def _init_opt(self, params):
    """Optimizer state on the mesh (moments sharded like params; scalars replicated, as the update returns)."""
    return jax.jit(self.tx.init, out_shardings=opt_state_shardings(self.tx, params, self.mesh))(params)

  def _batch_sharding(self, rows, lead=0):
    """Shard the rows axis over data x fsdp when it divides evenly, else replicate."""
    if rows % (self.mesh.shape["data"] * self.mesh.shape["fsdp"]):
      return NamedSharding(self.mesh, PS())
    return NamedSharding(self.mesh, PS(*([None] * lead), ("data", "fsdp")))

  def _put(self, tree, lead=0):
    return jax.tree.map(lambda a: jax.device_put(a, self._batch_sharding(a.shape[lead], lead)), tree)

  def _model(self, params):
    return nnx.merge(self.graphdef, params)

  def _prompts(self, problems):
    ids = []
    for p in problems:
      if p.id not in self._prompt_cache:
        self._prompt_cache[p.id] = prompt_ids(self.tok, p.question, self.c.prompt)
      ids.append(self._prompt_cache[p.id])
    import sampling   # its shape buckets: fewer distinct prompt widths -> fewer compilations
    return left_pad(ids, sampling.bucket(max(len(s) for s in ids), minimum=8), self.pad_id)

  def _generate(self, params, problems, group_size, max_new_tokens, temperature, rng):
    import sampling
    toks, mask = self._prompts(problems)
    r = self.c.rollout
    out = sampling.generate((self.graphdef, params), toks, prompt_mask=mask, group_size=group_size,
                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=r.top_p, top_k=r.top_k,
                            eos_ids=self.eos_ids, pad_id=self.pad_id, rng=rng, mesh=self.mesh)
    # logprobs: raw model log-probs (temperature 1), comparable with the trainer's forward
    return jax.tree.map(np.array, dict(tokens=out.tokens, logprobs=out.model_logprobs, mask=out.mask,
                                         lengths=out.lengths, stopped=out.stopped,
                                         prompt=out.prompt_tokens, prompt_mask=out.prompt_mask))

  def _decode(self, tokens, mask):
    return [self.tok.decode(t[m.astype(bool)].tolist(), skip_special_tokens=True) for t, m in zip(tokens, mask)]

  def _score(self, completions, problems):
    from rl.rewards import pool
    r = self.c.rollout
    scores = pool.score_batch(self.task.score, completions, problems, timeout=r.reward_timeout,
                              workers=r.reward_workers)
    return (np.array([s.reward for s in scores], np.float32), np.array([s.correct for s in scores], bool),
            [s.pred for s in scores])

  def _load_solutions(self):
    path = self.c.osi.solutions_file
    if path == "gold":   # write the task's gold solutions (answers for the toy task) as the stored solutions
      path = os.path.join(self.workdir, "solutions.jsonl")
      with open(path, "w") as f:
        for p in self.task.train_problems:
          f.write(json.dumps({"id": p.id, "solution": p.solution or p.answer}) + "\n")
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.osi.solutions_file={path!r} does not exist")
    sols = {}
    with open(path) as f:
      for i, line in enumerate(f, 1):
        try:
          d = json.loads(line)
          sols.setdefault(str(d["id"]), []).append(str(d["solution"]))
        except (ValueError, KeyError) as e:
          raise ValueError(f"{path}:{i}: expected a JSON object with 'id' and 'solution' ({e})") from None
    return sols

  # ------------------------------------------------------------------------ rollouts
  def _rollout(self, params, problems, rng):
    """Sample + score one draw of prompts -> dict of numpy arrays (N rows) + problems per row."""
    r = self.c.rollout
    t0 = time.perf_counter()
    out = self._generate(params, problems, r.group_size, r.max_new_tokens, r.temperature, rng)
    t1 = time.perf_counter()
    rows = [p for p in problems for _ in range(r.group_size)]
    out["reward"], out["correct"], _ = self._score(self._decode(out["tokens"], out["mask"]), rows)
    out["time_generate"], out["time_reward"] = t1 - t0, time.perf_counter() - t1
    return out, rows

  def _inject_offline(self, b, rows):
    """OSI: in hard groups (accuracy <= max_group_accuracy), replace incorrect samples by stored solutions."""
    oc, G, N = self.c.osi, self.c.rollout.group_size, b["tokens"].shape[1]
    acc = b["correct"].reshape(-1, G).mean(1)
    injected = 0
    for g in np.nonzero(acc <= oc.max_group_accuracy)[0]:
      sols = self.solutions.get(rows[g * G].id, [])
      wrong = [g * G + j for j in range(G) if not b["correct"][g * G + j]]
      for k, i in enumerate(wrong[:oc.per_group if sols else 0]):
        ids = (encode_text(self.tok, sols[k % len(sols)]) + [self.eos_ids[0]])[:N]
        b["tokens"][i] = self.pad_id
        b["tokens"][i, :len(ids)] = ids
        b["mask"][i] = np.arange(N) < len(ids)
        b["lengths"][i], b["stopped"][i] = len(ids), len(ids) < N or ids[-1] in self.eos_ids
        b["logprobs"][i] = 0.0
        b["reward"][i], b["correct"][i] = 1.0, True    # stored solutions are correct by construction
        b["injected"][i] = True
        injected += 1
    return injected

  def _shape_rewards(self, b):
    from rl import shaping
    s, G = self.c.shaping, self.c.rollout.group_size
    reward = jnp.asarray(b["reward"])
    if s.relative_length:
      reward = shaping.relative_length_reward(reward, jnp.asarray(b["lengths"]), jnp.asarray(b["correct"]), G,
                                              rho=s.rlr_rho, scale=s.rlr_scale, low=s.rlr_low, high=s.rlr_high)
    if s.overlong_buffer:
      reward = reward + shaping.overlong_penalty(jnp.asarray(b["lengths"]), max_len=self.c.rollout.max_new_tokens,
                                                 cache_len=s.overlong_buffer, factor=s.overlong_factor)
    return np.asarray(reward, np.float32)

  def _advantages(self, reward, correct):
    """-> (adv [N], keep [N]) by config.algo."""
    c, G = self.c, self.c.rollout.group_size
    ones = jnp.ones(reward.shape, bool)
    if c.algo in ("grpo", "dr_grpo", "positive_only", "negative_only"):
      a = adv_lib.grpo_advantages(jnp.asarray(reward), G, normalize_std=c.adv.normalize_std and c.algo != "dr_grpo")
      keep = ones
      if c.algo in ("positive_only", "negative_only"):
        keep = adv_lib.sign_mask(a, keep=c.algo.split("_")[0])
    elif c.algo == "rloo":
      a, keep = adv_lib.rloo_advantages(jnp.asarray(reward), G), ones
    elif c.algo in ("psr", "nsr", "w_reinforce"):
      mode = {"psr": "psr", "nsr": "nsr", "w_reinforce": "weighted"}[c.algo]
      a, keep = adv_lib.psr_nsr_advantages(jnp.asarray(correct), mode=mode, lam=c.adv.lam)
    else:  # sft
      a, keep = jnp.ones(reward.shape, jnp.float32), ones
    return np.array(a, np.float32), np.array(keep, bool)

  def collect(self, params, rng):
    """Draws prompts and builds one step's batch (N rows) with rewards, advantages and keep masks."""
    c, G, P = self.c, self.c.rollout.group_size, self.c.rollout.prompts_per_step
    if c.algo == "sft":
      return self._sft_batch()
    b, rows = self._rollout(params, next(self.it), jax.random.fold_in(rng, 0))
    info = {"time/generate": b.pop("time_generate"), "time/reward": b.pop("time_reward")}
    b["injected"] = np.zeros(self.n, bool)
    group_keep = np.ones(P, bool)
    if c.filters.dynamic_sampling:
      # DAPO: keep groups with reward variance; refill the batch from extra draws (at most max_extra_draws).
      const = np.array(adv_lib.zero_variance_groups(jnp.asarray(b["reward"]), G))
      info["dynamic/dropped_group_frac"] = float(const.mean())
      draws = 0
      while const.any() and draws < c.filters.max_extra_draws:
        draws += 1
        nb, nrows = self._rollout(params, next(self.it), jax.random.fold_in(rng, draws))
        info["time/generate"] += nb.pop("time_generate")
        info["time/reward"] += nb.pop("time_reward")
        nb["injected"] = np.zeros(self.n, bool)
        nconst = np.asarray(adv_lib.zero_variance_groups(jnp.asarray(nb["reward"]), G))
        for src in np.nonzero(~nconst)[0]:   # move informative groups into slots of constant ones
          free = np.nonzero(const)[0]
          if not len(free):
            break
          dst = free[0]
          for k in b:
            b[k][dst * G:(dst + 1) * G] = nb[k][src * G:(src + 1) * G]
          rows[dst * G:(dst + 1) * G] = nrows[src * G:(src + 1) * G]
          const[dst] = False
      info["dynamic/extra_draws"] = draws
      info["dynamic/unfilled_group_frac"] = float(const.mean())
      group_keep = ~const
    if self.solutions is not None:
      info["osi/injected"] = self._inject_offline(b, rows)
    reward = self._shape_rewards(b)
    a, keep = self._advantages(reward, b["correct"])
    keep &= np.repeat(group_keep, G)
    if c.filters.grad_filter_tau > 0:
      gf = np.array(adv_lib.gradient_filter_mask(jnp.asarray(a), c.filters.grad_filter_tau))
      info["grad_filter/dropped_frac"] = float(1.0 - (gf & keep).sum() / max(keep.sum(), 1))
      keep &= gf
    b["adv"], b["keep"], b["shaped_reward"] = a, keep, reward
    return b, info

  def _sft_batch(self):
    """SFT: the gold solution (+EOS) of each drawn problem as the response, advantage 1."""
    problems, N = next(self.it), self.c.rollout.max_new_tokens
    toks, pmask = self._prompts(problems)
    resp = np.full((len(problems), N), self.pad_id, np.int32)
    mask = np.zeros((len(problems), N), bool)
    for i, p in enumerate(problems):
      ids = (encode_text(self.tok, p.solution or p.answer) + [self.eos_ids[0]])[:N]
      resp[i, :len(ids)], mask[i, :len(ids)] = ids, True
    n = len(problems)
    b = dict(tokens=resp, mask=mask, logprobs=np.zeros((n, N), np.float32), lengths=mask.sum(1).astype(np.int32),
             stopped=np.ones(n, bool), prompt=toks, prompt_mask=pmask, reward=np.ones(n, np.float32),
             correct=np.ones(n, bool), injected=np.zeros(n, bool), adv=np.ones(n, np.float32),
             keep=np.ones(n, bool), shaped_reward=np.ones(n, np.float32))
    return b, {"time/generate": 0.0, "time/reward": 0.0}

  # ------------------------------------------------------------------------ one step
  def train_step(self, state, step):
    """One RL step -> (new state, metrics dict). Deterministic given (state, data iterator position)."""
    c, t_start = self.c, time.perf_counter()
    rng = jax.random.fold_in(state["rng"], step)
    b, info = self.collect(state["params"], rng)
    m = b["mask"].astype(np.float32)
    batch = {"prompt": b["prompt"], "prompt_mask": b["prompt_mask"], "resp": b["tokens"],
             "resp_mask": m * b["keep"][:, None], "adv": b["adv"]}

    t0 = time.perf_counter()
    full = dict(batch, resp_mask=m)   # log-probs of all valid tokens (the keep mask only affects the loss)
    old_logp = self._forward(state["params"], full)
    batch["old_logp"] = old_logp
    t1 = time.perf_counter()
    if self.use_ref and c.loss.kl_kind != "none":
      batch["ref_logp"] = self._forward(state["ref_params"], full)
    t2 = time.perf_counter()

    params, opt_state = state["params"], state["opt_state"]
    mets, mb_rows = [], len(b["adv"]) // c.train.minibatches
    micro = c.train.micro_batch_size or mb_rows
    perm_rng = np.random.default_rng([c.seed, step])
    for epoch in range(c.train.ppo_epochs):
      order = perm_rng.permutation(len(batch["adv"])) if c.train.minibatches > 1 else np.arange(len(batch["adv"]))
      for k in range(c.train.minibatches):
        idx = order[k * mb_rows:(k + 1) * mb_rows]
        mb = {key: v[idx].reshape(mb_rows // micro, micro, *v.shape[1:]) for key, v in batch.items()}
        params, opt_state, met = self.update(params, opt_state, self._put(mb, lead=1), self.hp)
        mets.append(met)
    mets = jax.device_get(mets)
    t3 = time.perf_counter()

    new_state = dict(state, params=params, opt_state=opt_state, step=jnp.asarray(step + 1, jnp.int32))
    agg = {k: float(np.mean([x[k] for x in mets])) for k in mets[0]}
    valid = b["mask"].sum() > 0
    lp_diff = np.abs(b["logprobs"] - old_logp) * m * (~b["injected"])[:, None]
    n_tok = float(m.sum())
    out = {
        "reward/mean": float(b["reward"].mean()), "reward/shaped_mean": float(b["shaped_reward"].mean()),
        "acc/mean": float(b["correct"].mean()),
        "response_length/mean": float(b["lengths"].mean()), "response_length/max": int(b["lengths"].max()),
        "response/truncated_frac": float((~b["stopped"]).mean()),
        "adv/zero_frac": float(adv_lib.zero_advantage_fraction(jnp.asarray(b["adv"]))),
        "adv/kept_frac": float(b["keep"].mean()),
        "loss/total": agg["loss"], "loss/pg": agg["pg_loss"], "loss/kl": agg["kl_loss"],
        "loss/entropy": agg["entropy_loss"],
        "clip_frac/low": agg["clip_frac_low"], "clip_frac/high": agg["clip_frac_high"],
        "kl/approx_old": agg["approx_kl"], "kl/ref": agg["ref_kl"], "entropy": agg["entropy"],
        "grad_norm": agg["grad_norm"], "updates/skipped": int(sum(x["skipped"] for x in mets)),
        "lr": float(self.schedule(step * self.updates_per_step)),
        "sampler_logp_diff": float(lp_diff.sum() / max(float((m * (~b["injected"])[:, None]).sum()), 1.0))
        if valid and c.algo != "sft" else 0.0,
        "ref/source_step": self.meta["ref_source_step"],
        "time/old_logp": t1 - t0, "time/reference": t2 - t1, "time/update": t3 - t2,
        "time/step": t3 - t_start, "tokens_per_s": n_tok / max(t3 - t_start, 1e-9),
        **info,
    }
    if "dynamic/dropped_group_frac" not in out and c.algo != "sft":
      out["dynamic/dropped_group_frac"] = 0.0
    if "grad_filter/dropped_frac" not in out:
      out["grad_filter/dropped_frac"] = 0.0
    if out["updates/skipped"]:
      print(f"step {step + 1}: non-finite loss or gradient, skipped {out['updates/skipped']} update(s)",
            file=sys.stderr)
    return new_state, out

  def _forward(self, params, batch):
    """Response log-probs [N,T] in micro-batches of config.train.micro_batch_size rows (one jitted fn)."""
    n = len(batch["resp"])
    micro = self.c.train.micro_batch_size or n
    parts = []
    for s in range(0, n, micro):
      piece = {k: v[s:s + micro] for k, v in batch.items() if k in ("prompt", "prompt_mask", "resp", "resp_mask")}
      parts.append(np.asarray(self.logp_fn(params, self._put(piece))[0]))
    return np.concatenate(parts, 0)

  # ------------------------------------------------------------------------ evaluation
  def evaluate(self, params, step):
    """n samples per held-out problem, R runs -> pass@k / maj@k for k = 1, 2, 4, .. n (mean and std over runs),
    accuracy and the number of uncertain problems (0 < accuracy < 1 over all samples and runs)."""
    from tqdm import tqdm
    from rl import evaluation
    e, problems = self.c.eval, self.task.eval_problems
    n, max_new = e.n_samples, e.max_new_tokens or self.c.rollout.max_new_tokens
    chunk = e.prompts_per_call or len(problems)
    rng = jax.random.fold_in(jax.random.PRNGKey(self.c.seed + 1), step)
    t0 = time.perf_counter()
    bar = tqdm(total=e.runs * len(problems), desc=f"eval@{step}", leave=False, disable=jax.process_index() != 0)
    correct_runs, preds_runs = [], []
    for run in range(e.runs):
      correct, preds = [], []
      for s in range(0, len(problems), chunk):
        ps = problems[s:s + chunk]
        out = self._generate(params, ps, n, max_new, e.temperature, jax.random.fold_in(rng, run * 100003 + s))
        _, cor, pr = self._score(self._decode(out["tokens"], out["mask"]), [p for p in ps for _ in range(n)])
        correct.append(cor.reshape(len(ps), n))
        preds.extend(pr[i * n:(i + 1) * n] for i in range(len(ps)))
        bar.update(len(ps))
      correct_runs.append(np.concatenate(correct, 0))
      preds_runs.append(preds)
    bar.close()
    res = evaluation.evaluate_runs(np.stack(correct_runs), preds_runs, problem_ids=[p.id for p in problems])
    out = evaluation.flat_metrics(res, prefix="eval/")
    out.update({"eval/num_problems": len(problems), "eval/n_samples": n, "eval/runs": e.runs,
                "time/eval": time.perf_counter() - t0})
    self.meta["evals"].append({"step": step, **{k: v for k, v in out.items() if not k.startswith("time/")}})
    if jax.process_index() == 0:
      evaluation.plot_pass_at_k_curves(self.meta["evals"], res["ks"], os.path.join(self.workdir, "pass_at_k.png"))
    return out

  # ------------------------------------------------------------------------ reference resets
  def reset_reference(self, state, step, reason):
    path = ckpt_lib.snapshot_path(self.workdir, step)
    ckpt_lib.save_snapshot(path, state["params"])
    state = dict(state, ref_params=ckpt_lib.load_snapshot(path, state["params"]))
    if self.c.ref.reset_optimizer:
      state["opt_state"] = self._init_opt(state["params"])
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
      self.meta["evals_since_best"] = 0
      self.meta["best_eval"] = None   # new reference: a fresh plateau window
      return True
    return False

  # ------------------------------------------------------------------------ the loop
  def train(self):
    c = self.c
    ckpt = ckpt_lib.Checkpointer(self.workdir, keep=c.keep_checkpoints)
    start = ckpt.latest_step() or 0
    state = self.state
    if start:
      state, meta = ckpt.restore(start, state)
      self.meta.update(meta["trainer"])
      self.it.restore(meta["data"])
      print(f"resumed from {ckpt.dir}/{start} (reference: {self.meta['ref_source']})", file=sys.stderr)
    writer = MetricsWriter(self.workdir, start)
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
    from tqdm import tqdm
    bar = tqdm(total=c.total_steps, initial=start, desc="train", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    try:
      if start == 0 and c.eval_at_start:
        first_eval = last_eval = self.evaluate(state["params"], 0)
        writer.write(0, first_eval)
      step = start
      while step < c.total_steps and not interrupted:
        state, row = self.train_step(state, step)
        step += 1
        if (c.eval_every and step % c.eval_every == 0) or step == c.total_steps:
          last_eval = self.evaluate(state["params"], step)
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
    summary = {"first_eval": first_eval, "last_eval": last_eval, "step": step}
    if first_eval and last_eval and jax.process_index() == 0:
      print_change(first_eval, last_eval)
    return summary


def print_change(before, after):
  keys = [k for k in after if k.startswith("eval/pass@") or k.startswith("eval/maj@")]
  keys = [k for k in keys if not k.endswith("_std")]
  print("evaluation before -> after training:")
  for k in keys:
    if k in before:
      print(f"  {k[5:]:>10}: {before[k]:.4f} -> {after[k]:.4f}  ({after[k] - before[k]:+.4f})")


def train(config, workdir):
  """Trains from `config` in `workdir` (resuming from its latest checkpoint) -> summary dict."""
  return Trainer(config, workdir).train()
