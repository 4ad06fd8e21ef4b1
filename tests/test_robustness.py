"""A run never loses work silently: the update guard, K skipped updates in a row, no silent restart, fallback
past a damaged checkpoint with exact resume, a torn metrics line, one-line errors and exit codes, validation.

Each test reproduces the fault (an extreme learning rate, corrupt bytes, a deleted checkpoint folder, a torn
line, a full disk) and asserts what survives, the message and the exit code.
"""
import json
import os
import shutil
import subprocess
import sys
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl import algorithms, config, outputs, rollout, trainer, update
from rl import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = [sys.executable, os.path.join(ROOT, "experiments", "run.py"),
       "--config", os.path.join(ROOT, "experiments", "configs", "tiny.py"), "--config.eval_at_start=False",
       "--config.eval.n_samples=2", "--config.export_hf=False", "--config.log.samples_every=0"]


def tiny(**overrides):
  """The tiny config without evaluations at start, small evals, no HF export, plus dotted-key overrides."""
  c = config.tiny_overrides(config.from_file(os.path.join(ROOT, "experiments", "configs", "tiny.py")))
  base = {"eval_at_start": False, "eval.n_samples": 2, "export_hf": False, "log.samples_every": 0}
  return config.override(c, {**base, **overrides})


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def deterministic(row):
  return {k: v for k, v in row.items() if not (k.startswith(("time/", "cpu/")) or k == "tokens_per_s")}


def all_finite(tree):
  return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact))


# ---------------------------------------------------------------------------- the update guard

@pytest.fixture(scope="module")
def tiny_trainer(tmp_path_factory):
  return trainer.Trainer(tiny(total_steps=1), str(tmp_path_factory.mktemp("unit")))


def _minibatch(t):
  b, _ = rollout.collect(t.ctx, t.state["params"], t.it, jax.random.PRNGKey(0))
  b, _ = algorithms.postprocess(t.c, b)
  arrays, _ = t.logprobs(t.state, b)
  arrays["adv"] = np.linspace(-1, 1, len(arrays["adv"])).astype(np.float32)   # every row carries signal
  arrays["keep"] = np.ones_like(arrays["keep"])
  return update.put({k: v[None] for k, v in arrays.items()}, t.mesh, axis=1)


def _opt_nan_after_update():
  """SGD whose optimizer state becomes NaN: a finite loss, gradient and update, but a non-finite result."""
  def init(params):
    return {"m": jax.tree.map(jnp.zeros_like, params)}
  def upd(grads, state, params=None):
    return jax.tree.map(lambda g: -1e-3 * g, grads), {"m": jax.tree.map(lambda m: m + jnp.nan, state["m"])}
  return optax.GradientTransformation(init, upd)


@pytest.mark.parametrize("tx, why", [(optax.sgd(1e30), "update norm overflows"),
                                     (optax.adam(1e30), "update norm overflows (Adam: |update| ~ lr)"),
                                     (_opt_nan_after_update(), "optimizer state NaN")])
def test_update_with_a_non_finite_result_is_not_applied(tiny_trainer, tx, why):
  t = tiny_trainer
  mb = _minibatch(t)
  fn = update.make_update_fn(t.graphdef, tx, update.loss_static(t.c.loss))
  opt = tx.init(t.state["params"])
  p, o, m = fn(t.state["params"], opt, mb, t.hp)
  assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"])), why   # the inputs were fine
  assert float(m["skipped"]) == 1.0, why
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p, t.state["params"])))
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), o, opt)))
  # the same update with a sane optimizer is applied
  sgd = optax.sgd(1e-3)
  p2, _, m2 = update.make_update_fn(t.graphdef, sgd, update.loss_static(t.c.loss))(
      t.state["params"], sgd.init(t.state["params"]), mb, t.hp)
  assert float(m2["skipped"]) == 0.0 and float(m2["update_norm"]) > 0
  assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p2, t.state["params"])))


def test_lr_1e30_stops_naming_the_step_and_writes_no_bad_checkpoint(tmp_path):
  """The issue's probe: lr=1e30 used to apply a finite-looking first update, then exit 0 with NaN checkpoints."""
  c = tiny(total_steps=8, checkpoint_every=1, **{"optim.lr": 1e30, "train.max_skipped_updates": 3})
  with pytest.raises(trainer.TrainError, match=r"^step 3: 3 updates in a row were skipped .*max_skipped_updates=3"):
    trainer.train(c, str(tmp_path))
  rs = rows(tmp_path)
  assert [r["updates/skipped"] for r in rs] == [1, 1]   # steps 1-2 written; step 3 stopped the run
  ck = ckpt_lib.Checkpointer(str(tmp_path))
  assert ck.all_steps() == [1, 2]
  step, state, _ = ck.restore_latest(trainer.Trainer(c, str(tmp_path / "like")).state)
  init = trainer.Trainer(c, str(tmp_path / "like2")).state
  assert step == 2 and all_finite(state)
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state["params"],
                                          init["params"])))   # no update was ever applied


