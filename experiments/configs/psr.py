"""PSR: positive sample reinforcement only (learn from correct samples, A=+1 on them)
with the REINFORCE loss (set in rl.algorithms.REGISTRY)."""
from rl import config


def get_config():
  c = config.base("psr")
  return c.lock()
