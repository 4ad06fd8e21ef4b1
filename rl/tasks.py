"""Tasks: problems + a verifier, built by name from config.

    task = tasks.make("arithmetic", num_terms=2, train_size=1000, eval_size=100, seed=0, extract="auto")
    task.train_problems, task.eval_problems     # list[Problem]
    task.score(completion, problem) -> Score(reward, correct, pred)

Names:
  "arithmetic"     synthetic arithmetic (rl.data.arithmetic), exact numeric check
  "math_sample"    the bundled math sample (rl/data/math_sample.jsonl), math verifier
                   (math tasks take verifier="ours" | "math_verify" and min_decimal_places, see rl.rewards.math)
  "jsonl" / "parquet"  local files (rl.data.files), presets "math" / "gsm8k" / "deepscaler", math verifier
  "reasoning_gym"  procedural puzzles from the reasoning-gym package, scored by its own scorers
  "code"           local JSONL of {prompt, tests} programming problems, sandboxed execution (rl.rewards.code)
  "toy_last_digit" / "toy_parity"  two-digit numbers for the tiny model (models.tiny.CharTokenizer vocabulary)
  "toy_sum"        "47+38=" -> "85" for the tiny model, optional units-column scratchpad (the repro testbed)

`task.score` is picklable without the problem lists, so `rl.rewards.pool.score_batch(task.score, ...)`
ships only the scorer and its options to the workers.
"""
import dataclasses
import functools
import random
from typing import Any, Callable, Optional

import numpy as np

from rl.data import Problem, arithmetic, files, sample_path  # noqa: F401  (Problem, sample_path re-exported)
from rl.rewards import INCORRECT, Score  # noqa: F401  (re-exported)
from rl.rewards import code as rcode
from rl.rewards import extract as ex
from rl.rewards import math as rmath
from rl.rewards.math import to_fraction  # noqa: F401  (re-exported)


@dataclasses.dataclass
class Task:
    name: str
    train_problems: list
    eval_problems: list
    scorer: Callable[[str, Problem], Score]  # picklable: module-level function or functools.partial
    info: dict = dataclasses.field(default_factory=dict)  # e.g. {"skipped_rows": 3}

    def score(self, completion: str, problem: Problem) -> Score:
        return self.scorer(completion, problem)

    def __getstate__(self):  # pickles light: the workers need only the scorer
        return {"name": self.name, "train_problems": [], "eval_problems": [], "scorer": self.scorer, "info": {}}


# ---------------------------------------------------------------------------------------------- scorers

# to_fraction lives with the math verifier (which needs it); re-exported here for existing callers.


def score_numeric(completion: str, problem: Problem, *, extract: str = "auto") -> Score:
    """Exact numeric equivalence of the extracted answer with problem.answer (fractions, decimals)."""
    pred = ex.extract(completion, extract)
    if pred is None:
        return INCORRECT
    a, b = to_fraction(pred), to_fraction(problem.answer)
    ok = a is not None and b is not None and a == b
    return Score(1.0 if ok else 0.0, ok, pred)


def score_math(completion: str, problem: Problem, *, extract: str = "strict", timeout: float = 1.0,
               verifier: str = "ours", min_places: Optional[int] = rmath.MIN_DECIMAL_PLACES) -> Score:
    """The math verifier against problem.answer: "ours" (rl.rewards.math.score; min_places = its decimal
    precision policy, None = decimals exact) or "math_verify" (rl.rewards.math_verify_backend, optional)."""
    if verifier == "math_verify":
        from rl.rewards import math_verify_backend  # optional dependency (the math-verify package)
        return math_verify_backend.score(completion, problem.answer, extract=extract)
    return rmath.score(completion, problem.answer, extract=extract, timeout=timeout, min_places=min_places)


@functools.lru_cache(maxsize=None)
def _rg_scorer(dataset_name: str):
    import reasoning_gym   # local: optional heavy import (hundreds of dataset modules), only for this task
    return reasoning_gym.get_score_answer_fn(dataset_name)


