"""experiments/plan.py: analytic FLOPs vs XLA's own count on loop-free programs, the flash attention's pair count
against a NumPy count of its visited blocks, and the memory of the tiny model's update and sampler programs
compiled for a TPU v5e:2x2 (4 chips) against a hand count (skipped without libtpu)."""
import glob
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import plan
from experiments.configs import tiny
from models import sharding
from models import transformer as tr
from rl import config, trainer, update

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**model):
  c = tiny.get_config()
  with c.unlocked():
    for k, v in model.items():
      c.model[k] = v
  return c


@pytest.mark.parametrize("flash", [False, True])
def test_analytic_flops_match_xla_on_loop_free_programs(flash, monkeypatch):
  """One layer, one micro-batch, one log-prob chunk: every loop runs once, so cost_analysis() is exact.
  flash: the flash attention with ONE block (T <= _FLASH_BLOCK), so its forward and its recomputing
  backward are counted in full too (the block count of longer sequences is `attention_pairs`)."""
  if flash:
    monkeypatch.setattr(tr, "_FLASH_MIN_T", 16)
    monkeypatch.setattr(tr, "_FLASH_BLOCK", 128)
  hf = dict(model_type="llama", vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False)
  c = _config(remat=True)
  mesh = sharding.make_mesh(data=1, fsdp=1, devices=jax.devices()[:1])
  cfg = plan.trainer_model_config(hf, c.model)
  graphdef, params = plan.abstract_params(cfg, mesh)
  B, Lp, N = 4, 32, 64
  T = Lp + N - 1
  assert plan.attention_pairs(T) == dict(pairs=T * T, flash=flash)
  sds = jax.ShapeDtypeStruct
  b = dict(prompt=sds((B, Lp), jnp.int32), prompt_mask=sds((B, Lp), bool), tokens=sds((B, N), jnp.int32),
           mask=sds((B, N), bool))
  xla = plan.xla_cost(plan.trainer_logp_fn(graphdef, c, mesh).lower(params, b).compile())
  assert xla["flops"] == pytest.approx(plan.analytic_logp(cfg, B, T, 1, 1, N)["flops"], rel=0.05)
  update, tx, hp = plan.trainer_update_fn(graphdef, c, params, mesh)
  mb = {k: sds((1, *v.shape), v.dtype) for k, v in b.items()}
  mb.update(old_logp=sds((1, B, N), jnp.float32), logprobs=sds((1, B, N), jnp.float32), adv=sds((1, B), jnp.float32),
            keep=sds((1, B), bool))
  lowered = update.lower(params, plan.abstract_opt_state(tx, params, mesh), mb, {k: sds((), jnp.float32) for k in hp})
  xla = plan.xla_cost(lowered.compile())
  # matmuls: forward + remat forward + backward = 4 forwards (XLA skips a little of the recompute: within 10%);
  # attention: 2 forwards + a backward of 2 (plain) or 3.5 (flash) forwards
  assert xla["flops"] == pytest.approx(plan.analytic_update(cfg, c, B, B, T, 1, 1, N)["flops"], rel=0.10)


def _tile_friendly_hf():
  """A 2-layer model whose per-chip shards on fsdp=4 are whole TPU tiles (8 x 128 f32), so the compiled
  argument sizes are the plain byte counts."""
  return dict(model_type="llama", vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
              num_attention_heads=8, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
              tie_word_embeddings=False)


