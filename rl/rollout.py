"""Rollouts: prompts -> sampling.generate -> decode -> score, DAPO dynamic-sampling refill, offline injection.

    ctx = Context.build(config, tokenizer, task, graphdef, mesh, workdir)
    batch, info = collect(ctx, params, prompt_iterator, rng)     # one step's Batch (N = P*G rows)

The `Batch` built here travels unchanged (field names never renamed) through `rl.algorithms.postprocess`
(shaped_reward, adv, keep) to `rl.update` and `rl.outputs`. Rows are prompt-major: row i*G+j is sample j
of prompt i.

Multi-process (one process per host, jax.distributed): every process runs this host code on the same prompts;
the sampler's outputs are gathered to every process (`models.sharding.to_host`), each process scores only its
share of the rows (`process_rows`) and the scores are all-gathered (`gather_scores`), so the reward work is
split across hosts and every process holds the same Batch.
"""
import dataclasses
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

import sampling
from models.sharding import to_host
from rl import advantages as adv_lib
from rl import algorithms, data
from rl.data.solutions import SolutionStore
from rl.outputs import note
from rl.rewards import Score, pool


class Batch(NamedTuple):
  """One step's samples, N rows, prompt-major; numpy arrays (L prompt width, T = max_new_tokens).

  problems   list[Problem] [N]  the problem of each row
  prompt     int32 [N,L]   left-padded prompt ids;  prompt_mask bool [N,L]
  tokens     int32 [N,T]   response ids (pad after the end);  mask bool [N,T] valid response tokens (EOS included)
  logprobs   f32 [N,T]     log-probs under the distribution the sampler drew from (temperature, top-k, top-p);
                           0 where masked and on rows not sampled (injected solutions, SFT)
  lengths    int32 [N];  stopped bool [N] (emitted an EOS id)
  completions list[str] [N]  decoded responses;  pred list[str | None] [N] extracted answers
  reward     f32 [N];  correct bool [N];  injected bool [N] (an offline solution replaced the sample)
  keep       bool [N]      rows that enter the loss (the rollout drops groups it could not refill; the
                           algorithm's keep mask and the DASH filter are and-ed in by rl.algorithms)
  shaped_reward f32 [N];  adv f32 [N]   set by rl.algorithms.postprocess (rollout: reward, 0)
  """
  problems: list
  prompt: np.ndarray
  prompt_mask: np.ndarray
  tokens: np.ndarray
  mask: np.ndarray
  logprobs: np.ndarray
  lengths: np.ndarray
  stopped: np.ndarray
  completions: list
  pred: list
  reward: np.ndarray
  correct: np.ndarray
  injected: np.ndarray
  keep: np.ndarray
  shaped_reward: np.ndarray
  adv: np.ndarray


# ============================================================================ tokenizer helpers

def encode_text(tok, text):
  return list(tok(text, add_special_tokens=False)["input_ids"])


def special_ids(tok, model_cfg):
  """-> (eos_ids tuple, pad_id): the tokenizer's and the model config's EOS ids plus common chat end-of-turn ids."""
  eos = {tok.eos_token_id} if getattr(tok, "eos_token_id", None) is not None else set()
  e = model_cfg.eos_token_id
  eos |= set(e if isinstance(e, tuple) else ([] if e is None else [e]))
  for t in ("<|im_end|>", "<|endoftext|>"):   # chat end-of-turn tokens of common instruct models
    i = tok.convert_tokens_to_ids(t) if hasattr(tok, "convert_tokens_to_ids") else None
    if isinstance(i, int) and i != getattr(tok, "unk_token_id", None):
      eos.add(i)
  pad = getattr(tok, "pad_token_id", None)
  pad = pad if pad is not None else min(eos) if eos else 0
  return tuple(sorted(eos)), int(pad)


# ============================================================================ context

@dataclasses.dataclass
class Context:
  """What rollouts need besides the parameters; built once by the trainer (no training state)."""
  config: object
  tok: object
  task: object
  graphdef: object
  mesh: object
  eos_ids: tuple
  pad_id: int
  solutions: SolutionStore | None
  prompt_cache: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def build(cls, config, tok, task, model, graphdef, mesh, workdir):
    """model: the Decoder (for its EOS ids); graphdef: nnx.split(model, nnx.Param)[0]."""
    eos_ids, pad_id = special_ids(tok, model.cfg)
    store = load_solutions(config.osi.solutions_file, task, workdir) if config.osi.enabled else None
    return cls(config, tok, task, graphdef, mesh, eos_ids, pad_id, store)


