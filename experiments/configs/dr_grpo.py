"""Dr. GRPO: no std normalisation of advantages, constant (max length) loss normaliser."""
from experiments.configs import common


def get_config():
  c = common.base()
  c.algo = "dr_grpo"
  c.adv.normalize_std = False
  c.loss.agg = "seq-mean-token-sum-norm"
  return c.lock()
