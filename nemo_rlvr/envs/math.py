"""Built-in `math` environment: the final answer, compared by exact equality (math-verify).

Field `answer` (the gold, a LaTeX or plain string, or a JSON number). What is rewarded
(VERIFIER_CONTRACT.md, "math"):

    response --extract--> final answer(s) --hedge checks--> parse (math-verify) --> exact compare
                          last \\boxed{} / \\fbox{};        "or", "either",         Floats made exact
                          else last "Final Answer:",      "possibly", \\lor,      Rationals; lists
                          "The answer is", "Answer:"      \\approx, box in box,   only vs list gold
                          line; unclosed box = none       \\pm vs gold without

- Several top-level boxes score 1 only if every one of them equals the gold (so a
  repeated answer is fine, two different answers are not).
- Hedges are looked for in the final answer only (hedging in the reasoning is fine),
  plus "possibly/perhaps/maybe/probably" right after it ("\\boxed{3}, possibly 4").
  A hedge marker that the gold itself contains is not a hedge.
- Equality is exact: decimals are turned into exact rationals before comparison
  (0.33 is 33/100, never 1/3; 6.28 is never 2*pi), and math-verify's numeric fallback
  runs at 1000 digits, so no rounding tolerance remains.
- Ignored around the value: units, `\\$`, degree signs, a leading `x =`, thousands
  separators, and `%` (a value with `%` matches both v and v/100; "50\\%" = 50 = 0.5).
- Intervals and inequalities compare as sets; "or" joining conditions is a union
  (not a hedge) when the gold itself is an interval, union or inequality.

math-verify is called with its signal-based timeouts disabled, so scoring works from
any thread; the verifier pool enforces the per-sample time limit with worker processes.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from nemo_rlvr.envs.base import FieldSpec, Score, register_env

MAX_ANSWER_CHARS = 2000
"""A final answer longer than this is not parsed (scores 0): no real answer is that long,
and parsing pathological LaTeX is what makes a verifier slow."""
MAX_DISTINCT_BOXES = 16
"""More distinct top-level boxes than this score 0 without comparing each one."""
MAX_DIGITS = 10_000
"""A prediction holding a number with more digits than this (`10^{10^{10}}`, `1000000!`) is
not compared (scores 0) unless the gold holds one too: evaluating it would hang the worker."""
NUMERIC_PRECISION = 1000
"""Digits for math-verify's evalf fallback on non-numeric expressions (exact in practice)."""

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*\{?")
_TOKEN = re.compile(r"\s*(\\[A-Za-z]+|[^\s{}])")
_ANSWER_LINE = re.compile(
    r"^[\s#>*_]*(?:(?:final\s+answer|answer)[\s*_]*:|the\s+(?:final\s+)?answer\s+is\b[\s*_]*:?)(?P<rest>.*)$",
    re.IGNORECASE,
)
_HEDGE_WORDS = re.compile(
    r"(?<![A-Za-z\\])(?:or|either|possibly|perhaps|maybe|probably|likely|approximately|approx"
    r"|roughly|about|around|nearly)(?![A-Za-z])",
    re.IGNORECASE,
)
_TAIL_HEDGE_WORDS = re.compile(
    r"(?<![A-Za-z\\])(?:possibly|perhaps|maybe|probably)(?![A-Za-z])",
    re.IGNORECASE,
)
_HEDGE_OR = re.compile(r"(?<![A-Za-z\\])or(?![A-Za-z])|\\lor(?![A-Za-z])|\\vee(?![A-Za-z])|∨", re.I)
_HEDGE_APPROX = re.compile(r"\\(?:approx|thickapprox|simeq|sim|thicksim)(?![A-Za-z])|[≈≃∼]")
_PLUS_MINUS = re.compile(r"\\(?:pm|mp)(?![A-Za-z])|[±∓]")
_PERCENT_SUFFIX = re.compile(r"(?:\\?%|\\text\{\s*percent\s*\}|\s*percent)\s*$", re.IGNORECASE)
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\degree(?![A-Za-z])|°")
_REPEATING = re.compile(r"(?<![\d.])(\d*)\.(\d{0,50})\\overline\s*\{\s*(\d{1,50})\s*\}")
_TEXT_WRAPPED = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\s*\{([-+.\d].*)\}$", re.DOTALL)

# math-verify warns once per process that its timeout is off; that is deliberate here.
logging.getLogger("math_verify").addFilter(lambda rec: "Timeout is disabled" not in rec.getMessage())
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(lambda rec: "Timeout is disabled" not in rec.getMessage())


# ---------------------------------------------------------------- extraction


def find_boxes(text: str) -> tuple[list[str], bool]:
    """Contents of the top-level \\boxed{...} / \\fbox{...} groups, and whether all closed.

    Braces are matched by depth; an escaped brace (`\\{`, `\\}`) does not count. A box
    without a brace group (`\\boxed 4`, TeX's one-token argument) boxes its next token.
    """
    boxes, closed, _ = _scan_boxes(text)
    return boxes, closed


def _scan_boxes(text: str) -> tuple[list[str], bool, int]:
    """(box contents, all closed, index just past the last box)."""
    boxes: list[str] = []
    pos = 0
    while (m := _BOX_OPEN.search(text, pos)) is not None:
        if not m.group(0).endswith("{"):
            tok = _TOKEN.match(text, m.end())
            if tok is None:
                return boxes, False, len(text)  # "\\boxed" at the very end: unclosed
            boxes.append(tok.group(1))
            pos = tok.end()
            continue
        i, depth, n = m.end(), 1, len(text)
        while i < n:
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        if depth != 0:
            return boxes, False, len(text)  # everything after an unclosed opener is inside it
        boxes.append(text[m.end() : i])
        pos = i + 1
    return boxes, True, pos


def extract_answers(response: str) -> list[str]:
    """The final answer(s) of a response: all top-level boxes, else the last answer line.

    An unclosed box means no answer (no fallback to an answer line). Empty answers are
    dropped, so `\\boxed{}` alone is no answer.
    """
    return _extract(response)[0]


def _extract(response: str) -> tuple[list[str], str]:
    """(final answers, the text after them); see `extract_answers`."""
    boxes, closed, end = _scan_boxes(response)
    if not closed:
        return [], ""
    if boxes:
        return [b for b in boxes if b.strip()], response[end:]
    lines = response.splitlines()
    for k in range(len(lines) - 1, -1, -1):
        m = _ANSWER_LINE.match(lines[k])
        if m:
            rest = m.group("rest")
            # "Final Answer: The final answer is 7. I hope it is correct." (Minerva style)
            inner = _ANSWER_LINE.match(rest)
            if inner:
                rest = inner.group("rest")
            rest = re.sub(r"\s*I hope it is correct\.?\s*$", "", rest, flags=re.IGNORECASE)
            rest = rest.strip().strip("*_").strip()
            return ([rest] if _strip_math_delimiters(rest) else []), "\n".join(lines[k + 1 :])
    return [], ""


def _strip_math_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("\\[", "\\]"), ("\\(", "\\)")):
        if s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)]
    s = re.sub(r"(?<!\\)\$", "", s)  # math-mode dollars; an escaped \$ is currency
    s = s.strip()
    while s.endswith((".", ",", ";")):
        s = s[:-1].rstrip()  # sentence punctuation after the value
    return s


