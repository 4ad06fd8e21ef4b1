"""Math verifier: >=150 labelled answer pairs (rl/rewards/math_cases.py), extraction, safety and time limits."""
import json
import threading
import time

import pytest

from rl.data import sample_path
from rl.rewards import extract as ex
from rl.rewards import math as rmath
from rl.rewards.math_cases import CASES

LIMIT = 1.0


@pytest.fixture(scope="module", autouse=True)
def warm_worker():
    """Starts the verifier's worker once (start-up is not part of any item's time limit)."""
    rmath.is_equiv("x+1", "1+x")


def test_case_count_and_categories():
    assert len(CASES) >= 150
    cats = {c for c, *_ in CASES}
    assert {"fraction", "radical", "pi", "interval", "set", "tuple", "equation", "matrix", "scientific",
            "list", "units", "thousands", "adversarial", "mixed", "percent", "chain", "inequality",
            "eq_multiple", "precision", "unicode"} <= cats
    for cat in ("mixed", "percent", "chain"):  # each class has the wrong answers it must refuse
        assert sum(1 for c, *_, e in CASES if c == cat and not e) >= 3
    assert sum(1 for c in CASES if c[0] == "adversarial") >= 15
    assert any(e for *_, e in CASES) and any(not e for *_, e in CASES)


