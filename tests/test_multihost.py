"""Multi-process training (issue 13, item 4): 2 processes x 4 CPU devices on localhost (jax.distributed, gloo
collectives) run the tiny config with 8-way FSDP and write the same per-step metrics as 1 process x 8 devices,
also when both processes are SIGKILLed after a checkpoint and restarted (resume).

Each run is `experiments/run.py` launched as on a multi-host slice (one command per process, the coordinator
address and process id in JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
"""
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from rl import evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 6, 2
ARGS = ["--config", os.path.join(ROOT, "experiments", "configs", "tiny.py"), f"--config.total_steps={STEPS}",
        f"--config.checkpoint_every={EVERY}", "--config.mesh.data=1", "--config.mesh.fsdp=-1",
        "--config.eval_at_start=False", "--config.task.num_eval=8", "--config.eval.n_samples=8",
        "--config.rollout.reward_workers=1"]   # the evaluation's sampler shapes = the rollout's: no extra compile
# wall-clock figures differ between runs; everything else is a function of the seed and the data
VOLATILE = ("time/", "cpu/", "tokens_per_s")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices, **extra):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    if k not in extra:
      env.pop(k, None)
  return env


def _launch(workdir, n_proc, log_dir):
  """n_proc processes of experiments/run.py on 8 // n_proc CPU devices each -> list of Popen."""
  port = _free_port()
  procs = []
  for i in range(n_proc):
    extra = {} if n_proc == 1 else dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n_proc),
                                       JAX_PROCESS_ID=str(i))
    log = open(os.path.join(log_dir, f"p{i}.log"), "ab")
    procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "experiments", "run.py"), *ARGS,
                                   "--workdir", workdir], cwd=ROOT, env=_env(8 // n_proc, **extra),
                                  stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, log_dir, timeout=1500):
  t0 = time.time()
  for p in procs:
    try:
      p.wait(timeout=max(1, timeout - (time.time() - t0)))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"run timed out; logs in {log_dir}: {_tail(log_dir)}")
  codes = [p.returncode for p in procs]
  assert codes == [0] * len(procs), f"exit codes {codes}: {_tail(log_dir)}"


def _tail(log_dir):
  """Each log's first Python traceback or fatal error (what made a process stop) and its last 15 lines."""
  out = []
  for name in sorted(os.listdir(log_dir)):
    with open(os.path.join(log_dir, name), errors="replace") as f:
      lines = [l for l in f.readlines() if not l.startswith("[Gloo]")]
    first = next((i for i, l in enumerate(lines) if l.startswith(("Traceback", "Fatal Python error", "F0", "E0"))),
                 None)
    cause = "".join(lines[first:first + 40]) if first is not None and first < len(lines) - 15 else ""
    out.append(f"--- {name}\n" + (cause + "[...]\n" if cause else "") + "".join(lines[-15:]))
  return "\n".join(out)


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _assert_same(rows, ref):
  assert [r["step"] for r in rows] == [r["step"] for r in ref] == list(range(1, STEPS + 1))
  for r, q in zip(rows, ref):
    keys = {k for k in q if not k.startswith(VOLATILE)}
    assert keys == {k for k in r if not k.startswith(VOLATILE)}, f"step {q['step']}: different metric names"
    for k in sorted(keys):
      a, b = r[k], q[k]
      if isinstance(b, float) and isinstance(a, (int, float)) and math.isfinite(b):
        assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), f"step {q['step']} {k}: 2 processes {a!r}, 1 process {b!r}"
      else:
        assert a == b, f"step {q['step']} {k}: 2 processes {a!r}, 1 process {b!r}"


@pytest.mark.timeout(3000)   # 3 launches that each compile; far less on an idle machine (the CPU time is printed)
def test_two_processes_match_one_process_with_kill_and_resume(tmp_path):
  cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  ref_dir, mh_dir, logs1, logs2 = (tmp_path / n for n in ("one", "two", "logs1", "logs2"))
  for d in (logs1, logs2):
    d.mkdir()
  _wait(_launch(str(ref_dir), 1, str(logs1)), str(logs1))
  ref = _rows(str(ref_dir))

  # 2 processes, SIGKILLed (both) once the first checkpoint is committed, then relaunched: they resume
  procs = _launch(str(mh_dir), 2, str(logs2))
  ckpt, t0 = mh_dir / "checkpoints" / str(EVERY), time.time()
  while not ckpt.is_dir() and all(p.poll() is None for p in procs) and time.time() - t0 < 1500:
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  codes = [p.wait() for p in procs]
  assert codes == [-signal.SIGKILL] * 2, f"the processes ended before they were killed ({codes}): {_tail(str(logs2))}"
  killed_at = [r["step"] for r in _rows(str(mh_dir))]
  assert killed_at and killed_at[-1] < STEPS, killed_at
  _wait(_launch(str(mh_dir), 2, str(logs2)), str(logs2))
  with open(logs2 / "p0.log", errors="replace") as f:
    assert f"resumed from {mh_dir / 'checkpoints'}/{EVERY}" in f.read()
  _assert_same(_rows(str(mh_dir)), ref)
  # only process 0 writes: one row per step (no duplicates from process 1), samples from the final evaluation,
  # the final evaluation's per-problem counts (both processes once replaced it through the same .tmp name: a race)
  assert (mh_dir / "samples.jsonl").exists() and (mh_dir / "config.json").exists()
  counts = [evaluation.read_counts(str(d / "eval_counts.jsonl")) for d in (mh_dir, ref_dir)]
  assert counts[0] == counts[1] and [r["step"] for r in counts[1]] == [STEPS]
  cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  print(f"CPU time of the 5 processes: {cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime:.0f} s")
