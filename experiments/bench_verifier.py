"""Compares rl.rewards.math with math-verify on the labelled cases of rl/rewards/math_cases.py.

    python experiments/bench_verifier.py

Prints, per verifier: accuracy against our labels, agreement between the two, mean and max time per
call (ours includes the worker round-trip when sympy is needed). math-verify gets each answer
wrapped in \\boxed{} (its LaTeX extraction) and its own default timeouts.
"""
import time

from rl.rewards import math as rmath
from rl.rewards.math_cases import CASES


def main():
    from math_verify import parse, verify
    rmath.is_equiv("1", "\\frac{2}{2}")  # start the worker outside the timings
    rows = []
    for cat, pred, gold, label in CASES:
        t0 = time.perf_counter()
        ours = rmath.is_equiv(pred, gold, timeout=1.0)
        t1 = time.perf_counter()
        try:
            theirs = bool(verify(parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{pred}}}")))
        except Exception:  # noqa: BLE001
            theirs = False
        t2 = time.perf_counter()
        rows.append((cat, pred, gold, label, ours, theirs, t1 - t0, t2 - t1))
    n = len(rows)
    acc_o = sum(r[3] == r[4] for r in rows) / n
    acc_t = sum(r[3] == r[5] for r in rows) / n
    agree = sum(r[4] == r[5] for r in rows) / n
    print(f"cases: {n}")
    print(f"| verifier | accuracy vs labels | mean ms/call | max ms/call |")
    print(f"|---|---|---|---|")
    print(f"| rl.rewards.math | {100 * acc_o:.1f}% | {1000 * sum(r[6] for r in rows) / n:.1f} | "
          f"{1000 * max(r[6] for r in rows):.0f} |")
    print(f"| math-verify | {100 * acc_t:.1f}% | {1000 * sum(r[7] for r in rows) / n:.1f} | "
          f"{1000 * max(r[7] for r in rows):.0f} |")
    print(f"agreement between the two: {100 * agree:.1f}%")
    print("disagreements (category, pred, gold, label, ours, math-verify):")
    for r in rows:
        if r[4] != r[5]:
            print("  ", r[0], repr(r[1][:50]), repr(r[2]), r[3], r[4], r[5])


if __name__ == "__main__":
    main()
