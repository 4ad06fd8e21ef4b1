"""Weighted REINFORCE: lambda * PSR + NSR with lambda = 0.1 (up-weights learning from mistakes)."""
from rl import config


def get_config():
  c = config.base("w_reinforce")
  c.adv.lam = 0.1
  return c.lock()
