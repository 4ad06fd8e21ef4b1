"""score_batch: hard per-item limit, killed workers replaced, errors -> incorrect, any thread."""
import os
import threading
import time

import pytest

from rl.rewards import INCORRECT, Score
from rl.rewards import pool


def _scorer(completion, problem):  # module-level: picklable by reference
    if completion == "hang":
        time.sleep(60)
    if completion == "raise":
        raise RuntimeError("boom")
    if completion == "die":
        os._exit(3)
    ok = completion == problem
    return Score(float(ok), ok, completion)


def test_score_batch_hang_error_crash():
    comps = ["a", "hang", "b", "raise", "x", "die", "c"]
    probs = ["a", "hang?", "b", "raise", "y", "die", "c"]
    p = pool.get_pool(2)
    restarts = p.restarts
    t0 = time.monotonic()
    out = pool.score_batch(_scorer, comps, probs, timeout=1.0, workers=2)
    elapsed = time.monotonic() - t0
    assert out == [Score(1.0, True, "a"), INCORRECT, Score(1.0, True, "b"), INCORRECT,
                   Score(0.0, False, "x"), INCORRECT, Score(1.0, True, "c")]
    assert p.restarts - restarts == 2  # the hung worker and the dead one were replaced
    assert elapsed < 10.0
    # the pool still works after the replacements
    assert pool.score_batch(_scorer, ["z"], ["z"], timeout=1.0, workers=2) == [Score(1.0, True, "z")]


def test_score_batch_from_threads():
    results = {}

    def run(k):
        results[k] = pool.score_batch(_scorer, [str(k), "q"], [str(k), "r"], timeout=2.0, workers=2)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {k: [Score(1.0, True, str(k)), Score(0.0, False, "q")] for k in range(3)}


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 completions but 1 problems"):
        pool.score_batch(_scorer, ["a", "b"], ["a"])
    with pytest.raises(TypeError, match="cannot be pickled"):
        pool.score_batch(lambda c, p: INCORRECT, ["a"], ["a"], workers=2)
    assert pool.score_batch(_scorer, [], []) == []
