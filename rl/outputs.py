"""What a run writes to its workdir besides checkpoints (process 0 only), and the per-step metric row.

  workdir/config.json      the resolved config (rl.config.save, at start)
  workdir/metrics.jsonl    one JSON object per step ("step" + scalars); the same scalars in workdir/tb/
                           (TensorBoard) and, with config.log.wandb, in Weights & Biases
  workdir/samples.jsonl    decoded completions every config.log.samples_every steps and at each evaluation
  workdir/pass_at_k.png    pass@k curves of the evaluations (also an image in TensorBoard)
  workdir/hf/              the final policy in Hugging Face layout (`export_hf`)
"""
import hashlib
import json
import math
import os
import socket
import sys

import jax
import numpy as np
from tqdm import tqdm

import models
from rl import advantages as adv_lib


def is_main():
  return jax.process_index() == 0


def note(msg):
  """A progress line on stderr that does not break the progress bar (process 0 only)."""
  if is_main():
    tqdm.write(msg, file=sys.stderr)


def _py(v):
  if isinstance(v, (np.generic, np.ndarray, jax.Array)):
    v = np.asarray(v).item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


def read_jsonl(path, warn=note):
  """-> [(raw line bytes, row dict)] of a JSONL file of step rows; [] if missing. Tolerates a killed write.

  A line that is not a JSON object with a "step" (the torn last line of a run killed mid-write, or any other
  damaged line) is skipped with one warning "path:line: skipped ..." via `warn`.
  """
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    pieces = f.read().split(b"\n")
  torn_tail = pieces[-1] != b""   # a complete file ends with "\n", leaving an empty last piece
  if not torn_tail:
    pieces.pop()
  out = []
  for i, raw in enumerate(pieces, start=1):
    if not raw.strip():
      continue
    try:
      row = json.loads(raw.decode("utf-8"))
      if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        raise ValueError("not a JSON object with an integer 'step'")
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
      what = "the torn last line (a write cut short by a kill?)" if torn_tail and i == len(pieces) else "a damaged line"
      warn(f"{path}:{i}: skipped {what}: {type(e).__name__}: {str(e)[:80]}")
      continue
    out.append((raw, row))
  return out


def truncate_jsonl(path, last_step, warn=note):
  """Keeps the rows of a JSONL file with "step" <= last_step (all are dropped for last_step 0); damaged lines
  (a torn last line) are dropped with a warning instead of blocking the resume."""
  if not os.path.exists(path):
    return
  rows = [raw + b"\n" for raw, row in read_jsonl(path, warn) if last_step and row["step"] <= last_step]
  with open(path + ".tmp", "wb") as f:
    f.writelines(rows)
  os.replace(path + ".tmp", path)


# ============================================================================ metrics

def _wandb_mode(mode):
  """auto -> "online" when logged in and api.wandb.ai answers within a second, else "offline"."""
  if mode != "auto":
    return mode
  if os.environ.get("WANDB_MODE"):
    return os.environ["WANDB_MODE"]
  netrc = os.path.join(os.path.expanduser("~"), ".netrc")
  logged_in = bool(os.environ.get("WANDB_API_KEY")) or (os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read())
  if not logged_in:
    return "offline"
  try:
    socket.create_connection(("api.wandb.ai", 443), timeout=1.0).close()
    return "online"
  except OSError:
    return "offline"


