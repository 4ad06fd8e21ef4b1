"""Builds the labelled verifier corpora (reproducible; CPU, ~15 min of niced sampling on 2 cores).

    python -m experiments.make_verifier_corpus [--limit_prompts N]

Two files:
  rl/data/verifier_corpus_smollm2.jsonl  (--out) rows not written with the verifier in mind:
      "smollm2"  completions sampled from SmolLM2-135M-Instruct (models.smollm2_gguf_path(), seed 16,
                 temperature 0.7, top-p 0.95) on the bundled math sample and on the arithmetic task
                 (tasks.make("arithmetic", num_terms=3, ops="+-*", seed=16)), with two prompt styles: our
                 \\boxed{} suffix (rl.data.DEFAULT_SUFFIX) and the Minerva / lm-eval instruction
                 ("Final Answer: The final answer is $ANSWER$. I hope it is correct.");
      "gold"     each problem's reference solution as written in the dataset, scored against its answer.
      Provenance (command, model file + sha256, seed, sampling settings, versions) goes to
      rl/data/verifier_corpus_smollm2.provenance.json.
  rl/data/verifier_corpus.jsonl  (--format_out) the 50 hand-written "format" rows: MATH-style answers
      for the format classes of issue 16 (mixed numbers, percent, chained equalities, inequality vs
      interval, equation multiples, decimals vs rationals, Unicode, unit wrappers), labelled by reading.

Labels of the generated rows: what a grader reading the completion would say: True iff the final answer
the completion commits to (its box, its "final answer" line, else the result its last step states) equals
the gold answer; a completion cut off before any answer, or with several conflicting final answers, is
False. Where our verifier and math-verify agree the label starts as their verdict ("labelled_by":
"both verifiers"); every row where they disagree must carry a hand label ("labelled_by": "hand") with a
one-line reason, or the script stops and prints the rows to label; a random sample of agreements is
re-read by hand too ("hand (agreement check)"). Hand labels are kept across re-runs: they are read back from
the existing --out file (matched by id and completion text) and from --labels (a JSON file
{id: [label, reason]}, for adding new ones). Rows: {"id", "source", "class", "extract", "completion",
"gold", "label", "reason", "labelled_by", "math_verify", "ours"}; "extract" is the extraction mode of
the task the row comes from (math tasks: "strict"; arithmetic: "auto"), which experiments/bench_verifier.py
uses for our verifier.
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import random
import sys
import time

import jax
import numpy as np

import models
import sampling
from models.gguf_io import load_gguf_tokenizer
from rl import data, tasks
from rl.rewards import math as rmath
from rl.rewards import math_verify_backend as mvb

MINERVA = ("Solve the problem. End your answer with the line \"Final Answer: The final answer is $ANSWER$. "
           "I hope it is correct.\" where ANSWER is the final answer.\n\nProblem: {question}")

# (class, completion, gold, label, reason): MATH-style answer formats, the label by reading.
FORMAT_ROWS = [
    ("mixed", "So she has $\\boxed{2\\frac{3}{4}}$ cups.", "\\frac{11}{4}", True, "2 3/4 = 11/4 (mixed number)"),
    ("mixed", "So she has $\\boxed{2\\frac{3}{4}}$ cups.", "\\frac{3}{2}", False, "2 3/4 is not 2*3/4"),
    ("mixed", "The answer is $\\boxed{1\\frac{1}{2}}$.", "\\frac{3}{2}", True, "mixed number"),
    ("mixed", "The answer is $\\boxed{1\\frac{1}{2}}$.", "\\frac{1}{2}", False, "mixed number is 3/2, not 1/2"),
    ("mixed", "Final Answer: The final answer is $3\\frac{1}{3}$. I hope it is correct.", "\\frac{10}{3}", True,
     "mixed number, Minerva format"),
    ("mixed", "Final Answer: The final answer is $3\\frac{1}{3}$. I hope it is correct.", "1", False,
     "3 1/3 is not the product 1"),
    ("mixed", "$\\boxed{-1\\frac{1}{4}}$", "-\\frac{5}{4}", True, "sign applies to the whole mixed number"),
    ("mixed", "$\\boxed{-1\\frac{1}{4}}$", "-\\frac{1}{4}", False, "sign applies to the whole mixed number"),
    ("mixed", "$\\boxed{4 \\frac{1}{2}}$", "4.5", True, "mixed number with a space"),
    ("mixed", "$\\boxed{4 \\frac{1}{2}}$", "2", False, "not the product"),
    ("percent", "The rate is $\\boxed{12\\%}$.", "0.12", True, "12% is 0.12"),
    ("percent", "The rate is $\\boxed{0.12}$.", "12\\%", True, "0.12 is 12%"),
    ("percent", "The rate is $\\boxed{12}$.", "12\\%", True, "percent sign omitted, same number"),
    ("percent", "The rate is $\\boxed{12\\%}$.", "12", True, "percent sign added to the asked number"),
    ("percent", "The rate is $\\boxed{1.2\\%}$.", "12\\%", False, "1.2% is not 12%"),
    ("percent", "The rate is $\\boxed{0.12\\%}$.", "12\\%", False, "0.12% is not 12%"),
    ("percent", "The rate is $\\boxed{120\\%}$.", "12\\%", False, "wrong by 10x"),
    ("percent", "The rate is $\\boxed{12}$.", "0.12", False, "no percent sign anywhere: 12 is not 0.12"),
    ("percent", "Final Answer: The final answer is $25\\%$. I hope it is correct.", "\\frac{1}{4}", True,
     "25% is a quarter"),
    ("percent", "Final Answer: The final answer is $25\\%$. I hope it is correct.", "\\frac{1}{5}", False,
     "25% is not a fifth"),
    ("chain", "Thus $\\boxed{y = 3\\cdot 5 = 15}$.", "15", True, "last right-hand side"),
    ("chain", "Thus $\\boxed{y = 3\\cdot 5 = 16}$.", "15", False, "last right-hand side is 16"),
    ("chain", "Thus $\\boxed{x = 2+3 = 5}$.", "5", True, "last right-hand side"),
    ("chain", "Thus $\\boxed{x = 5 = 2+4}$.", "5", False, "last right-hand side is 6"),
    ("chain", "Thus $\\boxed{A = \\pi r^2 = 9\\pi}$.", "9\\pi", True, "last right-hand side"),
    ("chain", "Thus $\\boxed{A = \\pi r^2 = 9\\pi}$.", "3\\pi", False, "last right-hand side is 9 pi"),
    ("chain", "Thus $\\boxed{3 \\cdot 4 = 12}$.", "12", True, "computation ending in the answer"),
    ("chain", "Thus $\\boxed{3 \\cdot 4 = 12}$.", "3", False, "the answer is the result 12"),
    ("inequality", "$\\boxed{-2 \\le y < 5}$", "[-2,5)", True, "same set"),
    ("inequality", "$\\boxed{-2 < y < 5}$", "[-2,5)", False, "open at -2"),
    ("inequality", "$\\boxed{x > 3}$", "(3,\\infty)", True, "same set"),
    ("inequality", "$\\boxed{x \\geq 3}$", "(3,\\infty)", False, "closed at 3"),
    ("inequality", "$\\boxed{x < 5}$", "(-\\infty,5)", True, "same set"),
    ("eq_multiple", "$\\boxed{2x + 4y = 6}$", "x + 2y = 3", True, "same line (x2)"),
    ("eq_multiple", "$\\boxed{2x + 4y = 7}$", "x + 2y = 3", False, "parallel line"),
    ("eq_multiple", "$\\boxed{x^2 = 4}$", "x = 2", False, "not a multiple (x = -2 too)"),
    ("precision", "$\\boxed{0.1666667}$", "\\frac{1}{6}", True, "1/6 rounded to 7 places"),
    ("precision", "$\\boxed{0.17}$", "\\frac{1}{6}", False, "2 places: an approximation"),
    ("precision", "$\\boxed{0.3333}$", "\\frac{1}{3}", False, "4 places: an approximation"),
    ("precision", "$\\boxed{3.14}$", "\\pi", False, "approximation of pi"),
    ("unicode", "The answer is \u22123.", "-3", True, "U+2212 minus"),
    ("unicode", "The answer is \u221a2.", "\\sqrt{2}", True, "square root sign"),
    ("unicode", "The answer is 3\u03c0.", "3\\pi", True, "pi sign"),
    ("unicode", "The answer is \u22123.", "3", False, "sign matters"),
    ("units", "$\\boxed{5\\textnormal{ cm}}$", "5", True, "unit wrapper"),
    ("units", "$\\boxed{5\\mathrm{cm}}$", "5", True, "unit wrapper"),
    ("units", "$\\boxed{12\\mbox{ inches}}$", "12", True, "unit wrapper"),
    ("units", "$\\boxed{6\\mbox{ inches}}$", "12", False, "wrong number"),
    ("minerva", "Final Answer: The final answer is $42$. I hope it is correct.", "42", True, "Minerva format"),
    ("minerva", "Final Answer: The final answer is $41$. I hope it is correct.", "42", False, "wrong number"),
]

def _generate(model, tok, prompts, samples, max_new_tokens, seed):
    """One sampling call for all prompts (one compilation): -> len(prompts) * samples strings, prompt-major."""
    eos = [tok.eos_token_id] + [i for i in [tok.convert_tokens_to_ids("<|im_end|>")] if isinstance(i, int)]
    out = sampling.generate(model, prompts, group_size=samples, max_new_tokens=max_new_tokens, temperature=0.7,
                            top_p=0.95, eos_ids=eos, pad_id=tok.pad_token_id or 0, rng=jax.random.key(seed))
    toks, mask = np.asarray(out.tokens), np.asarray(out.mask)
    return [tok.decode(t[m].tolist(), skip_special_tokens=True) for t, m in zip(toks, mask)]


def _torch_model(gguf_path):
    import torch  # optional: only this backend needs it
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)  # 2 threads on an oversubscribed CPU spend their time at barriers
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))


def _generate_torch(model, tok, prompts, samples, max_new_tokens, seed):
    """The same sampling with transformers + torch (no XLA compilation; for a loaded CPU): one chunk of
    prompts -> len(prompts) * samples strings, prompt-major."""
    import torch  # optional: only this backend needs it
    torch.manual_seed(seed)
    eos = [tok.eos_token_id] + [i for i in [tok.convert_tokens_to_ids("<|im_end|>")] if isinstance(i, int)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=0.7, top_p=0.95,
                             max_new_tokens=max_new_tokens, num_return_sequences=samples, eos_token_id=eos,
                             pad_token_id=pad)
    return [tok.decode(g[width:].tolist(), skip_special_tokens=True) for g in gen]


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path, rows, keys):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in keys}, ensure_ascii=False) + "\n")


def _verdicts(rows):
    for r in rows:
        r["math_verify"] = mvb.score(r["completion"], r["gold"], timeout=5.0).correct
        r["ours"] = rmath.score(r["completion"], r["gold"], extract=r["extract"], timeout=5.0).correct


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=data.sample_path("verifier_corpus_smollm2.jsonl"))
    ap.add_argument("--format_out", default=data.sample_path("verifier_corpus.jsonl"))
    ap.add_argument("--labels", default=None, help="JSON {id: [label, reason]}: new hand labels")
    ap.add_argument("--samples", type=int, default=1, help="completions per prompt and style")
    ap.add_argument("--arith", type=int, default=40, help="arithmetic problems")
    ap.add_argument("--max_new_tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=16, help="prompts per sampling call (cached after each)")
    ap.add_argument("--limit_prompts", type=int, default=None,
                    help="only the first N prompts of the seeded shuffled order (both tasks and styles)")
    ap.add_argument("--check", type=int, default=40, help="agreements re-read by hand (random sample, --seed)")
    ap.add_argument("--backend", default="torch", choices=["jax", "torch"],
                    help="jax: models + sampling.generate; torch: transformers (no XLA compile on a loaded CPU)")
    ap.add_argument("--cache", default="/tmp/verifier_corpus_completions.json",
                    help="sampled completions are cached here (re-labelling does not re-sample)")
    ap.add_argument("--no_model", action="store_true", help="only the format rows (no sampling)")
    a = ap.parse_args()

    fmt = [{"id": f"format/{i:03d}", "source": "format", "class": c, "extract": "strict", "completion": comp,
            "gold": g, "label": lab, "reason": why, "labelled_by": "hand"}
           for i, (c, comp, g, lab, why) in enumerate(FORMAT_ROWS)]
    _verdicts(fmt)
    _write_jsonl(a.format_out, fmt, ["id", "source", "class", "completion", "gold", "label", "reason", "math_verify",
                                     "ours"])
    print(f"wrote {len(fmt)} format rows to {a.format_out}")
    if a.no_model:
        return

    math_probs = tasks.make("math_sample").train_problems
    arith = tasks.make("arithmetic", train_size=a.arith, eval_size=1, num_terms=3, ops="+-*",
                       seed=16).train_problems
    path = models.smollm2_gguf_path()
    settings = {"model": os.path.basename(path), "model_sha256": _sha256(path), "backend": a.backend,
                "seed": a.seed, "samples": a.samples, "max_new_tokens": a.max_new_tokens, "temperature": 0.7,
                "top_p": 0.95, "arith": a.arith, "chunk": a.chunk}
    cached = {"settings": settings, "rows": []}
    if os.path.exists(a.cache):
        with open(a.cache) as f:
            cached = json.load(f)
        if not isinstance(cached, dict) or cached.get("settings") != settings:
            raise SystemExit(f"{a.cache}: cached completions were sampled with other settings; delete it")
    tok = load_gguf_tokenizer(path)
    meta, prompts = [], []
    for style, template in (("boxed", None), ("minerva", MINERVA)):
        for name, probs in (("math_sample", math_probs), ("arithmetic", arith)):
            for p in probs:
                meta.append((style, name, p))
                prompts.append(data.build_prompt(tok, p.question, suffix=data.DEFAULT_SUFFIX, template=template))
    order = list(range(len(prompts)))
    random.Random(a.seed).shuffle(order)  # chunks mix tasks and styles: a --limit_prompts prefix covers all
    order = order[:a.limit_prompts] if a.limit_prompts else order
    chunks = [order[k:k + a.chunk] for k in range(0, len(order), a.chunk)]

    def row(k, j, c):
        style, name, p = meta[k]
        return {"id": f"smollm2/{name}/{style}/{p.id}/{j}", "class": f"{name}/{style}", "completion": c,
                "gold": p.answer, "chunk": j}
    done = {r["id"] for r in cached["rows"]}
    t0 = time.time()
    model = None
    for ci, chunk in enumerate(chunks):
        first = row(chunk[0], 0, "")["id"]
        if first in done:
            continue
        if model is None:
            model = (_torch_model(path) if a.backend == "torch" else
                     models.load_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))[0])
        cps = [prompts[k] for k in chunk]
        if a.backend == "torch":  # chunk ci is sampled with seed + ci: a resumed run samples the same
            comps = _generate_torch(model, tok, cps, a.samples, a.max_new_tokens, a.seed + ci)
        else:
            comps = _generate(model, tok, cps, a.samples, a.max_new_tokens, seed=a.seed + ci)
        cached["rows"] += [dict(row(chunk[i // a.samples], i % a.samples, c), chunk=ci) for i, c in enumerate(comps)]
        with open(a.cache, "w") as f:  # after every chunk: a stopped run keeps what it sampled
            json.dump(cached, f)
        print(f"chunk {ci + 1}/{len(chunks)} sampled ({time.time() - t0:.0f} s)", flush=True)
    ids = {row(k, j, "")["id"] for k in order for j in range(a.samples)}
    gen = [{k: v for k, v in r.items() if k != "chunk"} for r in cached["rows"] if r["id"] in ids]

    extract = {"math_sample": "strict", "arithmetic": "auto"}  # each task's default extraction mode
    rows = [dict(r, source="smollm2", extract=extract[r["class"].split("/")[0]]) for r in gen]
    rows += [{"id": f"gold/{name}/{p.id}", "source": "gold", "class": f"{name}/solution", "extract": extract[name],
              "completion": p.solution, "gold": p.answer} for name, probs in (("math_sample", math_probs),
                                                                              ("arithmetic", arith)) for p in probs]
    _verdicts(rows)
    hand = {r["id"]: (r["completion"], r["label"], r["reason"], r["labelled_by"])
            for r in _read_jsonl(a.out) if r.get("labelled_by", "").startswith("hand")}
    new = {}
    if a.labels:
        with open(a.labels, encoding="utf-8") as f:
            new = json.load(f)
    check = set(random.Random(a.seed).sample([r["id"] for r in rows if r["ours"] == r["math_verify"]],
                                              min(a.check, len(rows))))
    unlabelled = []
    for r in rows:
        agree = r["ours"] == r["math_verify"]
        r["label"], r["reason"], r["labelled_by"] = r["math_verify"], "both verifiers agree", "both verifiers"
        if r["id"] in new:
            r["label"], r["reason"] = bool(new[r["id"]][0]), new[r["id"]][1]
            r["labelled_by"] = "hand" if not agree else "hand (agreement check)"
        elif r["id"] in hand and hand[r["id"]][0] == r["completion"]:
            r["label"], r["reason"], r["labelled_by"] = hand[r["id"]][1:]
        elif not agree or r["id"] in check:
            unlabelled.append(r)
    keys = ["id", "source", "class", "extract", "completion", "gold", "label", "reason", "labelled_by",
            "math_verify", "ours"]
    _write_jsonl(a.out, rows, keys)
    prov = dict(settings, command="python -m experiments.make_verifier_corpus " + " ".join(sys.argv[1:]),
                rows=len(rows), math_verify=importlib.metadata.version("math-verify"),
                transformers=importlib.metadata.version("transformers"),
                torch=importlib.metadata.version("torch") if a.backend == "torch" else None,
                prompts={"boxed": "rl.data.DEFAULT_SUFFIX after the question, chat template", "minerva": MINERVA},
                arithmetic_task={"num_terms": 3, "ops": "+-*", "seed": 16, "train_size": a.arith},
                labelling=__doc__[__doc__.index("Labels of"):__doc__.index("Rows:")].strip())
    with open(os.path.splitext(a.out)[0] + ".provenance.json", "w", encoding="utf-8") as f:
        json.dump(prov, f, indent=1, ensure_ascii=False)
    print(f"wrote {len(rows)} rows to {a.out}")
    if unlabelled:
        print(f"{len(unlabelled)} rows need a hand label (disagreements, then the agreement sample): "
              f"write them to a JSON file {{id: [label, reason]}} and pass --labels FILE")
        for r in sorted(unlabelled, key=lambda r: r["ours"] == r["math_verify"]):
            print(json.dumps({"id": r["id"], "gold": r["gold"], "ours": r["ours"], "math_verify": r["math_verify"],
                              "completion": r["completion"]}, ensure_ascii=False))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
