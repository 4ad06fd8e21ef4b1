"""The training loop on the tiny config: learning, every method config, resets, micro-batching, skips, eval."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl import algorithms, config, outputs, rollout, trainer, update

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["grpo", "dr_grpo", "psr", "nsr", "w_reinforce", "positive_only", "negative_only", "prorl", "dash",
           "rlr", "osi", "sft", "gspo", "cispo", "default"]


def load_config(name, **overrides):
  """experiments/configs/<name>.py shrunk to the tiny model and toy task, then `overrides` (dotted keys)."""
  c = config.tiny_overrides(config.from_file(os.path.join(ROOT, "experiments", "configs", f"{name}.py")))
  return config.override(c, overrides)


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def train_rows(workdir):
  return [r for r in rows(workdir) if "acc/mean" in r]


def test_tiny_reward_rises(tmp_path):
  c = load_config("tiny", total_steps=30, eval_at_start=True, checkpoint_every=0)
  out = trainer.train(c, str(tmp_path))
  acc = [r["acc/mean"] for r in train_rows(tmp_path)]
  assert len(acc) == 30
  first, last = np.mean(acc[:5]), np.mean(acc[-10:])
  assert last > first + 0.15, (first, last, acc)
  assert out["last_eval"]["eval/pass@1"] > out["first_eval"]["eval/pass@1"] + 0.1
  assert os.path.exists(tmp_path / "pass_at_k.png")
  r = rows(tmp_path)
  assert r[0]["step"] == 0 and "eval/pass@8" in r[0] and "eval/maj@4" in r[0]
  # pass@k is non-decreasing in k; the uncertain count is within [0, #problems]
  for k1, k2 in [(1, 2), (2, 4), (4, 8)]:
    assert r[0][f"eval/pass@{k2}"] >= r[0][f"eval/pass@{k1}"] - 1e-6
  assert 0 <= r[0]["eval/uncertain_problems"] <= r[0]["eval/num_problems"]
  for key in ["reward/mean", "acc/mean", "response_length/mean", "response_length/max", "response/truncated_frac",
              "adv/zero_frac", "dynamic/dropped_group_frac", "grad_filter/dropped_frac", "clip_frac/low",
              "clip_frac/high", "kl/approx_old", "kl/ref", "entropy", "grad_norm", "lr", "sampler_logp_diff",
              "time/generate", "time/reward", "time/reference", "time/update", "tokens_per_s", "reward/timeouts"]:
    assert key in r[1], key
  # CPU seconds of the process: a step's include its generate and update parts; the evaluation's are there too
  for x in train_rows(tmp_path):
    assert 0 <= x["cpu/generate"] and 0 < x["cpu/update"] and x["cpu/generate"] + x["cpu/update"] <= x["cpu/step"] + 1e-6
  assert r[0]["cpu/eval"] > 0
  # the trainer's forward reproduces the sampler's (temperature 1) log-probs
  assert all(x["sampler_logp_diff"] < 1e-4 for x in train_rows(tmp_path))
  assert all(x["reward/timeouts"] == 0 for x in train_rows(tmp_path))   # the toy scorer never hangs
  assert all(abs(x["mismatch/is_ratio_max"] - 1) < 1e-3 for x in train_rows(tmp_path))
  assert os.listdir(tmp_path / "tb")


@pytest.mark.parametrize("name", METHODS)
def test_method_config_runs(name, tmp_path):
  c = load_config(name, total_steps=2, eval_at_start=False, checkpoint_every=0)
  if name == "default":   # the main job's model and task are replaced by tiny ones: use tiny's batch shapes too
    c.rollout.prompts_per_step, c.rollout.group_size, c.train.micro_batch_size = 8, 8, 0
  if name == "dash":      # keep the structure (one sampler call, 4 updates of 2 accumulated micro-batches), smaller
    c.rollout.prompts_per_step, c.train.micro_batch_size = 8, 8
  if name == "prorl":
    c.ref.reset_every = 1
  trainer.train(c, str(tmp_path))
  rs = train_rows(tmp_path)
  assert [r["step"] for r in rs] == [1, 2]
  for r in rs:
    assert math.isfinite(r["loss/total"]) and r["updates/skipped"] == 0
    assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 or r["adv/kept_frac"] == 0
  r = rs[0]
  if name == "psr":     # only correct samples are kept
    assert r["adv/kept_frac"] == pytest.approx(r["acc/mean"])
  if name == "nsr":
    assert r["adv/kept_frac"] == pytest.approx(1 - r["acc/mean"])
  if name in ("positive_only", "negative_only"):
    assert r["adv/kept_frac"] <= 1 - r["adv/zero_frac"] + 1e-6
  if name == "dash":
    assert 0 < r["grad_filter/dropped_frac"] <= 1
    assert r["lr"] == c.optim.lr and rs[1]["lr"] == c.optim.lr
  if name == "prorl":   # samples at temperature 1.2: the trainer's log-probs are those of the same distribution
    assert c.rollout.temperature == 1.2 and all(x["sampler_logp_diff"] < 1e-4 for x in rs)
  if name == "prorl":   # reset every step: step 2 starts with reference == policy, so KL to it is exactly 0
    assert rs[0]["ref/reset"] == 1 and rs[0]["ref/source_step"] == 1
    assert rs[1]["kl/ref"] == pytest.approx(0.0, abs=1e-7)
    assert os.path.isdir(tmp_path / "ref_snapshots" / "step_1")
    assert "dynamic/extra_draws" in r and r["dynamic/unfilled_group_frac"] <= r["dynamic/dropped_group_frac"]
  if name == "osi":
    assert r["osi/injected"] >= 1 and os.path.exists(tmp_path / "solutions.jsonl")
  if name == "sft":
    assert r["acc/mean"] == 1.0 and r["sampler_logp_diff"] == 0.0


@pytest.fixture(scope="module")
def tiny_trainer(tmp_path_factory):
  c = load_config("tiny", total_steps=1)
  return trainer.Trainer(c, str(tmp_path_factory.mktemp("unit")))


def _arrays(t, seed=0):
  """A real rollout batch from the tiny trainer as the update's input arrays [N, ...]."""
  b, _ = rollout.collect(t.ctx, t.state["params"], t.it, jax.random.PRNGKey(seed))
  b, _ = algorithms.postprocess(t.c, b)
  arrays, _ = t.logprobs(t.state, b)
  arrays.pop("live", None)
  # one update per step: the trainer leaves old_logp to the update (fused); off-policy here so the clips matter
  arrays["old_logp"] = update.forward(t.logp_fn, t.state["params"], arrays, 0, t.mesh) - 0.05
  return arrays


