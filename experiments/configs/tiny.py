"""Tiny random Llama (2 layers, width 64, 17-token character vocabulary) on the toy parity task: a random policy
is right ~2/17 of the time and GRPO lifts the reward to ~0.5 and beyond within a few dozen steps on a CPU
(about a minute including compilation). Used by the tests.

  python experiments/run.py --config experiments/configs/tiny.py --workdir /tmp/tiny
"""
from rl import config


def get_config():
  c = config.base()
  c.total_steps = 40
  c.checkpoint_every = 20
  return c.lock()
