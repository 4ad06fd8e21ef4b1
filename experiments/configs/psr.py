"""PSR: positive sample reinforcement only (learn from correct samples, A=+1 on them)."""
from experiments.configs import common


def get_config():
  c = common.base()
  c.algo = "psr"
  c.loss.loss_type = "reinforce"   # -A * logp, as in the paper (same gradient as PPO at ratio 1)
  return c.lock()
