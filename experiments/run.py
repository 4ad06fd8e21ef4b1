"""Trains a policy with RL on verifiable rewards: a thin CLI over `rl.trainer.train`.

  python experiments/run.py --config experiments/configs/tiny.py --workdir /tmp/tiny
  python experiments/run.py --config experiments/configs/default.py --config.total_steps=10 --workdir /tmp/run

Rerunning the same command resumes from the latest checkpoint in --workdir. Unknown config keys and
invalid values stop the run at start-up with a one-line error naming the key.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository root

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, TensorBoard, plots.")


def _die(msg):
  print(f"{os.path.basename(sys.argv[0])}: error: {msg}", file=sys.stderr)
  sys.exit(2)


def _check_override_keys(argv):
  """Fails with one line naming the first --config.<key> that the config file does not define."""
  from ml_collections.config_flags import config_flags as cf
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None and "--config" in argv and argv.index("--config") + 1 < len(argv):
    path = argv[argv.index("--config") + 1]
  if path is None:
    _die("--config is required (e.g. --config experiments/configs/tiny.py)")
  if not os.path.exists(path.split(":")[0]):
    _die(f"--config file {path!r} not found")
  config = cf.ConfigFileFlagParser(name="config").parse(path)
  for a in argv:
    if not a.startswith("--config.") and not a.startswith("--noconfig."):
      continue
    key = a.split("=", 1)[0].split(".", 1)[1]
    node = config
    for part in key.split("."):
      try:
        node = node[part]
      except (KeyError, TypeError, AttributeError):
        _die(f"unknown config key {key!r} (from {a!r}) in {path}")


def _parse(argv):
  _check_override_keys(argv[1:])
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _die(str(e).splitlines()[0])


def main(argv):
  if len(argv) > 1:
    _die(f"unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    _die("--workdir is required")
  logging.set_verbosity(logging.WARNING)   # Orbax / sampler INFO lines would drown the progress bar
  from experiments.configs import common
  try:
    common.validate(_CONFIG.value)
  except ValueError as e:
    _die(str(e))
  from rl import trainer
  try:
    trainer.train(_CONFIG.value, _WORKDIR.value)
  except KeyboardInterrupt as e:
    print(f"\n{e}", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
