"""The `verifier="math_verify"` backend: Hugging Face's math-verify (as used by TRL / open-r1), behind our pool.

    score(completion, gold, *, extract="strict", timeout=1.0) -> Score(reward, correct, pred)
    is_equiv(pred, gold, *, timeout=1.0) -> bool

Optional dependency: `pip install math-verify` (extra `math_verify` in pyproject). Results are comparable
with open-r1's accuracy reward: the gold answer is parsed as `\\boxed{gold}`, the completion with
math-verify's own answer extraction (LaTeX + plain expressions, its priority order: final-answer phrases,
\\boxed{}, last math), and `verify(gold, pred)` with its defaults (float_rounding=6, strict). The `extract`
option is accepted for interface compatibility but math-verify's extraction is always used, so the
backend rewards exactly what math-verify rewards.

Timeouts: math-verify's own limits use SIGALRM (main thread only), so they are switched off and the call
runs like ours: in a scoring-pool worker with a hard wall-clock limit (inline when already inside one,
where the enclosing pool enforces the item's limit). A timeout, an exception or a missing package scores
the item incorrect; the missing package raises a clear ImportError when the task is built.
"""
from typing import Optional

from rl.rewards import INCORRECT, Score, pool

MAX_COMPLETION_CHARS = 20_000  # math-verify's regexes are not linear-time on adversarial inputs: cut the tail


def available() -> bool:
    try:
        import math_verify  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


def _verdict(completion: str, gold: str, whole_completion: bool) -> tuple:
    """(correct, extracted pred or None); runs in a pool worker."""
    import logging
    from math_verify import parse, verify  # optional dependency, imported where it runs
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled": the pool enforces it
    g = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    text = completion if whole_completion else f"\\boxed{{{completion}}}"
    p = parse(text[-MAX_COMPLETION_CHARS:], parsing_timeout=None)
    if not p or not g:
        return False, None
    pred = str(p[-1]) if len(p) > 1 else str(p[0])
    return bool(verify(g, p, timeout_seconds=None)), pred


def score(completion: str, gold: str, *, extract: str = "strict", timeout: float = 1.0) -> Score:
    """math-verify's verdict on the whole completion against `gold` (module docstring)."""
    ok, pred = pool.call(_verdict, completion, gold, True, timeout=timeout, default=(False, None))
    if pred is None:
        return INCORRECT
    return Score(1.0 if ok else 0.0, bool(ok), pred)


def is_equiv(pred: Optional[str], gold: str, *, timeout: float = 1.0) -> bool:
    """math-verify on two answer strings (each wrapped in \\boxed{}), like rl.rewards.math.is_equiv."""
    if pred is None:
        return False
    ok, _ = pool.call(_verdict, pred, gold, False, timeout=timeout, default=(False, None))
    return bool(ok)
