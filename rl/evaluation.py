"""Evaluation summaries the trainer calls after sampling n completions per eval problem and scoring them.

Host-side helpers over the jit-able estimators of ``rl.metrics``: they take NumPy/JAX arrays (or lists of
answer strings), return plain Python floats / lists (JSON-ready for metrics.jsonl), and write a pass@k plot.

    res = evaluate_runs(correct_runs, preds_runs, problem_ids=ids)   # correct_runs: bool [R, P, n]
    logger.write(step, flat_metrics(res, prefix="eval/"))
    plot_pass_at_k({"step 100": res}, workdir / "pass_at_k.png")
"""
import json
import math
import os

import jax.numpy as jnp
import numpy as np

from rl import metrics


def default_ks(n):
  """k = 1, 2, 4, ..., up to n, plus n itself when n is not a power of two.  Returns list[int]."""
  if n < 1:
    raise ValueError(f"default_ks: need n >= 1 samples per problem, got {n}")
  ks = [1 << i for i in range(int(math.log2(n)) + 1)]
  return ks if ks[-1] == n else ks + [n]


def _as_pred_ids(preds):
  if preds is None:
    return None
  if isinstance(preds, (list, tuple)):
    return metrics.encode_predictions(preds)
  return np.asarray(preds)


def evaluate_samples(correct, preds=None, *, ks=None):
  """pass@k (and maj@k) of one evaluation run.

  Args:
    correct: bool [P, n] correctness of sample j of problem i.
    preds: None, int [P, n] answer ids (-1 = no answer), or P lists of n answer strings (None = no answer);
      needed for maj@k.
    ks: list of k (default ``default_ks(n)``), each 1 <= k <= n.
  Returns:
    dict(n=int, num_problems=int, ks=list[int], accuracy=float (mean correctness = pass@1),
         pass_at_k={k: float} (mean over problems of the unbiased estimator),
         maj_at_k={k: float} (first-k majority vote, only with preds),
         per_problem_acc=list[float] [P]).
  """
  correct = np.asarray(correct).astype(bool)
  if correct.ndim != 2:
    raise ValueError(f"evaluate_samples: correct must be [num_problems, n], got shape {correct.shape}")
  p, n = correct.shape
  ks = default_ks(n) if ks is None else [int(k) for k in ks]
  if any(not 1 <= k <= n for k in ks):
    raise ValueError(f"evaluate_samples: every k must satisfy 1 <= k <= n={n}, got ks={ks}")
  c = correct.sum(axis=1)
  table = np.asarray(metrics.pass_at_k(n, jnp.asarray(c)[:, None], jnp.asarray(ks)[None, :]))  # [P, K]
  out = dict(n=n, num_problems=p, ks=ks, accuracy=float(correct.mean()),
             pass_at_k={k: float(v) for k, v in zip(ks, table.mean(axis=0))},
             per_problem_acc=[float(x) for x in correct.mean(axis=1)])
  ids = _as_pred_ids(preds)
  if ids is not None:
    if ids.shape != correct.shape:
      raise ValueError(f"evaluate_samples: preds shape {ids.shape} != correct shape {correct.shape}")
    out["maj_at_k"] = {k: float(np.mean(metrics.maj_at_k(ids, correct, k))) for k in ks}
  return out


