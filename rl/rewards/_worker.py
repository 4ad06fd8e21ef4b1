"""Scoring-pool worker process: `python -m rl.rewards._worker`.

Protocol on its stdin/stdout: messages of an 8-byte little-endian length + a pickle.
Request: (fn, args, timeout); reply: ("ok", result) or ("err", message). The protocol uses a private copy of
the original stdout; file descriptor 1 is pointed at stderr so prints in scorers cannot corrupt it.

The worker dies with the process that started it: on Linux it asks for SIGKILL when its parent
dies (prctl PR_SET_PDEATHSIG), then exits if the parent ($RL_POOL_PARENT) is already gone.
"""
import ctypes
import os
import pickle
import signal
import struct
import sys
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int = None):
    """SIGKILL this process when its parent dies (Linux; a no-op elsewhere). Exits at once if the
    parent is already gone (the signal is only armed for the current parent)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def main():
    parent = os.environ.get("RL_POOL_PARENT")
    die_with_parent(int(parent) if parent else None)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    from rl.rewards import pool
    _read_exact = pool._read_exact
    pool.IN_WORKER = True
    extra = [m for m in os.environ.get("RL_POOL_IMPORTS", "").split(",") if m]
    for name in pool.PRELOAD + extra:  # warm imports so the first item is fast
        try:
            __import__(name)
        except Exception:  # noqa: BLE001
            pass
    try:  # sympy imports much of itself lazily on the first simplify(): do that before taking items
        from rl.rewards import math as rmath
        rmath.equiv_normalized("(x-3)(x+2)", "x^2-x-6")
        rmath.equiv_normalized("\\sin^2 x + \\cos^2 x", "1")
    except Exception:  # noqa: BLE001
        pass
    out.write(struct.pack("<Q", 0))  # ready signal
    out.flush()
    while True:
        try:
            (n,) = struct.unpack("<Q", _read_exact(inp, 8))
            data = _read_exact(inp, n)
        except EOFError:
            return
        try:
            fn, args, timeout = pickle.loads(data)
            pool.DEADLINE = time.monotonic() + timeout
            reply = ("ok", fn(*args))
        except BaseException as e:  # noqa: BLE001 - a failing item is incorrect, never a crash
            reply = ("err", f"{type(e).__name__}: {e}"[:500])
        try:
            payload = pickle.dumps(reply)
        except Exception as e:  # noqa: BLE001
            payload = pickle.dumps(("err", f"unpicklable result: {e}"[:500]))
        out.write(struct.pack("<Q", len(payload)) + payload)
        out.flush()


if __name__ == "__main__":
    main()
