"""experiments/run.py in subprocesses: bad config keys, SIGKILL/Ctrl-C + resume == uninterrupted, 8 devices == 1."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = [sys.executable, os.path.join(ROOT, "experiments", "run.py")]
TINY = ["--config", os.path.join(ROOT, "experiments", "configs", "tiny.py"), "--config.total_steps=6",
        "--config.checkpoint_every=2", "--config.eval_at_start=False", "--config.eval.n_samples=4"]


def run(args, env, **kw):
  return subprocess.run(RUN + args, env=env, capture_output=True, text=True, timeout=300, **kw)


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def deterministic(row):
  return {k: v for k, v in row.items() if not (k.startswith(("time/", "cpu/")) or k == "tokens_per_s")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
  wd = str(tmp_path_factory.mktemp("uninterrupted"))
  p = run(TINY + ["--workdir", wd], env)
  assert p.returncode == 0, p.stderr[-3000:]
  return rows(wd)


@pytest.mark.parametrize("override, key", [("--config.nonexistent=1", "nonexistent"),
                                           ("--config.loss.nonexistent=1", "loss.nonexistent"),
                                           ("--config.loss.kl_kind=k9", "loss.kl_kind"),
                                           ("--config.algo=ppo2", "algo")])
def test_bad_config_key_fails_at_start_with_one_line(override, key, env, tmp_path):
  p = run(TINY + [override, "--workdir", str(tmp_path)], env)
  assert p.returncode == 2
  lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and key in lines[0] and "Traceback" not in p.stderr, p.stderr
  assert not os.path.exists(tmp_path / "metrics.jsonl")


def _wait_for_step(proc, workdir, step, timeout=240):
  path = os.path.join(workdir, "metrics.jsonl")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"run ended early (rc={proc.returncode}): {proc.stderr.read()[-3000:]}")
    if os.path.exists(path):
      with open(path) as f:
        if any(json.loads(l)["step"] >= step for l in f if l.strip()):
          return
    time.sleep(0.05)
  raise AssertionError(f"step {step} not reached in {timeout}s")


def test_sigkill_and_ctrl_c_then_resume_equals_uninterrupted(reference, env, tmp_path):
  wd = str(tmp_path)
  args = RUN + TINY + ["--workdir", wd]
  # 1) SIGKILL once step 3 is logged (a checkpoint at step 2 exists; step 4's may be half-written)
  p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_step(p, wd, 3)
  p.send_signal(signal.SIGKILL)
  p.wait(timeout=60)
  # 2) resume, then Ctrl-C (SIGINT) once step 5 is logged: it checkpoints the finished step and exits 130
  p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_step(p, wd, 5)
  p.send_signal(signal.SIGINT)
  _, err = p.communicate(timeout=120)
  if p.returncode == 0:   # the run had already finished all steps when the signal came
    pass
  else:
    assert p.returncode == 130, err[-3000:]
    assert "checkpoint written" in err
    done = max(r["step"] for r in rows(wd))
    assert str(done) in os.listdir(os.path.join(wd, "checkpoints")), (done, os.listdir(wd + "/checkpoints"))
  # 3) rerun the same command: resumes and finishes
  p = run(TINY + ["--workdir", wd], env)
  assert p.returncode == 0, p.stderr[-3000:]
  got = rows(wd)
  assert [r["step"] for r in got] == [r["step"] for r in reference]
  for a, b in zip(got, reference):
    assert deterministic(a) == deterministic(b), a["step"]


def test_eight_devices_match_one(reference, env, tmp_path):
  e = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  p = run(TINY + ["--config.mesh.data=2", "--config.mesh.fsdp=4", "--workdir", str(tmp_path)], e)
  assert p.returncode == 0, p.stderr[-3000:]
  got = rows(tmp_path)
  assert [r["step"] for r in got] == [r["step"] for r in reference]
  for a, b in zip(got[:3], reference[:3]):
    a, b = deterministic(a), deterministic(b)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-3, atol=2e-5, err_msg=f"step {a['step']} {k}")
