"""The matmuls of one sampler decode step, one by one: XLA:CPU (JAX) next to PyTorch, same process.

  python experiments/bench_cpu_kernels.py            # SmolLM2-135M shapes, B = 64 rows (P=8 x G=8)

Why this exists: `bench_sampler.py` measures the whole sampler against `transformers.generate`;
this script shows where the time of a decode step can and cannot go on a CPU, by timing each
kind of matmul the step does at its real shape, in the layouts the sampler could use, against
PyTorch's kernel for the same product (what `transformers` runs):

* projections: x [B,in] @ W [in,out] for the 30 layers' q/k/v, o, gate/up and down weights
  (30 distinct weight matrices per kind, like the real step, so nothing stays in L2 cache),
  in the batch-major form the sampler uses and in the weight-left form W^T [out,in] @ x^T [in,B];
* the lm head [B,D] @ [D,V];
* the per-row attention products of the response cache: for each of B*K (row, kv-head) pairs,
  [H/K, Dh] @ [Dh, N] (scores) and [H/K, N] @ [N, Dh] (values): batched tiny matmuls;
* a 2048^3 matmul: the machine's large-matmul roofline.

Each number is the best of several timed calls of a jitted function (JAX) or an inference-mode
loop (PyTorch), warm-up excluded, reported in GFLOP/s.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def _best(fn, repeats: int) -> float:
  fn()
  best = 1e9
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--rows", type=int, default=64, help="B = P*G decode rows")
  ap.add_argument("--layers", type=int, default=30)
  ap.add_argument("--resp", type=int, default=64, help="N response cache slots")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--dtypes", default="float32,bfloat16")
  args = ap.parse_args()

  import torch
  torch.set_num_threads(os.cpu_count())
  from bench_update import machine_name  # same folder
  from bench_sampler import roofline

  # SmolLM2-135M: D=576, H=9, K=3, Dh=64, F=1536, V=49152
  B, L, N = args.rows, args.layers, args.resp
  D, H, K, Dh, F, V = 576, 9, 3, 64, 1536, 49152
  rng = np.random.default_rng(0)
  rows = []

  def add(op, dtype, flops, t_jax, t_torch, note=""):
    rows.append((op, dtype, flops / t_jax / 1e9, flops / t_torch / 1e9 if t_torch else None, note))
    print(rows[-1], flush=True)

  for dt in [d for d in args.dtypes.split(",") if d]:
    jdt, tdt = jnp.dtype(dt), getattr(torch, dt)
    # projections, 30 distinct weights per kind
    # q/k/v as one fused matrix (the sampler runs them as three matmuls with the same total FLOPs)
    for name, (i, o) in {"q/k/v fused": (D, (H + 2 * K) * Dh), "o": (H * Dh, D), "gate or up": (D, F),
                         "down": (F, D)}.items():
      w = rng.standard_normal((L, i, o), np.float32) * 0.02
      x = rng.standard_normal((B, i), np.float32)
      ws = [jnp.asarray(w[l], jdt) for l in range(L)]               # [in,out]
      wts = [jnp.asarray(np.ascontiguousarray(w[l].T), jdt) for l in range(L)]  # [out,in]
      xj, xtj = jnp.asarray(x, jdt), jnp.asarray(np.ascontiguousarray(x.T), jdt)
      f_bm = jax.jit(lambda ws, x: [jnp.dot(x, w, preferred_element_type=jnp.float32) for w in ws])
      f_wl = jax.jit(lambda wts, xt: [jnp.dot(w, xt, preferred_element_type=jnp.float32) for w in wts])
      tw = [torch.from_numpy(np.ascontiguousarray(w[l].T)).to(tdt) for l in range(L)]  # nn.Linear layout
      tx = torch.from_numpy(x).to(tdt)

      def run_torch():
        with torch.inference_mode():
          for w_ in tw:
            torch.nn.functional.linear(tx, w_)
      flops = 2.0 * B * i * o * L
      t_bm = _best(lambda: jax.block_until_ready(f_bm(ws, xj)), args.repeats)
      t_wl = _best(lambda: jax.block_until_ready(f_wl(wts, xtj)), args.repeats)
      t_t = _best(run_torch, args.repeats)
      add(f"{name}: x[{B},{i}] @ W[{i},{o}] x{L}", dt, flops, t_bm, t_t, "batch-major (the sampler)")
      add(f"{name}: W^T[{o},{i}] @ x^T[{i},{B}] x{L}", dt, flops, t_wl, t_t, "weight-left")
    # lm head
    e = rng.standard_normal((V, D), np.float32) * 0.02
    h = rng.standard_normal((B, D), np.float32)
    ej, hj = jnp.asarray(np.ascontiguousarray(e.T), jdt), jnp.asarray(h, jdt)
    f = jax.jit(lambda e, h: jnp.dot(h, e, preferred_element_type=jnp.float32))
    te, th = torch.from_numpy(e).to(tdt), torch.from_numpy(h).to(tdt)

    def run_torch_head():
      with torch.inference_mode():
        torch.nn.functional.linear(th, te)
    add(f"lm head: h[{B},{D}] @ E^T[{D},{V}]", dt, 2.0 * B * D * V,
        _best(lambda: jax.block_until_ready(f(ej, hj)), args.repeats), _best(run_torch_head, args.repeats))

  # attention over the per-row response cache (f32, as the sampler stores it on CPU), 30 layers
  Hg = H // K
  q = rng.standard_normal((B, K, Hg, Dh), np.float32)
  rk = [rng.standard_normal((B, K, Dh, N), np.float32) for _ in range(L)]
  rv = [rng.standard_normal((B, K, N, Dh), np.float32) for _ in range(L)]
  qj, rkj, rvj = jnp.asarray(q), [jnp.asarray(a) for a in rk], [jnp.asarray(a) for a in rv]
  f_s = jax.jit(lambda q, rk: [jnp.einsum("bkhd,bkdn->bkhn", q, k) for k in rk])
  f_o = jax.jit(lambda p, rv: [jnp.einsum("bkhn,bknd->bkhd", p, v) for v in rv])
  tq = torch.from_numpy(q).reshape(B * K, Hg, Dh)
  trk = [torch.from_numpy(a).reshape(B * K, Dh, N) for a in rk]
  trv = [torch.from_numpy(a).reshape(B * K, N, Dh) for a in rv]
  p = rng.random((B, K, Hg, N), np.float32)
  pj, tp = jnp.asarray(p), torch.from_numpy(p).reshape(B * K, Hg, N)

  def torch_bmm(a, bs):
    def run():
      with torch.inference_mode():
        for b_ in bs:
          torch.bmm(a, b_)
    return run
  flops = 2.0 * B * K * Hg * Dh * N * L
  add(f"attention scores: {B * K} x [{Hg},{Dh}]@[{Dh},{N}] x{L}", "float32", flops,
      _best(lambda: jax.block_until_ready(f_s(qj, rkj)), args.repeats), _best(torch_bmm(tq, trk), args.repeats))
  add(f"attention values: {B * K} x [{Hg},{N}]@[{N},{Dh}] x{L}", "float32", flops,
      _best(lambda: jax.block_until_ready(f_o(pj, rvj)), args.repeats), _best(torch_bmm(tp, trv), args.repeats))

  # roofline: the same 2048^3 jnp.dot as bench_sampler.py, next to torch's
  for dt in [d for d in args.dtypes.split(",") if d]:
    n = 2048
    ta = torch.ones((n, n), dtype=getattr(torch, dt))

    def run_torch_big():
      with torch.inference_mode():
        ta @ ta
    flops = 2.0 * n ** 3
    add(f"roofline: {n}^3 matmul", dt, flops, flops / (roofline(jnp.dtype(dt), n, 3) * 1e9), _best(run_torch_big, 3))

  print(f"\n{machine_name()}, jax {jax.__version__}, torch {torch.__version__}, B={B} rows, {L} layers, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n")
  print("| matmul (SmolLM2-135M decode step) | dtype | JAX / XLA:CPU GFLOP/s | PyTorch GFLOP/s | note |")
  print("|---|---|---|---|---|")
  for op, dt, gj, gt, note in rows:
    print(f"| {op} | {dt} | {gj:.0f} | {'-' if gt is None else format(gt, '.0f')} | {note} |")


if __name__ == "__main__":
  main()
