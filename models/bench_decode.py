"""Benchmark: one decode step (T=1) of SmolLM2-135M (GGUF) vs transformers with a KV cache.

  python -m models.bench_decode --batch 8 --prompt 64 --steps 32

Prints ms per decode step (JAX: jitted Decoder.step with a donated cache; transformers:
model(input_ids, past_key_values=...) under torch.no_grad()). CPU threads as the process gets them.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--prompt", type=int, default=64)
  ap.add_argument("--steps", type=int, default=32)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--no_hf", action="store_true")
  a = ap.parse_args()
  d, f = os.path.split(models.smollm2_gguf_path())
  model, _ = models.load_pretrained(d, gguf_file=f, dtype=a.dtype, tokenizer=False)
  B, P, N = a.batch, a.prompt, a.steps
  tokens = np.random.default_rng(0).integers(0, 49152, (B, P + N)).astype(np.int32)
  graphdef, params = nnx.split(model)

  @jax.jit
  def prefill(params, t, cache):
    return nnx.merge(graphdef, params).step(t, None, cache)

  @jax.jit
  def step(params, t, cache):
    return nnx.merge(graphdef, params).step(t, None, cache)

  step = jax.jit(step.__wrapped__ if hasattr(step, "__wrapped__") else step, donate_argnums=2)
  cache = model.init_cache(B, P + N)
  _, cache = prefill(params, tokens[:, :P], cache)
  logits, cache = step(params, tokens[:, P:P + 1], cache)  # compile
  jax.block_until_ready(logits)
  t0 = time.perf_counter()
  for i in range(1, N):
    logits, cache = step(params, tokens[:, P + i:P + i + 1], cache)
  jax.block_until_ready(logits)
  jax_ms = (time.perf_counter() - t0) / (N - 1) * 1e3
  print(f"jax  Decoder.step  B={B} prompt={P}: {jax_ms:.1f} ms/step")
  if a.no_hf:
    return
  import torch
  import transformers
  hf = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
  with torch.no_grad():
    out = hf(torch.tensor(tokens[:, :P], dtype=torch.long), use_cache=True)
    past = out.past_key_values
    out = hf(torch.tensor(tokens[:, P:P + 1], dtype=torch.long), past_key_values=past, use_cache=True)
    past = out.past_key_values
    t0 = time.perf_counter()
    for i in range(1, N):
      out = hf(torch.tensor(tokens[:, P + i:P + i + 1], dtype=torch.long), past_key_values=past, use_cache=True)
      past = out.past_key_values
  hf_ms = (time.perf_counter() - t0) / (N - 1) * 1e3
  print(f"torch transformers B={B} prompt={P}: {hf_ms:.1f} ms/step  (jax speed-up {hf_ms / jax_ms:.2f}x)")


if __name__ == "__main__":
  main()
