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
takes items, so start-up (~1 s) never counts against an item's limit. A killed worker is replaced
before the next item is handed out.

`score_fn` must be picklable: a module-level function, a `functools.partial` of one, or a bound
method of a `rl.tasks.Task` (tasks pickle without their problem lists).
"""
import atexit
import multiprocessing.connection as mpc
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

from rl.rewards import INCORRECT, Score

# True inside a pool worker: verifiers then run their slow parts inline (the pool kills us on timeout).
IN_WORKER = False
# reasoning_gym is imported here too: imported lazily by its scorer, the first item in a fresh worker
# would spend ~2 s of its per-item time limit importing it and score 0.
PRELOAD = ["sympy", "rl.rewards.extract", "rl.rewards.math", "rl.tasks", "reasoning_gym"]
STARTUP_TIMEOUT = 60.0  # seconds a new worker may take to import its modules


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

    def __init__(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the caller's imports resolve
        self.proc = subprocess.Popen([sys.executable, "-m", "rl.rewards._worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, bufsize=0)
        self.ready = False

    def fileno(self):
        return self.proc.stdout.fileno()

    def send(self, payload: bytes):
        self.proc.stdin.write(struct.pack("<Q", len(payload)) + payload)
        self.proc.stdin.flush()

    def recv(self) -> bytes:
        (n,) = struct.unpack("<Q", _read_exact(self.proc.stdout, 8))
        return _read_exact(self.proc.stdout, n)

    def kill(self):
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


class WorkerPool:
    """`workers` processes; `map` runs calls with a hard per-call wall-clock limit."""

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._n = workers
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.restarts = 0  # how many workers were killed and replaced (for tests / metrics)

    def _wait_ready(self):
        """Starts missing workers and waits until all have imported their modules."""
        self._workers = [w for w in self._workers if w.proc.poll() is None]
        while len(self._workers) < self._n:
            self._workers.append(_Worker())
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for w in self._workers:
            if w.ready:
                continue
            if not mpc.wait([w], timeout=max(0.0, deadline - time.monotonic())):
                raise RuntimeError("scoring pool: a worker did not start within "
                                   f"{STARTUP_TIMEOUT:.0f} s (python -m rl.rewards._worker)")
            try:
                w.recv()
            except EOFError:
                raise RuntimeError("scoring pool: a worker died at start-up; run "
                                   "`python -m rl.rewards._worker` to see its error") from None
            w.ready = True

    def map(self, fn: Callable, arg_tuples: Sequence[tuple], timeout: float) -> list[tuple[str, Any]]:
        """Runs fn(*args) for each args; returns [(status, value)], status in {"ok", "err", "timeout"}."""
        payloads = []
        for i, args in enumerate(arg_tuples):
            try:
                payloads.append(pickle.dumps((fn, tuple(args))))
            except Exception as e:
                raise TypeError(f"score_fn or item {i} cannot be pickled for the scoring pool: {e}") from e
        results: list[Any] = [None] * len(payloads)
        with self._lock:
            todo = list(range(len(payloads)))[::-1]
            busy: dict[_Worker, tuple[int, float]] = {}  # worker -> (item, deadline)
            while todo or busy:
                self._wait_ready()  # (re)starts killed workers before handing out more items
                idle = [w for w in self._workers if w not in busy]
                while todo and idle:
                    w, i = idle.pop(), todo.pop()
                    try:
                        w.send(payloads[i])
                    except (OSError, ValueError):  # died while idle: replace it, retry the item later
                        self._drop(w)
                        todo.append(i)
                        continue
                    busy[w] = (i, time.monotonic() + timeout)
                if not busy:
                    continue
                wait_s = max(0.0, min(d for _, d in busy.values()) - time.monotonic())
                for w in mpc.wait(list(busy), timeout=wait_s):
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
                    self._drop(w)
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
    if isinstance(value, Score):
        return value
    if isinstance(value, tuple) and len(value) == 3:
        return Score(float(value[0]), bool(value[1]), value[2])
    raise TypeError(f"score_fn must return a Score, got {type(value).__name__}")


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
      N Scores; items that time out, raise, or kill their worker get Score(0.0, False, None).
    """
    if len(completions) != len(problems):
        raise ValueError(f"score_batch: {len(completions)} completions but {len(problems)} problems")
    if not completions:
        return []
    out = []
    for status, value in get_pool(workers).map(score_fn, list(zip(completions, problems)), timeout):
        out.append(_as_score(value) if status == "ok" else INCORRECT)
    return out

