"""GSPO (Zheng et al. 2025): GRPO advantages with a sequence-level, length-normalised importance ratio clipped to
[1 - 3e-4, 1 + 4e-4] (the paper's ranges), sequence-mean aggregation. Two minibatches (two updates a step) so the ratio moves off 1."""
from rl import config


def get_config():
  c = config.base("gspo")
  c.loss.gspo_clip_low, c.loss.gspo_clip_high = 3e-4, 4e-4
  c.train.minibatches = 2
  return c.lock()
