"""Every config file: loads, is locked, validates, and sets what its method needs (no JAX work here)."""
import glob
import os

import pytest

from rl import algorithms, config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py"))
               if not os.path.basename(p).startswith("_"))


def get(name, overrides=None):
  return config.from_file(os.path.join(ROOT, "experiments", "configs", f"{name}.py"), overrides)


def test_all_method_configs_exist():
  assert set(NAMES) >= {"default", "tiny", "grpo", "dr_grpo", "psr", "nsr", "w_reinforce", "positive_only",
                        "negative_only", "prorl", "dash", "rlr", "osi", "sft", "gspo", "cispo"}


@pytest.mark.parametrize("name", NAMES)
def test_config_is_valid_and_locked(name):
  c = get(name)
  config.validate(c)
  for key in ("seed", "total_steps", "checkpoint_every", "eval_every"):
    assert key in c
  with pytest.raises(AttributeError):
    c.no_such_key = 1
  with pytest.raises(AttributeError):
    c.loss.no_such_key = 1


def test_method_specific_settings():
  assert get("w_reinforce").algo == "w_reinforce" and get("w_reinforce").adv.lam == 0.1
  p = get("prorl")
  assert (p.loss.clip_low, p.loss.clip_high, p.loss.kl_kind) == (0.2, 0.4, "k3") and p.loss.kl_coef > 0
  assert p.filters.dynamic_sampling and (p.ref.reset_every > 0 or p.ref.reset_patience > 0)
  d = get("dash")
  assert d.filters.grad_filter_tau > 0 and d.train.minibatches > 1 and d.train.micro_batch_size > 0
  assert not get("dr_grpo").adv.normalize_std and get("dr_grpo").loss.agg == "seq-mean-token-sum-norm"
  assert get("rlr").shaping.relative_length and get("osi").osi.enabled and get("sft").algo == "sft"
  for name, algo in [("psr", "psr"), ("nsr", "nsr"), ("positive_only", "positive_only"),
                     ("negative_only", "negative_only"), ("grpo", "grpo")]:
    assert get(name).algo == algo
  assert get("default").model.source == "gguf" and get("default").task.name == "reasoning_gym"
  assert p.rollout.temperature == 1.2   # ProRL samples at 1.2 (the trainer's log-probs follow)
  assert get("gspo").loss.loss_type == "gspo" and get("cispo").loss.loss_type == "cispo"
  for name in ("psr", "nsr", "w_reinforce"):
    assert get(name).loss.loss_type == "reinforce"


@pytest.mark.parametrize("algo", sorted(algorithms.REGISTRY))
def test_base_applies_the_algorithm_settings_and_validate_rejects_a_contradiction(algo):
  c = config.validate(config.base(algo))
  for key, value in algorithms.REGISTRY[algo].settings.items():
    node = c
    *path, last = key.split(".")
    for k in path:
      node = node[k]
    assert node[last] == value
    node[last] = (not value) if isinstance(value, bool) else next(v for v in config.CHOICES[key] if v != value)
    with pytest.raises(ValueError, match=rf"config\.{key}=.*algo='{algo}'"):
      config.validate(c)
    node[last] = value


def test_from_file_overrides_and_errors(tmp_path):
  c = get("grpo", {"total_steps": 5, "loss.kl_coef": 0.0})
  assert c.total_steps == 5
  with pytest.raises(ValueError, match=r"config\.loss\.nonexistent"):
    get("grpo", {"loss.nonexistent": 1})
  with pytest.raises(ValueError, match=r"config\.rollout\.top_p"):
    get("grpo", {"rollout.top_p": 0.0})
  with pytest.raises(ValueError, match="not found"):
    config.from_file(str(tmp_path / "nope.py"))


def test_tiny_overrides_shrink_any_config():
  c = config.tiny_overrides(get("default"))
  assert c.model.source == "tiny_llama" and c.task.name.startswith("toy_")
  config.validate(c)


@pytest.mark.parametrize("key, value, match", [
    ("loss.agg", "mean", r"config\.loss\.agg"), ("optim.schedule", "step", r"config\.optim\.schedule"),
    ("rollout.group_size", 0, r"config\.rollout\.group_size"), ("loss.kl_coef", 0.1, r"config\.loss\.kl_coef"),
    ("train.micro_batch_size", 7, r"config\.train\.micro_batch_size")])
def test_validate_names_the_bad_key(key, value, match):
  c = get("grpo")
  node = c
  *path, last = key.split(".")
  for p in path:
    node = node[p]
  node[last] = value
  with pytest.raises(ValueError, match=match):
    config.validate(c)
