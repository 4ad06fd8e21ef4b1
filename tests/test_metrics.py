"""rl/metrics.py against exact rational arithmetic, brute-force enumeration, and property tests."""
import itertools
from fractions import Fraction
from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from rl import metrics as M

_pass = jax.jit(M.pass_at_k)


def exact_pass(n, c, k):
  return float(1 - Fraction(comb(n - c, k), comb(n, k)))


def test_pass_at_k_matches_exact_for_large_n():
  n = 1024
  c = np.array([0, 1, 2, 7, 100, 512, 1000, 1023, 1024])
  for k in (1, 2, 16, 256, 1024):
    got = np.asarray(_pass(n, c, k))
    want = np.array([exact_pass(n, int(ci), k) for ci in c])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7, err_msg=f"k={k}")


def test_pass_at_k_vectorised_over_problems_with_different_n():
  n = np.array([4, 10, 2048, 3])
  c = np.array([1, 3, 5, 3])
  got = M.pass_at_k(n, c, 2)
  np.testing.assert_allclose(got, [exact_pass(4, 1, 2), exact_pass(10, 3, 2), exact_pass(2048, 5, 2), 1.0],
                             rtol=2e-5)
  assert np.isnan(float(M.pass_at_k(3, 1, 4)))  # k > n is invalid


@given(n=st.integers(1, 1500), data=st.data())
def test_pass_at_k_properties(n, data):
  c = data.draw(st.integers(0, n))
  ks = np.unique(np.linspace(1, n, 6).astype(int))
  vals = np.asarray(_pass(n, c, jnp.asarray(ks)))
  assert np.all(np.diff(vals) >= -1e-6)  # monotone in k
  assert vals[0] == pytest.approx(c / n, rel=1e-5, abs=1e-7)  # k=1 is c/n
  for k, v in zip(ks, vals):
    if n - c < k:
      assert v == 1.0
    assert 0.0 <= v <= 1.0
  assert float(_pass(n, 0, ks[-1])) == 0.0


def brute_maj(pred, cor, k):
  """Enumerate random tie-breaks explicitly."""
  from collections import Counter
  cnt = Counter(p for p in pred[:k] if p >= 0)
  if not cnt:
    return 0.0
  top = max(cnt.values())
  winners = [a for a, v in cnt.items() if v == top]
  return np.mean([cor[list(pred[:k]).index(a)] for a in winners])


def test_maj_at_k_against_brute_force():
  rng = np.random.default_rng(0)
  preds = rng.integers(-1, 4, size=(30, 9))
  truth = rng.integers(0, 4, size=30)
  correct = preds == truth[:, None]
  for k in (1, 3, 8, 9):
    got = np.asarray(M.maj_at_k(preds, correct, k))
    want = [brute_maj(preds[i], correct[i], k) for i in range(30)]
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"k={k}")


def test_maj_at_k_hand_cases_and_encoding():
  ids = M.encode_predictions([["7", "7", "3", None], ["1", "2", None, None], [None, None, None, None]])
  np.testing.assert_array_equal(ids, [[0, 0, 1, -1], [0, 1, -1, -1], [-1, -1, -1, -1]])
  correct = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_allclose(M.maj_at_k(ids, correct, 4), [1.0, 0.5, 0.0])
  with pytest.raises(ValueError, match="1 <= k <= n"):
    M.maj_at_k(ids, correct, 5)


def test_maj_at_k_resampled_equals_subset_average_when_exhaustive():
  # with k = n every permutation gives the same vote: resampled == first-k
  preds = np.array([[0, 1, 1, 2], [3, 3, 0, 0]])
  correct = preds == np.array([[1], [0]])
  got = M.maj_at_k_resampled(preds, correct, 4, jax.random.key(0), num_resamples=3)
  np.testing.assert_allclose(got, M.maj_at_k(preds, correct, 4))
  # problems whose answers are all right / all wrong score 1 / 0 on every k-subset
  preds2 = np.array([[5, 5, 5, 5], [1, 2, 3, 4]])
  est = np.asarray(M.maj_at_k_resampled(preds2, np.array([[1, 1, 1, 1], [0, 0, 0, 0]], bool), 2,
                                        jax.random.key(1), num_resamples=3))
  np.testing.assert_allclose(est, [1.0, 0.0])


def test_summarize_runs_against_numpy():
  rng = np.random.default_rng(3)
  s = rng.integers(0, 2, size=(5, 40)).astype(np.float32)
  s[:, 0] = 1.0
  s[:, 1] = 0.0
  s[:, 2] = [1, 0, 1, 1, 1]
  out = jax.jit(M.summarize_runs, static_argnames=("low", "high"))(s)
  rm = s.mean(1)
  np.testing.assert_allclose(out["mean"], rm.mean(), rtol=1e-6)
  np.testing.assert_allclose(out["std"], rm.std(ddof=1), rtol=1e-5)
  pp = s.mean(0)
  np.testing.assert_array_equal(out["uncertain"], (pp > 0) & (pp < 1))
  assert not out["uncertain"][0] and not out["uncertain"][1] and out["uncertain"][2]
  assert int(out["num_uncertain"]) == int(((pp > 0) & (pp < 1)).sum())
  narrow = M.summarize_runs(s, low=0.5, high=0.9)
  np.testing.assert_array_equal(narrow["uncertain"], (pp > 0.5) & (pp < 0.9))
  assert float(M.summarize_runs(s[:1])["std"]) == 0.0