def load_solutions(path, task, workdir):
  """config.osi.solutions_file -> SolutionStore ("gold": the task's gold solutions, also written to
  workdir/solutions.jsonl)."""
  if path == "gold":
    store = SolutionStore()
    for p in task.train_problems:
      store.add(p.id, p.solution or p.answer)
    store.save(os.path.join(workdir, "solutions.jsonl"))
    return store
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.osi.solutions_file={path!r} does not exist")
  return SolutionStore.load(path)


def prompts(ctx, problems):
  """problems [P] -> (int32 [P,W], bool [P,W]) left-padded prompt ids (cached per problem id)."""
  pc, ids = ctx.config.prompt, []
  for p in problems:
    if p.id not in ctx.prompt_cache:
      ctx.prompt_cache[p.id] = data.build_prompt(ctx.tok, p.question, system=pc.system or None,
                                                 suffix=pc.suffix or None, template=pc.template or None,
                                                 use_chat_template=pc.use_chat_template)
    ids.append(ctx.prompt_cache[p.id])
  # width bucketed: few distinct prompt widths, so few compilations of the sampler and of the trainer's forward
  return sampling.left_pad(ids, ctx.pad_id, width=sampling.bucket(max(len(s) for s in ids), minimum=8))


# ============================================================================ sample -> decode -> score

def process_rows(n):
  """-> slice of the n rows this process scores: contiguous, process-major, sizes differing by at most 1."""
  k, i = jax.process_count(), jax.process_index()
  return slice(i * n // k, (i + 1) * n // k)


def gather_scores(local):
  """This process's list of Scores -> all processes' lists concatenated in process order (the same list on
  every process). One process: unchanged. Several: the lists travel as JSON bytes through process_allgather
  (floats keep their value: JSON writes the shortest repr that reads back to the same float)."""
  if jax.process_count() == 1:
    return list(local)
  blob = np.frombuffer(json.dumps([[float(s.reward), bool(s.correct), s.pred] for s in local]).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int64(blob.size))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:blob.size] = blob
  every = np.asarray(multihost_utils.process_allgather(padded))   # [processes, max size]
  return [Score(*s) for row, size in zip(every, sizes) for s in json.loads(row[:size].tobytes().decode())]


_SAMPLER_SHAPES = set()   # sampler shapes already compiled in this process (to announce new compilations)


def sampler_chunk(chunk_size, max_new_tokens):
  """Decode steps per compiled sampler chunk: config.rollout.chunk_size, or with 0 the sampler's default, 128.
  Smaller chunks let rows that finished early be compacted away sooner (one chunk of N steps never compacts), but
  each chunk shape is one more compiled program and a host sync: measured on the idle 2-core CPU at 8 x 8 rows x 64
  new tokens (SmolLM2-135M, bench_step), two chunks of 32 took 14.7-17.5 s per call against 13.3-14.6 s for one
  chunk of 64, so the default stays one chunk up to 128 tokens. The samples do not depend on it beyond float
  rounding (the attention shapes change with the cache slots; on SmolLM2-135M at N=64, 0-2 of 64 rows differed
  from a late token on). max_new_tokens: kept for a length-dependent rule."""
  del max_new_tokens
  return chunk_size or 128


