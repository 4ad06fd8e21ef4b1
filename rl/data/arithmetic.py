"""Synthetic arithmetic problems generated from a seed (offline, unlimited, exact integer answers).

    generate(n, seed, *, num_terms=2, min_value=1, max_value=99, ops="+-", style="expression") -> list[Problem]

style="expression": "Calculate 12 + 7 - 3."; style="word": a short story ("Mia has 12 marbles...");
style="mixed": either, per problem. Multiplication ("*" in ops) uses small factors so answers stay
readable; answers are exact integers (no division), so checking is exact.
"""
import numpy as np

from rl.data import Problem

_NAMES = ["Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Iris", "Ravi", "Lena", "Tom"]
_ITEMS = ["marbles", "apples", "stickers", "books", "coins", "shells", "pencils", "cards"]
_STYLES = ("expression", "word", "mixed")


def _terms(rng, num_terms, lo, hi, ops):
    values = [int(rng.integers(lo, hi + 1))]
    signs = []
    for _ in range(num_terms - 1):
        op = ops[int(rng.integers(len(ops)))]
        if op == "*":
            values.append(int(rng.integers(2, 10)))
        else:
            values.append(int(rng.integers(lo, hi + 1)))
        signs.append(op)
    return values, signs


def _evaluate(values, signs) -> int:
    # standard precedence: fold products first, then left-to-right + and -
    acc, out_signs, out_vals = values[0], [], []
    for op, v in zip(signs, values[1:]):
        if op == "*":
            acc *= v
        else:
            out_vals.append(acc)
            out_signs.append(op)
            acc = v
    out_vals.append(acc)
    total = out_vals[0]
    for op, v in zip(out_signs, out_vals[1:]):
        total = total + v if op == "+" else total - v
    return total


def _word(rng, values, signs) -> str:
    name = _NAMES[int(rng.integers(len(_NAMES)))]
    item = _ITEMS[int(rng.integers(len(_ITEMS)))]
    parts = [f"{name} has {values[0]} {item}."]
    for op, v in zip(signs, values[1:]):
        if op == "+":
            parts.append(f"Then {name} gets {v} more {item}.")
        elif op == "-":
            parts.append(f"Then {name} gives away {v} {item}.")
        else:
            parts.append(f"Then the number of {item} is multiplied by {v}.")
    parts.append(f"How many {item} does {name} have now? (The answer may be negative.)"
                 if "-" in signs else f"How many {item} does {name} have now?")
    return " ".join(parts)


def generate(n: int, seed: int, *, num_terms: int = 2, min_value: int = 1, max_value: int = 99,
             ops: str = "+-", style: str = "expression", id_prefix: str = "arith") -> list:
    """`n` problems from `seed`; each Problem(id=f"{id_prefix}/{seed}/{i}", question, answer=str(int))."""
    if num_terms < 2:
        raise ValueError(f"arithmetic: num_terms must be >= 2, got {num_terms}")
    if min_value > max_value:
        raise ValueError(f"arithmetic: min_value {min_value} > max_value {max_value}")
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"arithmetic: ops must be a non-empty string over '+-*', got {ops!r}")
    if style not in _STYLES:
        raise ValueError(f"arithmetic: style must be one of {_STYLES}, got {style!r}")
    rng = np.random.default_rng(seed)
    problems = []
    for i in range(n):
        values, signs = _terms(rng, num_terms, min_value, max_value, ops)
        answer = _evaluate(values, signs)
        s = style if style != "mixed" else _STYLES[int(rng.integers(2))]
        if s == "word" and "*" not in signs:
            question = _word(rng, values, signs)
        else:
            expr = str(values[0]) + "".join(f" {op} {v}" for op, v in zip(signs, values[1:]))
            question = f"Calculate {expr}."
        sol = f"{question.removeprefix('Calculate ').rstrip('.')} = {answer}" if s == "expression" else None
        problems.append(Problem(id=f"{id_prefix}/{seed}/{i}", question=question, answer=str(answer), solution=sol))
    return problems
