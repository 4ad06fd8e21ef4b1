"""verifier="math_verify": same pool and limits as ours, and both backends agree on unambiguous cases."""
import json
import os
import random
import subprocess
import sys
import time

import pytest

from rl import tasks
from rl.data import Problem, sample_path
from rl.rewards import math as rmath
from rl.rewards import math_verify_backend as mvb
from rl.rewards import pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not mvb.available(), reason="math-verify not installed (pip install math-verify)")

# (completion, gold, correct): unambiguous by any grader's reading
UNAMBIGUOUS = [
    ("The sum is \\boxed{42}.", "42", True),
    ("The sum is \\boxed{41}.", "42", False),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{6}{8}", True),
    ("\\boxed{\\frac{2}{3}}", "\\frac{3}{2}", False),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", False),
    ("\\boxed{9\\pi}", "9\\pi", True),
    ("\\boxed{(3, \\infty)}", "(3,\\infty)", True),
    ("\\boxed{[3, \\infty)}", "(3,\\infty)", False),
    ("\\boxed{2\\frac{3}{4}}", "\\frac{11}{4}", True),
    ("\\boxed{2\\frac{3}{4}}", "\\frac{3}{2}", False),
    ("\\boxed{12\\%}", "12", True),
    ("\\boxed{x + 1}", "1 + x", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{y = 3 \\cdot 5 = 15}", "15", True),
    ("\\boxed{0.1666667}", "\\frac{1}{6}", True),
    ("\\boxed{0.3333}", "\\frac{1}{3}", False),
    ("Final Answer: The final answer is $42$. I hope it is correct.", "42", True),
    ("Final Answer: The final answer is $7$. I hope it is correct.", "42", False),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
]


@pytest.mark.parametrize("completion,gold,want", UNAMBIGUOUS, ids=[str(i) for i in range(len(UNAMBIGUOUS))])
def test_backends_agree(completion, gold, want):
    assert rmath.score(completion, gold).correct is want
    assert mvb.score(completion, gold, timeout=5.0).correct is want


def test_task_option_runs_behind_the_pool():
    t = tasks.make("math_sample", verifier="math_verify")
    probs = [Problem("a", "q", "\\frac{11}{4}", None, {}), Problem("b", "q", "5", None, {})]
    pool.score_batch(t.score, ["1"], probs[:1], timeout=5.0)  # start the workers outside the timing
    huge = "\\boxed{" + "(" * 50_000 + "}"
    t0 = time.monotonic()
    out = pool.score_batch(t.score, ["\\boxed{2\\frac{3}{4}}", huge], probs, timeout=2.0)
    assert out[0].correct and not out[1].correct and time.monotonic() - t0 < 2.0 + 1.5
    with pytest.raises(ValueError, match="verifier"):
        tasks.make("math_sample", verifier="nope")



@pytest.mark.parametrize("name", ["verifier_corpus.jsonl", "verifier_corpus_smollm2.jsonl"])
def test_stored_math_verify_verdicts_are_todays(name):
    """The corpora store math-verify's verdicts (test_math_verifier compares our agreement with the labels
    against them): a fixed random sample of 20 rows of each, re-scored with math-verify now."""
    with open(sample_path(name), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for r in random.Random(0).sample(rows, 20):
        assert mvb.score(r["completion"], r["gold"], timeout=5.0).correct is r["math_verify"], r["id"]


def test_bench_verifier_cases_cli(tmp_path):
    """`python -m experiments.bench_verifier --cases FILE` (the README's agreement table): agreement with the
    labels, false positives per class, and the disagreements, on three rows whose verdicts are known."""
    rows = [{"id": "a", "class": "mixed", "completion": "\\boxed{2\\frac{3}{4}}", "gold": "\\frac{11}{4}", "label": True},
            {"id": "b", "class": "chain", "completion": "\\boxed{y = 3 \\cdot 5 = 16}", "gold": "15", "label": False},
            {"id": "c", "class": "x", "extract": "auto", "completion": "so it is 7", "gold": "7", "label": True}]
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "experiments.bench_verifier", "--cases", str(path)], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| rl.rewards.math | 3/3 = 100.0% | 0 | 0 |" in r.stdout, r.stdout
    assert "false positives on the mixed/percent/chain classes: 0" in r.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"completion": "1"}\n')
    r = subprocess.run([sys.executable, "-m", "experiments.bench_verifier", "--cases", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and f"{bad}:1: a row needs" in r.stderr