# ---------------------------------------------------------------------------- resume: fallback, restart, torn line

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 4-step run with checkpoints at 2 and 4 (kept as a template for the fault tests)."""
  wd = str(tmp_path_factory.mktemp("reference"))
  trainer.train(tiny(total_steps=4, checkpoint_every=2), wd)
  return wd


def _copy(reference, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(reference, wd)
  return wd


def test_damaged_latest_checkpoint_falls_back_and_resumes_exactly(reference, tmp_path, capsys):
  wd = _copy(reference, tmp_path)
  ck = ckpt_lib.Checkpointer(wd)
  data = max((os.path.join(d, f) for d, _, fs in os.walk(ck.step_dir(4)) for f in fs), key=os.path.getsize)
  with open(data, "r+b") as f:   # 500 random bytes into the latest checkpoint's largest data file
    f.seek(os.path.getsize(data) // 3)
    f.write(np.random.default_rng(0).bytes(500))
  trainer.train(tiny(total_steps=4, checkpoint_every=2), wd)
  err = capsys.readouterr().err
  assert f"checkpoint damaged: {ck.step_dir(4)}" in err and "falling back to step 2" in err
  assert [deterministic(r) for r in rows(wd)] == [deterministic(r) for r in rows(reference)]
  assert os.listdir(os.path.join(wd, "damaged_checkpoints"))[0].startswith("4-")


def test_every_checkpoint_damaged_stops_without_touching_anything(reference, tmp_path):
  wd = _copy(reference, tmp_path)
  for step in (2, 4):
    os.remove(os.path.join(wd, "checkpoints", str(step), "meta", "metadata"))
  before = open(os.path.join(wd, "metrics.jsonl")).read()
  with pytest.raises(trainer.TrainError, match=r"no usable checkpoint in .*step 4: .*step 2: .*nothing was moved"):
    trainer.train(tiny(total_steps=6, checkpoint_every=2), wd)
  assert open(os.path.join(wd, "metrics.jsonl")).read() == before
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]


def test_no_silent_restart(reference, tmp_path):
  wd = _copy(reference, tmp_path)
  shutil.rmtree(os.path.join(wd, "checkpoints"))
  before = open(os.path.join(wd, "metrics.jsonl")).read()
  with pytest.raises(trainer.TrainError, match=r"holds metrics\.jsonl and config\.json of an earlier run but no "
                                               r"checkpoint .*--config\.restart=True"):
    trainer.train(tiny(total_steps=4, checkpoint_every=2), wd)
  assert open(os.path.join(wd, "metrics.jsonl")).read() == before   # nothing truncated
  trainer.train(tiny(total_steps=4, checkpoint_every=2, restart=True), wd)   # explicit: starts over
  assert [deterministic(r) for r in rows(wd)] == [deterministic(r) for r in rows(reference)]


def test_torn_metrics_line_is_skipped_on_resume(reference, tmp_path, capsys):
  wd = _copy(reference, tmp_path)
  with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
    f.write('{"step": 5, "acc/me')   # a kill in the middle of a write
  trainer.train(tiny(total_steps=6, checkpoint_every=2), wd)
  assert "metrics.jsonl:5: skipped the torn last line" in capsys.readouterr().err
  assert [r["step"] for r in rows(wd)] == [1, 2, 3, 4, 5, 6]


def test_read_jsonl_damaged_lines(tmp_path):
  p = tmp_path / "m.jsonl"
  p.write_bytes(b'{"step": 1}\n\xff\xfe\n[1]\n{"step": 2}\n{"step": 3, "a"')
  warnings = []
  assert [row["step"] for _, row in outputs.read_jsonl(str(p), warnings.append)] == [1, 2]
  assert [w.split(": skipped")[0] for w in warnings] == [f"{p}:2", f"{p}:3", f"{p}:5"]
  assert "torn last line" in warnings[2] and "damaged line" in warnings[0]


# ---------------------------------------------------------------------------- validation

@pytest.mark.parametrize("key, value, message", [
    ("optim.lr", float("inf"), "config.optim.lr=inf must be a finite number"),
    ("optim.lr", float("nan"), "config.optim.lr=nan must be a finite number"),
    ("optim.lr", 0.0, r"config.optim.lr=0.0 must be in \(0, inf\)"),
    ("rollout.group_size", 1, "config.rollout.group_size=1 must be >= 2 for algo='grpo'"),
    ("rollout.reward_timeout", 0.0, r"config.rollout.reward_timeout=0.0 must be in \(0, inf\)"),
    ("rollout.reward_timeout", -1.0, r"config.rollout.reward_timeout=-1.0 must be in \(0, inf\)"),
    ("task.num_eval", -1, r"config.task.num_eval=-1 must be in \[0, inf\)"),
    ("loss.clip_low", -0.1, r"config.loss.clip_low=-0.1 must be in \[0, 1\)"),
    ("optim.grad_clip", -1.0, r"config.optim.grad_clip=-1.0 must be in \[0, inf\)"),
    ("mesh.data", 0, "config.mesh.data=0 must be >= 1 or -1"),
    ("keep_checkpoints", 0, r"config.keep_checkpoints=0 must be in \[1, inf\)"),
    ("train.max_skipped_updates", 0, r"config.train.max_skipped_updates=0 must be in \[1, inf\)"),
    ("optim.b2", 1.0, r"config.optim.b2=1.0 must be in \[0, 1\)"),
    ("loss.dual_clip", 0.5, "config.loss.dual_clip=0.5 must be 0 .off. or > 1"),
])
def test_validation_names_the_key(key, value, message):
  c = tiny()
  *path, last = key.split(".")
  node = c
  for p in path:
    node = node[p]
  node[last] = value
  with pytest.raises(ValueError, match="^" + message) as e:
    config.validate(c)
  assert "\n" not in str(e.value)


def test_group_size_1_is_fine_where_advantages_are_not_group_relative():
  for algo in ("psr", "nsr", "w_reinforce", "sft"):
    c = config.base(algo)
    c.rollout.group_size = 1
    assert config.validate(c).rollout.group_size == 1   # accepted (validate raises on a bad value)
  c = config.base("grpo")
  c.rollout.group_size = 1
  with pytest.raises(ValueError, match="group_size"):   # group-relative advantages need G >= 2
    config.validate(c)


def test_every_numeric_key_has_a_range():
  for algo in algorithms.REGISTRY:
    keys = set(config.numeric_keys(config.base(algo)))
    assert keys <= set(config.RANGES), sorted(keys - set(config.RANGES))
    assert "optim.lr" in keys and "mesh.data" in keys and "task.kwargs" not in str(keys)


# ---------------------------------------------------------------------------- exit codes, one line (subprocess)

def run(args, env):
  return subprocess.run(RUN + args, env=env, capture_output=True, text=True, timeout=300)


def last_line(p):
  return p.stderr.strip().splitlines()[-1]


def test_cli_lr_1e30_exits_1_with_one_line(tmp_path, env):
  p = run(["--workdir", str(tmp_path), "--config.total_steps=5", "--config.optim.lr=1e30",
           "--config.train.max_skipped_updates=2"], env)
  assert p.returncode == 1, p.stderr[-2000:]
  assert last_line(p).startswith("run.py: error: step 2: 2 updates in a row were skipped"), p.stderr[-2000:]
  assert "Traceback" not in p.stderr


@pytest.fixture
def tmpfs(tmp_path):
  """A 64 MiB tmpfs under tmp_path (root only); skips where mounting is not permitted."""
  mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
  mnt.mkdir()
  p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
  if p.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}): needs root / CAP_SYS_ADMIN")
  yield mnt
  subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_cli_full_disk_exits_1_with_one_line_and_keeps_the_checkpoint(tmpfs, env):
  wd = str(tmpfs / "wd")
  p = run(["--workdir", wd, "--config.total_steps=2", "--config.checkpoint_every=2"], env)
  assert p.returncode == 0, p.stderr[-2000:]
  with open(tmpfs / "filler", "wb", buffering=0) as f:   # fill the disk to the last byte
    for chunk in (1 << 20, 4096, 1):
      try:
        while True:
          f.write(b"\0" * chunk)
      except OSError:
        pass
  p = run(["--workdir", wd, "--config.total_steps=4", "--config.checkpoint_every=2"], env)
  assert p.returncode == 1, p.stderr[-2000:]
  line = last_line(p)
  assert line.startswith("run.py: error: ") and "No space left on device" in line and wd in line, line
  assert "Traceback" not in p.stderr
  ck = ckpt_lib.Checkpointer(wd)   # the step-2 checkpoint is intact and verifies
  assert ck.all_steps() == [2]
  assert ck.restore_latest(trainer.Trainer(tiny(), str(tmpfs.parent / "like")).state)[0] == 2
