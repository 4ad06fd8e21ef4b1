"""Trains a policy with RL on verifiable rewards: a thin CLI over `rl.trainer.train`.

  python experiments/run.py --config experiments/configs/tiny.py --workdir /tmp/tiny
  python experiments/run.py --config experiments/configs/default.py --config.total_steps=10 --workdir /tmp/run

Rerunning the same command resumes from the latest checkpoint in --workdir (it lists the config keys that
changed and refuses a changed model or task unless --config.allow_config_change=True). Unknown config keys
and invalid values stop the run at start-up with a one-line error naming the key. Needs `pip install -e .`
(the config files import `rl.config`).
"""
import os
import sys

# transformers prints "PyTorch was not found..." on import: expected here (only its tokenizers are used)
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as cf

from rl import config as config_lib
from rl import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, TensorBoard, plots.")


def _die(msg):
  print(f"{os.path.basename(sys.argv[0])}: error: {msg}", file=sys.stderr)
  sys.exit(2)


def _check_override_keys(argv):
  """Fails with one line naming the first --config.<key> that the config file does not define."""
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
  logging.set_verbosity(logging.WARNING)   # Orbax INFO lines would drown the progress bar; the trainer
  try:                                     # prints its own progress lines (what is compiling, evaluations)
    config_lib.validate(_CONFIG.value)
  except ValueError as e:
    _die(str(e))
  try:
    trainer.train(_CONFIG.value, _WORKDIR.value)
  except KeyboardInterrupt as e:
    print(f"\n{e}", file=sys.stderr)
    sys.exit(130)
  except (ValueError, FileNotFoundError) as e:
    if not str(e).startswith("config."):   # not a bad config value: a bug, keep the traceback
      raise
    _die(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
