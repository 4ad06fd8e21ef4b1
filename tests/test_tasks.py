"""tasks.make: arithmetic, math_sample, jsonl, reasoning_gym, code; scoring through the pool."""
import ast
import json
import operator
import pickle
import re

import pytest

from rl import tasks
from rl.rewards import pool


def _eval_expr(expr):  # independent reference: evaluate "12 + 7 * 3 - 4" with Python's own precedence
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

    def ev(n):
        if isinstance(n, ast.BinOp):
            return ops[type(n.op)](ev(n.left), ev(n.right))
        assert isinstance(n, ast.Constant)
        return n.value
    return ev(ast.parse(expr, mode="eval").body)


def _eval_story(q):
    total = int(re.search(r"has (\d+)", q).group(1))
    for verb, v in re.findall(r"(gets|gives away) (\d+)", q):
        total += int(v) if verb == "gets" else -int(v)
    return total


@pytest.mark.parametrize("style,ops", [("expression", "+-*"), ("word", "+-"), ("mixed", "+-")])
def test_arithmetic_answers_and_split(style, ops):
    t = tasks.make("arithmetic", train_size=60, eval_size=20, seed=1, num_terms=3, min_value=5, max_value=50,
                   ops=ops, style=style)
    assert len(t.train_problems) == 60 and len(t.eval_problems) == 20
    assert not {p.question for p in t.train_problems} & {p.question for p in t.eval_problems}
    for p in t.train_problems + t.eval_problems:
        if p.question.startswith("Calculate "):
            expr = p.question[len("Calculate "):-1]
            assert len(re.findall(r"\d+", expr)) == 3
            assert int(p.answer) == _eval_expr(expr)
        else:
            assert style != "expression" and int(p.answer) == _eval_story(p.question)
    t2 = tasks.make("arithmetic", train_size=60, eval_size=20, seed=1, num_terms=3, min_value=5, max_value=50,
                    ops=ops, style=style)
    assert t2.train_problems == t.train_problems


def test_arithmetic_extract_modes():
    p = tasks.make("arithmetic", train_size=1, eval_size=1).train_problems[0]
    a = p.answer
    auto = tasks.make("arithmetic", train_size=1, eval_size=1, extract="auto")
    boxed = tasks.make("arithmetic", train_size=1, eval_size=1, extract="boxed")
    assert auto.score(f"It is {a}", p).correct and not boxed.score(f"It is {a}", p).correct
    assert boxed.score(f"\\boxed{{{a}}}", p).correct and auto.score(f"\\boxed{{{a}.0}}", p).correct
    assert not auto.score(f"\\boxed{{{int(a) + 1}}}", p).correct
    assert auto.score("no number", p) == tasks.INCORRECT
    with pytest.raises(ValueError, match="extract"):
        tasks.make("arithmetic", extract="bogus")
    with pytest.raises(TypeError, match="arithmetic.*bogus_key"):
        tasks.make("arithmetic", bogus_key=1)
    with pytest.raises(ValueError, match="unknown task"):
        tasks.make("nope")


def test_math_sample_and_pool_scoring():
    t = tasks.make("math_sample")
    probs = t.train_problems
    assert len(probs) >= 36 and len({p.id for p in probs}) == len(probs)
    assert pickle.dumps(t.score).__len__() < 2000  # the task pickles without its problems
    comps = [p.solution for p in probs] + ["\\boxed{-12345}"] * 3
    scores = pool.score_batch(t.score, comps, probs + probs[:3], timeout=2.0, workers=2)
    assert all(s.correct for s in scores[:len(probs)]) and not any(s.correct for s in scores[len(probs):])
    ev = tasks.make("math_sample", eval_size=8, seed=0)
    assert len(ev.eval_problems) == 8 and len(ev.train_problems) == len(probs) - 8


def test_jsonl_task(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "q1", "answer": "x\n#### 1,200"}) + "\n" +
                    json.dumps({"question": "q2", "answer": "y\n#### 5"}) + "\n")
    t = tasks.make("jsonl", path=str(path), format="gsm8k")
    assert [p.answer for p in t.train_problems] == ["1,200", "5"]
    assert t.score("so \\boxed{1200}", t.train_problems[0]).correct
    with pytest.raises(TypeError, match="unknown option"):
        tasks.make("jsonl", path=str(path), question_field="q")


@pytest.fixture(scope="module")
def rg_task():
    return tasks.make("reasoning_gym", datasets={"basic_arithmetic": {"min_terms": 2, "max_terms": 2}},
                      train_size=6, eval_size=3, seed=0)


def test_reasoning_gym(rg_task):
    t = rg_task
    assert len(t.train_problems) == 6 and len(t.eval_problems) == 3
    for p in t.train_problems:
        assert p.meta["metadata"]["num_terms"] == 2
        assert t.score(f"<answer>{p.answer}</answer>", p).correct
        assert t.score(f"\\boxed{{{p.answer}}}", p).correct
        assert not t.score("<answer>123456789</answer>", p).correct
        assert not t.score(f"it is {p.answer}", p).correct  # last number only when configured
    last = tasks.make("reasoning_gym", datasets="basic_arithmetic", train_size=2, eval_size=1, extract="auto")
    p = last.train_problems[0]
    assert last.score(f"it is {p.answer}", p).correct
    with pytest.raises(ValueError, match="unknown reasoning-gym"):
        tasks.make("reasoning_gym", datasets=["not_a_dataset"])


def test_code_task(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps({"id": "sq", "prompt": "square n", "tests": [{"input": "3\n", "output": "9"},
                                                                          {"assert": "assert sq(5) == 25"}]}) + "\n"
                    + "not json\n")
    with pytest.raises(ValueError, match=r"code\.jsonl:2"):
        tasks.make("code", path=str(path))
    t = tasks.make("code", path=str(path), on_bad_row="skip", timeout=2.0)
    p = t.train_problems[0]
    prog = "def sq(n):\n    return n * n\n\nimport sys\ndata = sys.stdin.read().split()\nif data:\n    print(sq(int(data[0])))\n"
    s = t.score(f"Here:\n```python\n{prog}```", p)
    assert s.reward == 1.0 and s.correct
    s = t.score("```python\nprint(9)\n```", p)  # passes the stdin test only
    assert s.reward == 0.5 and not s.correct