def sample(ctx, params, problems, rng, *, group_size, max_new_tokens, temperature):
  """Samples group_size completions per problem, decodes and scores them -> (Batch, times dict)."""
  r = ctx.config.rollout
  toks, pmask = prompts(ctx, problems)
  key = (len(problems), toks.shape[1], group_size, sampling.bucket(max_new_tokens, 16), temperature == 0)
  if key not in _SAMPLER_SHAPES:
    _SAMPLER_SHAPES.add(key)
    note(f"compiling the sampler for {len(problems)} prompts x {group_size} samples, prompt width "
         f"{toks.shape[1]}, up to {max_new_tokens} new tokens (first call with these shapes)...")
  t0 = time.perf_counter()
  out = sampling.generate((ctx.graphdef, params), toks, prompt_mask=pmask, group_size=group_size,
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=r.top_p, top_k=r.top_k,
                          eos_ids=ctx.eos_ids, pad_id=ctx.pad_id, rng=rng, mesh=ctx.mesh,
                          chunk_size=sampler_chunk(r.chunk_size, max_new_tokens), gather_weights=r.gather_weights)
  out = jax.tree.map(lambda a: np.array(to_host(a)), out)   # every process: all rows (gathered)
  t1 = time.perf_counter()
  rows = [p for p in problems for _ in range(group_size)]
  completions = [ctx.tok.decode(t[m].tolist(), skip_special_tokens=True) for t, m in zip(out.tokens, out.mask)]
  timeouts_before = pool.get_pool(r.reward_workers).timeouts
  mine = process_rows(len(rows))   # this process scores its share; the scores are gathered
  scores = gather_scores(pool.score_batch(ctx.task.score, completions[mine], rows[mine], timeout=r.reward_timeout,
                                          workers=r.reward_workers))
  timeouts = pool.get_pool(r.reward_workers).timeouts - timeouts_before
  if jax.process_count() > 1:   # summed over processes
    timeouts = int(np.asarray(multihost_utils.process_allgather(np.int64(timeouts))).sum())
  n = len(rows)
  reward = np.array([s.reward for s in scores], np.float32)
  batch = Batch(problems=rows, prompt=out.prompt_tokens, prompt_mask=out.prompt_mask, tokens=out.tokens,
                mask=out.mask, logprobs=out.logprobs, lengths=out.lengths, stopped=out.stopped,
                completions=completions, pred=[s.pred for s in scores], reward=reward,
                correct=np.array([s.correct for s in scores], bool), injected=np.zeros(n, bool),
                keep=np.ones(n, bool), shaped_reward=reward.copy(), adv=np.zeros(n, np.float32))
  return batch, {"time/generate": t1 - t0, "time/reward": time.perf_counter() - t1, "reward/timeouts": timeouts}


def sft_batch(ctx, problems):
  """SFT: the gold solution (+EOS) of each problem as the response, reward 1, correct."""
  T = ctx.config.rollout.max_new_tokens
  toks, pmask = prompts(ctx, problems)
  n = len(problems)
  tokens, mask = np.full((n, T), ctx.pad_id, np.int32), np.zeros((n, T), bool)
  texts = []
  for i, p in enumerate(problems):
    texts.append(p.solution or p.answer)
    ids = (encode_text(ctx.tok, texts[-1]) + [ctx.eos_ids[0]])[:T]
    tokens[i, :len(ids)], mask[i, :len(ids)] = ids, True
  ones = np.ones(n, np.float32)
  return Batch(problems=list(problems), prompt=toks, prompt_mask=pmask, tokens=tokens, mask=mask,
               logprobs=np.zeros((n, T), np.float32), lengths=mask.sum(1).astype(np.int32),
               stopped=np.ones(n, bool), completions=texts, pred=[p.answer for p in problems], reward=ones,
               correct=np.ones(n, bool), injected=np.zeros(n, bool), keep=np.ones(n, bool),
               shaped_reward=ones.copy(), adv=np.zeros(n, np.float32))


def _copy_rows(dst, src, d, s, G):
  """Group s of batch `src` -> group d of batch `dst` (in place, every field)."""
  for a, b in zip(dst, src):
    a[d * G:(d + 1) * G] = b[s * G:(s + 1) * G]


# ============================================================================ one step's batch

def collect(ctx, params, it, rng):
  """Draws prompts from `it` and builds one step's Batch: sample (or SFT), DAPO refill, offline injection.

  Returns (Batch, info dict of timings and filter metrics).
  """
  c = ctx.config
  r, G = c.rollout, c.rollout.group_size
  if not algorithms.REGISTRY[c.algo].rollout:
    return sft_batch(ctx, next(it)), {"time/generate": 0.0, "time/reward": 0.0, "reward/timeouts": 0}
  draw = lambda k: sample(ctx, params, next(it), jax.random.fold_in(rng, k), group_size=G,
                          max_new_tokens=r.max_new_tokens, temperature=r.temperature)
  batch, info = draw(0)
  info["dynamic/dropped_group_frac"] = 0.0
  if c.filters.dynamic_sampling:
    # DAPO: keep groups with reward variance; refill the batch from extra draws (at most max_extra_draws).
    const = np.array(adv_lib.zero_variance_groups(jnp.asarray(batch.reward), G))
    info["dynamic/dropped_group_frac"] = float(const.mean())
    draws = 0
    while const.any() and draws < c.filters.max_extra_draws:
      draws += 1
      extra, t = draw(draws)
      info["time/generate"] += t["time/generate"]
      info["time/reward"] += t["time/reward"]
      info["reward/timeouts"] += t["reward/timeouts"]
      informative = np.nonzero(~np.asarray(adv_lib.zero_variance_groups(jnp.asarray(extra.reward), G)))[0]
      for s, d in zip(informative, np.nonzero(const)[0]):   # informative groups into slots of constant ones
        _copy_rows(batch, extra, d, s, G)
        const[d] = False
    info["dynamic/extra_draws"] = draws
    info["dynamic/unfilled_group_frac"] = float(const.mean())
    batch.keep[:] = np.repeat(~const, G)
  if ctx.solutions is not None:
    info["osi/injected"] = inject_offline(ctx, batch)
  return batch, info


