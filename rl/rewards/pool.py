"""A scoring pool that never hangs: worker processes with a hard per-item wall-clock limit.

    score_batch(score_fn, completions, problems, timeout=1.0, workers=2) -> list[Score]

Each item runs `score_fn(completion, problem)` in a worker process. A worker that exceeds the
hard `timeout` (seconds, measured from when the item was handed to it) is killed (SIGKILL) and
replaced, and its item scores `Score(0.0, False, None)`; so does an item whose scorer raises or
whose worker dies (segfault, out of memory). Signals are never used for the limit, so this works
from any thread, including under a trainer's background threads. The pools are module-level,
created lazily (one per `workers` count), shared by all callers and guarded by a lock.

Workers are fresh `python -m rl.rewards._worker` processes (never forks of the JAX-threaded
parent, and independent of the caller's __main__); each imports sympy and our verifiers before it
takes items, so start-up (1-5 s) never counts against an item's limit. A killed worker is replaced at
once, and the other workers keep taking items while the replacement starts.

Nothing outlives its limit:
  * each worker leads its own process group and everything it starts stays in it (the code sandbox
    runs its program in the worker's group); a timed-out worker is killed with its whole group;
  * workers die with the process that started them: Linux parent-death signal (prctl
    PR_SET_PDEATHSIG = SIGKILL, set by the worker on itself, then a check that the parent is still
    the one that started it); the workers are spawned from one long-lived thread, because the
    kernel sends that signal when the spawning *thread* exits;
  * each worker gets its own temporary directory (TMPDIR); the pool deletes it when it kills or
    closes the worker, and a new pool deletes those left by dead processes (a SIGKILLed trainer);
  * the item's deadline is passed to the worker (`pool.DEADLINE`, monotonic seconds), so scorers
    that run programs (rl.rewards.code) clamp their own limits to it: the pool's limit wins.
A return value that is not a Score (or a 3-tuple convertible to one with a finite reward in [0, 1])
scores that item Score(0.0, False, None); the rest of the batch is unaffected.

`score_fn` must be picklable: a module-level function, a `functools.partial` of one, or a bound
method of a `rl.tasks.Task` (tasks pickle without their problem lists).
"""
import atexit
import math
import multiprocessing.connection as mpc
import os
import pickle
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

from rl.rewards import INCORRECT, Score

# True inside a pool worker: verifiers then run their slow parts inline (the pool kills us on timeout).
IN_WORKER = False
# reasoning_gym is imported here too: imported lazily by its scorer, the first item in a fresh worker
# would spend ~2 s of its per-item time limit importing it and score 0.
# math_verify (optional backend) likewise: its import takes ~0.5 s.
PRELOAD = ["sympy", "rl.rewards.extract", "rl.rewards.math", "rl.tasks", "reasoning_gym", "math_verify"]
STARTUP_TIMEOUT = 60.0  # seconds a new worker may take to import its modules
# Inside a worker: the monotonic time at which the current item will be killed (None outside).
DEADLINE = None
_TMP_RE = re.compile(r"rl_pool_(\d+)_")


