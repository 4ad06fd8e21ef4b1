"""DASH at paper scale: preemptive sampling (one sampler call for 4 update-batches, gradients accumulated
in small increments) and gradient filtering (drop samples with |A| <= tau = 0.1); Qwen2.5-Math-1.5B on MATH.

  python -m experiments.plan --model experiments/model_configs/qwen2.5-math-1.5b.json --topology v5e:2x4 \
      --config experiments/configs/paper/dash_qwen2.5_math_1.5b.py
"""
from experiments.configs.paper import scale


def get_config():
  c = scale.base()
  c.loss.agg = "token-mean"
  c.rollout.prompts_per_step = 4 * 32  # 4 update-batches of 32 prompts sampled in one call
  c.rollout.group_size = 8             # 1024 rows per sampler call
  c.rollout.max_new_tokens = 3072
  c.train.minibatches = 4              # one optimizer update per update-batch (256 samples)
  c.train.micro_batch_size = 16        # gradient accumulation increment
  c.filters.grad_filter_tau = 0.1
  c.total_steps = 100
  return c.lock()
