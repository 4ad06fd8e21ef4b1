"""Math answer verifier: extraction, normalisation, a small safe LaTeX parser, sympy equivalence.

    score(completion, gold, *, extract="strict", timeout=1.0) -> Score(reward, correct, pred)
    is_equiv(pred, gold, *, timeout=1.0) -> bool

Safety: model text is never eval'ed. Answers are tokenized and parsed by our own recursive-descent
parser into sympy objects built from a whitelist (numbers, single-letter symbols, + - * / ^ !,
\\frac, \\sqrt, \\pi, e, i, \\infty, trig/log functions, intervals, sets, tuples, matrices).
Numbers that would blow up (power towers, huge factorials) are refused at parse time. The sympy
comparison runs in a worker process with a hard wall-clock limit (rl.rewards.pool.call), so it works
off the main thread; inside a pool worker it runs inline and the enclosing pool enforces the limit.

Structures and how they compare:
  scalar      exact for numbers (0.5 == 1/2), numeric to rel 1e-6 for irrationals, simplify() for symbols
  decimals    precision policy (`min_places`, default MIN_DECIMAL_PLACES = 6): a plain decimal written with
              k digits after the point equals a different value v (a rational such as 1/6, or an irrational
              such as pi) iff k >= min_places and |decimal - v| < 10^-k (v rounded or truncated to k
              places). So 0.1666667 == 1/6 and 3.141593 == pi, but 0.33 != 1/3 and 3.14 != pi. Six places
              is math-verify's float_rounding (TRL / open-r1 comparable), and few enough-place decimals
              stay wrong because "express as a common fraction" answers are then approximations.
              min_places=None: decimals must be exact.
  mixed numbers  an unsigned integer immediately followed (spaces allowed) by a proper fraction of
              integers, `2\\frac{3}{4}`, `2\\frac34` or `2 3/4`, is the mixed number 2 + 3/4 (a sign in
              front applies to the whole: -2\\frac34 = -11/4); `2\\frac{5}{4}`, `2\\frac{x}{4}`,
              `x\\frac34`, `2.5\\frac34` stay products.
  percent     an answer with an explicit % (\\%, "percent") equals both its number and its number / 100
              (12\\% == 12 == 0.12); without % on either side, 12 != 0.12
  chains      `y = 3 \\cdot 5 = 15`: the last right-hand side is the answer (y = 15)
  inequality  `-2 \\le y < 5` is the interval [-2, 5); `y > 3` is (3, \\infty)
  equations   equal if one is a non-zero constant multiple of the other (2x + 4y = 6 == x + 2y = 3)
  ( , )  [ , ]  ( , ]  [ , )   "bracketed": same brackets and elementwise equal (tuples and intervals)
  \\{ , \\}    set: order-free, same size
  a, b        bare list (several roots): order-free, same size; a list never equals a single answer
  x = 3       a single-variable left side is dropped ("x = 3" == "3"); two equations compare both sides
  matrices    same shape, elementwise
  A \\cup B    union of intervals: order-free
Unparseable answers fall back to normalised string equality (e.g. text answers, multiple choice).
"""
import decimal
import math as _math
import re
from typing import Optional

from fractions import Fraction

from rl.rewards import INCORRECT, Score, pool
from rl.rewards import extract as ex

MAX_ANSWER_CHARS = 1000    # longer extracted answers are incorrect
MAX_DIGITS = 2000          # refuse integers / powers / factorials with more digits than this
REL_TOL = 1e-6
MIN_DECIMAL_PLACES = 6     # precision policy for decimals vs other values (module docstring)


# ---------------------------------------------------------------------------------------------- normalise

_TEXT_CMDS = r"\\(?:text|textbf|textit|textrm|textnormal|textup|textsf|texttt|mathrm|mathbf|mathsf|mathit|mbox|hbox|operatorname)"
_UNIT_WORDS = (r"(?:units?|cm|mm|km|m|meters?|inch(?:es)?|feet|foot|ft|miles?|degrees?|dollars?|cents?|"
               r"hours?|minutes?|seconds?|days?|weeks?|years?|sq|square|cubic|kg|g|grams?|pounds?|lbs?|"
               r"liters?|ml|mph|percent|points?|people|students?|cookies|apples|marbles|ways)")