# ---------------------------------------------------------------- hedges


def hedge_reason(answer: str, gold: str, gold_is_set_like: bool) -> str | None:
    """Why `answer` is a hedge (scores 0), or None. Markers also present in the gold are allowed."""
    if _BOX_OPEN.search(answer):
        return "a box inside the box"
    for m in _HEDGE_WORDS.finditer(answer):
        word = m.group(0).lower()
        if re.search(rf"(?<![A-Za-z\\]){word}(?![A-Za-z])", gold, re.IGNORECASE):
            continue
        if word == "or" and gold_is_set_like:
            continue  # "x < 1 or x > 2" is a union when the gold is an interval/inequality
        return f"hedge word {word!r}"
    if _HEDGE_OR.search(answer) and not _HEDGE_OR.search(gold) and not gold_is_set_like:
        return "logical or (\\lor) between answers"
    if _HEDGE_APPROX.search(answer) and not _HEDGE_APPROX.search(gold):
        return "approximate answer (\\approx)"
    if _PLUS_MINUS.search(answer) and not _PLUS_MINUS.search(gold):
        return "\\pm in the answer but not in the gold"
    return None


def tail_hedge_reason(tail: str, gold: str) -> str | None:
    """A hedge in the text after the final answer ("\\boxed{3}, possibly 4"), or None.

    Only words that offer another answer count here: ordinary closing prose uses "or",
    and "\\boxed{2\\pi} \\approx 6.28" adds a decimal to an exact answer, not a hedge.
    """
    for m in _TAIL_HEDGE_WORDS.finditer(tail):
        word = m.group(0).lower()
        if not re.search(rf"(?<![A-Za-z\\]){word}(?![A-Za-z])", gold, re.IGNORECASE):
            return f"hedge word {word!r} after the answer"
    return None


