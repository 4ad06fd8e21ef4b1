"""Evaluation metrics: unbiased pass@k, majority vote maj@k, and mean +- std over repeated evaluation runs.

All functions are pure and jit-able. Shapes: P problems, n samples per problem, R evaluation runs.
"""
import jax
import jax.numpy as jnp


@jax.jit
def pass_at_k(n, c, k):
  """Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n - c, k) / C(n, k), vectorised over problems.

  Computed in log space as a product, 1 - prod_{i=0}^{c-1} (1 - k / (n - i)), summing log1p terms and
  finishing with -expm1, so it stays accurate (relative error ~1e-6 in float32) for n in the thousands,
  where the binomials themselves overflow. Exactly 0 when c = 0 and exactly 1 when n - c < k.
  Jitted (the loop over c runs as a while loop), so calls with new values do not recompile.

  Args:
    n: int [P] or scalar, samples per problem.  c: int [P] or scalar, correct samples (0 <= c <= n).
    k: int scalar or [P], 1 <= k <= n.
  Returns:
    f32 [P] (broadcast shape of n, c, k).
  """
  n, c, k = jnp.broadcast_arrays(jnp.asarray(n), jnp.asarray(c), jnp.asarray(k))
  nf, kf = n.astype(jnp.float32), k.astype(jnp.float32)
  c = c.astype(jnp.int32)

  def body(i, s):
    denom = nf - i
    active = (i < c) & (denom > kf)
    return s + jnp.where(active, jnp.log1p(-kf / jnp.where(active, denom, 1.0)), 0.0)

  log_fail = jax.lax.fori_loop(0, jnp.max(c, initial=0), body, jnp.zeros(nf.shape, jnp.float32))
  out = jnp.where(n - c < k, 1.0, -jnp.expm1(log_fail))
  return jnp.where((k < 1) | (k > n), jnp.nan, out)


def _majority_correct(pred, correct):
  """One problem. pred int [k] (-1 = no answer), correct bool [k] -> expected correctness of the vote."""
  valid = pred >= 0
  same = (pred[:, None] == pred[None, :]) & valid[:, None] & valid[None, :]
  counts = same.sum(axis=1)  # [k] votes for sample j's answer (0 if no answer)
  top = counts.max()
  is_top = valid & (counts == top)
  # weight 1/count so each distinct answer counts once; ties are broken uniformly at random (in expectation)
  w = jnp.where(is_top, 1.0 / jnp.maximum(counts, 1), 0.0)
  n_top = w.sum()
  return jnp.where(n_top > 0, (w * correct).sum() / jnp.maximum(n_top, 1e-9), 0.0)


def maj_at_k(preds, correct, k):
  """Majority-vote accuracy over the *first k* samples of each problem (maj@k, "first-k" convention).

  The most frequent extracted answer among samples 0..k-1 is the vote; samples with no answer (pred = -1)
  never vote. Ties between answers count fractionally (the expected accuracy under a uniform random
  tie-break), so the result is deterministic. If no sample has an answer the problem scores 0.
  For an estimate averaged over many k-subsets, shuffle the sample axis (``maj_at_k_resampled``).

  Args:
    preds: int [P, n] answer ids (equal ids = equal answers; see ``encode_predictions``), -1 = none.
    correct: bool [P, n] correctness of each sample.
    k: static int, 1 <= k <= n.
  Returns:
    f32 [P] in [0, 1].
  """
  preds, correct = jnp.asarray(preds), jnp.asarray(correct)
  if not 1 <= k <= preds.shape[-1]:
    raise ValueError(f"maj_at_k: need 1 <= k <= n={preds.shape[-1]}, got k={k}")
  return _maj_first_k(preds[:, :k].astype(jnp.int32), correct[:, :k].astype(jnp.float32))


@jax.jit
def _maj_first_k(p, c):
  k = p.shape[-1]
  return jax.lax.map(lambda xs: _majority_correct(*xs), (p, c), batch_size=max(1, (1 << 22) // (k * k)))


def maj_at_k_resampled(preds, correct, k, rng, num_resamples=16):
  """maj@k averaged over ``num_resamples`` random k-subsets (a Monte-Carlo estimate over subsets).

  Args:
    preds, correct: [P, n] as in ``maj_at_k``.  rng: jax PRNG key.
  Returns:
    f32 [P].
  """
  preds, correct = jnp.asarray(preds), jnp.asarray(correct)
  n = preds.shape[-1]
  perms = jax.vmap(lambda key: jax.random.permutation(key, n))(jax.random.split(rng, num_resamples))  # [S, n]
  p = preds[:, perms].reshape(-1, n)  # [P * S, n]
  c = correct[:, perms].reshape(-1, n)
  return maj_at_k(p, c, k).reshape(-1, num_resamples).mean(axis=1)


def encode_predictions(preds):
  """Host helper: list of P lists of n answer strings (None = no answer) -> int32 [P, n] ids, -1 for None.

  Ids are only meaningful within a problem (equal strings -> equal ids).
  """
  import numpy as np
  out = np.full((len(preds), max((len(r) for r in preds), default=0)), -1, np.int32)
  for i, row in enumerate(preds):
    ids = {}
    for j, x in enumerate(row):
      if x is not None:
        out[i, j] = ids.setdefault(x, len(ids))
  return out


def summarize_runs(scores, *, low=0.0, high=1.0):
  """Mean +- std over R evaluation runs and the "uncertain problems" of the instability analysis.

  Args:
    scores: f32 [R, P]: per-run, per-problem accuracy (0/1 correctness, or the fraction of n samples correct).
    low, high: a problem is uncertain if low < (its accuracy averaged over runs) < high (strict).
  Returns:
    dict of arrays:
      mean: f32 scalar, mean over runs of the per-run accuracy (mean over problems);
      std: f32 scalar, sample std (ddof=1) of the per-run accuracies across runs (0 when R == 1);
      run_means: f32 [R];
      per_problem: f32 [P], accuracy of each problem averaged over runs;
      uncertain: bool [P];  num_uncertain: int32 scalar.
    (``rl.evaluation`` turns the mask into a list of problem ids.)
  """
  s = jnp.asarray(scores, jnp.float32)
  if s.ndim != 2:
    raise ValueError(f"summarize_runs: scores must be [R, P], got shape {s.shape}")
  r = s.shape[0]
  run_means = s.mean(axis=1)
  mean = run_means.mean()
  std = jnp.sqrt(((run_means - mean) ** 2).sum() / (r - 1)) if r > 1 else jnp.zeros((), jnp.float32)
  per_problem = s.mean(axis=0)
  uncertain = (per_problem > low) & (per_problem < high)
  return dict(mean=mean, std=std, run_means=run_means, per_problem=per_problem, uncertain=uncertain,
              num_uncertain=uncertain.sum().astype(jnp.int32))


__all__ = ["pass_at_k", "maj_at_k", "maj_at_k_resampled", "encode_predictions",
           "summarize_runs"]