# Unicode math as models write it -> LaTeX
_UNICODE = {"\u2212": "-", "\u2013": "-", "\u2012": "-", "\ufe63": "-", "\uff0d": "-", "\u00d7": "\\times ",
            "\u22c5": "\\cdot ", "\u00b7": "\\cdot ", "\u2219": "\\cdot ", "\u00f7": "\\div ", "\u03c0": "\\pi ",
            "\u221e": "\\infty ", "\u2264": "\\le ", "\u2266": "\\le ", "\u2265": "\\ge ", "\u2267": "\\ge ",
            "\u2260": "\\neq ", "\u222a": "\\cup ", "\u2229": "\\cap ", "\u2208": "\\in ", "\u00b1": "\\pm ",
            "\u00bd": "\\frac{1}{2}", "\u2153": "\\frac{1}{3}", "\u2154": "\\frac{2}{3}", "\u00bc": "\\frac{1}{4}",
            "\u00be": "\\frac{3}{4}", "\u2155": "\\frac{1}{5}", "\u215b": "\\frac{1}{8}", "\u00b2": "^{2}",
            "\u00b3": "^{3}", "\u00b9": "^{1}", "\u2070": "^{0}", "\u2074": "^{4}", "\u00a0": " ", "\u2009": " ",
            "\u202f": " ", "\u200b": "", "\u03b8": "\\theta ", "\u03b1": "\\alpha ", "\u03b2": "\\beta ",
            "\uff0c": ",", "\uff08": "(", "\uff09": ")"}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
# sqrt sign: √2, √(x+1), √{3}, √x
_SQRT_RE = re.compile(r"\u221a\s*(\d+(?:\.\d+)?|[a-zA-Z]|\(|\{)")
# mixed numbers (module docstring): integer + proper fraction, not after a digit, letter, '.', '^', '_' or '}'
_MIXED_RE = re.compile(r"(?<![\w.^_}\\])(\d+)\s*(?:\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}|\\frac(\d)(\d)(?!\d)"
                       r"|\s(\d+)\s*/\s*(\d+)(?![\d.]))")
_PERCENT_RE = re.compile(r"%|\\%|\bpercent(?:age)?\b")
_DECIMAL_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?\.(\d+)")


def _mixed(m) -> str:
    n = int(m.group(1))
    a, b = next((int(m.group(i)), int(m.group(i + 1))) for i in (2, 4, 6) if m.group(i) is not None)
    if not 0 < a < b:  # not a proper fraction: leave as written (a product, or two numbers)
        return m.group(0)
    return f"({n}+\\frac{{{a}}}{{{b}}})"


def has_percent(s: str) -> bool:
    """True if the answer carries an explicit percent sign (%, \\%, "percent")."""
    return bool(_PERCENT_RE.search(s))


