"""models/sharding: the same outputs on 8 emulated CPU devices as on one (run in a subprocess)."""

import os
import subprocess
import sys
import textwrap

from jax.sharding import PartitionSpec as P

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from models import Decoder, DecoderConfig
    from models.sharding import make_mesh, shard_model, shard_batch, cache_partition_specs, BATCH_SPEC
    assert len(jax.devices()) == 8
    cfg = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, qkv_bias=True, tie_embeddings=False,
                        model_type="qwen2")
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (4, 8)).astype(np.int32)
    mask = np.ones((4, 8), bool); mask[1, :3] = False; mask[2, :5] = False
    fwd = nnx.jit(lambda m, t, a: m(t, attention_mask=a))
    lp = nnx.jit(lambda m, t, a: m.token_logprobs(t[:, :-1], t[:, 1:], attention_mask=a[:, :-1], chunk_size=4)[0])
    step = nnx.jit(lambda m, t, c, a: m.step(t, None, c, attention_mask=a))
    ref = np.asarray(fwd(model, tokens, mask)); ref_lp = np.asarray(lp(model, tokens, mask))
    ref_step = np.asarray(step(model, tokens, model.init_cache(4, 12), mask)[0])

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    model = shard_model(model, mesh)
    assert model.layers.wq[...].sharding.spec == P(None, "fsdp", "tensor", None), model.layers.wq[...].sharding
    assert model.lm_head[...].sharding.spec == P("fsdp", "tensor")
    assert len(model.layers.w_up[...].addressable_shards) == 8
    assert model.layers.w_up[...].addressable_shards[0].data.shape == (2, 16, 24)
    t, a = shard_batch(tokens, mesh), shard_batch(mask, mesh)
    assert t.sharding.spec[0] == BATCH_SPEC[0], t.sharding
    out = fwd(model, t, a)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(lp(model, t, a)), ref_lp, atol=1e-5)
    cache = model.init_cache(4, 12)
    cache = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), cache,
                         cache_partition_specs(cache, mesh))
    np.testing.assert_allclose(np.asarray(step(model, t, cache, a)[0]), ref_step, atol=1e-5)
    # loading straight onto the mesh gives the same sharded parameters and outputs
    import tempfile
    from models import save_pretrained, load_pretrained
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, d)
        model2, _ = load_pretrained(d, mesh=mesh)
    assert model2.layers.w_down[...].sharding.spec == P(None, "tensor", "fsdp")
    np.testing.assert_allclose(np.asarray(fwd(model2, t, a)), ref, atol=1e-5)
    print("SHARDING_OK")
""")


def test_sharded_8_devices_same_outputs():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
  r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and "SHARDING_OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_partition_specs_fit_mesh_sizes():
  """Axes that do not divide a dimension are dropped (3 KV heads on tensor=2), without devices."""
  from models import DecoderConfig
  from models.sharding import param_partition_specs, _fit

  class FakeMesh:  # only .shape is used by _fit
    shape = {"data": 1, "fsdp": 4, "tensor": 2}

  assert _fit(P("fsdp", "tensor", None), (576, 3, 64), FakeMesh()) == P("fsdp", None, None)
  assert _fit(P(("data", "fsdp")), (6, 5), FakeMesh()) == P(None, None)
  assert _fit(P(("data", "fsdp")), (8, 5), FakeMesh()) == P(("data", "fsdp"), None)
  cfg = DecoderConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                      num_kv_heads=3, head_dim=64, tie_embeddings=True)
  specs = param_partition_specs(cfg, FakeMesh())
  assert specs["embed"] == P("tensor", "fsdp") and "lm_head" not in specs
  assert specs["layers"]["wq"] == P(None, "fsdp", None, None)      # 9 heads: not split over tensor=2
  assert specs["layers"]["w_down"] == P(None, "tensor", "fsdp")
  assert specs["layers"]["attn_norm"] == P(None, None)
