"""Supervised fine-tuning on gold solutions (the off-policy baseline for the on-policy-vs-SFT comparison)."""
from experiments.configs import common


def get_config():
  c = common.base()
  c.algo = "sft"
  c.rollout.group_size = 1
  c.loss.agg = "token-mean"
  return c.lock()