def normalize(s: str) -> str:
    """Removes formatting that does not change the value (see module docstring)."""
    s = s.strip()
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    s = _SQRT_RE.sub(lambda m: "\\sqrt" + (m.group(1) if m.group(1) in "({" else "{" + m.group(1) + "}"), s)
    s = re.sub(r"\\(?:displaystyle|left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\!", "")
    s = re.sub(r"(?<!\\)\\[,;: ]", " ", s)  # thin spaces, but not the row separator "\\\\ "
    s = s.replace("~", " ").replace("\\$", "").replace("$", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s).replace("\\circ", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("{,}", ",")
    s = s.replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ")
    # connectives inside \text{}: "2 \text{ or } 3" -> "2, 3"
    s = re.sub(_TEXT_CMDS + r"\{\s*(?:or|and)\s*\}", ",", s)
    # units in \text{} after a number or a closing brace: "5\text{ cm}" -> "5"
    s = re.sub(r"(?<=[\d}])\s*" + _TEXT_CMDS + r"\{\s*[a-zA-Z][a-zA-Z ]*\}(?:\^\{?\d\}?)?", "", s)
    s = re.sub(r"(?<=[\d}])\s*" + _TEXT_CMDS + r"\{\s*" + _UNIT_WORDS + r"\.?\s*\}", "", s)
    # remaining \text{X} -> X (repeat for nesting)
    for _ in range(3):
        s = re.sub(_TEXT_CMDS + r"\{([^{}]*)\}", r"\1", s)
    # trailing plain unit words: "12 cm", "30 degrees"
    s = re.sub(r"(?<=[\d}])\s+" + _UNIT_WORDS + r"(?:\^?\d)?\.?$", "", s.strip())
    s = s.strip()
    while s.endswith(".") or s.endswith("\\."):
        s = s[:-2] if s.endswith("\\.") else s[:-1]
        s = s.strip()
    s = re.sub(r"\s*\bpercent(?:age)?\b", "", s).strip()
    # thousands separators: the whole answer is a number like 1,234,567(.89)
    if re.fullmatch(r"-?\d{1,3}(?:(?:,| )\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "").replace(" ", "")
    s = _MIXED_RE.sub(_mixed, s)
    return s.strip()


# ---------------------------------------------------------------------------------------------- tokenizer

class ParseError(ValueError):
    pass


_TOKEN_RE = re.compile(r"""
    (?P<num>\d+\.\d*|\.\d+|\d+)
  | (?P<cmd>\\[a-zA-Z]+|\\\{|\\\}|\\\\|\\\|)
  | (?P<ch>[-+*/^()\[\]{},=!&|_<>])
  | (?P<letter>[a-zA-Z])
  | (?P<ws>\s+)
""", re.VERBOSE)

_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
          "log", "ln", "exp"}
_GREEK = {"alpha", "beta", "gamma", "delta", "theta", "lambda", "mu", "phi", "omega", "sigma", "tau", "rho",
          "epsilon", "varepsilon", "varphi", "psi", "chi", "eta", "zeta", "xi", "nu", "kappa"}


def tokenize(s: str) -> list:
    toks, i = [], 0
    while i < len(s):
        m = _TOKEN_RE.match(s, i)
        if not m:
            raise ParseError(f"unexpected character {s[i]!r}")
        i = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        toks.append((kind, m.group(0)))
    return toks


# ---------------------------------------------------------------------------------------------- parser

class _Parser:
    """Recursive descent over tokens -> sympy objects (scalars) or ("kind", ...) structures."""

    def __init__(self, toks, sp):
        self.toks, self.i, self.sp = toks, 0, sp

    # helpers
    def peek(self, k=0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else (None, None)

    def next(self):
        t = self.peek()
        if t[0] is None:
            raise ParseError("unexpected end")
        self.i += 1
        return t

    def expect(self, val):
        t = self.next()
        if t[1] != val:
            raise ParseError(f"expected {val!r}, got {t[1]!r}")

    def at(self, *vals):
        return self.peek()[1] in vals

    # numbers with guards
    def _check_size(self, x):
        sp = self.sp
        if x.is_Integer and abs(int(x)).bit_length() > MAX_DIGITS * 3.33:
            raise ParseError("number too large")
        return x

    def pow(self, base, exp):
        sp = self.sp
        if base.is_number and exp.is_number:
            try:
                b = abs(complex(base.evalf(15)))
                e = abs(complex(exp.evalf(15)))
            except Exception:  # noqa: BLE001 - infinities, zoo, ...
                raise ParseError("non-numeric power")
            if b > 1 and e * _math.log10(b) > MAX_DIGITS:
                raise ParseError("power too large")
            if 0 < b < 1 and e * -_math.log10(b) > MAX_DIGITS:
                raise ParseError("power too small")
        elif exp.is_number and exp.is_Integer and abs(int(exp)) > 1000:
            raise ParseError("exponent too large")
        return self._check_size(sp.Pow(base, exp))

    # grammar
    def parse_top(self):
        """Top level: comma lists, equations, unions."""
        items = [self.parse_relation()]
        while self.at(","):
            self.next()
            items.append(self.parse_relation())
        if self.peek()[0] is not None:
            raise ParseError(f"trailing token {self.peek()[1]!r}")
        return items[0] if len(items) == 1 else ("list", items)

    _LESS = {"<": False, "\\lt": False, "\\le": True, "\\leq": True, "\\leqslant": True}
    _MORE = {">": False, "\\gt": False, "\\ge": True, "\\geq": True, "\\geqslant": True}

    def parse_relation(self):
        """`a = b`; a chain `y = 3 \\cdot 5 = 15` (its last right-hand side); an inequality in one
        variable (`-2 \\le y < 5`, `y > 3`) as the interval it describes."""
        items, ops = [self.parse_union()], []
        while self.peek()[1] in ("=",) or self.peek()[1] in self._LESS or self.peek()[1] in self._MORE:
            ops.append(self.next()[1])
            items.append(self.parse_union())
        if not ops:
            return items[0]
        if all(o == "=" for o in ops):
            first, last = items[0], items[-1]
            if not isinstance(first, tuple) and not first.free_symbols:  # "3 \\cdot 5 = 15": a computation
                return last
            if len(ops) == 1 or not isinstance(first, self.sp.Symbol):
                return ("eq", first, last) if len(ops) == 1 else last
            return ("eq", first, last)
        return self._interval(items, ops)

    def _interval(self, items, ops):
        sp = self.sp
        if "=" in ops or len(ops) > 2:
            raise ParseError("mixed relation chain")
        if any(isinstance(x, tuple) for x in items):
            raise ParseError("relation between structures")
        less = [o in self._LESS for o in ops]
        incl = [self._LESS.get(o, self._MORE.get(o)) for o in ops]
        if len(ops) == 2:  # a < y < b or a > y > b
            if less[0] != less[1] or not isinstance(items[1], sp.Symbol):
                raise ParseError("not an interval")
            lo, hi, lo_in, hi_in = items[0], items[2], incl[0], incl[1]
            if not less[0]:
                lo, hi, lo_in, hi_in = items[2], items[0], incl[1], incl[0]
        elif isinstance(items[0], sp.Symbol):  # y < b, y > a
            if less[0]:
                lo, hi, lo_in, hi_in = -sp.oo, items[1], False, incl[0]
            else:
                lo, hi, lo_in, hi_in = items[1], sp.oo, incl[0], False
        elif isinstance(items[1], sp.Symbol):  # a < y, b > y
            if less[0]:
                lo, hi, lo_in, hi_in = items[0], sp.oo, incl[0], False
            else:
                lo, hi, lo_in, hi_in = -sp.oo, items[0], False, incl[0]
        else:
            raise ParseError("inequality without a variable")
        return ("bracketed", "[" if lo_in else "(", "]" if hi_in else ")", [lo, hi])

    def parse_union(self):
        left = self.parse_item()
        if self.at("\\cup"):
            parts = [left]
            while self.at("\\cup"):
                self.next()
                parts.append(self.parse_item())
            return ("union", parts)
        return left

    def parse_item(self):
        """An expression, or a bracketed tuple/interval, set or matrix."""
        t = self.peek()
        if t[1] in ("(", "[") and self._is_bracketed_list():
            lb = self.next()[1]
            items = [self.parse_relation()]
            while self.at(","):
                self.next()
                items.append(self.parse_relation())
            rb = self.next()[1]
            if rb not in (")", "]"):
                raise ParseError("bad bracket")
            return ("bracketed", lb, rb, items)
        if t[1] == "\\{":
            self.next()
            items = [] if self.at("\\}") else [self.parse_relation()]
            while self.at(","):
                self.next()
                items.append(self.parse_relation())
            self.expect("\\}")
            return ("set", items)
        if t[1] == "\\begin":
            return self.parse_matrix()
        return self.parse_expr()

    def _is_bracketed_list(self):
        """True if the bracket at self.i closes (with ) or ]) at depth 0 and holds a top-level comma."""
        depth, comma = 0, False
        for j in range(self.i, len(self.toks)):
            v = self.toks[j][1]
            if v in ("(", "[", "{", "\\{"):
                depth += 1
            elif v in (")", "]", "}", "\\}"):
                depth -= 1
                if depth == 0:
                    return comma and v in (")", "]")
            elif v == "," and depth == 1:
                comma = True
        return False

    def parse_matrix(self):
        self.expect("\\begin")
        self.expect("{")
        env = ""
        while not self.at("}"):
            env += self.next()[1]
        self.next()
        if env not in ("pmatrix", "bmatrix", "matrix", "vmatrix", "Bmatrix", "array"):
            raise ParseError(f"unsupported environment {env}")
        if env == "array" and self.at("{"):  # column spec
            while not self.at("}"):
                self.next()
            self.next()
        rows, row = [], [self.parse_expr()]
        while True:
            if self.at("&"):
                self.next()
                row.append(self.parse_expr())
            elif self.at("\\\\"):
                self.next()
                rows.append(row)
                if self.at("\\end"):
                    row = None
                    break
                row = [self.parse_expr()]
            elif self.at("\\end"):
                break
            else:
                raise ParseError(f"unexpected {self.peek()[1]!r} in matrix")
        if row:
            rows.append(row)
        self.expect("\\end")
        self.expect("{")
        while not self.at("}"):
            self.next()
        self.next()
        if len({len(r) for r in rows}) != 1:
            raise ParseError("ragged matrix")
        return ("matrix", rows)

    def parse_expr(self):
        x = self.parse_term()
        while self.at("+", "-", "\\pm"):
            op = self.next()[1]
            y = self.parse_term()
            if op == "\\pm":
                raise ParseError("\\pm")
            x = x + y if op == "+" else x - y
        return x

    _ATOM_START_CMDS = {"\\frac", "\\sqrt", "\\pi", "\\infty", "\\cdot"} | {"\\" + f for f in _FUNCS} | {
        "\\" + g for g in _GREEK}

    def _starts_atom(self):
        k, v = self.peek()
        if k in ("letter", "num"):
            return True
        if v in ("(", "{", "|"):
            return v != "|"
        return k == "cmd" and v in self._ATOM_START_CMDS and v != "\\cdot"

    def parse_term(self):
        x = self.parse_unary()
        while True:
            if self.at("*", "\\cdot", "\\times"):
                self.next()
                x = x * self.parse_unary()
            elif self.at("/", "\\div"):
                self.next()
                y = self.parse_unary()
                if y == 0:
                    raise ParseError("division by zero")
                x = x / y
            elif self._starts_atom():
                if self.peek()[0] == "num" and self.toks[self.i - 1][0] == "num":
                    raise ParseError("two adjacent numbers")
                x = x * self.parse_power()
            else:
                return x

    def parse_unary(self):
        if self.at("-"):
            self.next()
            return -self.parse_unary()
        if self.at("+"):
            self.next()
            return self.parse_unary()
        return self.parse_power()

    def parse_power(self):
        base = self.parse_postfix()
        if self.at("^"):
            self.next()
            exp = self.parse_group_or_atom(unary=True)
            return self.pow(base, exp)
        return base

    def parse_postfix(self):
        x = self.parse_atom()
        while self.at("!"):
            self.next()
            if not (x.is_Integer and 0 <= int(x) <= 400):
                raise ParseError("factorial too large or not a small integer")
            x = self.sp.factorial(x)
        return x

    def parse_group_or_atom(self, unary=False, split_digits=False):
        """A {group}, or a single digit / letter / command atom (as in \\frac12, x^2, \\sqrt2)."""
        if self.at("{"):
            self.next()
            x = self.parse_expr()
            self.expect("}")
            return x
        k, v = self.peek()
        if split_digits and k == "num" and len(v) > 1 and "." not in v:  # \frac12 -> 1, then 2
            self.toks[self.i] = ("num", v[1:])
            return self.sp.Integer(int(v[0]))
        if unary and v == "-":
            self.next()
            return -self.parse_group_or_atom()
        return self.parse_postfix()

    def parse_atom(self):
        sp = self.sp
        k, v = self.next()
        if k == "num":
            if len(v) > MAX_DIGITS:
                raise ParseError("number too long")
            x = sp.Rational(v) if "." in v else sp.Integer(int(v))
            # scientific notation: 1.2e-3 / 1.2E3
            if self.peek()[1] in ("e", "E") and self.peek(1)[0] == "num" or (
                    self.peek()[1] in ("e", "E") and self.peek(1)[1] in ("-", "+") and self.peek(2)[0] == "num"):
                self.next()
                sign = 1
                if self.at("-", "+"):
                    sign = -1 if self.next()[1] == "-" else 1
                e = int(self.next()[1])
                return self.pow(sp.Integer(10), sp.Integer(sign * e)) * x
            return x
        if v in ("(", "["):
            x = self.parse_expr()
            self.expect(")" if v == "(" else "]")
            return x
        if v == "{":
            x = self.parse_expr()
            self.expect("}")
            return x
        if v == "|" or v == "\\|":
            x = self.parse_expr()
            self.expect(v)
            return sp.Abs(x)
        if k == "letter":
            if v == "e":
                return sp.E
            if v == "i":
                return sp.I
            name = v
            if self.at("_"):
                self.next()
                sub = self.next()
                if sub[1] == "{":
                    sub_s = ""
                    while not self.at("}"):
                        sub_s += self.next()[1]
                    self.next()
                else:
                    sub_s = sub[1]
                name = f"{v}_{sub_s}"
            return sp.Symbol(name)
        if k == "cmd":
            c = v[1:]
            if c == "frac":
                a = self.parse_group_or_atom(split_digits=True)
                b = self.parse_group_or_atom(split_digits=True)
                if b == 0:
                    raise ParseError("division by zero")
                return a / b
            if c == "sqrt":
                n = None
                if self.at("["):
                    self.next()
                    n = self.parse_expr()
                    self.expect("]")
                a = self.parse_group_or_atom(split_digits=True)
                return sp.sqrt(a) if n is None else sp.root(a, n)
            if c == "pi":
                return sp.pi
            if c in ("infty", "inf"):
                return sp.oo
            if c in _GREEK:
                return sp.Symbol(c)
            if c in _FUNCS:
                base = None
                if c == "log" and self.at("_"):
                    self.next()
                    base = self.parse_group_or_atom()
                power = None
                if self.at("^"):  # \sin^2 x
                    self.next()
                    power = self.parse_group_or_atom(unary=True)
                arg = self.parse_group_or_atom() if not self.at("(") else self.parse_atom()
                fn = {"ln": sp.log, "log": sp.log, "exp": sp.exp, "arcsin": sp.asin, "arccos": sp.acos,
                      "arctan": sp.atan}.get(c) or getattr(sp, c)
                y = fn(arg) if base is None else sp.log(arg, base)
                return y if power is None else self.pow(y, power)
            if c == "mathrm" or c == "mathit":
                return self.parse_group_or_atom()
        raise ParseError(f"unexpected token {v!r}")


def parse(s: str):
    """Normalised answer string -> sympy scalar or a ("kind", ...) structure; raises ParseError."""
    import sympy
    if len(s) > MAX_ANSWER_CHARS:
        raise ParseError("answer too long")
    s = re.sub(r"\\in\b", "=", s)
    return _Parser(tokenize(s), sympy).parse_top()


# ---------------------------------------------------------------------------------------------- compare

def _strip_var(x):
    """("eq", Symbol, rhs) -> rhs; lists map over items."""
    import sympy
    if isinstance(x, tuple) and x[0] == "eq" and isinstance(x[1], sympy.Symbol):
        return _strip_var(x[2])
    if isinstance(x, tuple) and x[0] in ("list", "set"):
        return (x[0], [_strip_var(y) for y in x[1]])
    return x


def _scalar_equal(a, b) -> bool:
    import sympy
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
        return sympy.simplify(a - b) == 0 if not (a.is_infinite or b.is_infinite) else False
    if a.is_Rational and b.is_Rational:
        return False
    free = a.free_symbols | b.free_symbols
    if not free:
        try:
            va, vb = complex(sympy.N(a, 30)), complex(sympy.N(b, 30))
        except (TypeError, ValueError):
            return False
        return abs(va - vb) <= REL_TOL * max(1.0, abs(va), abs(vb))
    # symbolic: numeric spot checks first, then simplify
    import random
    rnd = random.Random(0)
    syms = sorted(free, key=str)
    for _ in range(3):
        sub = {s: sympy.Rational(rnd.randint(2, 97), rnd.randint(2, 13)) for s in syms}
        try:
            va, vb = complex(sympy.N(a.subs(sub), 20)), complex(sympy.N(b.subs(sub), 20))
        except (TypeError, ValueError, ZeroDivisionError):
            break
        if abs(va - vb) > 1e-8 * max(1.0, abs(va), abs(vb)):
            return False
    return sympy.simplify(a - b) == 0


def _match_unordered(xs, ys) -> bool:
    if len(xs) != len(ys):
        return False
    used = [False] * len(ys)
    for x in xs:
        for j, y in enumerate(ys):
            if not used[j] and _equal(x, y):
                used[j] = True
                break
        else:
            return False
    return True


def _equal(a, b) -> bool:
    a_struct, b_struct = isinstance(a, tuple), isinstance(b, tuple)
    if not a_struct and not b_struct:
        return _scalar_equal(a, b)
    if a_struct != b_struct or a[0] != b[0]:
        return False
    kind = a[0]
    if kind == "bracketed":
        return a[1] == b[1] and a[2] == b[2] and len(a[3]) == len(b[3]) and all(
            _equal(x, y) for x, y in zip(a[3], b[3]))
    if kind in ("set", "list", "union"):
        return _match_unordered(a[1], b[1])
    if kind == "matrix":
        return (len(a[1]) == len(b[1]) and all(len(r) == len(s) for r, s in zip(a[1], b[1]))
                and all(_equal(x, y) for r, s in zip(a[1], b[1]) for x, y in zip(r, s)))
    if kind == "eq":
        if _equal(a[1], b[1]) and _equal(a[2], b[2]):
            return True
        import sympy
        if not any(isinstance(t, tuple) for t in (a[1], a[2], b[1], b[2])):  # same equation rearranged
            da, db = sympy.expand(a[1] - a[2]), sympy.expand(b[1] - b[2])
            if _scalar_equal(da, db) or _scalar_equal(da, -db):
                return True
            # a non-zero constant multiple: 2x + 4y = 6 is x + 2y = 3
            if da != 0 and db != 0 and (da.free_symbols or db.free_symbols):
                ratio = sympy.simplify(da / db)
                return bool(not ratio.free_symbols and ratio.is_finite and ratio != 0)
        return False
    return False


def _string_key(s: str) -> str:
    s = re.sub(r"\s+", "", s).lower()
    s = re.sub(r"^\\?\(?([a-e])\)?$", r"\1", s)  # multiple choice "(C)" -> "c"
    return s


def equiv_normalized(pred: str, gold: str) -> bool:
    """Equivalence of two normalised answer strings (runs sympy; call under a time limit)."""
    if _string_key(pred) == _string_key(gold):
        return True
    try:
        g = parse(gold)
        p = parse(pred)
    except (ParseError, TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError, AttributeError):
        return False
    g_eq = isinstance(g, tuple) and g[0] == "eq"
    p_eq = isinstance(p, tuple) and p[0] == "eq"
    if not g_eq:
        p = _strip_var(p)
    elif not p_eq:  # gold "y = 2x + 1", pred "2x + 1"
        g = _strip_var(g)
    if isinstance(g, tuple) and g[0] == "list" and not any(isinstance(x, tuple) and x[0] == "eq" for x in g[1]):
        p = _strip_var(p)
    # a one-item bracket/set never equals a scalar, and a list of candidates never equals one answer
    try:
        return bool(_equal(p, g))
    except Exception:  # noqa: BLE001 - any sympy failure is "not equal"
        return False


_NUM_LATEX = re.compile(r"^\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")


def to_fraction(s: Optional[str]) -> Optional[Fraction]:
    """Exact value of a plain number string: '42', '-3.5', '1,234', '3/4', '\\frac{3}{4}', '$12.00'."""
    if s is None:
        return None
    s = s.strip().strip("$").replace("\\!", "").replace("{,}", "").replace("\\$", "").strip().rstrip(".")
    if len(s) > 100:
        return None
    m = _NUM_LATEX.match(s)
    if m:
        s = f"{m.group(1)}/{m.group(2)}"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if not re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)(/-?\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def decimal_places(s: str) -> Optional[int]:
    """Digits after the point if `s` is a plain decimal ('0.1666667' -> 7, '-1,234.50' -> 2), else None."""
    m = _DECIMAL_RE.fullmatch(s.strip())
    return len(m.group(1)) if m else None


def _close_decimal(dec: Fraction, places: int, value, min_places: Optional[int]) -> bool:
    """The precision policy: `dec`, written with `places` digits, stands for `value` (a Fraction, or a
    real number as a decimal string / float) iff places >= min_places and dec is value rounded
    (half away from zero) or truncated to that many places. Digits beyond 15 significant ones (what a
    float carries: 28.274333882308138 for 9 pi) are not compared."""
    if min_places is None or places < min_places or places > 50:
        return False
    with decimal.localcontext() as ctx:
        ctx.prec = 80
        if isinstance(value, Fraction):
            v = decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator)
        else:
            v = decimal.Decimal(str(value))
        want = decimal.Decimal(dec.numerator) / decimal.Decimal(dec.denominator)
        int_digits = len(str(int(abs(want)))) if abs(want) >= 1 else 0
        q = decimal.Decimal(1).scaleb(-min(places, max(15 - int_digits, 0)))
        modes = (decimal.ROUND_HALF_UP, decimal.ROUND_DOWN)
        return bool({want.quantize(q, m) for m in modes} & {v.quantize(q, m) for m in modes})


def _decimal_vs_value(pred: str, gold: str, min_places: Optional[int]) -> Optional[bool]:
    """Verdict when one side is a plain decimal and the other a number (exact, rational or real);
    None when this rule does not apply. Runs sympy only for non-rational other sides (call under a limit)."""
    kp, kg = decimal_places(pred), decimal_places(gold)
    if kp is None and kg is None:
        return None
    a, b = to_fraction(pred), to_fraction(gold)
    if a is not None and b is not None:
        if a == b:
            return True
        if kp is not None and (kg is None or kp <= kg):  # the coarser decimal stands for the finer value
            return _close_decimal(a, kp, b, min_places)
        return _close_decimal(b, kg, a, min_places)
    dec_s, other, k = (pred, gold, kp) if kp is not None else (gold, pred, kg)
    if min_places is None or k < min_places:
        return None  # exact comparison (sympy) decides
    try:
        x = parse(other)
    except (ParseError, TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError, AttributeError):
        return None
    if isinstance(x, tuple) or x.free_symbols:
        return None
    try:
        v = x.evalf(k + 20)
        if not v.is_real:
            return False
        v = str(v)
    except (TypeError, ValueError):
        return None
    return _close_decimal(to_fraction(dec_s), k, v, min_places)


def _quick(pred: str, gold: str, min_places: Optional[int]) -> Optional[bool]:
    """Cheap in-process verdicts: identical strings, or both plain numbers. None = needs sympy."""
    if _string_key(pred) == _string_key(gold):
        return True
    a, b = to_fraction(pred), to_fraction(gold)
    if a is not None and b is not None:
        return a == b or bool(_decimal_vs_value(pred, gold, min_places))
    return None


def _equiv_policy(pred: str, gold: str, min_places: Optional[int] = MIN_DECIMAL_PLACES) -> bool:
    """equiv_normalized plus the decimal precision policy (runs sympy; call under a time limit)."""
    d = _decimal_vs_value(pred, gold, min_places)
    if d is not None:
        return d
    if decimal_places(pred) is not None or decimal_places(gold) is not None:
        # a short decimal against an irrational: exact only (the numeric tolerance is not applied)
        try:
            x, y = parse(pred), parse(gold)
        except (ParseError, TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError,
                AttributeError):
            return False
        if not isinstance(x, tuple) and not isinstance(y, tuple) and not (x.free_symbols or y.free_symbols):
            try:
                import sympy
                return bool(sympy.simplify(x - y) == 0)
            except Exception:  # noqa: BLE001
                return False
    return equiv_normalized(pred, gold)


def _percent_variants(pred: str, gold: str) -> list:
    """(pred, gold) pairs to try: as written, and with the percent side divided by 100 (module docstring)."""
    pairs = [(normalize(pred), normalize(gold))]
    pp, gp = has_percent(pred), has_percent(gold)
    if pp != gp:
        if pp:
            pairs.append((f"({pairs[0][0]})/100" if to_fraction(pairs[0][0]) is None
                          else str(to_fraction(pairs[0][0]) / 100), pairs[0][1]))
        else:
            pairs.append((pairs[0][0], f"({pairs[0][1]})/100" if to_fraction(pairs[0][1]) is None
                          else str(to_fraction(pairs[0][1]) / 100)))
    return pairs


def is_equiv(pred: str, gold: str, *, timeout: float = 1.0, min_places: Optional[int] = MIN_DECIMAL_PLACES) -> bool:
    """True if the answer strings are mathematically equivalent; False on timeout or error.

    min_places: the decimal precision policy (module docstring); None = decimals must be exact."""
    if pred is None or len(pred) > MAX_ANSWER_CHARS:
        return False
    for p, g in _percent_variants(pred, gold):
        q = _quick(p, g, min_places)
        if q is None:
            q = bool(pool.call(_equiv_policy, p, g, min_places, timeout=timeout, default=False))
        if q:
            return True
    return False


def score(completion: str, gold: str, *, extract: str = "strict", timeout: float = 1.0,
          min_places: Optional[int] = MIN_DECIMAL_PLACES) -> Score:
    """Extracts the answer from `completion` and checks it against `gold` (1.0 / correct iff equivalent)."""
    pred = ex.extract(completion, extract)
    if pred is None:
        return INCORRECT
    pred = pred.strip()
    ok = is_equiv(pred, gold, timeout=timeout, min_places=min_places)
    return Score(1.0 if ok else 0.0, ok, pred[:MAX_ANSWER_CHARS])
