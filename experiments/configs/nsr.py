"""NSR: negative sample reinforcement only (push down incorrect samples, A=-1 on them)."""
from experiments.configs import common


def get_config():
  c = common.base()
  c.algo = "nsr"
  c.loss.loss_type = "reinforce"   # -A * logp, as in the paper (same gradient as PPO at ratio 1)
  return c.lock()
