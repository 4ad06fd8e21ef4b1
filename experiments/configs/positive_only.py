"""GRPO advantages normalised over the full group, then only samples with A > 0 are kept."""
from experiments.configs import common


def get_config():
  c = common.base()
  c.algo = "positive_only"
  return c.lock()
