"""rl/advantages.py against NumPy re-derivations of the formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from rl import advantages as A


def np_grpo(r, g, normalize_std=True, eps=1e-6):
  out = np.zeros_like(r, dtype=np.float64)
  for p in range(len(r) // g):
    x = r[p * g:(p + 1) * g].astype(np.float64)
    if np.all(x == x[0]):
      continue
    a = x - x.mean()
    if normalize_std:
      a = a / (x.std(ddof=1) + eps)
    out[p * g:(p + 1) * g] = a
  return out


def np_rloo(r, g):
  out = np.zeros(len(r))
  for i in range(len(r)):
    p = i // g
    others = [r[j] for j in range(p * g, (p + 1) * g) if j != i]
    out[i] = r[i] - np.mean(others)
  return out


def test_grpo_matches_numpy_and_jit():
  rng = np.random.default_rng(0)
  r = rng.normal(size=12).astype(np.float32)
  r[4:8] = 0.3  # one constant group
  f = jax.jit(A.grpo_advantages, static_argnums=1, static_argnames="normalize_std")
  np.testing.assert_allclose(f(r, 4), np_grpo(r, 4), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(f(r, 4, normalize_std=False), np_grpo(r, 4, False), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(f(r, 4))[4:8], 0.0)


def test_grpo_binary_rewards_hand_computed():
  # group [1, 0, 0, 0]: mean 0.25, Bessel std sqrt(0.25) = 0.5 -> A = [1.5, -0.5, -0.5, -0.5] (eps=0)
  a = A.grpo_advantages(jnp.array([1., 0, 0, 0]), 4, eps=0.0)
  np.testing.assert_allclose(a, [1.5, -0.5, -0.5, -0.5], rtol=1e-6)


@given(st.lists(st.sampled_from([0.0, 0.1, 0.7, 1.0, -0.3]), min_size=6, max_size=6))
def test_constant_groups_exactly_zero_and_groups_centered(vals):
  r = jnp.array(vals * 2, jnp.float32)  # P=4, G=3
  a = np.asarray(A.grpo_advantages(r, 3))
  zv = np.asarray(A.zero_variance_groups(r, 3))
  for p in range(4):
    grp = np.asarray(r)[3 * p:3 * p + 3]
    assert zv[p] == (grp.max() == grp.min())
    if zv[p]:
      assert np.all(a[3 * p:3 * p + 3] == 0.0)
    assert abs(a[3 * p:3 * p + 3].sum()) < 1e-5
  np.testing.assert_allclose(a, np_grpo(np.asarray(r), 3), rtol=1e-4, atol=1e-5)


def test_group_size_one_gives_zero():
  np.testing.assert_array_equal(A.grpo_advantages(jnp.array([1., 0., 2.]), 1), 0.0)


def test_rloo_matches_numpy():
  r = np.random.default_rng(1).integers(0, 2, size=16).astype(np.float32)
  np.testing.assert_allclose(A.rloo_advantages(r, 4), np_rloo(r, 4), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="group_size >= 2"):
    A.rloo_advantages(r, 1)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="multiple of group_size=4"):
    A.grpo_advantages(jnp.zeros(6), 4)
  with pytest.raises(ValueError, match="mode must be one of"):
    A.psr_nsr_advantages(jnp.zeros(3, bool), mode="nope")
  with pytest.raises(ValueError, match="keep must be"):
    A.sign_mask(jnp.zeros(3), keep="both")


def test_psr_nsr_modes_hand_computed():
  c = jnp.array([True, False, True, False])
  cases = {
      "psr": ([1, 0, 1, 0], [1, 0, 1, 0]),
      "nsr": ([0, -1, 0, -1], [0, 1, 0, 1]),
      "weighted": ([0.1, -1, 0.1, -1], [1, 1, 1, 1]),
      "reinforce": ([1, -1, 1, -1], [1, 1, 1, 1]),
  }
  for mode, (adv, keep) in cases.items():
    a, k = jax.jit(A.psr_nsr_advantages, static_argnames="mode")(c, mode=mode)
    np.testing.assert_allclose(a, adv, rtol=1e-6, err_msg=mode)
    np.testing.assert_array_equal(k, np.array(keep, bool), err_msg=mode)
  a, _ = A.psr_nsr_advantages(c, mode="weighted", lam=0.5)
  np.testing.assert_allclose(a, [0.5, -1, 0.5, -1])


def test_sign_mask_after_full_group_normalisation():
  r = jnp.array([1., 0, 0, 1, 1, 1, 1, 1])
  a = A.grpo_advantages(r, 4)
  pos, neg = A.sign_mask(a, "positive"), A.sign_mask(a, "negative")
  np.testing.assert_array_equal(pos, [1, 0, 0, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(neg, [0, 1, 1, 0, 0, 0, 0, 0])
  # normalised over the full group (not only the kept sign): +-1/sqrt(1/3) = +-0.866
  np.testing.assert_allclose(np.asarray(a)[:4], np_grpo(np.asarray(r), 4)[:4], rtol=1e-5)


def test_gradient_filter_and_zero_fraction():
  a = jnp.array([0.0, 0.05, -0.2, 0.3, -0.05, 0.0])
  np.testing.assert_array_equal(A.gradient_filter_mask(a, 0.05), [0, 0, 1, 1, 0, 0])
  assert float(A.zero_advantage_fraction(a)) == pytest.approx(2 / 6)
