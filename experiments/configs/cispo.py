"""CISPO (MiniMax-M1, 2025): REINFORCE weighted by the clipped, stop-gradient importance ratio min(r, 1 + 3), so
no token's gradient is dropped; GRPO advantages, token-mean aggregation. Two minibatches so the ratio moves off 1."""
from rl import config


def get_config():
  c = config.base("cispo")
  c.loss.cispo_clip_high = 3.0
  c.train.minibatches = 2
  return c.lock()
