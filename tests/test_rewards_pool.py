"""score_batch: hard per-item limit, killed workers replaced, errors -> incorrect, any thread."""
import os
import subprocess
import sys
import threading
import time

import pytest

from rl.rewards import INCORRECT, Score
from rl.rewards import pool


def _scorer(completion, problem):  # module-level: picklable by reference
    if completion == "hang":
        time.sleep(60)
    if completion == "raise":
        raise RuntimeError("boom")
    if completion == "die":
        os._exit(3)
    if completion == "die_soon":
        time.sleep(0.2)
        os._exit(3)
    ok = completion == problem
    return Score(float(ok), ok, completion)


def test_score_batch_hang_error_crash():
    comps = ["a", "hang", "b", "raise", "x", "die", "c"]
    probs = ["a", "hang?", "b", "raise", "y", "die", "c"]
    p = pool.get_pool(2)
    # each worker imports this test module on its first item (slow on a loaded machine): not under test here
    pool.score_batch(_scorer, ["w", "w"], ["w", "w"], timeout=60.0, workers=2)
    restarts, timeouts = p.restarts, p.timeouts
    t0 = time.monotonic()
    out = pool.score_batch(_scorer, comps, probs, timeout=1.0, workers=2)
    elapsed = time.monotonic() - t0
    assert out == [Score(1.0, True, "a"), INCORRECT, Score(1.0, True, "b"), INCORRECT,
                   Score(0.0, False, "x"), INCORRECT, Score(1.0, True, "c")]
    assert p.restarts - restarts == 2  # the hung worker and the dead one were replaced
    assert p.timeouts - timeouts == 1  # only the hung item counts as a timeout (the dead one is an error)
    assert elapsed < 30.0  # far below the 60 s hang (worker start-up on a loaded machine takes seconds)
    # the pool still works after the replacements
    assert pool.score_batch(_scorer, ["z"], ["z"], timeout=1.0, workers=2) == [Score(1.0, True, "z")]


def test_worker_dying_while_the_pool_is_busy_elsewhere(monkeypatch):
    """A worker that dies in an item while the pool is handling another worker's result (a loaded machine:
    the 10,000-item load test hit this) is scored as an error and replaced; the batch does not raise."""
    p = pool.get_pool(2)
    pool.score_batch(_scorer, ["w", "w"], ["w", "w"], timeout=60.0, workers=2)  # workers import this module
    real_wait = pool.mpc.wait

    def slow_wait(objs, timeout=None):  # the parent is slow after each wake-up: the other worker dies meanwhile
        ready = real_wait(objs, timeout=timeout)
        time.sleep(0.5)
        return ready
    monkeypatch.setattr(pool.mpc, "wait", slow_wait)
    restarts = p.restarts
    out = pool.score_batch(_scorer, ["a", "die_soon"], ["a", "x"], timeout=5.0, workers=2)
    assert out == [Score(1.0, True, "a"), INCORRECT] and p.restarts == restarts + 1
    monkeypatch.setattr(pool.mpc, "wait", real_wait)
    assert pool.score_batch(_scorer, ["z", "y"], ["z", "y"], timeout=5.0, workers=2) == [
        Score(1.0, True, "z"), Score(1.0, True, "y")]


def test_score_batch_from_threads():
    results = {}

    def run(k):
        results[k] = pool.score_batch(_scorer, [str(k), "q"], [str(k), "r"], timeout=2.0, workers=2)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {k: [Score(1.0, True, str(k)), Score(0.0, False, "q")] for k in range(3)}


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 completions but 1 problems"):
        pool.score_batch(_scorer, ["a", "b"], ["a"])
    with pytest.raises(TypeError, match="cannot be pickled"):
        pool.score_batch(lambda c, p: INCORRECT, ["a"], ["a"], workers=2)
    assert pool.score_batch(_scorer, [], []) == []


def _malformed(completion, problem):
    return {"str": "1.0", "nan": (float("nan"), True, None), "big": (2.0, True, "x"), "tuple": (1, 1, "ok"),
            "none": None, "pred": (1.0, True, 5)}.get(completion, Score(1.0, True, completion))


def test_malformed_return_fails_that_item_only():
    comps = ["a", "str", "nan", "big", "tuple", "none", "pred", "b"]
    p = pool.get_pool(2)
    bad = p.bad_results
    out = pool.score_batch(_malformed, comps, comps, timeout=60.0, workers=2)
    assert out == [Score(1.0, True, "a"), INCORRECT, INCORRECT, INCORRECT, Score(1.0, True, "ok"), INCORRECT,
                   INCORRECT, Score(1.0, True, "b")]
    assert p.bad_results - bad == 5


def _worker_pid(completion, problem):
    return Score(0.0, False, f"{os.getpid()} {os.getpgid(0)} {os.environ['TMPDIR']}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
    return True


def test_worker_leads_its_own_group_and_tmpdir():
    pid, pgid, tmp = pool.score_batch(_worker_pid, ["x"], ["x"], timeout=60.0, workers=1)[0].pred.split()
    assert int(pid) == int(pgid) != os.getpgid(0)
    assert os.path.basename(tmp).startswith(f"rl_pool_{os.getpid()}_") and os.path.isdir(tmp)


TRAINER = """
import sys, threading, time
from rl.rewards import pool
from tests.test_rewards_pool import _scorer, _worker_pid
out = {}
t = threading.Thread(target=lambda: out.update(s=pool.score_batch(_worker_pid, ["a", "b"], ["a", "b"], timeout=60.0, workers=2)))
t.start(); t.join()   # the workers were started from a thread that has now exited: they must survive it
print(" ".join(s.pred.split()[0] + "," + s.pred.split()[2] for s in out["s"]), flush=True)
pool.score_batch(_scorer, ["hang", "hang"], ["x", "x"], timeout=120.0, workers=2)  # both workers busy
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_workers_die_with_the_training_process():
    """SIGKILL the process that owns the pool: its workers die, and a later pool sweeps their temp dirs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", TRAINER], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        pids = [int(x.split(",")[0]) for x in line]
        tmps = [x.split(",")[1] for x in line]
        assert len(pids) == 2 and all(_alive(p) for p in pids)  # alive after the spawning thread exited
        time.sleep(1.0)  # the workers are now inside a 60 s item: only the parent-death signal stops them
    finally:
        proc.kill()
        proc.wait()
    t0 = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
    assert all(os.path.isdir(t) for t in tmps)  # nobody could delete them at SIGKILL ...
    assert pool.sweep_stale_tmp() >= 2  # ... the next pool does (WorkerPool() calls this)
    assert not any(os.path.exists(t) for t in tmps)
