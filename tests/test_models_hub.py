"""models.load_pretrained("org/name"): Hub repo ids resolved offline through a Hub cache laid out by the test."""

import os

import numpy as np
import pytest
import tokenizers
import torch
import transformers

import models

REPO = "Qwen/Qwen2.5-0.5B-Instruct"          # only the name is real: the weights are a tiny random Qwen2
REV_OLD, REV_NEW = "a" * 40, "b" * 40          # two commits; refs/main points at the newer one


def _tiny_qwen2(seed):
  cfg = transformers.Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 attn_implementation="eager")
  torch.manual_seed(seed)
  return transformers.Qwen2ForCausalLM(cfg).eval()


def _tiny_tokenizer():
  vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + [chr(ord("a") + i) for i in range(26)])}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  """A Hub cache holding REPO at two commits (HF layout: models--org--name/{refs/main, snapshots/<commit>/})."""
  repo_dir = tmp_path / ("models--" + REPO.replace("/", "--"))
  hf = {}
  for seed, rev in enumerate((REV_OLD, REV_NEW)):
    hf[rev] = _tiny_qwen2(seed)
    snap = repo_dir / "snapshots" / rev
    hf[rev].save_pretrained(snap)                       # config.json + model.safetensors
    _tiny_tokenizer().save_pretrained(snap)
  (repo_dir / "refs").mkdir()
  (repo_dir / "refs" / "main").write_text(REV_NEW)
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  return tmp_path, hf


def _logits_match(model, hf):
  tokens = np.array([[1, 5, 9, 2, 30, 7]], np.int32)
  ours = np.asarray(model(tokens))
  with torch.no_grad():
    ref = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_repo_id_loads_refs_main_snapshot_offline(hub_cache):
  cache, hf = hub_cache
  assert models.hub_cache_dir() == str(cache)
  assert models.resolve_path(REPO) == str(cache / ("models--Qwen--Qwen2.5-0.5B-Instruct") / "snapshots" / REV_NEW)
  model, tok = models.load_pretrained(REPO)
  _logits_match(model, hf[REV_NEW])                     # refs/main -> the newer commit's weights
  assert tok is not None and tok("abc")["input_ids"] == [2, 3, 4]


def test_repo_id_at_a_revision(hub_cache):
  _, hf = hub_cache
  model, _ = models.load_pretrained(REPO, revision=REV_OLD, tokenizer=False)
  _logits_match(model, hf[REV_OLD])


def test_repo_id_not_cached_offline_fails_with_one_line(hub_cache):
  cache, _ = hub_cache
  with pytest.raises(FileNotFoundError) as e:
    models.load_pretrained("nobody/not-a-cached-model")
  msg = str(e.value)
  assert "\n" not in msg and "'nobody/not-a-cached-model'" in msg and str(cache) in msg, msg


def test_local_paths_are_not_taken_for_repo_ids(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.chdir(tmp_path)
  (tmp_path / "org").mkdir()
  _tiny_qwen2(0).save_pretrained(tmp_path / "org" / "name")   # a local dir that looks like a repo id wins
  hf = _tiny_qwen2(0)
  model, _ = models.load_pretrained("org/name", tokenizer=False)
  _logits_match(model, hf)
  with pytest.raises(FileNotFoundError, match="config.json not found"):   # a missing local dir: as before
    models.load_pretrained(str(tmp_path / "missing"))
