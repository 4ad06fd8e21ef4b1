"""rl/shaping.py against hand-computed cases and a NumPy loop reference."""
import jax
import numpy as np
import pytest
from hypothesis import given, strategies as st

from rl import shaping as S


def np_relative_length(r, ln, c, g, rho, scale, low, high):
  out = np.array(r, np.float64)
  for p in range(len(r) // g):
    idx = range(p * g, (p + 1) * g)
    cor = [i for i in idx if c[i]]
    if not cor or len(cor) / g < rho:
      continue
    mean_len = np.mean([ln[i] for i in cor])
    for i in cor:
      out[i] += np.clip((mean_len - ln[i]) / scale, low, high)
  return out


def test_relative_length_reward_hand_computed():
  # group 0: 3/4 correct (>= rho=0.5), correct lengths 100, 200, 300 -> mean 200 -> bonus +0.1, 0, -0.1
  # group 1: 1/4 correct (< rho) -> unchanged
  r = np.array([1, 1, 1, 0, 1, 0, 0, 0], np.float32)
  c = r > 0
  ln = np.array([100, 200, 300, 50, 10, 20, 30, 40])
  f = jax.jit(S.relative_length_reward, static_argnums=3, static_argnames=("rho", "scale", "low", "high"))
  got = f(r, ln, c, 4, rho=0.5, scale=1000.0, low=-0.5, high=0.5)
  np.testing.assert_allclose(got, [1.1, 1.0, 0.9, 0, 1, 0, 0, 0], rtol=1e-6)
  got = S.relative_length_reward(r, ln, c, 4, rho=0.5, scale=100.0, low=-0.5, high=0.5)
  np.testing.assert_allclose(got, [1.5, 1.0, 0.5, 0, 1, 0, 0, 0], rtol=1e-6)  # clipped at +-0.5


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 500)), min_size=8, max_size=8),
       st.sampled_from([0.0, 0.25, 0.5, 1.0]))
def test_relative_length_reward_matches_numpy(rows, rho):
  c = np.array([x[0] for x in rows])
  ln = np.array([x[1] for x in rows])
  r = c.astype(np.float32)
  got = S.relative_length_reward(r, ln, c, 4, rho=rho, scale=200.0, low=-0.3, high=0.4)
  np.testing.assert_allclose(got, np_relative_length(r, ln, c, 4, rho, 200.0, -0.3, 0.4), rtol=1e-5, atol=1e-6)


def test_overlong_penalty_piecewise():
  # max_len=100, cache_len=20: 0 up to 80, linear to -1 at 100, -1 beyond
  ln = np.array([0, 50, 80, 81, 90, 100, 101, 500])
  want = [0, 0, 0, -1 / 20, -0.5, -1, -1, -1]
  np.testing.assert_allclose(jax.jit(S.overlong_penalty, static_argnames=("max_len", "cache_len"))(
      ln, max_len=100, cache_len=20), want, rtol=1e-6)
  np.testing.assert_allclose(S.overlong_penalty(ln, max_len=100, cache_len=20, factor=0.5),
                             np.array(want) * 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="cache_len"):
    S.overlong_penalty(ln, max_len=10, cache_len=20)