def test_micro_batching_does_not_change_the_update(tiny_trainer, agg="seq-mean-token-mean"):
  t = tiny_trainer
  arrays = _arrays(t)
  arrays["adv"] = np.linspace(-1, 1, len(arrays["adv"])).astype(np.float32)   # all rows carry signal
  arrays["mask"][::3, -1] = False   # ragged lengths
  n = len(arrays["adv"])
  # plain SGD with lr 1: the parameter change IS the accumulated gradient
  static = dict(update.loss_static(t.c.loss), agg=agg)
  upd = update.make_update_fn(t.graphdef, optax.sgd(1.0), static)
  opt = optax.sgd(1.0).init(t.state["params"])
  outs = []
  for micro in (n, n // 4):
    mb = {k: v.reshape(n // micro, micro, *v.shape[1:]) for k, v in arrays.items()}
    outs.append(upd(t.state["params"], opt, update.put(mb, t.mesh, axis=1), t.hp))
  (p1, _, m1), (p2, _, m2) = outs
  assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-5, abs=1e-7)
  assert float(m1["grad_norm"]) == pytest.approx(float(m2["grad_norm"]), rel=1e-4)
  d = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), p1, p2)
  assert max(jax.tree.leaves(d)) < 1e-6


def test_non_finite_loss_skips_the_update(tiny_trainer):
  t = tiny_trainer
  arrays = _arrays(t, seed=1)
  arrays["adv"] = np.full(len(arrays["adv"]), np.nan, np.float32)
  mb = {k: v[None] for k, v in arrays.items()}
  copy = lambda tree: jax.tree.map(jnp.copy, tree)   # the trainer's update donates its params/opt_state inputs
  p, o, m = t.update(copy(t.state["params"]), copy(t.state["opt_state"]), update.put(mb, t.mesh, axis=1), t.hp)
  assert float(m["skipped"]) == 1.0
  same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p, t.state["params"])
  assert all(jax.tree.leaves(same))
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), o, t.state["opt_state"])))


def test_validate_names_the_key():
  c = load_config("grpo")
  c.algo = "ppo2"
  with pytest.raises(ValueError, match=r"config\.algo='ppo2'"):
    config.validate(c)
  c = load_config("grpo")
  c.train.minibatches = 3
  with pytest.raises(ValueError, match=r"config\.train\.minibatches"):
    config.validate(c)


def test_update_applies_the_mismatch_correction_to_the_sampler_logprobs(tiny_trainer):
  """The Batch's `logprobs` (the sampler's) reach policy_loss as sampler_logp: with token-level MIS and a sampler
  that is e times less likely than the trainer on every token (ratio e > threshold 2), every weight is 0."""
  t = tiny_trainer
  arrays = _arrays(t, seed=2)
  arrays["adv"] = np.linspace(-1, 1, len(arrays["adv"])).astype(np.float32)
  arrays["logprobs"] = arrays["old_logp"] - 1.0
  mb = update.put({k: v[None] for k, v in arrays.items()}, t.mesh, axis=1)
  opt = optax.sgd(1.0).init(t.state["params"])
  mets = {}
  for level in ("none", "token"):
    static = dict(update.loss_static(t.c.loss), is_level=level, is_mode="mask")
    _, _, mets[level] = update.make_update_fn(t.graphdef, optax.sgd(1.0), static)(t.state["params"], opt, mb, t.hp)
  assert float(mets["none"]["grad_norm"]) > 0 and float(mets["token"]["grad_norm"]) == 0.0
  for m in mets.values():   # the metrics are computed whatever the level
    assert float(m["is_ratio_mean"]) == pytest.approx(np.e, rel=1e-4) and float(m["is_clip_frac"]) == 1.0


def test_only_process_0_writes_the_evaluation_files(tiny_trainer, monkeypatch):
  """Every process evaluates (the sampler is a collective), only process 0 writes: a second writer of
  eval_counts.jsonl replaced it through the same .tmp name as process 0 (a race that failed a 2-process run)."""
  t = tiny_trainer
  counts = os.path.join(t.workdir, "eval_counts.jsonl")
  for main in (False, True):
    monkeypatch.setattr(outputs, "is_main", lambda: main)
    out = t.evaluate(t.state["params"], 0, outputs.MetricsWriter(t.workdir, 0, t.c))
    assert 0.0 <= out["eval/pass@1"] <= 1.0
    assert os.path.exists(counts) == main and os.path.exists(os.path.join(t.workdir, "samples.jsonl")) == main