def evaluate_runs(correct_runs, preds_runs=None, *, ks=None, low=0.0, high=1.0, problem_ids=None):
  """Mean +- std over R evaluation runs, and the uncertain problems (instability analysis).

  Args:
    correct_runs: bool [R, P, n] (R runs of n samples for the same P problems); [P, n] is taken as R = 1.
    preds_runs: None or, per run, what ``evaluate_samples`` accepts as preds.
    ks: as in ``evaluate_samples``.
    low, high: a problem is uncertain if low < its accuracy (over all R * n samples) < high, strictly.
    problem_ids: optional list of P ids used in the uncertain list (default: indices).
  Returns:
    dict(runs=R, n, num_problems, ks,
         pass_at_k={k: mean over runs}, pass_at_k_std={k: sample std (ddof=1; 0 if R == 1)},
         maj_at_k / maj_at_k_std (with preds), accuracy, accuracy_std,
         per_problem_acc=list[float] [P], uncertain=list of ids, num_uncertain=int, low, high).
  """
  correct_runs = np.asarray(correct_runs).astype(bool)
  if correct_runs.ndim == 2:
    correct_runs = correct_runs[None]
    preds_runs = None if preds_runs is None else [preds_runs]
  if correct_runs.ndim != 3:
    raise ValueError(f"evaluate_runs: correct_runs must be [R, P, n], got shape {correct_runs.shape}")
  r, p, n = correct_runs.shape
  runs = [evaluate_samples(correct_runs[i], None if preds_runs is None else preds_runs[i], ks=ks)
          for i in range(r)]
  ks = runs[0]["ks"]
  summary = metrics.summarize_runs(correct_runs.mean(axis=2), low=low, high=high)

  def mean_std(key):
    vals = np.array([[run[key][k] for k in ks] for run in runs])  # [R, K]
    std = vals.std(axis=0, ddof=1) if r > 1 else np.zeros(len(ks))
    return {k: float(v) for k, v in zip(ks, vals.mean(0))}, {k: float(v) for k, v in zip(ks, std)}

  ids = list(range(p)) if problem_ids is None else list(problem_ids)
  if len(ids) != p:
    raise ValueError(f"evaluate_runs: {len(ids)} problem_ids for {p} problems")
  out = dict(runs=r, n=n, num_problems=p, ks=ks, low=low, high=high,
             accuracy=float(summary["mean"]), accuracy_std=float(summary["std"]),
             per_problem_acc=[float(x) for x in np.asarray(summary["per_problem"])],
             uncertain=[ids[i] for i in np.flatnonzero(np.asarray(summary["uncertain"]))],
             num_uncertain=int(summary["num_uncertain"]))
  out["pass_at_k"], out["pass_at_k_std"] = mean_std("pass_at_k")
  if "maj_at_k" in runs[0]:
    out["maj_at_k"], out["maj_at_k_std"] = mean_std("maj_at_k")
  return out


def flat_metrics(result, prefix="eval/"):
  """Scalars of an ``evaluate_samples`` / ``evaluate_runs`` result as {name: float}, for metrics.jsonl."""
  out = {f"{prefix}accuracy": result["accuracy"]}
  for name in ("pass_at_k", "maj_at_k"):
    short = name.split("_")[0] + "@"  # pass@ / maj@
    for k, v in result.get(name, {}).items():
      out[f"{prefix}{short}{k}"] = v
    for k, v in result.get(name + "_std", {}).items():
      out[f"{prefix}{short}{k}_std"] = v
  if "accuracy_std" in result:
    out[f"{prefix}accuracy_std"] = result["accuracy_std"]
    out[f"{prefix}uncertain_problems"] = int(result["num_uncertain"])
  return out


def markdown_table(result):
  """One Markdown table: k | pass@k (+- std) | maj@k (+- std)."""
  has_maj = "maj_at_k" in result
  rows = ["| k | pass@k |" + (" maj@k |" if has_maj else ""), "|---|---|" + ("---|" if has_maj else "")]
  for k in result["ks"]:
    cell = lambda name: (f"{result[name][k]:.4f}" + (f" ± {result[name + '_std'][k]:.4f}"
                                                     if name + "_std" in result else ""))
    rows.append(f"| {k} | {cell('pass_at_k')} |" + (f" {cell('maj_at_k')} |" if has_maj else ""))
  return "\n".join(rows)