def score_reasoning_gym(completion: str, problem: Problem, *, extract: str = "strict", binary: bool = True) -> Score:
    """reasoning-gym's own scorer on the extracted answer; correct iff its score is 1.0."""
    pred = ex.extract(completion, extract)
    if pred is None:
        return INCORRECT
    entry = problem.meta
    value = float(_rg_scorer(entry["metadata"]["source_dataset"])(pred, entry) or 0.0)
    ok = value >= 1.0 - 1e-9
    return Score((1.0 if ok else 0.0) if binary else value, ok, pred)


def score_code(completion: str, problem: Problem, *, timeout: float = 2.0, memory_mb: int = 512) -> Score:
    """Fraction of problem.meta["tests"] passed by the last ```python block (rl.rewards.code)."""
    return rcode.score(completion, problem.meta["tests"], timeout=timeout, memory_mb=memory_mb)


# ---------------------------------------------------------------------------------------------- builders

def _check_extract(extract: str):
    if extract not in ex.MODES:
        raise ValueError(f"task option extract must be one of {ex.MODES}, got {extract!r}")


def _split(problems: list, eval_size: int, seed: int) -> tuple[list, list]:
    """Seeded split: eval = eval_size problems, train = the rest; eval_size=0 -> eval = train."""
    if eval_size <= 0:
        return problems, problems
    if eval_size >= len(problems):
        raise ValueError(f"eval_size={eval_size} must be smaller than the {len(problems)} problems")
    order = np.random.default_rng(seed).permutation(len(problems))
    ev = sorted(order[:eval_size].tolist())
    tr = sorted(order[eval_size:].tolist())
    return [problems[i] for i in tr], [problems[i] for i in ev]


def _arithmetic(*, train_size: int = 1000, eval_size: int = 100, seed: int = 0, num_terms: int = 2,
                min_value: int = 1, max_value: int = 99, ops: str = "+-", style: str = "expression",
                extract: str = "auto") -> Task:
    _check_extract(extract)
    kw = dict(num_terms=num_terms, min_value=min_value, max_value=max_value, ops=ops, style=style)
    train = arithmetic.generate(train_size, seed, id_prefix="arith/train", **kw)
    seen = {p.question for p in train}
    ev = [p for p in arithmetic.generate(eval_size * 3 + 10, seed + 1_000_003, id_prefix="arith/eval", **kw)
          if p.question not in seen][:eval_size]
    return Task("arithmetic", train, ev, functools.partial(score_numeric, extract=extract))


def _check_verifier(verifier: str):
    if verifier not in VERIFIERS:
        raise ValueError(f"task option verifier must be one of {VERIFIERS}, got {verifier!r}")
    if verifier == "math_verify":
        from rl.rewards import math_verify_backend
        if not math_verify_backend.available():
            raise ImportError("task option verifier='math_verify' needs the math-verify package: "
                              "pip install math-verify")


VERIFIERS = ("ours", "math_verify")


def _files(name, *, path: str, format: Optional[str] = None, eval_path: Optional[str] = None, eval_size: int = 0,
           seed: int = 0, on_bad_row: str = "error", limit: Optional[int] = None, extract: str = "strict",
           timeout: float = 1.0, verifier: str = "ours", min_decimal_places: Optional[int] = rmath.MIN_DECIMAL_PLACES,
           **keys) -> Task:
    _check_extract(extract)
    _check_verifier(verifier)
    if format and format not in files.PRESETS:
        raise ValueError(f"task option format must be one of {sorted(files.PRESETS)}, got {format!r}")
    opts = dict(files.PRESETS[format]) if format else {}
    bad = set(keys) - {"question_key", "answer_key", "solution_key", "id_key", "answer_from"}
    if bad:
        raise TypeError(f"tasks.make({name!r}): unknown option(s) {sorted(bad)}")
    opts.update(keys)
    problems, skipped = files.load_problems(path, on_bad_row=on_bad_row, limit=limit, **opts)
    if eval_path:
        ev, skipped_ev = files.load_problems(eval_path, on_bad_row=on_bad_row, **opts)
        train, skipped = problems, skipped + skipped_ev
    else:
        train, ev = _split(problems, eval_size, seed)
    return Task(name, train, ev, functools.partial(score_math, extract=extract, timeout=timeout, verifier=verifier,
                                                   min_places=min_decimal_places),
                info={"skipped_rows": skipped})


