"""Supervised fine-tuning on gold solutions (the off-policy baseline for the on-policy-vs-SFT comparison)."""
from rl import config


def get_config():
  c = config.base("sft")
  c.rollout.group_size = 1
  c.loss.agg = "token-mean"
  return c.lock()
