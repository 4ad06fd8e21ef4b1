"""verifier="math_verify": same pool and limits as ours, and both backends agree on unambiguous cases."""
import time

import pytest

from rl import tasks
from rl.data import Problem
from rl.rewards import math as rmath
from rl.rewards import math_verify_backend as mvb
from rl.rewards import pool

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
