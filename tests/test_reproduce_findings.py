"""experiments/reproduce.py: the study logic without training (fake runs): --share_base_eval (the base evaluated
once per seed, by the first arm) and --arms subsets (the findings whose arms were all trained), checked against the
findings re-derived from the runs' files with math.comb; and the one fast-scale finding that held with margin on
every SFT base tried, on a CI-sized variant of the fast psr_nsr study."""
import importlib.util
import json
import math
import os

import numpy as np

from rl import evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, P, STEPS = 8, 6, 4   # samples per problem, held-out problems, training steps of a fake run


def load_reproduce():
  spec = importlib.util.spec_from_file_location("reproduce", os.path.join(ROOT, "experiments", "reproduce.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def fake_counts(seed, arm):
  """Correct samples per problem [P]: the base's depends on the seed only, a trained arm's on (arm, seed)."""
  rng = np.random.default_rng([seed, sum(map(ord, arm))])
  return rng.integers(0, N + 1, size=P)


def fake_run(seen):
  """A stand-in for run_once: writes what a finished trainer run writes (eval_counts.jsonl with the step-0
  evaluation only when c.eval_at_start, metrics.jsonl, done.json) and records the configs it was given."""
  def run_once(c, workdir, what):
    arm = workdir.rstrip("/").split(os.sep)[-2]
    seen.append((arm, c.seed, c.eval_at_start))
    os.makedirs(workdir, exist_ok=True)
    path, ids = os.path.join(workdir, "eval_counts.jsonl"), [f"q{i}" for i in range(P)]
    rows = [{"step": s, "time/step": 0.5, "adv/zero_frac": 0.25, "entropy": 1.0} for s in range(1, STEPS + 1)]
    for step, who in ([(0, "base")] if c.eval_at_start else []) + [(STEPS, arm)]:
      counts = fake_counts(c.seed, who)
      evaluation.append_counts(path, step, ids, np.arange(N)[None, None, :] < counts[None, :, None])
      row = {"step": step, "eval/pass@1": float(counts.mean() / N), "eval/entropy": entropy(c.seed, who),
             "eval/response_length": 5.0, "eval/response_length_correct": 4.0}
      rows = [row] + rows if step == 0 else rows[:-1] + [{**rows[-1], **row}]
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(workdir, "done.json"), "w") as f:
      json.dump({"config": "fake", "wall_s": 1.0, "finished": "now"}, f)
  return run_once


def entropy(seed, who):
  return {"base": 0.5, "psr": 0.2, "nsr": 0.6, "grpo": 0.3, "w_reinforce": 0.4}[who] + 0.01 * seed


def pass_at_k(counts, k, n=N):
  return float(np.mean([1.0 - math.comb(n - c, k) / math.comb(n, k) for c in counts]))


def test_share_base_eval_and_arm_subset(tmp_path, monkeypatch):
  rep = load_reproduce()
  seen = []
  monkeypatch.setattr(rep, "run_once", fake_run(seen))
  monkeypatch.setattr(rep, "make_base", lambda *a: "")
  wd = str(tmp_path / "study")
  res = rep.main(["--study", "psr_nsr", "--scale", "fast", "--workdir", wd, "--seeds", "2", "--arms", "psr,nsr",
                  "--share_base_eval"])
  # only the seed's first arm evaluates the base; seed-major order
  assert seen == [("psr", 0, True), ("nsr", 0, False), ("psr", 1, True), ("nsr", 1, False)]
  assert list(res["arms"]) == ["base", "psr", "nsr"] and res["ks"] == [1, 2, 4, 8]
  want = {   # re-derived per seed from the fake counts and entropies
      "PSR raises pass@1 over the base": lambda s: pass_at_k(fake_counts(s, "psr"), 1) - pass_at_k(fake_counts(s, "base"), 1),
      "PSR lowers pass@n below the base": lambda s: pass_at_k(fake_counts(s, "base"), N) - pass_at_k(fake_counts(s, "psr"), N),
      "NSR keeps or raises pass@n (vs base)": lambda s: pass_at_k(fake_counts(s, "nsr"), N) - pass_at_k(fake_counts(s, "base"), N),
      "NSR raises pass@1 over the base": lambda s: pass_at_k(fake_counts(s, "nsr"), 1) - pass_at_k(fake_counts(s, "base"), 1),
      "PSR's pass@n is below NSR's": lambda s: pass_at_k(fake_counts(s, "nsr"), N) - pass_at_k(fake_counts(s, "psr"), N),
      "NSR keeps the entropy above PSR's": lambda s: entropy(s, "nsr") - entropy(s, "psr"),
  }
  got = {f["finding"]: f for f in res["findings"]}
  assert list(got) == list(want)   # the GRPO and W-REINFORCE claims need arms that were not trained
  for name, fn in want.items():
    np.testing.assert_allclose(got[name]["per_seed"], [fn(0), fn(1)], atol=1e-5, err_msg=name)
    assert got[name]["holds_seeds"] == sum(v > 0 if "keeps or" not in name else v >= 0
                                           for v in got[name]["per_seed"])
  np.testing.assert_allclose(res["arms"]["base"]["per_seed_pass_at_k"]["1"],
                             [pass_at_k(fake_counts(s, "base"), 1) for s in (0, 1)], atol=1e-6)
  # the whole study (no sharing: every arm evaluates step 0) reports all 9 claims
  seen.clear()
  res = rep.main(["--study", "psr_nsr", "--scale", "fast", "--workdir", wd, "--seeds", "1"])
  assert [a for a, *_ in seen] == ["grpo", "psr", "nsr", "w_reinforce"] and all(e for *_, e in seen)
  assert len(res["findings"]) == 9


# ---------------------------------------------------------------------------------------------- CI-sized study

# The fast scale's own SFT base and arm budget (60 steps of 16 prompts x 8 samples), restricted to one seed and the
# PSR / NSR arms, the base evaluated once, no mid-run evaluation, all 200 held-out problems x 128 samples
# (159 CPU-seconds: 287 s wall at load 8-10). Trials (docs/reproduce.md, "CI variant"): over 3 SFT bases x 3 arm seeds, pass@128(base) -
# pass@128(PSR) was +0.095 .. +0.82 (9/9); PSR's pass@1 gain and NSR's entropy above PSR's failed on the weaker
# bases (SFT seed 1: base pass@1 0.11-0.14), so they are not asserted.
CI_VARIANT = ["--study", "psr_nsr", "--scale", "fast", "--arms", "psr,nsr", "--seeds", "1", "--share_base_eval",
              "--set", "eval_every=60", "--set", "checkpoint_every=60", "--set", "task.num_eval=200"]
PASS_N_MARGIN = 0.03   # about a third of the smallest measured margin; one problem of 200 moves pass@128 by 0.005


def test_fast_psr_lowers_pass_at_n(tmp_path):
  wd = str(tmp_path / "study")
  res = load_reproduce().main(CI_VARIANT + ["--workdir", wd])
  assert list(res["arms"]) == ["base", "psr", "nsr"] and res["n"] == 128 and res["num_problems"] == 200
  rows = evaluation.read_counts(os.path.join(wd, "runs", "psr", "seed0", "eval_counts.jsonl"))
  assert [r["step"] for r in rows] == [0, 60]
  base, psr = (np.asarray(r["correct"])[0] for r in rows)
  drop = pass_at_k(base, 128, n=128) - pass_at_k(psr, 128, n=128)
  got = {f["finding"]: f["per_seed"][0] for f in res["findings"]}
  np.testing.assert_allclose(got["PSR lowers pass@n below the base"], drop, atol=1e-5)
  assert drop > PASS_N_MARGIN, (drop, "problems solved at least once in 128 samples: base", int((base > 0).sum()),
                                "PSR", int((psr > 0).sum()))