class MetricsWriter:
  """One JSON object per step in workdir/metrics.jsonl, the same scalars in TensorBoard (and W&B)."""

  def __init__(self, workdir, start_step, config):
    self.active = is_main()
    self.workdir = workdir
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = self.wandb = None
    if not self.active:
      return
    truncate_jsonl(self.path, start_step)   # resuming: drop rows written after the checkpoint we resume from
    truncate_jsonl(os.path.join(workdir, "samples.jsonl"), start_step)
    from tensorboardX import SummaryWriter   # local: imports protobuf/tensorboard machinery (slow)
    self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1 if start_step else None)
    lc = config.log
    if lc.wandb:
      try:
        import wandb   # local: an optional extra (pip install wandb)
      except ImportError:
        raise ValueError("config.log.wandb=True needs the wandb package (pip install wandb)") from None
      run_id = hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]   # same run on resume
      self.wandb = wandb.init(project=lc.wandb_project, name=lc.wandb_name or os.path.basename(workdir),
                              id=run_id, resume="allow", dir=workdir, config=json.loads(config.to_json()),
                              mode=_wandb_mode(lc.wandb_mode))

  def write(self, step, row):
    if not self.active:
      return
    row = {"step": int(step), **{k: _py(v) for k, v in sorted(row.items())}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
    for k, v in scalars.items():
      self.tb.add_scalar(k.replace("@", "_at_"), v, step)
    self.tb.flush()
    if self.wandb is not None:
      self.wandb.log(scalars, step=int(step))

  def image(self, tag, png_path, step):
    """A PNG file as an image in TensorBoard (and W&B)."""
    if not self.active:
      return
    import matplotlib.image   # local: matplotlib is heavy and only needed for evaluations
    self.tb.add_image(tag, matplotlib.image.imread(png_path)[..., :3], step, dataformats="HWC")
    self.tb.flush()
    if self.wandb is not None:
      import wandb   # local: optional extra
      self.wandb.log({tag: wandb.Image(png_path)}, step=int(step))

  def close(self):
    if self.tb is not None:
      self.tb.close()
    if self.wandb is not None:
      self.wandb.finish()


def step_metrics(batch, old_logp, upd, info, *, lr, is_sft):
  """The per-step row: statistics of the Batch, |sampler - trainer| log-prob gap (old_logp f32 [N,T], or None:
  upd["sampler_logp_diff"], over the rows the update forwarded), the update's metrics `upd`
  (rl.update.run_epochs) and `info` (rollout / filter metrics, timings)."""
  sampled = batch.mask * (~batch.injected)[:, None]
  if old_logp is None:
    gap = upd["sampler_logp_diff"]
  else:
    gap = float((np.abs(batch.logprobs - old_logp) * sampled).sum() / max(float(sampled.sum()), 1.0))
  out = {
      "reward/mean": float(batch.reward.mean()), "reward/shaped_mean": float(batch.shaped_reward.mean()),
      "acc/mean": float(batch.correct.mean()),
      "response_length/mean": float(batch.lengths.mean()), "response_length/max": int(batch.lengths.max()),
      "response/truncated_frac": float((~batch.stopped).mean()),
      "adv/zero_frac": float(adv_lib.zero_advantage_fraction(batch.adv)), "adv/kept_frac": float(batch.keep.mean()),
      "loss/total": upd["loss"], "loss/pg": upd["pg_loss"], "loss/kl": upd["kl_loss"],
      "loss/entropy": upd["entropy_loss"],
      "clip_frac/low": upd["clip_frac_low"], "clip_frac/high": upd["clip_frac_high"],
      "kl/approx_old": upd["approx_kl"], "kl/ref": upd["ref_kl"], "entropy": upd["entropy"],
      "grad_norm": upd["grad_norm"], "update_norm": upd["update_norm"], "updates/skipped": int(upd["skipped"]),
      "lr": lr,
      "sampler_logp_diff": 0.0 if is_sft else float(gap),
      **info,
  }
  if not is_sft:   # sampler-trainer mismatch (rl.losses.mismatch_weights)
    out.update({"mismatch/is_ratio_mean": upd["is_ratio_mean"], "mismatch/is_ratio_max": upd["is_ratio_max"],
                "mismatch/is_clip_frac": upd["is_clip_frac"], "mismatch/kl": upd["mismatch_kl"]})
  return out


# ============================================================================ samples

def write_samples(workdir, step, batch, kind):
  """Appends one row per sample of `batch` to workdir/samples.jsonl: step, kind ("train" / "eval"), problem id,
  prompt (the question), completion, reward, correct, extracted answer, advantage, length."""
  if not is_main():
    return
  with open(os.path.join(workdir, "samples.jsonl"), "a") as f:
    for i, p in enumerate(batch.problems):
      f.write(json.dumps({"step": int(step), "kind": kind, "id": p.id, "prompt": p.question,
                          "completion": batch.completions[i], "reward": float(batch.reward[i]),
                          "correct": bool(batch.correct[i]), "pred": batch.pred[i], "answer": p.answer,
                          "advantage": float(batch.adv[i]), "length": int(batch.lengths[i])}) + "\n")


def print_samples(batch, k, step):
  """Prints k samples of `batch` (the first of k different problems when there are that many)."""
  if not is_main() or not k:
    return
  seen, rows = set(), []
  for i, p in enumerate(batch.problems):
    if p.id not in seen:
      seen.add(p.id)
      rows.append(i)
  for i in rows[:k]:
    p = batch.problems[i]
    note(f"[eval@{step}] {p.question!r} -> {batch.completions[i]!r} (answer {batch.pred[i]!r}, gold {p.answer!r}, "
         f"{'correct' if batch.correct[i] else 'wrong'})")


def print_change(before, after):
  keys = [k for k in after if (k.startswith("eval/pass@") or k.startswith("eval/maj@")) and not k.endswith("_std")]
  note("evaluation before -> after training:")
  for k in keys:
    if k in before:
      note(f"  {k[5:]:>10}: {before[k]:.4f} -> {after[k]:.4f}  ({after[k] - before[k]:+.4f})")


# ============================================================================ Hugging Face export

def export_hf(model, tok, path):
  """models.save_pretrained of the policy (+ the tokenizer when it can save itself) -> path."""
  if is_main():
    models.save_pretrained(model, path, tokenizer=tok if hasattr(tok, "save_pretrained") else None)
  return path
