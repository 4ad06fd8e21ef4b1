"""Answer extraction from model completions (pure string functions, linear time, no eval).

Modes (the `extract=` option of tasks and verifiers):
  "boxed"        the last \\boxed{...} / \\fbox{...} (nested braces)
  "answer_tag"   the last <answer>...</answer>
  "last_number"  the last number in the text (integers, decimals, 1,234, simple fractions 3/4)
  "strict"       boxed, else <answer>, else GSM8K "#### x", else "The answer is x" / "Answer: x"
  "auto"         strict, else the last number (gives a weak model some initial reward)
"""
import re
from typing import Optional

MODES = ("boxed", "answer_tag", "last_number", "strict", "auto")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_NUM_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\w])|(?<![\w.])-?\.\d+")
_GSM_RE = re.compile(r"####\s*([^\n]+)")
_PHRASE_RE = re.compile(r"(?i)(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*:|\banswer\s*:)\s*:?\s*")


def _closing_braces(text: str) -> dict:
    """{index of "{": index of its matching "}"} for the whole text, one linear pass (\\x escapes skipped)."""
    match, stack, j, n = {}, [], 0, len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            stack.append(j)
        elif c == "}" and stack:
            match[stack.pop()] = j
        j += 1
    return match


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} or \\fbox{...}, braces matched; `\\boxed 5` also works.

    Linear time in len(text) (one brace-matching pass, then a scan of the box positions from the end);
    an unbalanced last box falls back to the previous one."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    closing = None
    for m in reversed(matches):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            if closing is None:
                closing = _closing_braces(text)
            j = closing.get(i)
            if j is not None:
                return text[i + 1:j].strip()
            continue  # unbalanced: try an earlier box
        if i > m.end():  # "\\boxed 5": up to whitespace or $
            tok = re.match(r"[^\s$]+", text[i:i + 1000])
            if tok:
                return tok.group(0)
    return None


def answer_tag(text: str) -> Optional[str]:
    """Content of the last <answer>...</answer> (closing tag required)."""
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return text[start + len("<answer>"):end].strip()


def last_number(text: str) -> Optional[str]:
    """The last number in the text, thousands separators removed ("1,234" -> "1234")."""
    last = None
    for last in _NUM_RE.finditer(text):
        pass
    return None if last is None else last.group(0).replace(",", "")


_MATH_OPEN = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _clean_tail(s: str) -> Optional[str]:
    """The answer at the start of `s`: a math span ($...$, \\(...\\), \\[...\\]) if it opens with one
    (Minerva: "The final answer is $42$. I hope it is correct."), else the rest of the line up to the
    end of the sentence (a period followed by a space)."""
    s = s.strip()
    for op, cl in _MATH_OPEN:
        if s.startswith(op):
            end = s.find(cl, len(op))
            if end > len(op):
                return s[len(op):end].strip().rstrip(".").strip() or None
            break
    s = s.split("\n")[0].strip()
    s = re.split(r"\.\s", s, maxsplit=1)[0]
    s = s.strip("$ ").rstrip(".").strip().strip("$ ")
    return s or None


def gsm8k(text: str) -> Optional[str]:
    """The text after the last '#### ' (GSM8K's answer marker)."""
    last = None
    for last in _GSM_RE.finditer(text):
        pass
    return None if last is None else _clean_tail(last.group(1))


def answer_phrase(text: str) -> Optional[str]:
    """The rest of the line after the last 'The answer is' / 'Final answer:' / 'Answer:'."""
    last = None
    for last in _PHRASE_RE.finditer(text):
        pass
    if last is None:
        return None
    tail = text[last.end():]
    boxed = last_boxed(tail.split("\n")[0])
    return boxed if boxed is not None else _clean_tail(tail)


def extract(text: str, mode: str = "strict") -> Optional[str]:
    """The answer string in `text` per `mode` (see module docstring), or None."""
    if mode not in MODES:
        raise ValueError(f"extract mode must be one of {MODES}, got {mode!r}")
    if mode == "boxed":
        return last_boxed(text)
    if mode == "answer_tag":
        return answer_tag(text)
    if mode == "last_number":
        return last_number(text)
    for fn in (last_boxed, answer_tag, gsm8k, answer_phrase):
        pred = fn(text)
        if pred:
            if fn is answer_tag:  # "<answer>\boxed{3}</answer>"
                pred = last_boxed(pred) or pred
            return pred
    return last_number(text) if mode == "auto" else None