def plot_pass_at_k(results, path, *, title="pass@k", show_maj=True):
  """Write a PNG of pass@k (and maj@k, dashed) against k (log2 axis), error bars = std over runs.

  Args:
    results: {label: result dict of evaluate_samples / evaluate_runs}, one curve per label.
    path: output .png path (its folder must exist).
  Returns:
    str(path).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for i, (label, res) in enumerate(results.items()):
    color = f"C{i % 10}"
    ks = res["ks"]
    yerr = [res["pass_at_k_std"][k] for k in ks] if "pass_at_k_std" in res else None
    ax.errorbar(ks, [res["pass_at_k"][k] for k in ks], yerr=yerr, marker="o", color=color, capsize=3,
                label=f"{label} pass@k")
    if show_maj and "maj_at_k" in res:
      yerr = [res["maj_at_k_std"][k] for k in ks] if "maj_at_k_std" in res else None
      ax.errorbar(ks, [res["maj_at_k"][k] for k in ks], yerr=yerr, marker="s", ls="--", color=color, capsize=3,
                  label=f"{label} maj@k")
  ax.set_xscale("log", base=2)
  all_ks = sorted({k for res in results.values() for k in res["ks"]})
  ax.set_xticks(all_ks, [str(k) for k in all_ks])
  ax.set_ylim(0, 1.02)
  return _finish(fig, ax, path, "k", "accuracy", title)


def plot_pass_at_k_curves(evals, ks, path, *, max_curves=6, prefix="eval/"):
  """The trainer's entry point: one curve per evaluation step from flat metric rows.

  Args:
    evals: list of dicts with "step" and the keys of ``flat_metrics`` ("eval/pass@{k}", optional
      "eval/pass@{k}_std", "eval/maj@{k}", "eval/maj@{k}_std").
    ks: the k values to plot.  path: output .png.
    max_curves: with more evaluations, plot the first and the last max_curves - 1.
  Returns:
    str(path).
  """
  shown = evals if len(evals) <= max_curves else [evals[0]] + list(evals[-(max_curves - 1):])
  results = {}
  for ev in shown:
    res = {"ks": list(ks)}
    for name, short in (("pass_at_k", "pass@"), ("maj_at_k", "maj@")):
      if all(f"{prefix}{short}{k}" in ev for k in ks):
        res[name] = {k: ev[f"{prefix}{short}{k}"] for k in ks}
        if all(f"{prefix}{short}{k}_std" in ev for k in ks):
          res[name + "_std"] = {k: ev[f"{prefix}{short}{k}_std"] for k in ks}
    if "pass_at_k" not in res:
      raise ValueError(f"plot_pass_at_k_curves: evaluation row of step {ev.get('step')} lacks {prefix}pass@k keys")
    results[f"step {ev.get('step', len(results))}"] = res
  return plot_pass_at_k(results, path, show_maj=len(results) <= 2)


def append_counts(path, step, problem_ids, correct_runs):
  """Writes one JSON row {"step", "n", "runs", "ids", "correct": [R][P] counts} for an evaluation to the JSONL
  file `path`, replacing rows of the same or a later step (a resumed run re-evaluates; nothing is doubled).

  correct_runs: bool [R, P, n]. The counts are enough for pass@k at every k <= n (`pass_at_k_from_counts`).
  """
  correct_runs = np.asarray(correct_runs).astype(bool)
  rows = [r for r in read_counts(path) if r["step"] < step]
  rows.append({"step": int(step), "n": int(correct_runs.shape[2]), "runs": int(correct_runs.shape[0]),
               "ids": [str(i) for i in problem_ids], "correct": correct_runs.sum(axis=2).astype(int).tolist()})
  with open(path + ".tmp", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.replace(path + ".tmp", path)


def read_counts(path):
  """The rows of an `append_counts` file (a missing file = []), oldest first."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def pass_at_k_from_counts(n, counts, ks):
  """Unbiased pass@k averaged over problems from correct counts.  counts: int [..., P] -> f32 [..., K]."""
  c = np.asarray(counts)
  table = np.asarray(metrics.pass_at_k(n, jnp.asarray(c)[..., None], jnp.asarray(ks)))   # [..., P, K]
  return table.mean(axis=-2)


def mean_std(values):
  """float [S, ...] over S seeds -> (mean [...], sample std [...] (ddof=1; 0 for one seed))."""
  v = np.asarray(values, np.float64)
  return v.mean(axis=0), (v.std(axis=0, ddof=1) if v.shape[0] > 1 else np.zeros(v.shape[1:]))


def plot_bands(curves, path, *, xlabel, ylabel, title="", logx=False, ylim=None):
  """A PNG of one line per label with a band of +- std (e.g. pass@k vs k over seeds, entropy over training).

  Args:
    curves: {label: (x [K], mean [K], std [K])}.  path: output .png.  logx: log2 x axis with the x values as ticks.
  Returns:
    str(path).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg   # local: matplotlib is heavy, plots only
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  xs_all = set()
  for i, (label, (x, m, sd)) in enumerate(curves.items()):
    x, m, sd = (np.asarray(a, np.float64) for a in (x, m, sd))
    ax.plot(x, m, marker="o" if len(x) <= 12 else None, ms=3, color=f"C{i % 10}", label=label)
    ax.fill_between(x, m - sd, m + sd, color=f"C{i % 10}", alpha=0.2)
    xs_all |= set(x.tolist())
  if logx:
    ax.set_xscale("log", base=2)
    ticks = sorted(xs_all)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
  if ylim:
    ax.set_ylim(*ylim)
  return _finish(fig, ax, path, xlabel, ylabel, title)


def _finish(fig, ax, path, xlabel, ylabel, title):
  """Labels, grid and legend of a one-axes figure, written as PNG to `path` -> str(path)."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(str(path), format="png")
  return str(path)


__all__ = ["default_ks", "evaluate_samples", "evaluate_runs", "flat_metrics", "markdown_table", "plot_pass_at_k",
           "plot_pass_at_k_curves", "append_counts", "read_counts", "pass_at_k_from_counts", "mean_std", "plot_bands"]
