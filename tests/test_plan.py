"""experiments/plan.py: analytic FLOPs vs XLA's own count on loop-free programs, the memory of the tiny model's
update and sampler compiled for a TPU v5e:2x2 (4 chips) against a hand count, and the blocked attention the
planner drove (same values and gradients as the plain one)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import plan
from experiments.configs import tiny
from models import sharding
from models import transformer as tr


def _config(**model):
  c = tiny.get_config()
  with c.unlocked():
    for k, v in model.items():
      c.model[k] = v
  return c


def test_blocked_attention_matches_full_attention():
  cfg = tr.DecoderConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                         num_kv_heads=2, head_dim=8)
  r = np.random.default_rng(0)
  B, T = 2, 37   # 5 blocks of 8, the last one padded
  q, k, v = (jnp.asarray(r.standard_normal((B, T, h, 8)), jnp.float32) for h in (4, 2, 2))
  mask = jnp.tril(jnp.ones((T, T), bool))[None] & (jnp.arange(T) >= jnp.array([[0], [5]]))[:, None, :]
  full = lambda q, k, v: tr._attend(cfg, q, k, v, mask)
  blocked = lambda q, k, v: tr._attend_blocked(cfg, q, k, v, mask, block=8)
  np.testing.assert_allclose(blocked(q, k, v), full(q, k, v), atol=1e-6)
  loss = lambda f: lambda *a: (f(*a) ** 2).sum()
  for a, b in zip(jax.grad(loss(blocked), (0, 1, 2))(q, k, v), jax.grad(loss(full), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_analytic_flops_match_xla_on_loop_free_programs():
  """One layer, one micro-batch, one log-prob chunk: every loop runs once, so cost_analysis() is exact."""
  hf = dict(model_type="llama", vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False)
  c = _config(remat=True)
  mesh = sharding.make_mesh(data=1, fsdp=1, devices=jax.devices()[:1])
  cfg = plan.trainer_model_config(hf, c.model)
  graphdef, params = plan.abstract_params(cfg, mesh)
  B, Lp, N = 4, 32, 64
  T = Lp + N - 1
  sds = jax.ShapeDtypeStruct
  b = dict(prompt=sds((B, Lp), jnp.int32), prompt_mask=sds((B, Lp), bool), resp=sds((B, N), jnp.int32),
           resp_mask=sds((B, N), jnp.float32))
  xla = plan.xla_cost(plan.trainer_logp_fn(graphdef).lower(params, b).compile())
  assert xla["flops"] == pytest.approx(plan.analytic_logp(cfg, B, T, 1, 1)["flops"], rel=0.05)
  update, tx, hp = plan.trainer_update_fn(graphdef, c)
  mb = {k: sds((1, *v.shape), v.dtype) for k, v in b.items()}
  mb.update(old_logp=sds((1, B, N), jnp.float32), adv=sds((1, B), jnp.float32))
  lowered = update.lower(params, plan.abstract_opt_state(tx, params, mesh), mb, {k: sds((), jnp.float32) for k in hp})
  xla = plan.xla_cost(lowered.compile())
  # forward + remat forward + backward = 4 forwards (XLA skips a little of the recompute: within 10%)
  assert xla["flops"] == pytest.approx(plan.analytic_update(cfg, c, B, B, T, 1, 1)["flops"], rel=0.10)


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
  batch = rows * (prompt_len * (4 + 1) + 128 * (4 + 4 + 4) + 4)   # prompt, mask, resp, resp_mask, old_logp, adv
  u = res["update"]["hbm"]
  slack = 64 * 1024                                    # the 1-D/2-row norm tensors are padded to tiles
  assert params + opt + batch <= u["args"] <= params + opt + batch + slack
  # every matrix and its two moments donated (XLA leaves a few small replicated norm buffers unaliased)
  assert 3 * 4 * (matrices // 4) <= u["alias"] <= params + opt
  assert u["out"] - u["alias"] < slack                 # ... so the outputs add only those and the metrics
  assert res["update"]["fits"] and u["total"] < 16 * 2 ** 30

  s = res["sample"]["hbm"]
  assert params <= s["args"] <= params + slack + 64 * 1024     # params + prompts, keys, masks
  # response caches in the compute dtype (bf16) on the TPU: L x (K, V) x [B/4 rows, K, Dh, N] per chip;
  # XLA reports ~0 temporaries for the while loop, so the planner's figure is its analytic live set
  resp_cache = L * 2 * (4 * 8 // 4) * 8 * 128 * 128 * 2
  bf16_weights = 2 * (matrices + norms)
  assert s["temp"] >= resp_cache + bf16_weights and s["total"] >= params + s["temp"]
  assert res["sample"]["est"]["shapes"] == dict(P=4, L=128, N=128, B=32)
  table = plan.format_table(res, label="tiny")
  assert "v5e:2x2: 4 chips v5e" in table and "update" in table and "sample" in table
