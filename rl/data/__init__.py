"""Problems, prompts and a checkpointable prompt iterator.

    Problem(id, question, answer, solution=None, meta=None)
    PromptIterator(problems, batch_size, seed)    deterministic per-epoch shuffling; .state() / .restore()
    build_prompt(tokenizer, question, system=None, suffix=DEFAULT_SUFFIX, template=None) -> list[int]

Loaders live in submodules: rl.data.files (JSONL / parquet), rl.data.arithmetic (synthetic problems),
rl.data.solutions (offline solutions store).
"""
import dataclasses
import importlib.resources
from typing import Any, Optional, Sequence

import numpy as np

DEFAULT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclasses.dataclass(frozen=True)
class Problem:
    """One task item. `answer` is the gold answer string; `meta` holds task-specific data
    (e.g. the reasoning-gym entry, or code test cases) and is passed to the task's scorer."""
    id: str
    question: str
    answer: str
    solution: Optional[str] = None
    meta: Optional[dict] = None


def sample_path(name: str = "math_sample.jsonl") -> str:
    """Path of a data file bundled with the package (e.g. the math sample)."""
    return str(importlib.resources.files("rl.data").joinpath(name))


class PromptIterator:
    """Endless iterator over batches of problems, reshuffled each epoch.

    Epoch e uses the permutation `np.random.default_rng([seed, e]).permutation(n)`; batches are
    consecutive slices of the epoch order and wrap into the next epoch, so every batch holds
    exactly `batch_size` problems. The position is two integers, so it checkpoints as JSON:

        it = PromptIterator(problems, batch_size=8, seed=0)
        batch = next(it)                   # list[Problem], length 8
        state = it.state()                 # {"seed":0, "n":len(problems), "batch_size":8, "epoch":e, "index":i}
        it2 = PromptIterator(problems, 8, 0); it2.restore(state)   # continues with the same batches
    """

    def __init__(self, problems: Sequence[Any], batch_size: int, seed: int = 0):
        if len(problems) == 0:
            raise ValueError("PromptIterator: no problems")
        if batch_size < 1:
            raise ValueError(f"PromptIterator: batch_size must be >= 1, got {batch_size}")
        self.problems = list(problems)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self.index = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.problems))

    def __iter__(self):
        return self

    def __next__(self) -> list:
        batch = []
        while len(batch) < self.batch_size:
            if self.index >= len(self.problems):
                self.epoch += 1
                self.index = 0
                self._order = self._permutation(self.epoch)
            take = min(self.batch_size - len(batch), len(self.problems) - self.index)
            batch.extend(self.problems[k] for k in self._order[self.index:self.index + take])
            self.index += take
        return batch

    def state(self) -> dict:
        """JSON-able position: {"seed", "n", "batch_size", "epoch", "index"}."""
        return {"seed": self.seed, "n": len(self.problems), "batch_size": self.batch_size,
                "epoch": self.epoch, "index": self.index}

    def restore(self, state: dict) -> "PromptIterator":
        """Continues from a `state()`; the problem count and seed must match."""
        if int(state["n"]) != len(self.problems) or int(state["seed"]) != self.seed:
            raise ValueError(f"PromptIterator.restore: state is for n={state['n']}, seed={state['seed']}, "
                             f"this iterator has n={len(self.problems)}, seed={self.seed}")
        self.batch_size = int(state.get("batch_size", self.batch_size))
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)
        return self


def prompt_text(question: str, *, suffix: Optional[str] = DEFAULT_SUFFIX, template: Optional[str] = None) -> str:
    """The user message: `template.format(question=question)` if given, else question + blank line + suffix."""
    if template is not None:
        if "{question}" not in template:
            raise ValueError(f"prompt template must contain '{{question}}', got {template!r}")
        return template.format(question=question)
    return question if not suffix else f"{question}\n\n{suffix}"


def build_prompt(tokenizer, question: str, *, system: Optional[str] = None, suffix: Optional[str] = DEFAULT_SUFFIX,
                 template: Optional[str] = None, use_chat_template: bool = True) -> list[int]:
    """Token ids of the prompt for `question`, ready for generation.

    With a chat template (and use_chat_template=True): the tokenizer's template over
    [system?, user] with add_generation_prompt=True. Otherwise the plain user text, tokenized with
    the tokenizer's special tokens (e.g. BOS).
    """
    text = prompt_text(question, suffix=suffix, template=template)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    if system:
        text = f"{system}\n\n{text}"
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])
