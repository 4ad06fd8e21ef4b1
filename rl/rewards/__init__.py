"""Verifiable rewards: math answer checking, code execution, answer extraction, a never-hanging scoring pool.

Submodules (import them directly; nothing heavy is imported here):
    rl.rewards.extract  answer extraction (\\boxed{}, <answer>, "The answer is", "#### x", last number)
    rl.rewards.math     score(completion, gold) with a safe LaTeX parser + sympy equivalence, hard time limit
    rl.rewards.math_verify_backend  the optional math-verify verifier behind the same pool and limits
    rl.rewards.code     sandboxed execution of model-written Python against test cases (SANDBOX_LEVEL)
    rl.rewards.pool     score_batch(score_fn, completions, problems, timeout=..., workers=...)
See docs/rewards.md for the rules, the sandbox levels and the benchmarks.
"""
from typing import NamedTuple, Optional


class Score(NamedTuple):
    """The verdict on one completion.

    reward: float in [0, 1] (1.0 = correct for binary verifiers; fraction of tests for code).
    correct: bool, the binary verdict (used by PSR/NSR and pass@k).
    pred: the extracted answer string (used for maj@k), or None when nothing was extracted.
    """
    reward: float
    correct: bool
    pred: Optional[str]


INCORRECT = Score(0.0, False, None)
