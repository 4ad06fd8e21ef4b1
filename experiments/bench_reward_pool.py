"""Load test of the scoring pool: score_batch on N completions with a fraction of pathological ones.

    python -m experiments.bench_reward_pool [--n 10000] [--bad 0.05] [--workers 2] [--timeout 1.0]

Ordinary items go through the math task's scorer (rl.tasks.score_math: extraction, quick numeric path or
sympy); pathological ones, spread at random, are split evenly over:
  hang      the scorer sleeps 30 s (cut at the per-item limit; the worker is killed and replaced)
  crash     the scorer kills its own worker (os._exit)
  huge      the scorer returns a Score whose pred is 4 MB (huge output through the pipe)
  malformed the scorer returns a plain string (must fail that item only)
  program   a code item whose program prints without end (sandbox: output limit, wall-clock limit)
Checks: every item scored exactly once (each call logs its item id on entry to a per-run file; ordinary
items must come back with their own answer), the verdicts (ordinary items correct, pathological ones
incorrect), no process left after the pool is shut down (no worker that ever took an item, nothing in its
process group, no sandboxed program) and no temporary directory of this run. Prints items/s,
worker restarts, and the checks. Not a test: it runs for minutes.
"""
import argparse
import collections
import functools
import os
import random
import tempfile
import time

from rl import tasks
from rl.data import Problem
from rl.rewards import Score, code, pool

PROGRAM_NAME = "rlbenchprog"  # the pathological program renames itself so that a leaked one can be found
PROGRAM = ("```python\nimport ctypes\nctypes.CDLL(None).prctl(15, b'%s', 0, 0, 0)\n"
           "while True:\n    print('x' * 65536)\n```" % PROGRAM_NAME)


def bench_scorer(completion: str, problem: Problem, *, log: str) -> Score:
    """The load test's scorer (module-level so workers import it): logs the item, then dispatches on its kind."""
    kind = problem.meta["kind"]
    with open(log, "a") as f:
        f.write(f"{problem.id} {os.getpid()}\n")  # the item, and the worker (its process group) that took it
    if kind == "hang":
        time.sleep(30)
    elif kind == "crash":
        os._exit(7)
    elif kind == "huge":
        return Score(0.0, False, "x" * (4 << 20))
    elif kind == "malformed":
        return "1.0"
    elif kind == "program":
        return code.score(completion, [{"input": "", "output": "ok"}], timeout=0.5)
    return tasks.score_math(completion, problem)


def _items(n: int, bad: float, seed: int):
    rng = random.Random(seed)
    kinds = ["hang", "crash", "huge", "malformed", "program"]
    n_bad = int(round(n * bad))
    bad_idx = set(rng.sample(range(n), n_bad))
    comps, probs = [], []
    for i in range(n):
        if i in bad_idx:
            kind = rng.choice(kinds)
            comp = PROGRAM if kind == "program" else "\\boxed{1}"
            comps.append(comp)
            probs.append(Problem(f"item{i}", "q", "1", None, {"kind": kind}))
            continue
        style = i % 4
        if style == 0:
            pred, gold, comp = str(i), str(i), f"So the total is \\boxed{{{i}}}."
        elif style == 1:
            pred, gold = f"\\frac{{{2 * i + 2}}}{{14}}", f"\\frac{{{i + 1}}}{{7}}"
            comp = f"Final Answer: The final answer is ${pred}$. I hope it is correct."
        elif style == 2:
            pred, gold = f"{i} + x", f"x + {i}"  # needs sympy
            comp = f"The answer is $\\boxed{{{pred}}}$."
        else:
            pred, gold, comp = f"{i:,}", str(i), f"#### {i:,}"
        comps.append(comp)
        probs.append(Problem(f"item{i}", "q", gold, None, {"kind": "ok", "pred": pred}))
    return comps, probs


def _procs() -> list:
    """(pid, comm, pgid) of every live (non-zombie) process on the machine."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if rest[0] != "Z":
                out.append((int(pid), comm, int(rest[2])))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--bad", type=float, default=0.05, help="fraction of pathological items")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1.0, help="per-item limit (the pool's default is 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    comps, probs = _items(a.n, a.bad, a.seed)
    fd, log = tempfile.mkstemp(prefix="rl_bench_pool_log_")
    os.close(fd)
    # by its importable name: run as a script, this module is __main__, which workers cannot import
    from experiments import bench_reward_pool
    scorer = functools.partial(bench_reward_pool.bench_scorer, log=log)
    p = pool.get_pool(a.workers)
    p.warm()
    mine = (f"rl_pool_{os.getpid()}_", "rl_sandbox_")  # other processes on the machine have their own pools
    tmp_before = {d for d in os.listdir(tempfile.gettempdir()) if d.startswith(mine)}
    t0 = time.monotonic()
    out = pool.score_batch(scorer, comps, probs, timeout=a.timeout, workers=a.workers)
    secs = time.monotonic() - t0
    pids = [w.proc.pid for w in p._workers]
    restarts, bad_results = p.restarts, p.bad_results
    pool.shutdown()
    time.sleep(0.5)

    kinds = collections.Counter(pr.meta["kind"] for pr in probs)
    with open(log) as f:
        entries = [line.split() for line in f if line.strip()]
    calls = collections.Counter(e[0] for e in entries)
    worker_pids = {int(e[1]) for e in entries}
    os.unlink(log)
    once = all(calls[pr.id] == 1 for pr in probs) and sum(calls.values()) == len(probs)
    ok_items = [(s, pr) for s, pr in zip(out, probs) if pr.meta["kind"] == "ok"]
    ordinary_right = sum(s.correct for s, _ in ok_items)
    own_answer = all(s.pred == pr.meta["pred"] for s, pr in ok_items)
    bad_incorrect = all(not s.correct for s, pr in zip(out, probs) if pr.meta["kind"] != "ok")
    tmp_after = {d for d in os.listdir(tempfile.gettempdir()) if d.startswith(mine)}
    leaked_dirs = sorted(tmp_after - tmp_before)
    # every worker that ever took an item, everything in its process group, every sandboxed program
    leaked_workers = [(q, comm) for q, comm, pgid in _procs()
                      if q in worker_pids or q in pids or pgid in worker_pids or comm == PROGRAM_NAME]
    print(f"items: {a.n} ({dict(kinds)}), workers: {a.workers}, per-item limit: {a.timeout} s")
    print(f"time: {secs:.1f} s, {a.n / secs:.0f} items/s; worker restarts: {restarts}; malformed returns: "
          f"{bad_results}")
    print(f"scored exactly once: {once} (calls logged: {sum(calls.values())}, results: {len(out)}); "
          f"ordinary items correct: {ordinary_right}/{len(ok_items)}; pathological all incorrect: {bad_incorrect}; "
          f"answers returned to their own items: {own_answer}")
    print(f"leaked after shutdown (of {len(worker_pids | set(pids))} workers and the programs they ran): "
          f"processes {leaked_workers}, temp dirs {leaked_dirs}")
    if not (once and bad_incorrect and own_answer and ordinary_right == len(ok_items) and not leaked_dirs
            and not leaked_workers):
        raise SystemExit("load test: a check failed (see above)")


if __name__ == "__main__":
    main()
