"""rl/evaluation.py: numbers against a NumPy/math.comb reference, and the pass@k plot is a valid PNG."""
from collections import Counter
from math import comb

import numpy as np
import pytest

from rl import evaluation as E


def np_pass(n, c, k):
  return 1.0 - comb(n - c, k) / comb(n, k)


def np_maj_first_k(answers, gold, k):
  cnt = Counter(a for a in answers[:k] if a is not None)
  if not cnt:
    return 0.0
  top = max(cnt.values())
  return np.mean([a == gold for a, v in cnt.items() if v == top])


@pytest.fixture(scope="module")
def runs():
  rng = np.random.default_rng(0)
  R, P, n = 3, 12, 8
  gold = [str(i) for i in range(P)]
  difficulty = rng.uniform(0, 1, size=P)
  difficulty[0], difficulty[1] = 1.0, 0.0  # always right / always wrong
  answers = [[[gold[p] if rng.uniform() < difficulty[p] else rng.choice(["x", "y", None]) for _ in range(n)]
              for p in range(P)] for _ in range(R)]
  correct = np.array([[[a == gold[p] for a in answers[r][p]] for p in range(P)] for r in range(R)])
  return answers, correct, gold


def test_default_ks():
  assert E.default_ks(1) == [1]
  assert E.default_ks(8) == [1, 2, 4, 8]
  assert E.default_ks(12) == [1, 2, 4, 8, 12]


def test_evaluate_samples_matches_reference(runs):
  answers, correct, gold = runs
  res = E.evaluate_samples(correct[0], answers[0])
  assert res["ks"] == [1, 2, 4, 8]
  for k in res["ks"]:
    want = np.mean([np_pass(8, int(c), k) for c in correct[0].sum(1)])
    assert res["pass_at_k"][k] == pytest.approx(want, rel=1e-5)
    want_maj = np.mean([np_maj_first_k(answers[0][p], gold[p], k) for p in range(12)])
    assert res["maj_at_k"][k] == pytest.approx(want_maj, rel=1e-6)
  assert res["pass_at_k"][1] == pytest.approx(correct[0].mean(), rel=1e-5)


def test_evaluate_runs_mean_std_and_uncertain(runs, tmp_path):
  answers, correct, gold = runs
  res = E.evaluate_runs(correct, answers, problem_ids=[f"p{i}" for i in range(12)])
  per_run = [[np.mean([np_pass(8, int(c), k) for c in correct[r].sum(1)]) for k in (1, 2, 4, 8)] for r in range(3)]
  per_run = np.array(per_run)
  for j, k in enumerate((1, 2, 4, 8)):
    assert res["pass_at_k"][k] == pytest.approx(per_run[:, j].mean(), rel=1e-5)
    assert res["pass_at_k_std"][k] == pytest.approx(per_run[:, j].std(ddof=1), rel=1e-4, abs=1e-7)
  acc = correct.mean(axis=(0, 2))
  assert res["uncertain"] == [f"p{i}" for i in range(12) if 0 < acc[i] < 1]
  assert "p0" not in res["uncertain"] and "p1" not in res["uncertain"]
  assert res["num_uncertain"] == len(res["uncertain"])
  assert res["accuracy_std"] == pytest.approx(correct.mean(axis=(1, 2)).std(ddof=1), rel=1e-4)
  flat = E.flat_metrics(res)
  assert flat["eval/pass@8"] == res["pass_at_k"][8] and flat["eval/maj@4_std"] == res["maj_at_k_std"][4]
  assert flat["eval/uncertain_problems"] == res["num_uncertain"]
  assert "| 8 |" in E.markdown_table(res)

  path = E.plot_pass_at_k({"run": res, "single": E.evaluate_samples(correct[0])}, tmp_path / "pass_at_k.png")
  data = open(path, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  import matplotlib.image
  img = matplotlib.image.imread(path)
  assert img.shape[0] == 400 and img.shape[1] == 600 and img.std() > 0  # non-blank 6x4 in at 100 dpi

  # the trainer's form: flat rows, one per evaluation step
  rows = [dict(step=s, **E.flat_metrics(E.evaluate_runs(correct[:, :, :4], problem_ids=None))) for s in range(8)]
  path2 = E.plot_pass_at_k_curves(rows, [1, 2, 4], tmp_path / "curves.png")
  assert open(path2, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="lacks eval/pass@k"):
    E.plot_pass_at_k_curves([{"step": 1}], [1], tmp_path / "x.png")


def test_bad_input_raises():
  with pytest.raises(ValueError, match="1 <= k <= n=4"):
    E.evaluate_samples(np.ones((2, 4), bool), ks=[8])
  with pytest.raises(ValueError, match="num_problems, n"):
    E.evaluate_samples(np.ones(4, bool))
