"""Our math verifier vs math-verify against labels: agreement, disagreements, ms per call (mean, p99, max).

    python -m experiments.bench_verifier                                      # rl/rewards/math_cases.py pairs
    python -m experiments.bench_verifier --cases rl/data/verifier_corpus_smollm2.jsonl  # the labelled corpus

--cases FILE [FILE ...]: JSONL rows {"completion", "gold", "label", "class"?, "source"?, "id"?, "extract"?}
(the corpora written by experiments/make_verifier_corpus.py); each verifier scores the whole completion with
its own extraction: ours with the row's "extract" mode (the mode of the task the row comes from; default
"strict"), or the mode `--extract` names for every row.
Without --cases: the answer pairs of rl/rewards/math_cases.py (ours on the pair, math-verify on both
strings wrapped in \\boxed{}).
Both verifiers run behind the same scoring pool with the same per-call limit (`--timeout`), so the times
include the worker round-trip when a call needs one; starting a worker (the first, or the replacement of one
killed at the limit) is not timed. "ordinary" rows are all but the adversarial class / source.
"""
import argparse
import collections
import json
import os
import time

import numpy as np

from rl.rewards import math as rmath
from rl.rewards import math_verify_backend as mvb
from rl.rewards import pool

CLASSES_NO_FALSE_POSITIVE = ("mixed", "percent", "chain")  # issue 16 target


def _load(path, extract):
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{lineno}: invalid JSON ({e.msg})")
            if not all(k in r for k in ("completion", "gold", "label")):
                raise SystemExit(f"{path}:{lineno}: a row needs 'completion', 'gold' and 'label'")
            rows.append({"id": r.get("id", f"{path}:{lineno}"), "cls": r.get("class", "?"),
                         "source": r.get("source", "?"), "text": r["completion"], "gold": r["gold"],
                         "label": bool(r["label"]), "whole": True,
                         "extract": extract or r.get("extract", "strict")})
    return rows


def _case_rows():
    from rl.rewards.math_cases import CASES
    return [{"id": f"case/{i}", "cls": c, "source": "math_cases", "text": p, "gold": g, "label": e, "whole": False}
            for i, (c, p, g, e) in enumerate(CASES)]


def _ours(r, timeout):
    if r["whole"]:
        return rmath.score(r["text"], r["gold"], extract=r["extract"], timeout=timeout).correct
    return rmath.is_equiv(r["text"], r["gold"], timeout=timeout)


def _theirs(r, timeout):
    if r["whole"]:
        return mvb.score(r["text"], r["gold"], timeout=timeout).correct
    return mvb.is_equiv(r["text"], r["gold"], timeout=timeout)


def _stats(ms):
    ms = np.asarray(ms)
    return f"{ms.mean():.1f} | {np.percentile(ms, 99):.1f} | {ms.max():.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=None,
                    help="labelled JSONL corpora (default: rl/rewards/math_cases.py)")
    ap.add_argument("--extract", default=None, choices=["strict", "auto", "boxed", "answer_tag", "last_number"],
                    help="our extraction mode for every row (default: each row's \"extract\", else strict)")
    ap.add_argument("--timeout", type=float, default=1.0, help="per-call limit in seconds (both verifiers)")
    a = ap.parse_args()
    if not mvb.available():
        raise SystemExit("math-verify is not installed: pip install math-verify")
    for path in a.cases or []:
        if not os.path.exists(path):
            raise SystemExit(f"--cases: {path} not found")
    rows = [r for path in a.cases for r in _load(path, a.extract)] if a.cases else _case_rows()
    rmath.is_equiv("1", "\\frac{2}{2}")  # start the workers outside the timings
    mvb.is_equiv("1", "1", timeout=10.0)
    w = pool.get_pool(1)
    for r in rows:
        w.warm()  # a worker killed at a previous call's limit is replaced outside the timing
        t0 = time.perf_counter()
        r["ours"] = _ours(r, a.timeout)
        t1 = time.perf_counter()
        w.warm()
        t2 = time.perf_counter()
        r["mv"] = _theirs(r, a.timeout)
        t3 = time.perf_counter()
        r["t_ours"], r["t_mv"] = 1000 * (t1 - t0), 1000 * (t3 - t2)
    restarts = w.restarts
    n = len(rows)
    ordinary = [r for r in rows if r["cls"] != "adversarial" and r["source"] != "adversarial"]
    print(f"rows: {n} ({' '.join(a.cases or ['rl/rewards/math_cases.py'])}); our extraction: "
          f"{a.extract or 'per row'}; sources: "
          f"{dict(collections.Counter(r['source'] for r in rows))}")
    print("| verifier | agreement with labels | false positives | false negatives | ms/call mean | p99 | max |"
          " ordinary p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, key, tkey in (("rl.rewards.math", "ours", "t_ours"), ("math-verify", "mv", "t_mv")):
        agree = sum(r[key] == r["label"] for r in rows)
        fp = sum(r[key] and not r["label"] for r in rows)
        fn = sum(not r[key] and r["label"] for r in rows)
        print(f"| {name} | {agree}/{n} = {100 * agree / n:.1f}% | {fp} | {fn} | {_stats([r[tkey] for r in rows])} | "
              f"{np.percentile([r[tkey] for r in ordinary], 99):.1f} |")
    print(f"agreement between the two: {100 * sum(r['ours'] == r['mv'] for r in rows) / n:.1f}%; "
          f"calls cut at the {a.timeout:g} s limit (worker restarts, not timed): {restarts}")
    by = collections.defaultdict(list)
    for r in rows:
        by[(r["source"], r["cls"])].append(r)
    print("\nper class: source/class  n  ours-correct  math-verify-correct  ours-FP  math-verify-FP")
    for (src, cls), rs in sorted(by.items()):
        print(f"  {src}/{cls:<22} {len(rs):4d} {sum(r['ours'] == r['label'] for r in rs):4d} "
              f"{sum(r['mv'] == r['label'] for r in rs):4d} {sum(r['ours'] and not r['label'] for r in rs):4d} "
              f"{sum(r['mv'] and not r['label'] for r in rs):4d}")
    fps = [r for r in rows if r["ours"] and not r["label"] and r["cls"] in CLASSES_NO_FALSE_POSITIVE]
    print(f"\nours: false positives on the {'/'.join(CLASSES_NO_FALSE_POSITIVE)} classes: {len(fps)}")
    print("\nrows where a verifier disagrees with the label (id, class, gold, label, ours, math-verify, tail):")
    for r in rows:
        if r["ours"] != r["label"] or r["mv"] != r["label"]:
            tail = r["text"][-70:].replace("\n", " ")
            print(f"  {r['id']} [{r['cls']}] gold={r['gold'][:30]!r} label={r['label']} ours={r['ours']} "
                  f"mv={r['mv']} ...{tail!r}")


if __name__ == "__main__":
    main()
