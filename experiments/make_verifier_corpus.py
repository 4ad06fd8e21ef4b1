"""Builds the labelled verifier corpus rl/data/verifier_corpus.jsonl (reproducible; CPU, a few minutes).

    python -m experiments.make_verifier_corpus [--out rl/data/verifier_corpus.jsonl] [--samples 2]

Two sources:
  "smollm2"      completions sampled from SmolLM2-135M-Instruct (models.smollm2_gguf_path()) on the bundled
                 math sample and on the arithmetic task, with two prompt styles (our \\boxed{} suffix and the
                 Minerva / lm-eval instruction "Final Answer: The final answer is $ANSWER$. I hope it is
                 correct."); written without the verifier in mind.
  "format"       MATH-style answers for the format classes of issue 16 (mixed numbers, percent, chained
                 equalities, inequality vs interval, equation multiples, decimals vs rationals, Unicode,
                 unit wrappers), each as a completion with a labelled gold.
Labels: math-verify's verdict (verifier `rl.rewards.math_verify_backend`), except where HAND_LABELS
overrides it; every row where our verifier and math-verify disagree must be hand-labelled (with a one-line
reason) or the script stops and prints the rows to label. Rows: {"id", "source", "class", "completion",
"gold", "label", "reason", "math_verify", "ours"}.
"""
import argparse
import json
import os
import time

import jax
import numpy as np

import models
import sampling
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

# Hand labels for rows where the two verifiers disagree: id -> (label, one-line reason). Filled by reading
# each disagreement printed by this script.
HAND_LABELS: dict = {}


def _generate(model, tok, prompts, samples, max_new_tokens, seed):
    """One sampling call for all prompts (one compilation): -> len(prompts) * samples strings, prompt-major."""
    eos = [tok.eos_token_id] + [i for i in [tok.convert_tokens_to_ids("<|im_end|>")] if isinstance(i, int)]
    out = sampling.generate(model, prompts, group_size=samples, max_new_tokens=max_new_tokens, temperature=0.7,
                            top_p=0.95, eos_ids=eos, pad_id=tok.pad_token_id or 0, rng=jax.random.key(seed))
    toks, mask = np.asarray(out.tokens), np.asarray(out.mask)
    return [tok.decode(t[m].tolist(), skip_special_tokens=True) for t, m in zip(toks, mask)]


def _generate_torch(tok, prompts, samples, max_new_tokens, seed, gguf_path):
    """The same sampling with transformers + torch (no XLA compilation; for a loaded CPU)."""
    import torch  # optional: only this backend needs it
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    eos = [tok.eos_token_id] + [i for i in [tok.convert_tokens_to_ids("<|im_end|>")] if isinstance(i, int)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    out = []
    for start in range(0, len(prompts), 32):
        chunk = prompts[start:start + 32]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=0.7, top_p=0.95,
                                 max_new_tokens=max_new_tokens, num_return_sequences=samples, eos_token_id=eos,
                                 pad_token_id=pad)
        out += [tok.decode(g[width:].tolist(), skip_special_tokens=True) for g in gen]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=data.sample_path("verifier_corpus.jsonl"))
    ap.add_argument("--samples", type=int, default=2, help="completions per prompt and style")
    ap.add_argument("--arith", type=int, default=24, help="arithmetic problems")
    ap.add_argument("--max_new_tokens", type=int, default=160)
    ap.add_argument("--backend", default="jax", choices=["jax", "torch"],
                    help="jax: models + sampling.generate; torch: transformers (no XLA compile on a loaded CPU)")
    ap.add_argument("--cache", default="/tmp/verifier_corpus_completions.json",
                    help="sampled completions are cached here (re-labelling does not re-sample)")
    ap.add_argument("--no_model", action="store_true", help="only the format rows (no sampling)")
    a = ap.parse_args()

    math_probs = tasks.make("math_sample").train_problems
    arith = tasks.make("arithmetic", train_size=a.arith, eval_size=1, num_terms=3, ops="+-*", seed=16).train_problems
    if a.no_model:
        gen = []
    elif os.path.exists(a.cache):
        with open(a.cache) as f:
            gen = json.load(f)
    else:
        path = models.smollm2_gguf_path()
        model, tok = models.load_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                            tokenizer=True) if a.backend == "jax" else (None, None)
        if tok is None:
            from models.gguf_io import load_gguf_tokenizer
            tok = load_gguf_tokenizer(path)
        t0 = time.time()
        meta, prompts = [], []
        for style, template in (("boxed", None), ("minerva", MINERVA)):
            for name, probs in (("math_sample", math_probs), ("arithmetic", arith)):
                for p in probs:
                    meta.append((style, name, p))
                    prompts.append(data.build_prompt(tok, p.question, suffix=data.DEFAULT_SUFFIX, template=template))
        if a.backend == "torch":
            comps = _generate_torch(tok, prompts, a.samples, a.max_new_tokens, 16, path)
        else:
            comps = _generate(model, tok, prompts, a.samples, a.max_new_tokens, seed=16)
        print(f"{len(comps)} completions in {time.time() - t0:.0f} s", flush=True)
        gen = []
        for i, c in enumerate(comps):
            style, name, p = meta[i // a.samples]
            gen.append({"id": f"smollm2/{name}/{style}/{p.id}/{i % a.samples}", "class": f"{name}/{style}",
                        "completion": c, "gold": p.answer})
        with open(a.cache, "w") as f:
            json.dump(gen, f)
    rows = [dict(r, source="smollm2") for r in gen]
    rows += [{"id": f"format/{i:03d}", "source": "format", "class": c, "completion": comp, "gold": g,
              "label": lab, "reason": why} for i, (c, comp, g, lab, why) in enumerate(FORMAT_ROWS)]

    unlabelled = []
    for r in rows:
        r["math_verify"] = mvb.score(r["completion"], r["gold"], timeout=5.0).correct
        r["ours"] = rmath.score(r["completion"], r["gold"], timeout=5.0).correct
        if r["source"] == "smollm2":
            r["label"], r["reason"] = r["math_verify"], "math-verify verdict (both verifiers agree)"
            if r["ours"] != r["math_verify"]:
                if r["id"] in HAND_LABELS:
                    r["label"], r["reason"] = HAND_LABELS[r["id"]]
                else:
                    unlabelled.append(r)
            elif r["id"] in HAND_LABELS:
                r["label"], r["reason"] = HAND_LABELS[r["id"]]
    keys = ["id", "source", "class", "completion", "gold", "label", "reason", "math_verify", "ours"]
    with open(a.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in keys}, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {a.out}")
    if unlabelled:
        print(f"{len(unlabelled)} disagreements need a hand label (add them to HAND_LABELS):")
        for r in unlabelled:
            print(json.dumps({"id": r["id"], "gold": r["gold"], "ours": r["ours"], "math_verify": r["math_verify"],
                              "tail": r["completion"][-300:]}, ensure_ascii=False))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
