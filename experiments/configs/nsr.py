"""NSR: negative sample reinforcement only (push down incorrect samples, A=-1 on them)
with the REINFORCE loss (set in rl.algorithms.REGISTRY)."""
from rl import config


def get_config():
  c = config.base("nsr")
  return c.lock()