def _math_sample(*, eval_size: int = 0, seed: int = 0, extract: str = "strict", timeout: float = 1.0,
                 verifier: str = "ours", min_decimal_places: Optional[int] = rmath.MIN_DECIMAL_PLACES) -> Task:
    return _files("math_sample", path=sample_path("math_sample.jsonl"), format="deepscaler", id_key="id",
                  eval_size=eval_size, seed=seed, extract=extract, timeout=timeout, verifier=verifier,
                  min_decimal_places=min_decimal_places)


def _as_dict(x: Any) -> Any:
    return x.to_dict() if hasattr(x, "to_dict") else x


def _reasoning_gym(*, datasets: Any = "basic_arithmetic", train_size: int = 1000, eval_size: int = 100,
                   seed: int = 0, extract: str = "strict", binary: bool = True) -> Task:
    """datasets: a name, a list of names, or {name: {difficulty kwargs}} (e.g. {"basic_arithmetic":
    {"min_terms": 2, "max_terms": 2}}); sizes are split evenly over the datasets."""
    import reasoning_gym   # local: optional heavy import (hundreds of dataset modules), only for this task
    _check_extract(extract)
    datasets = _as_dict(datasets)
    if isinstance(datasets, str):
        datasets = {d.strip(): {} for d in datasets.split(",") if d.strip()}
    elif isinstance(datasets, (list, tuple)):
        datasets = {d: {} for d in datasets}
    if not datasets:
        raise ValueError("task option datasets is empty")
    from reasoning_gym.factory import DATASETS
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"task option datasets: unknown reasoning-gym dataset(s) {unknown}")
    train, ev = [], []
    k = len(datasets)
    for j, (dname, kw) in enumerate(datasets.items()):
        kw = dict(_as_dict(kw) or {})
        n_tr = train_size // k + (j < train_size % k)
        n_ev = eval_size // k + (j < eval_size % k)
        try:
            ds_tr = reasoning_gym.create_dataset(dname, size=max(n_tr, 1), seed=seed + j, **kw)
            ds_ev = reasoning_gym.create_dataset(dname, size=max(3 * n_ev + 10, 1), seed=seed + j + 1_000_003, **kw)
        except TypeError as e:
            raise ValueError(f"task option datasets[{dname!r}]: bad difficulty kwargs {kw}: {e}") from e
        seen = set()
        for i in range(n_tr):
            e = ds_tr[i]
            seen.add(e["question"])
            train.append(Problem(f"rg/{dname}/train/{i}", e["question"], str(e["answer"]), None, _plain(e)))
        got = 0
        for i in range(len(ds_ev)):
            if got >= n_ev:
                break
            e = ds_ev[i]
            if e["question"] in seen:
                continue
            ev.append(Problem(f"rg/{dname}/eval/{i}", e["question"], str(e["answer"]), None, _plain(e)))
            got += 1
    return Task("reasoning_gym", train, ev, functools.partial(score_reasoning_gym, extract=extract, binary=binary))


def _plain(entry: dict) -> dict:
    return {"question": entry["question"], "answer": entry["answer"], "metadata": entry.get("metadata", {})}


def _code(*, path: str, eval_size: int = 0, seed: int = 0, timeout: float = 2.0, memory_mb: int = 512,
          on_bad_row: str = "error") -> Task:
    """JSONL rows {"id"?, "prompt", "tests": [{"input": str, "output": str}, ...]} (stdin/stdout tests)."""
    problems, skipped = rcode.load_code_problems(path, on_bad_row=on_bad_row)
    train, ev = _split(problems, eval_size, seed)
    return Task("code", train, ev, functools.partial(score_code, timeout=timeout, memory_mb=memory_mb),
                info={"skipped_rows": skipped})