def _spawner():
    """Runs Popen calls from one long-lived thread (the parent-death signal fires when the spawning
    thread exits, so workers must not be spawned from a short-lived caller thread)."""
    jobs: queue.Queue = queue.Queue()

    def loop():
        while True:
            args, kwargs, box, done = jobs.get()
            try:
                box.append(subprocess.Popen(args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                box.append(e)
            done.set()
    threading.Thread(target=loop, name="rl-pool-spawner", daemon=True).start()

    def popen(args, **kwargs):
        box, done = [], threading.Event()
        jobs.put((args, kwargs, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]
    return popen


_popen = None
_popen_lock = threading.Lock()


def _spawn(args, **kwargs) -> subprocess.Popen:
    global _popen
    with _popen_lock:
        if _popen is None:
            _popen = _spawner()
    return _popen(args, **kwargs)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_tmp(root: str = None) -> int:
    """Deletes rl_pool_<pid>_* worker directories whose owning process is gone; returns how many."""
    root = root or tempfile.gettempdir()
    n = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        m = _TMP_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            n += 1
    return n


def _read_exact(f, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


class _Worker:
    """A `python -m rl.rewards._worker` subprocess speaking length-prefixed pickles over pipes."""

    def __init__(self, imports: Sequence[str] = ()):
        env = dict(os.environ)
        env["RL_POOL_IMPORTS"] = ",".join(imports)  # scorer modules to import before taking items
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the caller's imports resolve
        # its own temporary directory (o+x so a sandbox uid can reach its run directory inside)
        self.tmp = tempfile.mkdtemp(prefix=f"rl_pool_{os.getpid()}_")
        os.chmod(self.tmp, 0o711)
        env["TMPDIR"] = self.tmp
        env["RL_POOL_PARENT"] = str(os.getpid())
        try:
            self.proc = _spawn([sys.executable, "-m", "rl.rewards._worker"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env=env, bufsize=0, start_new_session=True)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.ready = False
        self.started = time.monotonic()

    def fileno(self):
        return self.proc.stdout.fileno()

    def send(self, payload: bytes):
        self.proc.stdin.write(struct.pack("<Q", len(payload)) + payload)
        self.proc.stdin.flush()

    def recv(self) -> bytes:
        (n,) = struct.unpack("<Q", _read_exact(self.proc.stdout, 8))
        return _read_exact(self.proc.stdout, n)

    def kill(self):
        """SIGKILLs the worker's whole process group (the worker and every program it started),
        then deletes its temporary directory."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # pgid == pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.kill()
            self.proc.wait(timeout=5.0)
        except Exception:  # pragma: no cover
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:  # pragma: no cover
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


class WorkerPool:
    """`workers` processes; `map` runs calls with a hard per-call wall-clock limit."""

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._n = workers
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.restarts = 0  # how many workers were killed and replaced (for tests / metrics)
        self.bad_results = 0  # items whose score_fn returned something that is not a Score
        self.timeouts = 0  # items that ran past their limit (their worker was killed; scored incorrect)
        self._imports: set = set()  # modules of the scorers seen: replacement workers import them first
        sweep_stale_tmp()

    def _start_missing(self, busy=()) -> list:
        """Replaces dead workers and starts missing ones (without waiting); returns those not ready yet.

        A dead worker in `busy` (it died in an item) is left to `map`, which reads its end of file, scores
        the item and drops it; its replacement starts now."""
        dead = [w for w in self._workers if w.proc.poll() is not None]
        for w in dead:
            if w not in busy:
                w.kill()  # died on its own while idle: reap its group and directory
        self._workers = [w for w in self._workers if w not in dead or w in busy]
        while sum(w not in dead for w in self._workers) < self._n:
            self._workers.append(_Worker(sorted(self._imports)))
        return [w for w in self._workers if not w.ready]

    def _mark_ready(self, w: "_Worker"):
        try:
            w.recv()
        except EOFError:
            raise RuntimeError("scoring pool: a worker died at start-up; run "
                               "`python -m rl.rewards._worker` to see its error") from None
        w.ready = True

    def _wait_ready(self):
        """Starts missing workers and waits until all have imported their modules."""
        starting = self._start_missing()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for w in starting:
            if not mpc.wait([w], timeout=max(0.0, deadline - time.monotonic())):
                raise RuntimeError("scoring pool: a worker did not start within "
                                   f"{STARTUP_TIMEOUT:.0f} s (python -m rl.rewards._worker)")
            self._mark_ready(w)

    def warm(self):
        """Starts any missing worker now and waits until all are ready (e.g. before timing calls)."""
        with self._lock:
            self._wait_ready()

    def map(self, fn: Callable, arg_tuples: Sequence[tuple], timeout: float) -> list[tuple[str, Any]]:
        """Runs fn(*args) for each args; returns [(status, value)], status in {"ok", "err", "timeout"}."""
        payloads = []
        for i, args in enumerate(arg_tuples):
            try:
                payloads.append(pickle.dumps((fn, tuple(args), float(timeout))))
            except Exception as e:
                raise TypeError(f"score_fn or item {i} cannot be pickled for the scoring pool: {e}") from e
        results: list[Any] = [None] * len(payloads)
        mod = getattr(getattr(fn, "func", fn), "__module__", None)  # functools.partial -> its function
        with self._lock:
            if mod and mod != "__main__":
                self._imports.add(mod)
            todo = list(range(len(payloads)))[::-1]
            busy: dict[_Worker, tuple[int, float]] = {}  # worker -> (item, deadline)
            while todo or busy:
                # (re)start missing workers without waiting: the ready ones keep working meanwhile
                starting = self._start_missing(busy)
                idle = [w for w in self._workers if w.ready and w not in busy]
                while todo and idle:
                    w, i = idle.pop(), todo.pop()
                    try:
                        w.send(payloads[i])
                    except (OSError, ValueError):  # died while idle: replace it, retry the item later
                        self._drop(w)
                        todo.append(i)
                        continue
                    busy[w] = (i, time.monotonic() + timeout)
                if not busy and not starting:
                    continue
                deadlines = [d for _, d in busy.values()] + [w.started + STARTUP_TIMEOUT for w in starting]
                wait_s = max(0.0, min(deadlines) - time.monotonic())
                for w in mpc.wait(list(busy) + starting, timeout=wait_s):
                    if w not in busy:  # a starting worker's ready signal (or its death)
                        self._mark_ready(w)
                        continue
                    i, _ = busy.pop(w)
                    try:
                        results[i] = pickle.loads(w.recv())
                    except (EOFError, OSError, pickle.UnpicklingError):  # the worker died (crash, OOM kill)
                        results[i] = ("err", "worker died")
                        self._drop(w)
                now = time.monotonic()
                for w in [w for w, (_, d) in busy.items() if d <= now]:
                    i, _ = busy.pop(w)
                    results[i] = ("timeout", None)
                    self.timeouts += 1
                    self._drop(w)
                for w in starting:
                    if not w.ready and now > w.started + STARTUP_TIMEOUT:
                        raise RuntimeError("scoring pool: a worker did not start within "
                                           f"{STARTUP_TIMEOUT:.0f} s (python -m rl.rewards._worker)")
        return results

    def _drop(self, w: _Worker):
        w.kill()
        self.restarts += 1
        self._workers = [x for x in self._workers if x is not w]

    def close(self):
        with self._lock:
            for w in self._workers:
                w.kill()
            self._workers = []


_POOLS: dict[int, WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(workers: int = 2) -> WorkerPool:
    """The shared pool with `workers` processes (created on first use)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = WorkerPool(workers)
        return _POOLS[workers]


@atexit.register
def shutdown():
    """Kills all pool workers (registered at exit; safe to call any time, pools restart lazily)."""
    with _POOLS_LOCK:
        for p in _POOLS.values():
            p.close()
        _POOLS.clear()


def call(fn: Callable, *args, timeout: float = 1.0, default: Any = None) -> Any:
    """fn(*args) with a hard wall-clock limit; `default` on timeout or error.

    Inside a pool worker this calls fn inline (the enclosing pool enforces the limit)."""
    if IN_WORKER:
        try:
            return fn(*args)
        except Exception:
            return default
    status, value = get_pool(1).map(fn, [args], timeout)[0]
    return value if status == "ok" else default


def _as_score(value: Any) -> Score:
    """A Score, or a 3-tuple (reward, correct, pred) with a finite reward in [0, 1]; else TypeError."""
    if isinstance(value, tuple) and len(value) == 3 and not isinstance(value[0], (str, bytes)):
        try:
            reward = float(value[0])
        except (TypeError, ValueError):
            reward = math.nan
        pred = value[2]
        if math.isfinite(reward) and 0.0 <= reward <= 1.0 and (pred is None or isinstance(pred, str)):
            return value if isinstance(value, Score) else Score(reward, bool(value[1]), pred)
    raise TypeError(f"score_fn must return a Score, got {type(value).__name__}: {str(value)[:80]!r}")


def score_batch(score_fn: Callable, completions: Sequence[str], problems: Sequence[Any], *,
                timeout: float = 1.0, workers: int = 2) -> list[Score]:
    """Scores completions[i] against problems[i] in worker processes; never hangs.

    Args:
      score_fn: picklable callable (completion: str, problem) -> Score, e.g. `task.score`.
      completions: N strings.
      problems: N problems (or one per completion after repeating each prompt's problem G times).
      timeout: hard per-item wall-clock limit in seconds.
      workers: number of worker processes.
    Returns:
      N Scores; items that time out, raise, kill their worker, or return something that is not a
      Score get Score(0.0, False, None) (counted in `get_pool(workers).bad_results` for the last).
    """
    if len(completions) != len(problems):
        raise ValueError(f"score_batch: {len(completions)} completions but {len(problems)} problems")
    if not completions:
        return []
    p = get_pool(workers)
    out = []
    for status, value in p.map(score_fn, list(zip(completions, problems)), timeout):
        if status != "ok":
            out.append(INCORRECT)
            continue
        try:
            out.append(_as_score(value))
        except TypeError:
            p.bad_results += 1
            out.append(INCORRECT)
    return out

