"""Reward shaping: relative length reward and DAPO's overlong penalty.

Layout: N = P * G rows, prompt-major (row i * G + j = sample j of prompt i). Pure and jit-able.
"""
import jax.numpy as jnp


def relative_length_reward(rewards, lengths, correct, group_size, *, rho=0.5, scale=1000.0, low=-0.5, high=0.5):
  """Reward short correct answers relative to their group (shaping bonus on top of the task reward).

  For every group whose accuracy (fraction correct) is >= rho, each *correct* response gets
  clip((mean length of the group's correct responses - L) / scale, low, high) added to its reward.
  Incorrect responses and responses of groups below rho are unchanged.

  Args:
    rewards: f32 [N].  lengths: int/float [N] response lengths in tokens.  correct: bool [N].
    group_size: G (static int).  rho: accuracy threshold in [0, 1].  scale: length scale (tokens), > 0.
    low, high: clip range of the bonus.
  Returns:
    f32 [N] shaped rewards.
  """
  n = rewards.shape[0]
  if n % group_size:
    raise ValueError(f"relative_length_reward: N={n} is not a multiple of group_size={group_size}")
  r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
  ln = jnp.asarray(lengths, jnp.float32).reshape(-1, group_size)
  c = jnp.asarray(correct).astype(bool).reshape(-1, group_size)
  cf = c.astype(jnp.float32)
  n_correct = cf.sum(axis=1, keepdims=True)
  acc = n_correct / group_size
  mean_len = (ln * cf).sum(axis=1, keepdims=True) / jnp.maximum(n_correct, 1.0)
  bonus = jnp.clip((mean_len - ln) / scale, low, high)
  apply = c & (acc >= rho)
  return jnp.where(apply, r + bonus, r).reshape(-1)


def overlong_penalty(lengths, *, max_len, cache_len, factor=1.0):
  """DAPO soft overlong punishment (added to the reward).

  With L the response length:
    0                                    if L <= max_len - cache_len
    (max_len - cache_len - L) / cache_len   if max_len - cache_len < L <= max_len   (linear from 0 to -1)
    -1                                   if L > max_len
  all multiplied by ``factor``.

  Args:
    lengths: int/float [N].  max_len: the generation budget.  cache_len: the soft band, 0 < cache_len <= max_len.
  Returns:
    f32 [N], values in [-factor, 0].
  """
  if not 0 < cache_len <= max_len:
    raise ValueError(f"overlong_penalty: need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
  ln = jnp.asarray(lengths, jnp.float32)
  start = max_len - cache_len
  soft = (start - ln) / cache_len
  pen = jnp.where(ln <= start, 0.0, jnp.where(ln <= max_len, soft, -1.0))
  return factor * pen


__all__ = ["relative_length_reward", "overlong_penalty"]
