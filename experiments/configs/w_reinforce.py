"""Weighted REINFORCE: lambda * PSR + NSR with lambda = 0.1 (up-weights learning from mistakes)."""
from experiments.configs import common


def get_config():
  c = common.base()
  c.algo = "w_reinforce"
  c.adv.lam = 0.1
  c.loss.loss_type = "reinforce"   # -A * logp, as in the paper (same gradient as PPO at ratio 1)
  return c.lock()
