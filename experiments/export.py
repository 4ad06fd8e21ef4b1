"""Exports the policy of any checkpoint of a run in Hugging Face layout (config.json + model.safetensors
[+ tokenizer]), loadable by transformers / vLLM.

  python experiments/export.py --workdir /tmp/tiny --out /tmp/tiny_hf            # the latest checkpoint
  python experiments/export.py --workdir /tmp/tiny --step 20 --out /tmp/tiny_hf20

The run's resolved config is read from workdir/config.json (written by the trainer at start).
"""
import argparse
import json
import os
import sys

# transformers prints "PyTorch was not found..." on import: expected here (only its tokenizers are used)
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import ml_collections
from flax import nnx

from rl import checkpoint as ckpt_lib
from rl import config as config_lib
from rl import outputs, trainer


def export(workdir, out, step=None):
  """Checkpoint `step` (None = the latest) of the run in `workdir` -> Hugging Face directory `out`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found (not a workdir written by rl.trainer?)")
  with open(path) as f:
    c = config_lib.validate(ml_collections.ConfigDict(json.load(f)))
  t = trainer.Trainer(c, workdir)
  ckpt = ckpt_lib.Checkpointer(workdir, keep=c.keep_checkpoints)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.dir}")
    if step not in ckpt.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {ckpt.dir} (have {sorted(ckpt.all_steps())})")
    state, _ = ckpt.restore(step, t.state)
  finally:
    ckpt.close()
  return outputs.export_hf(nnx.merge(t.graphdef, state["params"]), t.tok, out), step


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True, help="the run's directory (checkpoints/, config.json)")
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  ap.add_argument("--out", required=True, help="output directory")
  a = ap.parse_args()
  try:
    out, step = export(a.workdir, a.out, a.step)
  except (FileNotFoundError, ValueError) as e:
    print(f"export.py: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"step {step} of {a.workdir} -> {out}")


if __name__ == "__main__":
  main()
