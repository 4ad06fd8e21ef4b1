"""What a run leaves in its workdir: samples.jsonl, config.json (and the resume check), the Hugging Face export
(read back by transformers), experiments/export.py, W&B offline logging, the pass@k image in TensorBoard."""
import glob
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rl import config, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**overrides):
  c = config.tiny_overrides(config.from_file(os.path.join(ROOT, "experiments", "configs", "tiny.py")))
  return config.override(c, {"checkpoint_every": 1, "eval.n_samples": 4, **overrides})


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(l) for l in f]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-step tiny run with an evaluation at steps 0 and 2 and samples logged every step."""
  wd = str(tmp_path_factory.mktemp("run"))
  t = trainer.Trainer(tiny(total_steps=2, **{"log.samples_every": 1}), wd)
  t.train()
  return wd, t


def test_samples_jsonl(run):
  wd, t = run
  rows = read_jsonl(os.path.join(wd, "samples.jsonl"))
  c = t.c
  n_train = c.rollout.prompts_per_step * c.rollout.group_size
  n_eval = min(c.eval.prompts_per_call, c.task.num_eval) * c.eval.n_samples   # the first sampler call of an eval
  kinds = [(r["step"], r["kind"]) for r in rows]
  assert kinds.count((0, "eval")) == n_eval and kinds.count((2, "eval")) == n_eval
  assert kinds.count((1, "train")) == n_train and kinds.count((2, "train")) == n_train
  problems = {p.id: p for p in t.task.train_problems + t.task.eval_problems}
  for r in rows:
    assert set(r) == {"step", "kind", "id", "prompt", "completion", "reward", "correct", "pred", "answer",
                      "advantage", "length"}
    p = problems[r["id"]]
    assert r["prompt"] == p.question and r["answer"] == p.answer
    # the toy scorer, re-derived from the logged completion: correct iff its first character is the answer
    assert r["correct"] == (r["completion"][:1] == p.answer) and r["reward"] == float(r["correct"])
    assert r["pred"] == (r["completion"][:1] or None) and 0 <= len(r["completion"]) <= r["length"]
  train = [r for r in rows if r["kind"] == "train" and r["step"] == 1]
  adv = np.array([r["advantage"] for r in train]).reshape(c.rollout.prompts_per_step, c.rollout.group_size)
  rew = np.array([r["reward"] for r in train]).reshape(adv.shape)
  # GRPO: advantages are the group-standardised rewards (0 for constant groups)
  sd = rew.std(1, ddof=1, keepdims=True)
  ref = np.where(sd > 0, (rew - rew.mean(1, keepdims=True)) / (sd + 1e-6), 0.0)
  np.testing.assert_allclose(adv, ref, rtol=1e-4, atol=1e-5)


def test_config_json_is_the_resolved_config(run):
  wd, t = run
  with open(os.path.join(wd, "config.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(t.c.to_json()) and saved["log"]["samples_every"] == 1


def test_hf_export_is_read_by_transformers(run, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  wd, t = run
  hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(wd, "hf"), dtype=torch.float32)
  ids = np.array([[1, 5, 9, 15, 4, 3]], np.int64)
  ref = hf(torch.as_tensor(ids)).logits.detach().numpy()
  ours = np.asarray(nnx.merge(t.graphdef, t.state["params"])(jnp.asarray(ids, jnp.int32)))
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)

  # experiments/export.py: the step-1 checkpoint differs from the final policy, step 2 equals it
  env = dict(os.environ, PYTHONPATH=ROOT)
  for step, same in ((1, False), (2, True)):
    out = str(tmp_path / f"hf{step}")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "export.py"), "--workdir", wd,
                        "--step", str(step), "--out", out], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(torch.as_tensor(ids))
    assert np.allclose(got.logits.detach().numpy(), ref, atol=1e-6) == same
  p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "export.py"), "--workdir", wd,
                      "--step", "7", "--out", str(tmp_path / "x")], env=env, capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 2 and "no checkpoint for step 7" in p.stderr


def test_tensorboard_has_the_pass_at_k_image(run):
  from tensorboardX.proto import event_pb2   # tensorboardX ships the event protos
  from tensorboardX.record_writer import read_records   # noqa: F401  (probe: old versions lack it)
  wd, _ = run
  tags = set()
  for path in glob.glob(os.path.join(wd, "tb", "events.*")):
    with open(path, "rb") as f:
      data = f.read()
    tags |= {t for t in ("eval/pass_at_k",) if t.encode() in data}
  assert "eval/pass_at_k" in tags
  del event_pb2


def test_resume_lists_changes_and_refuses_a_changed_task(run, tmp_path, capsys):
  wd, _ = run
  c = tiny(total_steps=3, **{"log.samples_every": 1, "task.name": "toy_last_digit"})
  with pytest.raises(ValueError, match=r"config\.task\.name differs.*allow_config_change"):
    trainer.Trainer(c, wd).train()
  # a changed learning rate is listed, not refused; the run continues from step 2 to 3
  c = tiny(total_steps=3, **{"log.samples_every": 1, "optim.lr": 5e-3})
  out = trainer.Trainer(c, wd).train()
  err = capsys.readouterr().err
  assert "optim.lr: 0.01 -> 0.005" in err and out["step"] == 3
  with open(os.path.join(wd, "config.json")) as f:
    assert json.load(f)["optim"]["lr"] == 5e-3


def test_wandb_offline(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_SILENT", "true")
  wd = str(tmp_path)
  c = tiny(total_steps=1, eval_at_start=False, **{"log.wandb": True, "log.wandb_mode": "offline",
                                                   "log.wandb_name": "tiny-test", "export_hf": False})
  trainer.train(c, wd)
  runs = glob.glob(os.path.join(wd, "wandb", "offline-run-*"))
  assert len(runs) == 1 and glob.glob(os.path.join(runs[0], "*.wandb"))
  assert os.path.getsize(glob.glob(os.path.join(runs[0], "*.wandb"))[0]) > 0