@pytest.mark.parametrize("cat,pred,gold,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_verdict(cat, pred, gold, expected):
    t0 = time.monotonic()
    got = rmath.is_equiv(pred, gold, timeout=LIMIT)
    elapsed = time.monotonic() - t0
    assert got is expected, (pred[:80], gold)
    assert elapsed < LIMIT + 0.5  # the hard limit holds, adversarial inputs included


@pytest.mark.parametrize("text,want", [
    ("so \\boxed{\\frac{1}{2}} and finally \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
    ("nested \\boxed{a_{b_{c}}}", "a_{b_{c}}"),
    ("\\fbox{7}", "7"),
    ("\\boxed 5 is it", "5"),
    ("The answer is 42.", "42"),
    ("Therefore, the final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("Answer: 17\nmore text", "17"),
    ("Natalia sold 48 clips.\n#### 72", "72"),
    ("<answer>9</answer>", "9"),
    ("<answer>\\boxed{9}</answer>", "9"),
    ("Final Answer: The final answer is $42$. I hope it is correct.", "42"),  # Minerva / lm-eval MATH format
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("Final Answer: The final answer is $(3, \\infty)$. I hope it is correct.", "(3, \\infty)"),
    ("The answer is 3.5. That is all.", "3.5"),
    ("so the answer is \\(x = 2\\).", "x = 2"),
    ("I think it is 5, no wait, 7", None),
    ("\\boxed{unclosed", None),
    ("", None),
])
def test_extract_strict(text, want):
    assert ex.extract(text, "strict") == want


@pytest.mark.parametrize("text,mode,want", [
    ("I think it is 5, no wait, 7", "last_number", "7"),
    ("I think it is 5, no wait, 7", "auto", "7"),
    ("total 1,234 apples", "last_number", "1234"),
    ("it is -3.5 degrees", "last_number", "-3.5"),
    ("ratio 3/4 overall", "last_number", "3/4"),
    ("\\boxed{2} then 9", "auto", "2"),
    ("\\boxed{2} then 9", "last_number", "9"),
    ("<answer>4</answer> \\boxed{5}", "answer_tag", "4"),
    ("<answer>4</answer> \\boxed{5}", "boxed", "5"),
    ("no digits here", "auto", None),
])
def test_extract_modes(text, mode, want):
    assert ex.extract(text, mode) == want


def test_extract_bad_mode():
    with pytest.raises(ValueError, match="extract mode"):
        ex.extract("x", "nope")


def test_score_end_to_end():
    s = rmath.score("Adding gives $\\boxed{\\dfrac{1}{2}}$.", "0.5")
    assert s.correct and s.reward == 1.0 and s.pred == "\\dfrac{1}{2}"
    s = rmath.score("I am not sure, maybe 0.5", "0.5")  # nothing extracted -> incorrect
    assert not s.correct and s.reward == 0.0 and s.pred is None
    s = rmath.score("\\boxed{3} or \\boxed{4}", "3")  # the last box counts
    assert not s.correct and s.pred == "4"
    s = rmath.score("#### 1,234", "1234")
    assert s.correct


def test_huge_completion_is_fast_and_incorrect():
    text = "x" * 100_000 + "\\boxed{" + "9^" * 20_000 + "9}"
    t0 = time.monotonic()
    s = rmath.score(text, "1")
    assert not s.correct and time.monotonic() - t0 < LIMIT + 0.5


def test_works_off_the_main_thread():
    out = {}

    def run():
        out["a"] = rmath.is_equiv("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")
        out["b"] = rmath.is_equiv("9^{9^{9^{9}}}", "1")
    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert out == {"a": True, "b": False}


def test_hard_timeout_kills_slow_sympy(monkeypatch):
    """An equivalence check that hangs is cut at the limit by killing its worker (no signals)."""
    from rl.rewards import pool
    t0 = time.monotonic()
    got = pool.call(time.sleep, 30, timeout=0.5, default="timed out")
    assert got == "timed out" and time.monotonic() - t0 < 2.0


def test_parser_refuses_code():
    for bad in ["__import__('os')", "os.system('ls')", "lambda x: x", "a.b", "x;y", "`ls`", "'1'"]:
        with pytest.raises(rmath.ParseError):
            rmath.parse(rmath.normalize(bad))
    # letters are only ever sympy symbols: "exec(1)" is the product e*x*e*c, nothing is called
    import sympy
    assert rmath.parse("exec(1)") == sympy.E ** 2 * sympy.Symbol("x") * sympy.Symbol("c")


def test_precision_policy_is_configurable():
    assert rmath.is_equiv("0.1666667", "\\frac{1}{6}")
    assert not rmath.is_equiv("0.1666667", "\\frac{1}{6}", min_places=None)  # exact only
    assert not rmath.is_equiv("0.1666667", "\\frac{1}{6}", min_places=8)
    assert rmath.is_equiv("0.17", "\\frac{1}{6}", min_places=2)
    assert rmath.is_equiv("0.5", "\\frac{1}{2}", min_places=None)  # exact decimals always match
    from rl import tasks
    from rl.data import Problem
    t = tasks.make("math_sample", min_decimal_places=None)
    assert not t.score("\\boxed{0.1666667}", Problem("p", "q", "\\frac{1}{6}", None, {})).correct
    assert tasks.make("math_sample").score("\\boxed{0.1666667}", Problem("p", "q", "\\frac{1}{6}", None, {})).correct


def test_minerva_format_end_to_end():
    s = rmath.score("We get 2 3/4.\nFinal Answer: The final answer is $2\\frac{3}{4}$. I hope it is correct.",
                    "\\frac{11}{4}")
    assert s.correct and s.pred == "2\\frac{3}{4}"


def test_last_boxed_is_linear_and_inside_the_pool_limit():
    """56 kB of repeated \\boxed{ took 16 s with the old quadratic scan; 700 kB must finish within the limit."""
    from rl.rewards import pool
    from rl import tasks
    from rl.data import Problem
    t0 = time.monotonic()
    assert ex.last_boxed("\\boxed{" * 8000) is None
    assert time.monotonic() - t0 < 4.0   # ~0.01 s linear; 16 s quadratic (margin for a loaded CI machine)
    big = "\\boxed{" * 100_000  # 700 kB
    task = tasks.make("math_sample")
    pool.score_batch(task.score, ["1"], [Problem("p", "q", "1", None, {})])  # workers started before timing
    t0 = time.monotonic()
    out = pool.score_batch(task.score, [big, "\\boxed{3}"], [Problem("p", "q", "3", None, {})] * 2, timeout=3.0)
    # the item is cut at the pool's 3 s limit; the margin absorbs worker restart on a loaded machine
    assert [s.correct for s in out] == [False, True] and time.monotonic() - t0 < 6.0


@pytest.mark.parametrize("name,min_rows", [("verifier_corpus.jsonl", 50), ("verifier_corpus_smollm2.jsonl", 150)])
def test_labelled_corpus_targets(name, min_rows):
    """Issue 16 targets on the labelled corpora (labels not written with our verifier in mind): at least
    math-verify's agreement with the labels (its verdicts are stored in the corpus and re-checked on a sample
    in test_math_verify_backend), and no false positive on the mixed-number, percent and chained-equality
    classes. verifier_corpus.jsonl: the hand-written format rows; verifier_corpus_smollm2.jsonl: SmolLM2
    completions and the datasets' reference solutions (experiments/make_verifier_corpus.py)."""
    with open(sample_path(name), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) >= min_rows
    ours = [rmath.score(r["completion"], r["gold"], extract=r.get("extract", "strict")).correct for r in rows]
    assert [r["ours"] for r in rows] == ours  # the stored verdicts are today's
    agree_ours = sum(o == r["label"] for o, r in zip(ours, rows))
    agree_mv = sum(r["math_verify"] == r["label"] for r in rows)
    assert agree_ours >= agree_mv
    fps = [r["id"] for o, r in zip(ours, rows) if o and not r["label"] and r["class"] in ("mixed", "percent", "chain")]
    assert fps == []
    disagree = [r for r in rows if r["ours"] != r["math_verify"]]
    assert all(r["reason"] and r.get("labelled_by", "hand").startswith("hand") for r in disagree)
