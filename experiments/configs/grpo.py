"""GRPO (DeepSeekMath): group-normalised advantages, PPO clip 0.2, sequence-mean of token-means, no KL."""
from rl import config


def get_config():
  c = config.base()
  c.loss.agg = "seq-mean-token-mean"
  return c.lock()