def inject_offline(ctx, b):
  """OSI: in hard groups (accuracy <= max_group_accuracy), replace incorrect samples by stored solutions.

  In place on Batch b; returns the number of injected rows.
  """
  oc, G, T = ctx.config.osi, ctx.config.rollout.group_size, b.tokens.shape[1]
  acc = b.correct.reshape(-1, G).mean(1)
  injected = 0
  for g in np.nonzero(acc <= oc.max_group_accuracy)[0]:
    sols = ctx.solutions.get(b.problems[g * G].id)
    wrong = [g * G + j for j in range(G) if not b.correct[g * G + j]]
    for k, i in enumerate(wrong[:oc.per_group if sols else 0]):
      text = sols[k % len(sols)]
      ids = (encode_text(ctx.tok, text) + [ctx.eos_ids[0]])[:T]
      b.tokens[i] = ctx.pad_id
      b.tokens[i, :len(ids)] = ids
      b.mask[i] = np.arange(T) < len(ids)
      b.lengths[i], b.stopped[i] = len(ids), len(ids) < T or ids[-1] in ctx.eos_ids
      b.logprobs[i] = 0.0
      b.completions[i], b.pred[i] = text, b.problems[i].answer
      b.reward[i], b.correct[i] = 1.0, True    # stored solutions are correct by construction
      b.injected[i] = True
      injected += 1
  return injected


# ============================================================================ evaluation sampling

def evaluate(ctx, params, problems, rng):
  """config.eval: n samples per problem, R runs -> (correct bool [R,P,n], preds R x P lists of n, first Batch, stats).

  Sampled in chunks of eval.prompts_per_call problems x eval.samples_per_call samples (0 = all), so n can be large
  (pass@256) with bounded memory. stats (floats over every sample of every run): "nll" the mean negative log-prob
  of the sampled tokens (a Monte-Carlo estimate of the per-token entropy at eval.temperature), "length" the mean
  response length, "length_correct" that of the correct responses (nan when none is correct).
  """
  e = ctx.config.eval
  n, max_new = e.n_samples, e.max_new_tokens or ctx.config.rollout.max_new_tokens
  chunk = e.prompts_per_call or len(problems)
  per_call = min(e.samples_per_call or n, n)
  correct_runs, preds_runs, first = [], [], None
  nll = tokens = length = length_ok = num_ok = 0.0
  for run in range(e.runs):
    correct, preds = [], []
    for s in range(0, len(problems), chunk):
      ps = problems[s:s + chunk]
      key = jax.random.fold_in(rng, run * 100003 + s)
      c_parts, p_parts = [], []
      for j in range(0, n, per_call):   # samples j .. j+g of every problem of the chunk
        g = min(per_call, n - j)
        b, _ = sample(ctx, params, ps, key if j == 0 else jax.random.fold_in(key, j), group_size=g,
                      max_new_tokens=max_new, temperature=e.temperature)
        first = first or b
        c_parts.append(b.correct.reshape(len(ps), g))
        p_parts.append([b.pred[i * g:(i + 1) * g] for i in range(len(ps))])
        nll -= float((b.logprobs * b.mask).sum())
        tokens += float(b.mask.sum())
        length += float(b.lengths.sum())
        length_ok += float(b.lengths[b.correct].sum())
        num_ok += float(b.correct.sum())
      correct.append(np.concatenate(c_parts, 1))
      preds.extend(sum((part[i] for part in p_parts), []) for i in range(len(ps)))
    correct_runs.append(np.concatenate(correct, 0))
    preds_runs.append(preds)
  num = e.runs * len(problems) * n
  stats = {"nll": nll / max(tokens, 1.0), "length": length / num,
           "length_correct": length_ok / num_ok if num_ok else float("nan")}
  return np.stack(correct_runs), preds_runs, first, stats
