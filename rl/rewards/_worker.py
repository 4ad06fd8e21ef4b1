"""Scoring-pool worker process: `python -m rl.rewards._worker`.

Protocol on its stdin/stdout: messages of an 8-byte little-endian length + a pickle.
Request: (fn, args); reply: ("ok", result) or ("err", message). The protocol uses a private copy of
the original stdout; file descriptor 1 is pointed at stderr so prints in scorers cannot corrupt it.
"""
import os
import pickle
import struct
import sys


def main():
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    from rl.rewards import pool
    _read_exact = pool._read_exact
    pool.IN_WORKER = True
    for name in pool.PRELOAD:  # warm imports so the first item is fast
        try:
            __import__(name)
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
            fn, args = pickle.loads(data)
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
