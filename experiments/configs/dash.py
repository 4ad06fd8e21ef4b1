"""DASH: preemptive sampling (one sampler call for 4 update-batches, gradients accumulated in small increments)
and gradient filtering (drop samples with |A| <= tau)."""
from rl import config


def get_config():
  c = config.base()
  c.rollout.prompts_per_step = 4 * 8   # 4 update-batches of 8 prompts sampled in one call
  c.train.minibatches = 4              # one optimizer update per update-batch
  c.train.micro_batch_size = 16        # gradient accumulation increment
  c.filters.grad_filter_tau = 0.1
  c.total_steps = 10                   # = 40 updates, as tiny.py's 40 steps of 1 update
  return c.lock()
