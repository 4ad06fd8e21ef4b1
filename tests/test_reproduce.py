"""experiments/reproduce.py end to end on a reduced fast study (outputs, resume), and the pieces it adds to the
trainer: the toy_sum task, config.model.init_from, chunked evaluation sampling with entropy / length statistics,
per-problem correct counts and pass@k from them."""
import importlib.util
import json
import math
import os

import numpy as np
import pytest

from rl import config, evaluation, tasks, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_reproduce():
  spec = importlib.util.spec_from_file_location("reproduce", os.path.join(ROOT, "experiments", "reproduce.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ---------------------------------------------------------------------------------------------- pieces

def test_toy_sum_task():
  t = tasks.make("toy_sum", max_a=9, max_b=9, scratch_frac=0.5, eval_size=20, seed=0)
  assert len(t.train_problems) == 80 and len(t.eval_problems) == 20
  assert not {p.id for p in t.train_problems} & {p.id for p in t.eval_problems}
  for p in t.train_problems + t.eval_problems:
    a, b = map(int, p.question[:-1].split("+"))
    assert p.answer == str(a + b)
    assert p.solution.rsplit("?", 1)[-1] == p.answer          # the gold solution scores as correct
    assert t.score(p.solution, p).correct
  scratch = [p for p in t.train_problems if "?" in p.solution]
  assert 0 < len(scratch) < 80                                  # both lengths present
  p = scratch[0]
  a, b = map(int, p.question[:-1].split("+"))
  assert p.solution == f"{a % 10}+{b % 10}={a % 10 + b % 10}?{a + b}"
  assert not t.score(str(a + b + 1), p).correct and not t.score("", p).correct
  assert t.score(f"1+1=2?{a + b}", p).correct                  # only what follows the last "?" counts
  with pytest.raises(ValueError, match="toy_sum"):
    tasks.make("toy_sum", scratch_frac=2.0)


def test_counts_file_and_pass_at_k_from_counts(tmp_path):
  path = str(tmp_path / "c.jsonl")
  rng = np.random.default_rng(0)
  correct = rng.random((2, 5, 8)) < 0.3                         # [R, P, n]
  evaluation.append_counts(path, 0, list("abcde"), correct)
  evaluation.append_counts(path, 10, list("abcde"), correct[:, :, ::-1])
  evaluation.append_counts(path, 10, list("abcde"), correct)    # a resumed run re-evaluates step 10: replaced
  rows = evaluation.read_counts(path)
  assert [r["step"] for r in rows] == [0, 10] and rows[1]["correct"] == correct.sum(2).tolist()
  # the unbiased estimator re-derived with math.comb, averaged over problems
  counts = correct.sum(2)
  got = evaluation.pass_at_k_from_counts(8, counts, [1, 3, 8])
  want = [[np.mean([1 - math.comb(8 - c, k) / math.comb(8, k) for c in run]) for k in (1, 3, 8)] for run in counts]
  np.testing.assert_allclose(got, want, atol=1e-5)
  m, s = evaluation.mean_std([[1.0, 2.0], [3.0, 6.0]])
  np.testing.assert_allclose(m, [2.0, 4.0]) and np.testing.assert_allclose(s, [np.sqrt(2), np.sqrt(8)])


def _tiny_sum(**kw):
  c = config.base("grpo")
  c.task.name = "toy_sum"
  c.task.kwargs = {"max_a": 9, "max_b": 9, "eval_size": 10}
  c.rollout.max_new_tokens = 12
  c.rollout.prompts_per_step, c.rollout.group_size = 4, 4
  return config.override(c, {"log.samples_printed": 0, "export_hf": False, **kw})


def test_init_from_and_chunked_eval(tmp_path):
  src = trainer.Trainer(_tiny_sum(seed=3), str(tmp_path / "a"))
  from flax import nnx
  import models
  models.save_pretrained(nnx.merge(src.graphdef, src.state["params"]), str(tmp_path / "hf"))
  # init_from: the weights of the saved model, not those of config.seed
  c = _tiny_sum(seed=0, **{"model.init_from": str(tmp_path / "hf"), "eval.n_samples": 12,
                           "eval.samples_per_call": 5, "eval.prompts_per_call": 4})
  t = trainer.Trainer(c, str(tmp_path / "b"))
  for x, y in zip(*(jax_leaves(s.state["params"]) for s in (src, t))):
    np.testing.assert_array_equal(x, y)
  out = t.evaluate(t.state["params"], 0, _NoWriter())
  assert out["eval/n_samples"] == 12 and "eval/pass@12" in out
  assert 0 < out["eval/entropy"] < np.log(17) + 1e-3          # per-token entropy estimate of a 17-token vocabulary
  assert 1 <= out["eval/response_length"] <= 12
  rows = evaluation.read_counts(str(tmp_path / "b" / "eval_counts.jsonl"))
  counts = np.asarray(rows[0]["correct"])
  assert counts.shape == (1, 10) and counts.max() <= 12
  np.testing.assert_allclose(out["eval/accuracy"], counts.sum() / 120, atol=1e-6)
  # a different architecture: one-line error naming the key
  bad = _tiny_sum(**{"model.init_from": str(tmp_path / "hf"), "model.hidden_size": 32})
  with pytest.raises(ValueError, match="config.model.init_from"):
    trainer.Trainer(bad, str(tmp_path / "c"))


def jax_leaves(params):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(params)]


class _NoWriter:
  def image(self, *a, **k):
    pass


# ---------------------------------------------------------------------------------------------- the study

REDUCED = ["--set", "total_steps=2", "--set", "eval_every=2", "--set", "checkpoint_every=2",
           "--set", "eval.n_samples=4", "--set", "task.num_eval=6", "--set", "rollout.prompts_per_step=4",
           "--set", "rollout.group_size=4", "--set", "eval.prompts_per_call=6",
           "--sft_set", "total_steps=3", "--sft_set", "eval.n_samples=2", "--sft_set", "task.num_eval=2"]


def test_reduced_psr_nsr_study_writes_and_resumes(tmp_path, capsys):
  rep = load_reproduce()
  wd = str(tmp_path / "study")
  out = rep.main(["--study", "psr_nsr", "--scale", "fast", "--workdir", wd, "--seeds", "2"] + REDUCED)
  for name in ("results.md", "results.json", "pass_at_k.png", "entropy.png", "response_length.png", "zero_adv.png",
               "eval_pass1.png"):
    assert os.path.getsize(os.path.join(wd, name)) > 0, name
  with open(os.path.join(wd, "results.json")) as f:
    res = json.load(f)
  assert res == json.loads(json.dumps(out))
  assert list(res["arms"]) == ["base", "grpo", "psr", "nsr", "w_reinforce"] and res["ks"] == [1, 2, 4]
  assert len(res["findings"]) == 9 and all(len(f["per_seed"]) == 2 for f in res["findings"])
  # the table's numbers are the runs' own: pass@1 of PSR seed 1 = its last evaluation's eval/pass@1
  with open(os.path.join(wd, "runs", "psr", "seed1", "metrics.jsonl")) as f:
    last = [json.loads(l) for l in f][-1]
  assert last["step"] == 2
  np.testing.assert_allclose(res["arms"]["psr"]["per_seed_pass_at_k"]["1"][1], last["eval/pass@1"], atol=1e-6)
  # CPU s: the runs' steps and evaluations (cpu/step, cpu/eval rows), mean over the seeds
  cpu = []
  for s in (0, 1):
    with open(os.path.join(wd, "runs", "psr", f"seed{s}", "metrics.jsonl")) as f:
      cpu.append(sum(r.get("cpu/step", 0) + r.get("cpu/eval", 0) for r in map(json.loads, f)))
  assert min(cpu) > 0
  np.testing.assert_allclose(res["arms"]["psr"]["cpu_s"][0], np.mean(cpu), rtol=1e-6)
  # every arm starts from the SFT base: the same step-0 evaluation in a seed
  starts = [evaluation.read_counts(os.path.join(wd, "runs", a, "seed0", "eval_counts.jsonl"))[0]["correct"]
            for a in ("grpo", "psr", "nsr")]
  assert starts[0] == starts[1] == starts[2]
  with open(os.path.join(wd, "runs", "nsr", "seed0", "config.json")) as f:
    assert json.load(f)["model"]["init_from"] == os.path.join(wd, "base_sft", "hf")
  table = open(os.path.join(wd, "results.md")).read()
  assert "| psr |" in table and "PSR's pass@n is below NSR's" in table
  capsys.readouterr()

  # resume: an interrupted run (done.json missing) finishes from its checkpoint; finished runs are skipped
  os.remove(os.path.join(wd, "runs", "nsr", "seed1", "done.json"))
  before = open(os.path.join(wd, "runs", "nsr", "seed1", "metrics.jsonl")).read()
  again = rep.main(["--study", "psr_nsr", "--scale", "fast", "--workdir", wd, "--seeds", "2"] + REDUCED)
  err = capsys.readouterr().err
  assert err.count("done, skipped") == 8   # the SFT base + 7 of the 8 runs
  assert "nsr seed 1: training" in err
  assert open(os.path.join(wd, "runs", "nsr", "seed1", "metrics.jsonl")).read() == before
  for arm in res["arms"]:   # the same numbers (wall_s of the resumed run is new; nan == nan here)
    np.testing.assert_equal(again["arms"][arm]["per_seed_pass_at_k"], res["arms"][arm]["per_seed_pass_at_k"])
  np.testing.assert_equal([f["per_seed"] for f in again["findings"]], [f["per_seed"] for f in res["findings"]])
  # a changed config for a finished run: refused, one line
  with pytest.raises(SystemExit, match="different config"):
    rep.main(["--study", "psr_nsr", "--workdir", wd, "--seeds", "1"] + REDUCED + ["--set", "optim.lr=0.5"])
