"""GRPO (DeepSeekMath): group-normalised advantages, PPO clip 0.2, sequence-mean of token-means, no KL."""
from experiments.configs import common


def get_config():
  c = common.base()
  c.algo = "grpo"
  c.loss.agg = "seq-mean-token-mean"
  return c.lock()