def test_tiny_update_and_sampler_memory_on_v5e_2x2(tmp_path):
  pytest.importorskip("libtpu", reason="libtpu not installed (pip install 'libtpu==0.0.42.*', the version "
                                       "jax[tpu]==0.10.2 pins): cannot compile for TPU topologies")
  c = _config(dtype="bfloat16", param_dtype="float32", remat=True)
  with c.unlocked():
    c.rollout.prompts_per_step, c.rollout.group_size, c.rollout.max_new_tokens = 4, 8, 128
    c.train.micro_batch_size = 32   # one micro-batch: [1, 8 rows per chip, ...] is whole tiles
    c.mesh.data, c.mesh.fsdp = 1, -1
  prompt_len = 128
  res = plan.plan_phases(_tile_friendly_hf(), "v5e:2x2", c, prompt_len=prompt_len, phases=("update", "sample"))
  assert res["setup"]["chips"] == 4 and res["setup"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}

  # hand count: L=2, D=512, H=K=8, Dh=128, F=1024, V=256; every matrix split 4 ways over fsdp, norms replicated
  L, D, F, V, HD = 2, 512, 1024, 256, 8 * 128
  matrices = 2 * V * D + L * (4 * D * HD + 3 * D * F)
  norms = D + 2 * L * D
  params = 4 * (matrices // 4 + norms)                 # f32 bytes per chip
  opt = 2 * params + 4                                 # AdamW mu, nu (f32) + step count (int32)
  rows = 4 * 8 // 4                                    # 32 rows, batch-sharded over 4 chips
  # prompt + prompt_mask, tokens + mask + logprobs + old_logp, keep + adv
  batch = rows * (prompt_len * (4 + 1) + 128 * (4 + 1 + 4 + 4) + 1 + 4)
  u = res["update"]["hbm"]
  slack = 64 * 1024                                    # the 1-D/2-row norm tensors are padded to tiles
  assert params + opt + batch <= u["args"] <= params + opt + batch + slack
  # all of params and optimizer state donated: the outputs are pinned to the inputs' shardings
  # (rl.update.state_shardings; with XLA's own choice a few replicated norm buffers were left unaliased)
  assert params + opt - 4 <= u["alias"] <= params + opt + slack
  assert u["out"] - u["alias"] < slack                 # ... so the outputs add only those and the metrics
  assert res["update"]["fits"] and u["total"] < 16 * 2 ** 30

  # the sample phase's figure is its largest decode chunk (sampler._chunk_core over all 32 rows, the full
  # 128-slot response cache); its arguments: the f32 params (resident, kept), the `shared` state the prefill
  # built (per-layer bf16 matrices and the bf16 lm head, gathered: whole on every chip, as rollout.gather_weights
  # "auto" chooses when they fit; f32 norms), the bf16 prompt KV (1 prompt per chip, 127 slots) and the bf16
  # response caches (8 rows per chip), donated
  s = res["sample"]["hbm"]
  assert res["sample"]["est"]["gathered"] and res["sample"]["version"] == plan.PHASE_VERSION["sample"]
  resp_cache = L * 2 * (4 * 8 // 4) * 8 * 128 * 128 * 2
  shared = 2 * (L * (4 * D * HD + 3 * D * F) + D * V) + 4 * 2 * L * D
  prompt_kv = L * 2 * 1 * 8 * 127 * 128 * 2
  assert params + shared + prompt_kv + resp_cache <= s["args"] <= params + shared + prompt_kv + resp_cache + slack
  assert resp_cache <= s["alias"] <= resp_cache + slack        # the response cache is donated chunk to chunk
  # XLA reports ~0 temporaries for the while loop, so the planner's figure is its analytic live set (the logits)
  assert s["temp"] >= 32 * V * 12 // 4 and s["total"] >= s["args"] - s["alias"] + s["temp"]
  # the decode loop's collectives (plan.loop_collectives): the embedding lookup and the exit test, no activations
  assert 0 < res["sample"]["est"]["decode_ici_bytes"] < 32 * D * 4
  assert res["sample"]["roofline"]["ici_s"] == pytest.approx(128 * res["sample"]["est"]["decode_ici_step_s"])
  progs = res["sample"]["est"]["programs_hbm_gib"]
  assert set(progs) == {"prefill", "chunk"} and progs["chunk"] >= progs["prefill"]
  assert res["sample"]["est"]["shapes"] == dict(P=4, L=128, N=128, B=32, C=128)
  table = plan.format_table(res, label="tiny")
  assert "v5e:2x2: 4 chips v5e" in table and "update" in table and "sample" in table


def test_flash_attention_pairs_count_the_visited_blocks():
  """attention_pairs at the real block size: the (query, key) pairs of blocks j <= i, counted in NumPy."""
  c = tr._FLASH_BLOCK
  for T in (tr._FLASH_MIN_T, tr._FLASH_MIN_T + 1, 8192 + 511):
    n = -(-T // c)
    qb, kb = np.meshgrid(np.arange(n * c) // c, np.arange(n * c) // c, indexing="ij")
    assert plan.attention_pairs(T) == dict(pairs=int((kb <= qb).sum()), flash=True)
  assert abs(plan.attention_pairs(T)["pairs"] / (T * T / 2) - 1) < 0.05   # long T: ~ half the plain T x T
  assert plan.attention_pairs(tr._FLASH_MIN_T - 1) == dict(pairs=(tr._FLASH_MIN_T - 1) ** 2, flash=False)


@pytest.mark.parametrize("name", ["dash_qwen2.5_math_1.5b", "nsr_qwen2.5_math_7b", "prorl_qwen2.5_math_1.5b"])
def test_paper_configs_validate(name):
  c = config.from_file(os.path.join(ROOT, "experiments", "configs", "paper", f"{name}.py"))
  config.validate(c)
  assert (c.model.dtype, c.model.param_dtype, c.model.remat) == ("bfloat16", "float32", True)
  assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (1, -1, 1)


def test_scale_config_keys_are_checked():
  c = config.base()
  assert (c.model.param_dtype, c.model.remat, c.mesh.tensor, c.rollout.gather_weights) == ("", False, 1, "auto")
  for key, bad in (("model.param_dtype", "float64"), ("mesh.tensor", 0), ("mesh.tensor", -1),
                   ("rollout.gather_weights", "yes")):
    section, name = key.split(".")
    old = c[section][name]
    c[section][name] = bad
    with pytest.raises(ValueError, match=f"config.{key}="):
      config.validate(c)
    c[section][name] = old
  config.validate(c)


def test_decode_roofline_fraction_counts_unfilled_slots_and_logits():
  """decode_roofline_frac = (weights + filled KV slots per step) / (what the decode reads), re-derived by hand for
  one chunk covering all N steps (every step reads the N-slot cache) and for chunks of 16 (bucketed slots)."""
  hf = dict(model_type="llama", vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False)
  cfg = plan.trainer_model_config(hf, _config().model)
  P, G, L, N, n = 4, 8, 32, 64, 2
  B = P * G
  w = plan.param_counts(cfg)["total"] * 4                       # f32 compute dtype of the tiny config
  kv = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 2   # bytes per token slot (bf16 cache)
  ideal = sum(w + (P * L + B * (t + 1)) * kv / n for t in range(N))
  one_chunk = N * (w + ((P * L + B * N) * kv + B * 512 * 12) / n)
  est = plan.analytic_sample(cfg, dict(P=P, L=L, N=N, B=B, C=N), n, 1, 2)
  assert est["decode_roofline_frac"] == pytest.approx(ideal / one_chunk, rel=1e-9)
  # chunks start at t0 = 0, 16, 32, 48; each attends n = t0 + 16 slots rounded up to a multiple of
  # max(16, next_pow2(n) / 4) = 16 here: 16, 32, 48, 64 (sampling.sampler._slots)
  slots = [16, 32, 48, 64]
  chunked = sum(16 * (w + ((P * L + B * a) * kv + B * 512 * 12) / n) for a in slots)
  est = plan.analytic_sample(cfg, dict(P=P, L=L, N=N, B=B, C=16), n, 1, 2)
  assert est["decode_roofline_frac"] == pytest.approx(ideal / chunked, rel=1e-9)
  assert ideal / one_chunk < est["decode_roofline_frac"] < 1


def _logits_rows(compiled, V):
  """Leading (row) sizes of the f32 [rows, chunk, V] logits blocks in a compiled program's HLO."""
  return sorted({int(m.group(1)) for m in re.finditer(rf"f32\[(\d+),\d+,{V}\]", compiled.as_text())})


def _bf16_fsdp_v5e_2x2():
  """-> (config: bf16 compute, f32 params, remat, all chips on fsdp; a tile-friendly model with V = 4096; the
  trainer's mesh over v5e:2x2); skips without libtpu."""
  pytest.importorskip("libtpu", reason="libtpu not installed: cannot compile for TPU topologies")
  c = _config(dtype="bfloat16", param_dtype="float32", remat=True)
  with c.unlocked():
    c.mesh.data, c.mesh.fsdp = 1, -1
  hf = dict(_tile_friendly_hf(), vocab_size=4096)
  return c, hf, trainer.make_mesh(c.mesh, devices=plan.topology_devices("v5e:2x2"))


def test_logprob_forward_keeps_rows_split_on_the_tpu_program():
  """FSDP without activation constraints: GSPMD carried the weights' split of D into the activations, so every
  chip computed the logits (and MLP intermediates) of ALL rows of the micro-batch; under the trainer's mesh
  (rl.update.in_mesh -> models.transformer.split_rows) each chip holds only its own rows."""
  c, hf, mesh = _bf16_fsdp_v5e_2x2()
  graphdef, params = plan.abstract_params(plan.trainer_model_config(hf, c.model), mesh)
  batch = plan.logp_batch(mesh, 16, 64, 192)     # 16 rows: 4 per chip
  split = plan.trainer_logp_fn(graphdef, c, mesh).lower(params, batch).compile()
  free = update.make_logp_fn(graphdef, plan.sampling_key(c)).lower(params, batch).compile()   # no mesh context
  assert _logits_rows(split, 4096) == [4]
  # the layout the fix removes (if XLA ever stops choosing it, this test needs a new witness)
  assert 16 in _logits_rows(free, 4096)
  assert plan.memory(split)["temp"] < plan.memory(free)["temp"]


def test_table_cli_renders_the_committed_plans():
  """`python -m experiments.plan --table docs/plans` (the README's command): one row per cached phase, read back
  from the JSON files (no compiling)."""
  files = sorted(glob.glob(os.path.join(ROOT, "docs", "plans", "*.json")))
  if not files:
    pytest.skip("no cached plans in docs/plans")
  r = subprocess.run([sys.executable, "-m", "experiments.plan", "--table", "docs/plans"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [x for x in r.stdout.splitlines() if x.startswith("| ")]
  for f in files:
    with open(f) as fh:
      res = json.load(fh)
    s = res["setup"]
    for p in ("sample", "logp", "update"):
      if p in res and res[p].get("version", plan.VERSION) == plan.PHASE_VERSION[p]:   # older phases: not rendered
        gib = (">" if "oom" in res[p]["hbm"] else "") + f"{res[p]['hbm_gib']['total']:.1f}"   # > : XLA refused it
        assert any(f"| {s['topology']} ({s['chips']}) |" in x and f"| {p} | {gib}" in x for x in rows), (f, p)


def _float_row_allreduces(colls, rows):
  """The all-reduces among `colls` (plan.loop_collectives) carrying a float array of all `rows` rows: the
  activations' partial sums (q/k/v, MLP, norms, logits)."""
  return [x for x in colls if x["op"].startswith("all-reduce")
          and re.search(rf"= \(?[^=]*\b(f32|bf16)\[{rows}(,|\])", x["line"])]


def test_gathered_decode_has_no_per_step_allreduce_of_the_rows_on_the_tpu_program():
  """The sampler's decode chunk compiled for v5e:2x2 (fsdp=4). Weights left FSDP-split (gather=False, the layout
  before rollout.gather_weights): every layer of every step all-reduces partial sums of all 32 rows inside the
  while loop. Gathered (sampling.sampler._prefill_core replicates the compute-dtype weights once, the decode runs
  under the mesh): none; what crosses chips per step is the token embedding lookup and the loop's exit test."""
  c, hf, mesh = _bf16_fsdp_v5e_2x2()
  cfg = plan.trainer_model_config(hf, c.model)
  cfg = type(cfg)(**dict(cfg.__dict__, cache_dtype="bfloat16"))
  graphdef, params = plan.abstract_params(cfg, mesh)
  B, D, L = 32, 512, 2
  out = {}
  for gather in (False, True):
    progs, _ = plan.sampler_programs(graphdef, params, mesh, prompts=4, group_size=8, prompt_len=64, max_new_tokens=128,
                                     temperature=1.0, top_p=1.0, top_k=0, gather=gather)
    pre, _ = plan._compile(*progs["prefill"])
    chunk, _ = plan._compile(*progs["chunk"](pre))
    out[gather] = (plan.loop_collectives(chunk.as_text(), 4), plan.memory(chunk))
  split, gathered = out[False][0], out[True][0]
  # the witness of the old layout: q/k/v, MLP and norm partial sums of every layer and the logits (if XLA ever
  # stops choosing it, this test needs a new witness)
  assert len(_float_row_allreduces(split, B)) >= 2 * L + 1
  assert _float_row_allreduces(gathered, B) == []
  assert sum(x["wire"] for x in gathered) < B * D * 4 < sum(x["wire"] for x in split)
  # the price: the whole bf16 layers (and LM head) are arguments on every chip instead of a quarter of them
  bf16 = 2 * (L * (4 * D * 1024 + 3 * D * 1024) + D * 4096)
  assert out[True][1]["args"] - out[False][1]["args"] == pytest.approx(bf16 * 3 / 4, rel=0.02)


def test_gather_weights_choice_counts_the_decode_bytes():
  """sampler.decode_bytes against a hand count (v5e:2x2, fsdp=4) and the "auto" rule around its threshold."""
  pytest.importorskip("libtpu", reason="libtpu not installed: cannot compile for TPU topologies")
  from sampling import sampler
  c = _config(dtype="bfloat16", param_dtype="float32")
  hf = _tile_friendly_hf()
  devices = plan.topology_devices("v5e:2x2")
  mesh = sharding.make_mesh(data=1, fsdp=4, devices=devices)
  cfg = plan.trainer_model_config(hf, c.model)
  cfg = type(cfg)(**dict(cfg.__dict__, cache_dtype="bfloat16"))
  _, params = plan.abstract_params(cfg, mesh)
  L, D, F, V, HD = 2, 512, 1024, 256, 8 * 128
  matrices = 2 * V * D + L * (4 * D * HD + 3 * D * F)
  norms = D + 2 * L * D
  P_, Lb, B, N = 4, 64, 32, 128
  kw = dict(prompts=P_, prompt_len=Lb, rows=B, max_new=N)
  got = sampler.decode_bytes(cfg, params, mesh, gather=True, **kw)
  assert got["params"] == 4 * (matrices // 4 + norms)                       # f32 shards, norms replicated
  assert got["weights"] == 2 * (L * (4 * D * HD + 3 * D * F) + D * V) + 4 * 2 * L * D   # whole bf16 + f32 norms
  assert got["caches"] == (P_ * Lb + B * N) * L * 2 * HD * 2 // 4
  assert got["logits"] == B * V * 12 // 4
  assert got["total"] == sum(got[k] for k in ("params", "weights", "caches", "logits"))
  assert sampler.decode_bytes(cfg, params, mesh, gather=False, **kw)["weights"] < got["weights"] / 3
  need = got["total"] / sampler.GATHER_HEADROOM
  choose = lambda setting, m=mesh, mem=None: sampler.gather_weights_choice(setting, cfg, params, m, memory_bytes=mem, **kw)
  assert choose("auto", mem=need + 1) and not choose("auto", mem=need - 1)
  assert not choose("auto")                       # abstract devices report no memory: not gathered
  assert choose(True) and choose("true") and not choose(False, mem=need + 1) and not choose("false")
  one = sharding.make_mesh(data=4, fsdp=1, devices=devices)   # weights not split over the batch axes
  assert not choose("auto", m=one, mem=10 * need)
  with pytest.raises(ValueError, match="gather_weights"):
    choose("maybe")
