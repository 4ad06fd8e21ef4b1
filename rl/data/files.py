"""Local datasets: JSONL or parquet files with configurable field names -> list[Problem].

    load_problems(path, question_key="problem", answer_key="answer", solution_key=None, id_key=None,
                  answer_from=None, on_bad_row="error") -> (problems, n_skipped)

Shapes supported through the keys (see PRESETS):
  MATH        {"problem", "solution"}                 gold = last \\boxed{} of the solution
  GSM8K       {"question", "answer": "...#### 42"}    gold = text after ####, solution = the answer field
  DeepScaleR  {"problem", "answer", "solution"}
A bad row (invalid JSON, not an object, missing/empty field, no extractable answer) raises
ValueError naming the file and line ("data.jsonl:17: ..."), or with on_bad_row="skip" is skipped
and counted.
"""
import json
import os
from typing import Iterator, Optional

from rl.data import Problem
from rl.rewards import extract as ex

PRESETS = {
    "math": dict(question_key="problem", answer_key="solution", solution_key="solution", answer_from="boxed"),
    "gsm8k": dict(question_key="question", answer_key="answer", solution_key="answer", answer_from="gsm8k"),
    "deepscaler": dict(question_key="problem", answer_key="answer", solution_key="solution", answer_from=None),
}
_ANSWER_FROM = (None, "boxed", "gsm8k")


def _records(path: str) -> Iterator[tuple[int, object, Optional[str]]]:
    """Yields (line or row number, record, parse error or None)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row, None
        return
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line), None
            except json.JSONDecodeError as e:
                yield i, None, f"invalid JSON ({e.msg} at column {e.colno})"


def load_problems(path: str, *, question_key: str = "problem", answer_key: str = "answer",
                  solution_key: Optional[str] = None, id_key: Optional[str] = None,
                  answer_from: Optional[str] = None, on_bad_row: str = "error",
                  limit: Optional[int] = None) -> tuple[list, int]:
    """Problems from a .jsonl (or .parquet) file; returns (problems, number of skipped rows)."""
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if answer_from not in _ANSWER_FROM:
        raise ValueError(f"answer_from must be one of {_ANSWER_FROM}, got {answer_from!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset file not found: {path}")
    where = "row" if path.endswith(".parquet") else "line"
    name = os.path.basename(path)
    problems, skipped = [], 0
    for lineno, rec, err in _records(path):
        if err is None:
            err = _check(rec, question_key, answer_key, solution_key, id_key)
        if err is None:
            raw = str(rec[answer_key])
            answer = raw.strip() if answer_from is None else (
                ex.last_boxed(raw) if answer_from == "boxed" else ex.gsm8k(raw))
            if not answer:
                err = f"no answer found in field {answer_key!r} (answer_from={answer_from!r})"
        if err is not None:
            if on_bad_row == "error":
                raise ValueError(f"{path}:{lineno}: {err} (set on_bad_row='skip' to skip bad {where}s)")
            skipped += 1
            continue
        pid = str(rec[id_key]) if id_key else f"{name}/{lineno}"
        sol = str(rec[solution_key]) if solution_key and rec.get(solution_key) is not None else None
        problems.append(Problem(id=pid, question=str(rec[question_key]), answer=answer, solution=sol))
        if limit is not None and len(problems) >= limit:
            break
    return problems, skipped


def _check(rec, question_key, answer_key, solution_key, id_key) -> Optional[str]:
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    for key in (question_key, answer_key) + ((id_key,) if id_key else ()):
        if key not in rec:
            return f"missing field {key!r} (fields: {sorted(rec)[:10]})"
        if rec[key] is None or (isinstance(rec[key], str) and not rec[key].strip()):
            return f"empty field {key!r}"
    return None
