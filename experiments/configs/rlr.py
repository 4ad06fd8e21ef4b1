"""GRPO with the relative length reward (shorter correct answers within a group get a bonus)."""
from rl import config


def get_config():
  c = config.base()
  c.shaping.relative_length = True
  c.shaping.rlr_scale = 4.0      # lengths are in tokens: bonus = clip((mean correct length - L) / scale, -.5, .5)
  return c.lock()
