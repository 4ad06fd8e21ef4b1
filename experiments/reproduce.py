"""Reproduce the papers' findings at small scale: every arm of a study trained from the same base, S seeds each,
evaluated on the same held-out problems with n samples per problem, summarised as mean +- std over seeds.

  python experiments/reproduce.py --study psr_nsr --scale fast --workdir /tmp/repro_psr_nsr
  python experiments/reproduce.py --study length|dash|prorl --scale fast --workdir DIR [--seeds 3]
  python experiments/reproduce.py --study psr_nsr --scale real --workdir DIR     # SmolLM2-135M-Instruct
  python experiments/reproduce.py --scale real --measure --workdir DIR   # base pass@1 of the candidate tasks

Studies (arms; "base" is the shared starting policy, evaluated without training):
  psr_nsr  base, GRPO, PSR, NSR, W-REINFORCE (lambda = 0.1)                    (negative-reinforcement paper)
  length   base, GRPO, relative length reward, positive-only, negative-only, offline solution injection
  dash     base, GRPO, DASH (preemptive sampling of 4 update-batches + gradient filter): wall-clock to accuracy
  prorl    base, clip-higher + dynamic sampling without KL, the same with a k3 KL and reference resets (ProRL)

The scale file (experiments/configs/repro/<scale>.py) defines get_config(algo) (the testbed: model, task, budget,
evaluation) and sft_config() (the SFT run that makes the base, or None to start from the model itself). Workdir:
  DIR/base_sft/                 the SFT run (made once, reused by every arm: config.model.init_from = its hf/)
  DIR/runs/<arm>/seed<s>/       a normal trainer workdir per (arm, seed); done.json once finished
  DIR/results.{md,json}         the table (mean +- std over seeds) and the findings checked per seed
  DIR/pass_at_k.png, entropy.png, response_length.png, zero_adv.png, eval_pass1.png (+ dash_time.png)
Rerunning the same command resumes: finished runs are skipped, an interrupted one continues from its last
checkpoint (rl.trainer), and the summary is recomputed from what the runs wrote (metrics.jsonl, eval_counts.jsonl).
--arms A,B trains a subset (the findings reported are those whose arms were all trained); --share_base_eval (the
real scale's default) evaluates the base once per seed, in the first arm, instead of once in every arm.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

from rl import config as config_lib
from rl import evaluation, outputs, trainer
from rl.outputs import read_jsonl
from rl.rewards.pool import pid_alive

SCALES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "repro")


# ============================================================================ the studies

def _dash(c):
  """DASH: one sampler call for 4 update-batches (4x the prompts, 4 minibatches), gradients accumulated in
  increments of 16 samples, samples with |A| <= 0.1 dropped; a quarter of the steps = the same samples/updates."""
  return {"rollout.prompts_per_step": 4 * c.rollout.prompts_per_step, "train.minibatches": 4,
          "train.micro_batch_size": 16, "filters.grad_filter_tau": 0.1,
          "total_steps": max(1, c.total_steps // 4), "eval_every": max(1, c.eval_every // 4),
          "checkpoint_every": max(1, c.checkpoint_every // 4)}


def _prorl_common(c):
  """Both prorl arms: decoupled clip 0.2/0.28 -> 0.4, temperature 1.2, DAPO dynamic sampling, twice the steps."""
  return {"loss.clip_high": 0.4, "rollout.temperature": 1.2, "filters.dynamic_sampling": True,
          "total_steps": 2 * c.total_steps, "eval_every": max(1, c.eval_every // 2),
          "checkpoint_every": c.checkpoint_every}


def _prorl(c):
  return {**_prorl_common(c), "loss.kl_kind": "k3", "loss.kl_coef": 1e-2, "ref.reset_every": max(1, c.total_steps // 2)}


# arm -> None (the base, not trained) | (algo, overrides dict or fn(config) -> dict)
STUDIES = {
    "psr_nsr": {"base": None, "grpo": ("grpo", {}), "psr": ("psr", {}), "nsr": ("nsr", {}),
                "w_reinforce": ("w_reinforce", {"adv.lam": 0.1})},
    "length": {"base": None, "grpo": ("grpo", {}),
               "rlr": ("grpo", {"shaping.relative_length": True, "shaping.rlr_scale": 4.0}),
               "positive_only": ("positive_only", {}), "negative_only": ("negative_only", {}),
               "osi": ("grpo", {"osi.enabled": True, "osi.solutions_file": "gold", "osi.max_group_accuracy": 0.0})},
    "dash": {"base": None, "grpo": ("grpo", {}), "dash": ("grpo", _dash)},
    "prorl": {"base": None, "no_kl": ("grpo", _prorl_common), "prorl": ("grpo", _prorl)},
}


# ============================================================================ running

def load_scale(scale):
  path = os.path.join(SCALES_DIR, f"{scale}.py")
  if not os.path.exists(path):
    raise SystemExit(f"reproduce.py: error: --scale {scale!r}: no {path}")
  spec = importlib.util.spec_from_file_location(f"_repro_scale_{scale}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _parse_sets(items):
  out = {}
  for item in items or []:
    if "=" not in item:
      raise SystemExit(f"reproduce.py: error: --set {item!r} is not key=value")
    key, value = item.split("=", 1)
    try:
      out[key] = json.loads(value)
    except ValueError:
      out[key] = value
  return out


def arm_config(scale, arm, seed, init_from, sets, eval_base=True):
  """The config of one (arm, seed) run: scale.get_config(algo) + the arm's overrides + --set, validated.
  eval_base=False: no step-0 evaluation (the base's, shared with the seed's first arm: --share_base_eval)."""
  algo, overrides = arm
  c = scale.get_config(algo).unlock()
  config_lib.override(c, sets)   # --set first: the arms' relative budgets (dash, prorl) scale with it
  config_lib.override(c, overrides(c) if callable(overrides) else overrides)
  if not eval_base:
    c.eval_at_start = False
  c.seed, c.model.init_from, c.restart = seed, init_from, True   # restart: a run killed before its 1st checkpoint
  return config_lib.validate(c.lock())


def _config_id(c):
  d = json.loads(c.to_json())
  d.pop("restart", None)
  return json.dumps(d, sort_keys=True)


def run_once(c, workdir, what):
  """Trains config c in workdir unless done.json says it finished with the same config -> done.json's dict."""
  done = os.path.join(workdir, "done.json")
  if os.path.exists(done):
    with open(done) as f:
      info = json.load(f)
    if info["config"] != _config_id(c):
      raise SystemExit(f"reproduce.py: error: {workdir} finished with a different config; use a new --workdir "
                       f"(or delete that run)")
    print(f"[repro] {what}: done, skipped", file=sys.stderr)
    return info
  os.makedirs(workdir, exist_ok=True)
  lock = os.path.join(workdir, "running.pid")   # another process (--only_seeds) training this run: leave it
  try:
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
  except FileExistsError:
    pid = int(open(lock).read().strip() or 0)
    if pid and pid_alive(pid):
      print(f"[repro] {what}: being trained by process {pid}, skipped", file=sys.stderr)
      return None
    os.remove(lock)   # left by a process that died: take the run over (the trainer resumes its checkpoint)
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
  os.write(fd, str(os.getpid()).encode())
  os.close(fd)
  try:
    print(f"[repro] {what}: training in {workdir}", file=sys.stderr)
    t0 = time.perf_counter()
    trainer.train(c, workdir)
    info = {"config": _config_id(c), "wall_s": time.perf_counter() - t0,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(done + ".tmp", "w") as f:
      json.dump(info, f)
    os.replace(done + ".tmp", done)
  finally:
    os.remove(lock)
  return info


def make_base(scale, workdir, sft_sets):
  """Runs scale.sft_config() once in workdir/base_sft -> the hf/ directory every arm starts from ("" = none)."""
  if not hasattr(scale, "sft_config") or scale.sft_config() is None:
    return ""
  c = config_lib.validate(config_lib.override(scale.sft_config().unlock(), {**sft_sets, "restart": True}).lock())
  wd = os.path.join(workdir, "base_sft")
  run_once(c, wd, "SFT base")
  return os.path.join(wd, "hf")


# ============================================================================ reading the runs back

def read_run(workdir):
  """-> dict(rows=metrics rows, counts=eval_counts rows, wall_s) of a finished run."""
  rows = [r for _, r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
  counts = evaluation.read_counts(os.path.join(workdir, "eval_counts.jsonl"))
  with open(os.path.join(workdir, "done.json")) as f:
    wall = json.load(f)["wall_s"]
  return {"rows": rows, "counts": counts, "wall_s": wall}


def _num(x):
  try:
    x = float(x)
  except (TypeError, ValueError):
    return float("nan")
  return x


def eval_summary(count_row, eval_row):
  """One evaluation -> {pass@k: [K], ks, solved (bool [P]), entropy, length, length_correct}."""
  n, counts = count_row["n"], np.asarray(count_row["correct"])   # [R, P]
  ks = evaluation.default_ks(n)
  return {"ks": ks, "pass": evaluation.pass_at_k_from_counts(n, counts, ks).mean(axis=0),
          "counts": counts.sum(axis=0), "n": n * counts.shape[0],
          "entropy": _num(eval_row.get("eval/entropy")), "length": _num(eval_row.get("eval/response_length")),
          "length_correct": _num(eval_row.get("eval/response_length_correct"))}


def collect(workdir, arms, seeds):
  """arms: {arm: spec} (a study's, or a subset) -> {arm: [per-seed dict(final=eval_summary, rows, counts, wall_s)]};
  "base" is the trained arms' step-0 evaluation."""
  out = {}
  for arm, spec in arms.items():
    if spec is None:
      continue
    out[arm] = []
    for s in seeds:
      run = read_run(os.path.join(workdir, "runs", arm, f"seed{s}"))
      by_step = {r["step"]: r for r in run["rows"]}
      last = run["counts"][-1]
      run["final"] = eval_summary(last, by_step.get(last["step"], {}))
      first = run["counts"][0]
      run["start"] = eval_summary(first, by_step.get(0, {})) if first["step"] == 0 else None   # None: shared
      out[arm].append(run)
  if "base" in arms:   # every arm of a seed evaluates the same initial policy with the same eval rng at step 0
    out["base"] = []
    for i, s in enumerate(seeds):
      start = next((out[a][i]["start"] for a in out if out[a][i]["start"] is not None), None)
      if start is None:
        raise SystemExit(f"reproduce.py: error: seed {s}: no arm evaluated the base at step 0")
      out["base"].append({"final": start, "rows": [], "wall_s": 0.0})
    for arm in list(out):
      if arm != "base" and any(r["start"] is not None and not np.array_equal(r["start"]["counts"], b["final"]["counts"])
                               for r, b in zip(out[arm], out["base"])):
        print(f"[repro] warning: arm {arm}'s step-0 evaluation differs from the others' (not the same base?)",
              file=sys.stderr)
  return {arm: out[arm] for arm in arms}


def train_times(rows):
  """-> [(step, cumulative training seconds, row)] over the steps of a run, summing time/step but leaving out
  the run's first step (it compiles the sampler and the update: a fixed cost, not the method's speed)."""
  out, cum, first = [], 0.0, None
  for r in sorted(rows, key=lambda r: r["step"]):
    if r["step"] > 0:
      first = r["step"] if first is None else first
      cum += _num(r.get("time/step", 0.0)) if r["step"] != first else 0.0
    out.append((r["step"], cum, r))
  return out


def run_cpu_s(rows):
  """CPU seconds of a run's steps and evaluations (the trainer's cpu/step + cpu/eval; model loading and the
  compilations outside them excluded): on a shared machine the wall time depends on the load, this much less."""
  return float(sum(_num(r.get("cpu/step", 0.0)) + _num(r.get("cpu/eval", 0.0)) for r in rows))


def series(runs, key):
  """Per-step metric `key` over seeds -> (steps [T], mean [T], std [T]) on the steps every seed has."""
  per = [{r["step"]: _num(r[key]) for r in run["rows"] if key in r and r["step"] > 0} for run in runs]
  steps = sorted(set.intersection(*(set(p) for p in per))) if per else []
  vals = np.array([[p[s] for s in steps] for p in per]) if steps else np.zeros((len(per), 0))
  m, sd = evaluation.mean_std(vals) if len(per) else (np.zeros(0), np.zeros(0))
  return steps, m, sd


# ============================================================================ findings

def _per_seed(res, arm, fn):
  return [fn(r["final"]) for r in res[arm]]


def _check(name, values, holds, detail):
  values = [float(v) for v in values]
  return {"finding": name, "per_seed": values, "holds_all_seeds": bool(all(holds(v) for v in values)),
          "holds_seeds": int(sum(holds(v) for v in values)), "mean": float(np.mean(values)),
          "min": float(np.min(values)), "detail": detail}


def _diff(res, a, b, fn):
  return [fn(x["final"]) - fn(y["final"]) for x, y in zip(res[a], res[b])]


P1 = lambda f: f["pass"][0]          # pass@1
PN = lambda f: f["pass"][-1]         # pass@n (the largest k)


def findings(study, res):
  """The papers' claims as per-seed differences -> list of _check dicts (holds_all_seeds: in every seed). With a
  subset of the arms (--arms), the claims whose arms were all trained (e.g. --arms psr,nsr: PSR's and NSR's)."""
  pos, nonneg = (lambda v: v > 0), (lambda v: v >= 0)
  out = []
  if study == "psr_nsr":
    claims = [   # (arms it needs, name, per-seed values (deferred), holds, detail)
        (("psr",), "PSR raises pass@1 over the base", lambda: _diff(res, "psr", "base", P1), pos,
         "pass@1(PSR) - pass@1(base)"),
        (("psr",), "PSR lowers pass@n below the base", lambda: _diff(res, "base", "psr", PN), pos,
         "pass@n(base) - pass@n(PSR)"),
        (("nsr",), "NSR keeps or raises pass@n (vs base)", lambda: _diff(res, "nsr", "base", PN), nonneg,
         "pass@n(NSR) - pass@n(base)"),
        (("nsr",), "NSR raises pass@1 over the base", lambda: _diff(res, "nsr", "base", P1), pos,
         "pass@1(NSR) - pass@1(base)"),
        (("nsr", "psr"), "PSR's pass@n is below NSR's", lambda: _diff(res, "nsr", "psr", PN), pos,
         "pass@n(NSR) - pass@n(PSR)"),
        (("grpo", "psr", "nsr"), "GRPO's pass@n is between PSR's and NSR's",
         lambda: [min(g - p, n - g) for g, p, n in zip(_per_seed(res, "grpo", PN), _per_seed(res, "psr", PN),
                                                       _per_seed(res, "nsr", PN))], nonneg,
         "min(pass@n(GRPO) - pass@n(PSR), pass@n(NSR) - pass@n(GRPO))"),
        (("nsr", "psr"), "NSR keeps the entropy above PSR's", lambda: _diff(res, "nsr", "psr", lambda f: f["entropy"]),
         pos, "eval entropy(NSR) - eval entropy(PSR), nats/token"),
    ]
    trained = ["grpo", "psr", "nsr", "w_reinforce"]
    for i, name in ((0, "pass@1"), (-1, "pass@n")):
      claims.append((tuple(trained), f"W-REINFORCE is within 0.02 of the best trained arm at {name}",
                     lambda i=i: [max(r["final"]["pass"][i] for r in rs) - w["final"]["pass"][i]
                                  for w, *rs in zip(res["w_reinforce"], *(res[a] for a in trained))],
                     lambda v: v <= 0.02, f"best {name} of the trained arms - {name}(W-REINFORCE)"))
    return [_check(name, values(), holds, detail) for needs, name, values, holds, detail in claims
            if all(a in res for a in needs)]
  if set(STUDIES[study]) - set(res):   # the other studies: their claims need all of their arms
    return out
  if study == "length":
    zero = [np.mean([r["adv/zero_frac"] for r in run["rows"] if "adv/zero_frac" in r]) for run in res["grpo"]]
    out += [
        _check("GRPO: more than half the samples have zero advantage", zero, lambda v: v > 0.5,
               "mean over steps of GRPO's adv/zero_frac"),
        _check("positive-only improves pass@1 over the base", _diff(res, "positive_only", "base", P1), pos,
               "pass@1(positive-only) - pass@1(base)"),
        _check("negative-only improves pass@1 over the base", _diff(res, "negative_only", "base", P1), pos,
               "pass@1(negative-only) - pass@1(base)"),
        _check("relative length reward shortens correct answers", _diff(res, "grpo", "rlr",
                                                                       lambda f: f["length_correct"]), pos,
               "length of correct answers (tokens): GRPO - RLR"),
        _check("... at nearly equal accuracy (pass@1 within 0.03 of GRPO)", _diff(res, "grpo", "rlr", P1),
               lambda v: v <= 0.03, "pass@1(GRPO) - pass@1(RLR)"),
    ]
    def hard_solved(arm):   # problems with no correct base sample: share the arm solves at least once
      vals = []
      for r, b in zip(res[arm], res["base"]):
        hard = b["final"]["counts"] == 0
        vals.append(float((r["final"]["counts"][hard] > 0).mean()) if hard.any() else float("nan"))
      return vals
    out.append(_check("offline injection helps on problems the base never solves",
                      np.array(hard_solved("osi")) - np.array(hard_solved("grpo")), pos,
                      "share of base-unsolved eval problems solved at least once in n: OSI - GRPO"))
  elif study == "dash":
    def time_to(run, target):
      for step, cum, r in train_times(run["rows"]):
        if "eval/pass@1" in r and step > 0 and _num(r["eval/pass@1"]) >= target:
          return cum
      return float("inf")
    gaps = []
    for g, d, b in zip(res["grpo"], res["dash"], res["base"]):
      target = P1(b["final"]) + 0.9 * (P1(g["final"]) - P1(b["final"]))
      gaps.append(time_to(g, target) - time_to(d, target))
    out += [
        _check("DASH reaches 90 % of GRPO's pass@1 gain in less training wall-clock", gaps, pos,
               "seconds to reach it (sum of time/step after step 1 up to the first evaluation at or above): GRPO - DASH"),
        _check("DASH's final pass@1 is within 0.03 of GRPO's", _diff(res, "grpo", "dash", P1), lambda v: v <= 0.03,
               "pass@1(GRPO) - pass@1(DASH)"),
    ]
  elif study == "prorl":
    def late_gain(run):   # last evaluation minus the best earlier one: keeps improving (> 0) vs plateau (<= 0)
      ev = [(r["step"], _num(r["eval/pass@1"])) for r in run["rows"] if "eval/pass@1" in r]
      return ev[-1][1] - max(v for _, v in ev[:-1])
    out += [
        _check("with KL + reference resets the final pass@1 is higher", _diff(res, "prorl", "no_kl", P1), pos,
               "pass@1(ProRL) - pass@1(no KL)"),
        _check("with KL + resets the policy is still improving at the end", [late_gain(r) for r in res["prorl"]],
               pos, "last eval pass@1 - best earlier eval pass@1 (ProRL arm)"),
        _check("with KL + resets the entropy stays higher", _diff(res, "prorl", "no_kl", lambda f: f["entropy"]),
               pos, "eval entropy (nats/token): ProRL - no KL"),
    ]
  return out


# ============================================================================ report

def _pm(m, s, digits=3):
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def summarize(workdir, study, scale, seeds, res, wall):
  """Writes results.json / results.md / the PNGs into workdir -> the results dict."""
  ks = res[next(iter(res))][0]["final"]["ks"]
  table = {}
  for arm, runs in res.items():
    passes = np.array([r["final"]["pass"] for r in runs])
    m, sd = evaluation.mean_std(passes)
    row = {"pass_at_k": {str(k): [float(a), float(b)] for k, a, b in zip(ks, m, sd)}}
    for key in ("entropy", "length", "length_correct"):
      row[key] = [float(x) for x in evaluation.mean_std([r["final"][key] for r in runs])]
    zero = [np.mean([x["adv/zero_frac"] for x in r["rows"] if "adv/zero_frac" in x]) for r in runs if r["rows"]]
    row["zero_adv_frac"] = [float(np.mean(zero)), float(np.std(zero, ddof=1)) if len(zero) > 1 else 0.0] if zero else None
    train_s = [train_times(r["rows"])[-1][1] if r["rows"] else 0.0 for r in runs]
    row["train_s"] = [float(np.mean(train_s)), float(np.std(train_s, ddof=1)) if len(train_s) > 1 else 0.0]
    row["wall_s"] = [float(np.mean([r["wall_s"] for r in runs])), 0.0]
    cpu = [run_cpu_s(r["rows"]) for r in runs]
    row["cpu_s"] = [float(np.mean(cpu)), float(np.std(cpu, ddof=1)) if len(cpu) > 1 else 0.0]
    row["per_seed_pass_at_k"] = {str(k): [float(r["final"]["pass"][i]) for r in runs] for i, k in enumerate(ks)}
    table[arm] = row
  checks = findings(study, res)
  out = {"study": study, "scale": scale, "seeds": list(seeds), "ks": ks, "n": res[next(iter(res))][0]["final"]["n"],
         "num_problems": int(len(res[next(iter(res))][0]["final"]["counts"])), "arms": table, "findings": checks,
         "runs_wall_s": wall}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(out, f, indent=1)

  show = [k for k in ks if k in (1, 2, 4, 8, 16, 32, 64, 128, 256) or k == ks[-1]]
  lines = [f"# {study} ({scale} scale): mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
           f"{out['num_problems']} held-out problems, n = {out['n']} samples each", "",
           f"Wall time of the runs (SFT base included): {wall / 60:.1f} min; CPU time of their steps and "
           f"evaluations (base: its evaluations are in the trained arms'): "
           f"{sum(r['cpu_s'][0] for r in table.values()) * len(seeds) / 60:.1f} min.", "",
           "| arm | " + " | ".join(f"pass@{k}" for k in show) + " | entropy | length (correct) | zero-adv frac | "
           "train s | CPU s |", "|---" * (len(show) + 6) + "|"]
  for arm, row in table.items():
    z = row["zero_adv_frac"]
    lines.append(f"| {arm} | " + " | ".join(_pm(*row["pass_at_k"][str(k)]) for k in show) +
                 f" | {_pm(row['entropy'][0], row['entropy'][1], 2)} | {_pm(row['length_correct'][0], row['length_correct'][1], 1)} | "
                 f"{_pm(*z, 2) if z else '-'} | {row['train_s'][0]:.0f} | {row['cpu_s'][0]:.0f} |")
  lines += ["", "entropy: mean negative log-prob of the sampled evaluation tokens (nats/token, an estimate of the "
            "per-token entropy at the evaluation temperature); length: tokens of the correct responses; "
            "zero-adv frac: share of training samples with advantage exactly 0, mean over steps; train s: summed "
            "time/step after step 1 (compilation and evaluations excluded; the machine may have been shared); CPU s: CPU "
            "seconds of the run's steps and evaluations (mean over seeds; the base's evaluation is counted in the "
            "arm that ran it).", "", "## Findings (per seed)", "",
            "| finding | holds in | per-seed values | measured as |", "|---|---|---|---|"]
  for ch in checks:
    lines.append(f"| {ch['finding']} | {ch['holds_seeds']}/{len(ch['per_seed'])} | "
                 f"{', '.join(f'{v:+.3f}' for v in ch['per_seed'])} | {ch['detail']} |")
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")

  curves = {arm: (ks, *evaluation.mean_std([r["final"]["pass"] for r in runs])) for arm, runs in res.items()}
  evaluation.plot_bands(curves, os.path.join(workdir, "pass_at_k.png"), xlabel="k", ylabel="pass@k", logx=True,
                        ylim=(0, 1.02), title=f"{study} ({scale}): pass@k, mean ± std over {len(seeds)} seeds")
  for key, name, ylabel in (("entropy", "entropy.png", "policy entropy on training samples (nats/token)"),
                            ("response_length/mean", "response_length.png", "response length (tokens)"),
                            ("adv/zero_frac", "zero_adv.png", "share of samples with zero advantage"),
                            ("eval/pass@1", "eval_pass1.png", "eval pass@1")):
    curves = {arm: series(runs, key) for arm, runs in res.items() if arm != "base"}
    evaluation.plot_bands(curves, os.path.join(workdir, name), xlabel="step", ylabel=ylabel,
                          title=f"{study} ({scale}) over training")
  if study == "dash":
    curves = {}
    for arm in ("grpo", "dash"):
      per = []
      for run in res[arm]:
        per.append([(cum, _num(r["eval/pass@1"])) for _, cum, r in train_times(run["rows"]) if "eval/pass@1" in r])
      t = np.mean([[p[0] for p in pts] for pts in per], axis=0)
      curves[arm] = (t, *evaluation.mean_std([[p[1] for p in pts] for pts in per]))
    evaluation.plot_bands(curves, os.path.join(workdir, "dash_time.png"), xlabel="training wall-clock (s)",
                          ylabel="eval pass@1", title="dash: pass@1 against training time")
  return out


def measure(scale, workdir, sets):
  """Base pass@k of every task in scale.CANDIDATES (scale.get_config(task=name) + sets), one workdir each
  (DIR/measure/<name>, skipped when done) -> {name: eval metrics}; prints a table, writes DIR/candidates.json."""
  out = {}
  for name in scale.CANDIDATES:
    c = config_lib.override(scale.get_config("grpo", task=name).unlock(), sets)
    wd = os.path.join(workdir, "measure", name)
    path = os.path.join(wd, "base_eval.json")
    if not os.path.exists(path):
      print(f"[repro] measuring the base on {name}", file=sys.stderr)
      t = trainer.Trainer(config_lib.validate(c.lock()), wd)
      writer = outputs.MetricsWriter(wd, 0, t.c)
      try:
        row = t.evaluate(t.state["params"], 0, writer)
      finally:
        writer.close()
      with open(path, "w") as f:
        json.dump(row, f)
    with open(path) as f:
      out[name] = json.load(f)
  lines = ["| candidate | problems x samples | pass@1 | pass@max | response length | eval s |", "|---|---|---|---|---|---|"]
  for name, r in out.items():
    kmax = max(int(k.split("@")[1]) for k in r if k.startswith("eval/pass@") and not k.endswith("_std"))
    lines.append(f"| {name} | {r['eval/num_problems']} x {r['eval/n_samples']} | {r['eval/pass@1']:.3f} | "
                 f"{r[f'eval/pass@{kmax}']:.3f} (k={kmax}) | {_num(r['eval/response_length']):.1f} | "
                 f"{r['time/eval']:.0f} |")
  with open(os.path.join(workdir, "candidates.json"), "w") as f:
    json.dump(out, f, indent=1)
  print("\n".join(lines))
  return out


# ============================================================================ main

def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--study", default="psr_nsr", choices=sorted(STUDIES))
  ap.add_argument("--scale", default="fast", help="experiments/configs/repro/<scale>.py (fast | real)")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. S-1 per arm (>= 3 for the error bars)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="config override for every arm (dotted key, JSON value), e.g. --set total_steps=20")
  ap.add_argument("--sft_set", action="append", default=[], metavar="KEY=VALUE", help="override for the SFT base")
  ap.add_argument("--arms", default="", help="comma-separated subset of the study's arms (default: all)")
  ap.add_argument("--only_seeds", default="",
                  help="comma-separated seeds to train in this process (several processes can share a study "
                       "workdir, one per seed; the SFT base is made by the first); no summary, use --report_only")
  ap.add_argument("--share_base_eval", action="store_true",
                  help="only the first trained arm of a seed evaluates the base at step 0 (the others would repeat "
                       "it exactly: same policy, same eval rng); default: the scale's SHARE_BASE_EVAL")
  ap.add_argument("--report_only", action="store_true",
                  help="train nothing: summarise the seeds whose runs have all finished")
  ap.add_argument("--measure", action="store_true",
                  help="only evaluate the base on each of the scale's CANDIDATES tasks (choosing the task)")
  a = ap.parse_args(argv)
  if a.measure:
    return measure(load_scale(a.scale), a.workdir, _parse_sets(a.set))
  if a.seeds < 1:
    raise SystemExit("reproduce.py: error: --seeds must be >= 1")
  scale = load_scale(a.scale)
  sets, sft_sets = _parse_sets(a.set), _parse_sets(a.sft_set)
  study = STUDIES[a.study]
  if a.arms:
    keep = [x.strip() for x in a.arms.split(",") if x.strip()]
    bad = [x for x in keep if x not in study]
    if bad:
      raise SystemExit(f"reproduce.py: error: --arms {bad} not in study {a.study!r} ({', '.join(study)})")
    study = {k: v for k, v in study.items() if k in keep or v is None}
  os.makedirs(a.workdir, exist_ok=True)
  seeds = list(range(a.seeds))
  done = lambda arm, s: os.path.exists(os.path.join(a.workdir, "runs", arm, f"seed{s}", "done.json"))
  finished = lambda: [s for s in seeds if all(done(arm, s) for arm, spec in study.items() if spec is not None)]
  try:
    init_from = "" if a.report_only else make_base(scale, a.workdir, sft_sets)
    only = [int(x) for x in a.only_seeds.split(",") if x.strip()]
    share = a.share_base_eval or getattr(scale, "SHARE_BASE_EVAL", False)
    first = next(arm for arm, spec in study.items() if spec is not None)
    for s in [] if a.report_only else (only or seeds):   # seed-major: an interrupted study has every arm at the seeds it finished
      for arm, spec in study.items():
        if spec is None:
          continue
        c = arm_config(scale, spec, s, init_from, sets, eval_base=arm == first or not share)
        run_once(c, os.path.join(a.workdir, "runs", arm, f"seed{s}"), f"{arm} seed {s}")
  except ValueError as e:
    if str(e).startswith("config."):
      raise SystemExit(f"reproduce.py: error: {e}") from None
    raise
  except trainer.TrainError as e:
    raise SystemExit(f"reproduce.py: error: {e}") from None
  if only:
    print(f"[repro] trained seeds {only}; summarise with --report_only", file=sys.stderr)
    return None
  if finished() != seeds:   # --report_only, or runs left to other processes
    seeds = finished()
    if not seeds:
      raise SystemExit(f"reproduce.py: error: no seed of {a.workdir} has every arm finished")
    print(f"[repro] summarising the seeds with every arm finished: {seeds}", file=sys.stderr)
  res = collect(a.workdir, study, seeds)
  sft_done = os.path.join(a.workdir, "base_sft", "done.json")
  wall = sum(r["wall_s"] for runs in res.values() for r in runs)
  wall += json.load(open(sft_done))["wall_s"] if os.path.exists(sft_done) else 0.0
  out = summarize(a.workdir, a.study, a.scale, seeds, res, wall)
  with open(os.path.join(a.workdir, "results.md")) as f:
    print(f.read())
  return out


if __name__ == "__main__":
  main()
