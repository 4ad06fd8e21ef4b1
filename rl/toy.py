"""A self-contained toy task and character tokenizer for the tiny config (offline, no hub downloads).

Task "toy_last_digit": the question is a 2-digit number "47", the answer is its last digit "7"; a completion is
correct when its first character is the answer. A random policy over the 16-token vocabulary is right about 1/16
of the time, so GRPO has signal from step 0, and a 2-layer model learns the copy within a few dozen steps.
"""
import random

from rl.data import Problem
from rl.rewards import Score


class CharTokenizer:
  """Character-level tokenizer: ids 0..2 are <pad>, <bos>, <eos>; then one id per character of `chars`."""

  def __init__(self, chars="0123456789+-=?"):
    self.specials = ["<pad>", "<bos>", "<eos>"]
    self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2
    self.chars = chars
    self._id = {ch: i + len(self.specials) for i, ch in enumerate(chars)}

  def __len__(self):
    return len(self.specials) + len(self.chars)

  @property
  def vocab_size(self):
    return len(self)

  def encode(self, text: str) -> list[int]:
    try:
      return [self._id[ch] for ch in text]
    except KeyError as e:
      raise ValueError(f"toy tokenizer: character {e.args[0]!r} not in its vocabulary {self.chars!r}") from None

  def decode(self, ids, skip_special_tokens=True) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i < len(self.specials):
        if not skip_special_tokens:
          out.append(self.specials[i])
      else:
        out.append(self.chars[i - len(self.specials)])
    return "".join(out)

  def prompt(self, question: str) -> list[int]:
    """<bos> question '=' : the model answers after the '='."""
    return [self.bos_token_id] + self.encode(question + "=")


def score_last_digit(completion: str, problem) -> Score:
  """Correct when the completion's first character is the answer digit (module-level: picklable)."""
  pred = completion[:1] or None
  ok = pred == problem.answer
  return Score(float(ok), ok, pred)


def make_task(kind="last_digit"):
  """-> rl.tasks.Task: train 80 two-digit numbers, eval 20 held-out ones (fixed split).

  kind "last_digit": the answer is the number's last digit (copy; random policy ~1/17);
  kind "parity": the answer is "0" for even numbers and "1" for odd ones (random policy ~2/17 correct,
  learning the answer format alone lifts it to ~1/2).
  """
  from rl.tasks import Task
  nums = [f"{i:02d}" for i in range(100)]
  random.Random(0).shuffle(nums)
  answer = (lambda q: q[-1]) if kind == "last_digit" else (lambda q: str(int(q) % 2))
  mk = lambda q: Problem(id=f"toy-{q}", question=q, answer=answer(q), solution=answer(q))
  return Task(f"toy_{kind}", [mk(q) for q in nums[:80]], [mk(q) for q in nums[80:]], score_last_digit)
