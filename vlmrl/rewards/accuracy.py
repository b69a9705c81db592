"""Answer checking by answer type: "choice", "number", "word" (phrase) and "math"."""

from __future__ import annotations

import logging
import math
import re
import string
from typing import Any, Sequence

from vlmrl.rewards.extract import extract_answer

ANSWER_TYPES = {
    "choice": "choice", "multiple_choice": "choice", "mc": "choice", "mcq": "choice",
    "number": "number", "numeric": "number", "num": "number",
    "word": "word", "phrase": "word", "text": "word", "open": "word",
    "math": "math",
}
MATH_MAX_CHARS = 1000  # longer strings skip sympy (it can hang) and use normalised string equality

# ---------------------------------------------------------------- word / phrase


def normalize_text(s: str) -> str:
    """Lower-case, drop punctuation and articles (a, an, the), collapse whitespace."""
    s = s.lower().translate(str.maketrans("", "", string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


# ---------------------------------------------------------------- numbers

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUM_RE = re.compile(rf"(?<![\w.])([-+]?)({_NUM})(?:\s*/\s*({_NUM}))?(?:[eE]([-+]?\d+))?(\s*%)?")


def parse_numbers(text: str) -> list[tuple[float, bool]]:
    """All numbers in text as (value, is_percent): "1,234" -> 1234, "12%" -> (12, True), "1/2" -> 0.5.
    Numbers too large for a float ("1e999") are left out."""
    out = []
    for sign, num, den, exp, pct in _NUM_RE.findall(text.replace("\u2212", "-")):
        try:
            value = float(num.replace(",", "")) * (10.0 ** int(exp) if exp else 1.0)
        except OverflowError:
            continue
        if den:
            d = float(den.replace(",", ""))
            if d == 0:
                continue
            value /= d
        if not math.isfinite(value):
            continue
        out.append((-value if sign == "-" else value, bool(pct)))
    return out


WHEN_SEVERAL = ("none", "last")


def parse_number(text: Any, *, when_several: str = "none") -> tuple[float, bool] | None:
    """The number in text as (value, is_percent); None when there is none.

    ``when_several`` says what text holding several different numbers gives: ``"none"`` (the training
    reward: a response that names two numbers is not rewarded for either) or ``"last"`` (the zoom
    benchmark's scorer: the last number, as a final answer usually ends the text)."""
    if when_several not in WHEN_SEVERAL:
        raise ValueError(f"when_several must be one of {WHEN_SEVERAL}, got {when_several!r}")
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return (float(text), False) if math.isfinite(text) else None
    found = parse_numbers(str(text))
    if when_several == "last":
        return found[-1] if found else None
    distinct = set(found)
    return distinct.pop() if len(distinct) == 1 else None


def number_match(pred: Any, target: Any, rel_tol: float = 1e-2, abs_tol: float = 1e-6) -> bool:
    """|p - t| <= max(rel_tol * |t|, abs_tol); a percent on one side only also matches as a fraction
    ("12%" equals both 12 and 0.12)."""
    p, t = parse_number(pred), parse_number(target)
    if p is None or t is None:
        return False
    ps = [p[0], p[0] / 100] if p[1] and not t[1] else [p[0]]
    ts = [t[0], t[0] / 100] if t[1] and not p[1] else [t[0]]
    return any(abs(a - b) <= max(rel_tol * abs(b), abs_tol) for a in ps for b in ts)


# ---------------------------------------------------------------- multiple choice

_LEADIN_RE = re.compile(r"^(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)\s*(?:is\b)?\s*[:\-]?\s*", re.I)
_LETTER_ONLY_RE = re.compile(r"\(?([A-Za-z])\)?\s*[.:)]?")
_LETTER_PREFIX_RE = re.compile(r"\(?([A-Z])(?:\)|\.|:)\s*(.*)", re.S)
_SECOND_OPTION_RE = re.compile(r"(?:(?:(?i:or|and)|/|,|&)\s*)?\(?[A-Z](?:[).:,]|\s*$)")


def parse_choice(text: Any, choices: Sequence[str] | None = None) -> str | None:
    """The one option letter a response picks: "B", "(B)", "B.", "B) foo", "Answer: B"; None when
    ambiguous ("A or B"), absent, or (with choices) out of range. Without a letter, a text equal to
    exactly one choice (normalised) picks that choice. An int is a 0-based option index."""
    if isinstance(text, int) and not isinstance(text, bool):
        letter = chr(ord("A") + text)
    else:
        t = _LEADIN_RE.sub("", str(text).strip(), count=1).strip()
        letter = None
        if m := _LETTER_ONLY_RE.fullmatch(t):
            letter = m.group(1).upper()
        elif m := _LETTER_PREFIX_RE.match(t):
            letter = None if _SECOND_OPTION_RE.match(m.group(2)) else m.group(1)
        elif choices:
            hits = [i for i, c in enumerate(choices) if normalize_text(str(c)) == normalize_text(t)]
            letter = chr(ord("A") + hits[0]) if len(hits) == 1 else None
    if letter is not None and choices is not None and not 0 <= ord(letter) - ord("A") < len(choices):
        return None
    return letter


# ---------------------------------------------------------------- math


class _DropTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


def _mv_parse(s: str) -> list:
    from math_verify import parse

    if "$" not in s and "\\(" not in s and "\\boxed" not in s:
        found = parse(f"${s}$", parsing_timeout=None)  # "10^{-3}" parses whole only inside $...$
        if found:
            return found
    return parse(s, parsing_timeout=None)


def math_match(pred: str, target: str) -> bool:
    """Mathematical equivalence through math_verify (timeouts off: no signals, thread-safe);
    any exception is a mismatch; unparsable or very long inputs fall back to normalised equality."""
    pred, target = str(pred).strip(), str(target).strip()
    if max(len(pred), len(target)) > MATH_MAX_CHARS:
        return normalize_text(pred) == normalize_text(target)
    try:
        from math_verify import verify

        gold, ans = _mv_parse(target), _mv_parse(pred)
        if not gold or not ans:
            return bool(normalize_text(pred)) and normalize_text(pred) == normalize_text(target)
        return bool(verify(gold, ans, timeout_seconds=None))
    except Exception:  # math_verify/sympy raise many kinds of errors on odd inputs
        return False


# ---------------------------------------------------------------- dispatch


def score_answer(pred: str | None, answer: Any, answer_type: str = "word", choices: Sequence[str] | None = None,
                 rel_tol: float = 1e-2, abs_tol: float = 1e-6) -> float:
    """1.0 if the extracted answer pred matches answer (or any of a list of answers), else 0.0."""
    kind = ANSWER_TYPES.get(str(answer_type).lower())
    if kind is None:
        raise ValueError(f"unknown answer_type {answer_type!r}; expected one of {sorted(ANSWER_TYPES)}")
    if pred is None:
        return 0.0
    for target in answer if isinstance(answer, (list, tuple)) else [answer]:
        if kind == "choice":
            letter = parse_choice(pred, choices)
            ok = letter is not None and letter == parse_choice(target, choices)
        elif kind == "number":
            ok = number_match(pred, target, rel_tol, abs_tol)
        elif kind == "word":
            ok = normalize_text(str(pred)) == normalize_text(str(target))
        else:
            ok = math_match(pred, target)
        if ok:
            return 1.0
    return 0.0


def accuracy_reward(response: str, sample: dict) -> dict:
    """Reward fn: 1/0 accuracy of the response's extracted answer against sample["answer"].

    Uses sample["answer_type"] (default "word"), sample.get("choices"), and for numbers an optional
    sample["meta"]["rel_tol"] / ["abs_tol"].
    """
    meta = sample.get("meta") or {}
    pred = extract_answer(response)
    acc = score_answer(pred, sample["answer"], sample.get("answer_type", "word"), sample.get("choices"),
                       meta.get("rel_tol", 1e-2), meta.get("abs_tol", 1e-6))
    return {"reward": acc, "accuracy": acc, "answer_found": float(pred is not None)}
