"""GRPO advantages normalised over the full group, then only samples with A < 0 are kept."""
from rl import config


def get_config():
  c = config.base("negative_only")
  return c.lock()
