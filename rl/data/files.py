"""Local datasets: JSONL or parquet files with configurable field names -> list[Problem].

    load_problems(path, question_key="problem", answer_key="answer", solution_key=None, id_key=None,
                  answer_from=None, on_bad_row="error") -> (problems, n_skipped)

Shapes supported through the keys (see PRESETS):
  MATH        {"problem", "solution"}                 gold = last \\boxed{} of the solution
  GSM8K       {"question", "answer": "...#### 42"}    gold = text after ####, solution = the answer field
  DeepScaleR  {"problem", "answer", "solution"}
A bad row (not UTF-8, binary data, invalid JSON with its column, not an object, missing/empty field,
no extractable answer) raises ValueError naming the file and line ("data.jsonl:17: ..."), or with
on_bad_row="skip" is skipped and counted. A bad file (empty, UTF-16/32, gzip/zip, unreadable parquet) and a
file whose rows were all skipped raise ValueError("file:line: ...") whatever on_bad_row says. A UTF-8
byte-order mark is accepted.
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


_FOREIGN = [   # (leading bytes, what the file is): whole-file faults, raised even with on_bad_row="skip"
    (b"\xff\xfe\x00\x00", "UTF-32 text (little-endian byte-order mark); convert it to UTF-8"),
    (b"\x00\x00\xfe\xff", "UTF-32 text (big-endian byte-order mark); convert it to UTF-8"),
    (b"\xff\xfe", "UTF-16 text (little-endian byte-order mark); convert it to UTF-8"),
    (b"\xfe\xff", "UTF-16 text (big-endian byte-order mark); convert it to UTF-8"),
    (b"\x1f\x8b", "gzip-compressed; decompress it first"),
    (b"PK\x03\x04", "a zip archive; extract it first"),
    (b"PAR1", "a parquet file; give it a .parquet name"),
]
_UTF8_BOM = b"\xef\xbb\xbf"


def _records(path: str) -> Iterator[tuple[int, object, Optional[str]]]:
    """Yields (line or row number, record, error or None); raises ValueError("path:line: ...") for whole-file faults.

    JSONL: UTF-8, one JSON value per line; lines are split on "\n" only (as `wc -l` and editors count them), a
    UTF-8 byte-order mark at the start of a line is ignored, blank lines are skipped. Per-line errors: bytes that
    are not UTF-8 (with the byte and its column), NUL bytes (binary data), invalid JSON (with its column).
    """
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:   # pyarrow raises ArrowInvalid / OSError for a damaged or foreign file
            raise ValueError(f"{path}:1: not a readable parquet file ({type(e).__name__}: {e})") from None
        if table.num_rows == 0:
            raise ValueError(f"{path}:1: empty file (no rows)")
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row, None
        return
    with open(path, "rb") as f:
        head = f.read(4)
        for magic, what in _FOREIGN:
            if head.startswith(magic):
                raise ValueError(f"{path}:1: not a UTF-8 JSONL file: {what}")
        f.seek(0)
        n_rows = 0
        for i, raw in enumerate(f, start=1):   # binary mode: split on b"\n" only
            raw = raw.rstrip(b"\r\n")
            if raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]
            if not raw.strip():
                continue
            n_rows += 1
            if b"\0" in raw:
                yield i, None, f"binary data (NUL byte at column {raw.index(bytes(1)) + 1}), not a JSON text line"
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                col = len(raw[:e.start].decode("utf-8", errors="replace")) + 1
                yield i, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {col}); the file must be UTF-8"
                continue
            try:
                yield i, json.loads(line), None
            except json.JSONDecodeError as e:   # a single line: e.colno is the column within it (1-based)
                yield i, None, f"invalid JSON ({e.msg} at column {e.colno})"
        if n_rows == 0:
            raise ValueError(f"{path}:1: empty file (no rows)")


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
    if not problems:
        raise ValueError(f"{path}:1: no usable rows ({skipped} bad {where}s skipped)")
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