def score_first_char(completion: str, problem: Problem) -> Score:
    """Toy tasks: correct when the completion's first character is the answer digit."""
    pred = completion[:1] or None
    ok = pred == problem.answer
    return Score(float(ok), ok, pred)


def _toy(kind: str) -> Task:
    """Question "47=" (a two-digit number and "=", the character tokenizer's vocabulary); train 80 numbers, eval 20
    held-out ones (fixed split). "last_digit": the answer is the last digit (a copy; a random policy is right
    ~1/17 of the time); "parity": "0" for even numbers, "1" for odd ones (random ~2/17, the format alone ~1/2)."""
    nums = [f"{i:02d}" for i in range(100)]
    random.Random(0).shuffle(nums)
    answer = (lambda q: q[-1]) if kind == "last_digit" else (lambda q: str(int(q) % 2))
    mk = lambda q: Problem(id=f"toy-{q}", question=q + "=", answer=answer(q), solution=answer(q))
    return Task(f"toy_{kind}", [mk(q) for q in nums[:80]], [mk(q) for q in nums[80:]], score_first_char)


def score_toy_sum(completion: str, problem: Problem) -> Score:
    """toy_sum: the answer is what follows the last "?" (the whole completion without a scratchpad); exact match."""
    pred = completion.rsplit("?", 1)[-1] or None
    ok = pred == problem.answer
    return Score(float(ok), ok, pred)


def _toy_sum(*, max_a: int = 99, max_b: int = 99, scratch_frac: float = 0.5, eval_size: int = 200,
             seed: int = 0) -> Task:
    """Sums "47+38=" -> "85" over the character tokenizer's vocabulary, all pairs 0 <= a <= max_a, 0 <= b <= max_b;
    eval_size held out (seeded split). Many wrong answers (0 .. max_a + max_b). The gold solution of a
    `scratch_frac` share of the problems (fixed per problem) first writes the units column, "7+8=15?85", the
    rest only the answer "85": a model fine-tuned on them answers at two lengths (what a length reward acts on)."""
    if max_a < 1 or max_b < 1 or not 0 <= scratch_frac <= 1:
        raise ValueError(f"toy_sum: need max_a, max_b >= 1 and 0 <= scratch_frac <= 1, got {max_a}, {max_b}, "
                         f"{scratch_frac}")
    rng = np.random.default_rng(seed)
    problems = []
    for a in range(max_a + 1):
        for b in range(max_b + 1):
            ans = str(a + b)
            sol = f"{a % 10}+{b % 10}={a % 10 + b % 10}?{ans}" if rng.random() < scratch_frac else ans
            problems.append(Problem(id=f"sum-{a}+{b}", question=f"{a}+{b}=", answer=ans, solution=sol))
    train, ev = _split(problems, eval_size, seed)
    return Task("toy_sum", train, ev, score_toy_sum)


REGISTRY = {
    "toy_last_digit": functools.partial(_toy, "last_digit"),
    "toy_parity": functools.partial(_toy, "parity"),
    "toy_sum": _toy_sum,
    "arithmetic": _arithmetic,
    "math_sample": _math_sample,
    "jsonl": functools.partial(_files, "jsonl"),
    "parquet": functools.partial(_files, "parquet"),
    "reasoning_gym": _reasoning_gym,
    "code": _code,
}


def make(name: str, **kwargs) -> Task:
    """Builds the task `name` with its options (see the module docstring and each builder)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; available: {sorted(REGISTRY)}")
    kwargs = {k: _as_dict(v) for k, v in kwargs.items()}
    try:
        return REGISTRY[name](**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e) or "missing" in str(e):
            raise TypeError(f"tasks.make({name!r}): {e}") from e
        raise
