"""Dr. GRPO: no std normalisation of advantages, constant (max length) loss normaliser (settings in rl.algorithms.REGISTRY)."""
from rl import config


def get_config():
  c = config.base("dr_grpo")
  return c.lock()
