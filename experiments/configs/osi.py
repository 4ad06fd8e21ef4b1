"""GRPO with offline sample injection: in groups with no correct sample, an incorrect sample is replaced by a
stored correct solution ("gold" writes the task's gold solutions to workdir/solutions.jsonl first)."""
from experiments.configs import common


def get_config():
  c = common.base()
  c.osi.enabled = True
  c.osi.solutions_file = "gold"
  return c.lock()