# ---------------------------------------------------------------- parsing and comparison


def _repeating_decimal(m: re.Match[str]) -> str:
    """0.1\\overline{6} -> \\frac{15}{90}: the exact value of a repeating decimal."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    num = int(whole + fixed + rep) - int(whole + fixed)
    den = 10 ** len(fixed) * (10 ** len(rep) - 1)
    return f"\\frac{{{num}}}{{{den}}}"


def _variants(answer: str) -> list[str]:
    """Normalised spellings of one answer; the answer matches if any spelling does."""
    s = _strip_math_delimiters(answer)
    s = _DEGREES.sub("", s).replace("{,}", ",").strip()
    s = _REPEATING.sub(_repeating_decimal, s)
    m = _TEXT_WRAPPED.match(s)
    if m:
        s = m.group(1).strip()  # \text{5 cm} -> 5 cm
    out = [s]
    no_pct = _PERCENT_SUFFIX.sub("", s).strip()
    if no_pct and no_pct != s:
        out.append(no_pct)  # '%' ignored: 50\% also reads as 50
    return out


def _exact(expr: Any) -> Any:
    """Replace every sympy Float by the exact decimal rational it was written as."""
    import sympy

    if isinstance(expr, sympy.MatrixBase):
        return expr.applyfunc(_exact)
    if isinstance(expr, sympy.Basic):
        floats = expr.atoms(sympy.Float)
        if floats:
            return expr.xreplace({f: sympy.Rational(str(f)) for f in floats})
    return expr


def parse_answer(answer: str) -> list[Any]:
    """math-verify parses of every spelling of `answer` (sympy objects, then strings)."""
    from math_verify import LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]
    exprs: list[Any] = []
    strings: list[str] = []
    for v in _variants(answer):
        if not v:
            continue
        for p in parse("\\boxed{" + v + "}", extraction_config=config, parsing_timeout=None):
            if isinstance(p, str):
                strings.append(p)
            else:
                exprs.append(_exact(p))
                union = _conditions_as_set(exprs[-1])
                if union is not None:
                    exprs.append(union)
    return exprs + strings


def _conditions_as_set(expr: Any) -> Any:
    """"x < 1 or x > 2" parses as the list {x < 1, x > 2}; also read it as their union."""
    import sympy

    if not isinstance(expr, sympy.FiniteSet) or not expr.args:
        return None
    if not all(isinstance(a, sympy.core.relational.Relational) for a in expr.args):
        return None
    if len(expr.free_symbols) != 1:
        return None
    try:
        return sympy.Union(*(a.as_set() for a in expr.args))
    except Exception:  # as_set is not implemented for every relation
        return None


def answer_kind(parsed: Sequence[Any]) -> str:
    """"collection" (list, set, interval, union), "relation" (inequality), or "scalar"."""
    import sympy
    from math_verify.grader import is_assignment_relation, is_relation

    for p in parsed:
        if isinstance(p, str):
            continue
        if isinstance(p, (sympy.Set, sympy.Tuple, list, tuple)):
            return "collection"
        if is_relation(p):
            if is_assignment_relation(p) and not any(isinstance(a, sympy.Set) for a in p.args):
                return "scalar"  # x = 3
            return "relation"
        return "scalar"
    return "scalar"  # text answers


def _log10_size(e: Any) -> float | None:
    """Estimated decimal digits of a plain numeric subexpression (None if not one)."""
    import sympy

    if isinstance(e, sympy.Rational):
        return max(int(e.p).bit_length(), int(e.q).bit_length()) * 0.30103
    if isinstance(e, sympy.Float):
        return 20.0
    if isinstance(e, sympy.Pow) or isinstance(e, sympy.factorial):
        args = [_log10_size(a) for a in e.args]
        if any(a is None for a in args):
            return None
        if args[-1] > 15:
            return float("inf")
        n = 10.0 ** args[-1]  # |exponent| or |factorial argument|, roughly
        return n * args[0] if isinstance(e, sympy.Pow) else n * max(1.0, args[0])
    return None


def is_huge(expr: Any) -> bool:
    """Whether `expr` contains a number too large to evaluate (see MAX_DIGITS)."""
    import sympy

    if not isinstance(expr, sympy.Basic):
        return False
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, (sympy.Pow, sympy.factorial)):
            size = _log10_size(node)
            if size is not None and size > MAX_DIGITS:
                return True
    return False


def is_equivalent(gold: list[Any], pred: list[Any]) -> bool:
    """Exact equality of any gold reading with any prediction reading (math-verify)."""
    from math_verify import verify

    return verify(
        gold,
        pred,
        float_rounding=NUMERIC_PRECISION,
        numeric_precision=NUMERIC_PRECISION,
        allow_set_relation_comp=True,
        timeout_seconds=None,
    )


# ---------------------------------------------------------------- environment


def _gold_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    if isinstance(value, str) and value.strip():
        boxes, closed = find_boxes(value)
        return boxes[-1] if boxes and closed else value
    return None


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple[tuple[Any, ...], str]:
    """(parses, kind) of a reference answer, cached: the 8-16 responses of a GRPO group share
    one gold. math-verify itself remembers only its last 20 LaTeX strings, so without this a
    gold is parsed again whenever other answers came in between. sympy expressions are
    immutable, so sharing them between samples is safe."""
    parsed = tuple(parse_answer(gold))
    return parsed, answer_kind(parsed) if parsed else ""


@register_env("math")
class MathEnv:
    """Reward 1 iff the response's final answer exactly equals `answer` (see module docstring)."""

    name = "math"
    fields = {"answer": FieldSpec((str, int, float), 'the reference answer: a non-empty string such as "42" '
                                  'or "\\frac{1}{2}", or a number')}

    @staticmethod
    def check_fields(fields: Mapping[str, Any]) -> str | None:
        if _gold_text(fields["answer"]) is None:
            return (f"field 'answer'={fields['answer']!r:.60} is empty; expected the reference answer, a "
                    f"non-empty string such as \"42\" or a number")
        return None

    def __init__(self) -> None:
        import math_verify  # noqa: F401  (slow first import: pay it at construction, not per sample)

    def score_record(self, response: str, fields: Mapping[str, Any]) -> Score:
        zero = {"has_answer": 0.0, "correct": 0.0}
        if "answer" not in fields:
            return Score(0.0, zero, "missing env field 'answer': add the reference answer, "
                         'e.g. "answer": "\\\\frac{1}{2}"')
        gold = _gold_text(fields["answer"])
        if gold is None:
            return Score(0.0, zero, f"env field 'answer' must be a non-empty string or a number, got "
                         f"{type(fields['answer']).__name__} {fields['answer']!r:.80}; give the "
                         f"reference answer as a string such as \"42\" or \"\\\\frac{{1}}{{2}}\"")
        if not isinstance(response, str):
            return Score(0.0, zero, f"response must be a string, got {type(response).__name__}")
        gold_parsed, gold_kind = _parse_gold(gold)
        if not gold_parsed:
            return Score(0.0, zero, f"env field 'answer'={gold!r:.80} could not be parsed; write it "
                         f"as LaTeX or a plain number")
        answers, tail = _extract(response)
        if not answers:
            return Score(0.0, zero)
        has = {"has_answer": 1.0, "correct": 0.0}
        distinct = list(dict.fromkeys(a.strip() for a in answers))
        if len(distinct) > MAX_DISTINCT_BOXES or any(len(a) > MAX_ANSWER_CHARS for a in distinct):
            return Score(0.0, has)
        if tail_hedge_reason(tail, gold) is not None:
            return Score(0.0, has)  # "\\boxed{3} (possibly 4)": a hedge after the answer
        for answer in distinct:
            if hedge_reason(answer, gold, gold_kind != "scalar") is not None:
                return Score(0.0, has)
            pred = parse_answer(answer)
            if not pred:
                return Score(0.0, has)
            if gold_kind == "scalar" and answer_kind(pred) != "scalar":
                return Score(0.0, has)  # a list, set or range for a single-valued answer
            if any(map(is_huge, pred)) and not any(map(is_huge, gold_parsed)):
                return Score(0.0, has)
            if not is_equivalent(list(gold_parsed), pred):
                return Score(0.0, has)
        return Score(1.0, {"has_answer": 1.0, "correct": 1.0})

