"""GRPO with offline sample injection: in groups with no correct sample, an incorrect sample is replaced by a
stored correct solution ("gold" writes the task's gold solutions to workdir/solutions.jsonl first)."""
from rl import config


def get_config():
  c = config.base()
  c.osi.enabled = True
  c.osi.solutions_file = "gold"
  return c.lock()
