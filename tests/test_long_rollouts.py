"""Long rollouts (issue 18): the chunked sampler's slot schedule and in-place cache writes.

The sampling equivalences (chunked + compacted == single loop) are in test_sampling.py and the flash
attention tests in test_models.py.
"""

import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
import sampling
from sampling import sampler as S


def _schedule(n_new, chunk, n_bucket):
  """Slots of each chunk of a call that runs all n_new steps."""
  return [S._slots(t0, chunk, n_bucket) for t0 in range(0, n_new, chunk)]


def test_slot_schedule_covers_each_chunk_and_tracks_the_filled_length():
  for chunk in (4, 64, 128):
    for n_new in (chunk, 3 * chunk, 1000, 2048, 8192):
      nb = S.bucket(n_new, 16)
      slots = _schedule(n_new, chunk, nb)
      assert slots == sorted(slots) and slots[-1] <= nb
      for i, a in enumerate(slots):
        end = min((i + 1) * chunk, n_new)   # slots the chunk writes up to
        assert end <= a, (chunk, n_new, i, a)
        # under 1.5x the chunk's end (or one chunk more, for the first chunks), never the full bucket early
        assert a == nb or a < max(1.5 * (i + 1) * chunk, (i + 2) * chunk), (chunk, n_new, i, a)
  # few programs to compile: distinct sizes for 2048 and 8192 new tokens in chunks of 128
  assert len(set(_schedule(2048, 128, 2048))) <= 8
  assert len(set(_schedule(8192, 128, 8192))) <= 14
  # on average well under the full bucket, within 1.25x of the filled length + one chunk
  mean = np.mean([a for a in _schedule(2048, 128, 2048) for _ in range(128)])
  assert mean <= 1.25 * (1024 + 128)


def test_compiled_decode_chunk_writes_the_f32_cache_in_place():
  """The decode chunk's K/V writes are in-place dynamic-update-slices on the (donated) f32 cache: the
  optimized program holds no copy of a cache-shaped buffer."""
  cfg = models.DecoderConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4,
                             num_kv_heads=2, head_dim=8, cache_dtype="float32")
  graphdef, state = nnx.split(models.Decoder(cfg, rngs=nnx.Rngs(0)))
  P, G, A = 2, 4, 64
  toks, mask = np.ones((P, 16), np.int32), np.ones((P, 16), bool)
  shared, resp, tok, pos = S._prefill_jit(graphdef, state, toks, mask, group_size=G, n_slots=A, mesh=None)
  B = P * G
  carry = dict(t=jnp.zeros((), jnp.int32), tok=tok, pos=pos, done=jnp.zeros((B,), bool),
               stopped=jnp.zeros((B,), bool))
  hlo = S._chunk_jit.lower(graphdef, state, shared, resp, carry, jax.random.split(jax.random.key(0), B),
                           jnp.int32(A), jnp.float32(1.0), jnp.float32(1.0), jnp.int32(0),
                           jnp.full((4,), -1, jnp.int32), n_steps=16, greedy=False, top_k=0, use_top_p=False,
                           plain=True, mesh=None).compile().as_text()
  cache_shapes = (f"f32[{B},2,8,{A}]", f"f32[{B},2,{A},8]")   # rk [B,K,Dh,A], rv [B,K,A,Dh]
  lines = [ln for ln in hlo.splitlines() if any(s + "{" in ln for s in cache_shapes)]
  writes = [ln for ln in lines if "dynamic-update-slice(" in ln]
  copies = [ln for ln in lines if re.search(r"= f32\[[0-9,]+\]\{[0-9,]+\} copy\(", ln)]
  assert len(writes) >= 2 * cfg.num_layers, "\n".join(lines[:20])
  assert not copies, "\n".join(copies[:5])


def test_bench_warm_up_builds_every_program_of_the_timed_call():
  """experiments/bench_sampler.py keeps compilation out of its timed call by first running one step per decode
  chunk (`warm_up_ours`): that must build the very programs `sampling.generate` runs. It once drifted (generate
  passed a new static argument, the warm-up did not) and the timed call compiled 2 programs."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "bench_sampler.py")
  spec = importlib.util.spec_from_file_location("bench_sampler_under_test", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  cfg = models.DecoderConfig(vocab_size=40, hidden_size=24, intermediate_size=40, num_layers=1, num_heads=3,
                             num_kv_heads=1, head_dim=8)   # shapes no other test compiles
  split = nnx.split(models.Decoder(cfg, rngs=nnx.Rngs(0)))
  prompts, G, N = [[1, 2, 3], [4, 5, 6, 7, 8]], 4, 300   # 3 chunks of 128 steps: two cache growths
  c0 = S.num_compilations()
  bench.warm_up_ours(split, prompts, G, N)
  c1 = S.num_compilations()
  out = sampling.generate(split, prompts, group_size=G, max_new_tokens=N, temperature=1.0, eos_ids=(),
                          rng=jax.random.key(1))
  assert out.tokens.shape == (len(prompts) * G, N)
  assert c1 > c0 and S.num_compilations() == c1, (c0, c1, S.num_compilations())
