"""Building a benchmark task's documents from rows: prompt text (``doc_to_text``), question, target and
options, as lmms-eval and VLMEvalKit write them. Reading files is ``task_files.py``; the YAML spec is
``tasks.py``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .scorers.choice import LETTERS, parse_labelled_options, parse_options
from .scorers.mathvista import mathvista_prompt

# pandas' default NA strings: VLMEvalKit reads its TSVs with pandas, so an option or hint cell
# holding one of these is absent there.
_PANDAS_NA = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
}

_MISSING = object()


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _absent_cell(v, fmt: str) -> bool:
    """An empty option / hint cell: None, NaN, blank, the text "nan" (lmms-eval's parquet exports),
    or in a TSV one of pandas' NA strings (VLMEvalKit reads its TSVs with pandas)."""
    return _missing(v) or not str(v).strip() or str(v) == "nan" or (fmt == "tsv" and str(v) in _PANDAS_NA)


def get_path(row: dict, dotted: str, default=None):
    """``row["a"]["b"]`` for ``"a.b"`` (a plain key containing dots wins); ``default`` if absent."""
    if dotted in row:
        return row[dotted]
    cur: Any = row
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return default
    return cur


def make_doc(task, doc_id: int, row: dict, source: str, fmt: str) -> dict:
    """One doc (see the tasks module doc) of a row: prompt, question, target and options; images are added
    by the caller."""
    d2t = task.doc_to_text
    qfield = d2t.get("question_field", "question")
    q = get_path(row, qfield, _MISSING)
    if q is _MISSING or _missing(q):
        raise ValueError(f"{source}: missing field {qfield!r} (the question)")
    target = get_path(row, task.target_field, _MISSING)
    if target is _MISSING:
        raise ValueError(f"{source}: missing field {task.target_field!r} (the target)")
    question = str(q)
    choices = doc_choices(task, row, question, source, fmt)
    doc = {
        "doc_id": doc_id,
        "prompt": render_prompt(task, row, question, choices, fmt),
        "question": question,
        "target": target,
        "choices": choices,
        "images": [],
        "row": row,
        "source": source,
    }
    return doc

def doc_choices(task, row: dict, question: str, source: str, fmt: str) -> dict[str, str] | None:
    opts = task.doc_to_text.get("options")
    if task.doc_to_text.get("style") == "mathvista":
        values = get_path(row, task.field_name("choices", "choices"))
        if _missing(values) or not values:
            return None
        return {LETTERS[i]: str(c) for i, c in enumerate(values)}
    if not opts:
        return None
    if "columns" in opts:
        out = {}
        for col in opts["columns"]:
            v = row.get(col)
            if _absent_cell(v, fmt):
                continue
            out[str(col)] = str(v)
        return out or None
    if "field" in opts:
        values = get_path(row, opts["field"])
        if _missing(values) or not values:
            return None
        if isinstance(values, str):
            try:
                values = json.loads(values)
            except json.JSONDecodeError:
                raise ValueError(f"{source}: field {opts['field']!r} is not a list of options") from None
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{source}: field {opts['field']!r} is not a list of options")
        if opts.get("labelled"):
            return parse_labelled_options(values) or None
        return {LETTERS[i]: str(c) for i, c in enumerate(values)} or None
    if opts.get("from_question"):
        return parse_options(question) or None
    return None

def render_prompt(task, row: dict, question: str, choices, fmt: str) -> str:
    """The prompt text: pre_prompt + hint + question + options + post_prompt (or MathVista's prompt)."""
    d2t = task.doc_to_text
    if d2t.get("style") == "mathvista":
        f = task.field_name
        return d2t.get("pre_prompt", "") + mathvista_prompt(
            question,
            [choices[k] for k in choices] if choices else None,
            get_path(row, f("unit", "unit")),
            str(get_path(row, f("question_type", "question_type"), "")),
            str(get_path(row, f("answer_type", "answer_type"), "")),
            get_path(row, f("precision", "precision")),
        ) + d2t.get("post_prompt", "")
    q = question
    removed = False
    for s in d2t.get("remove") or []:
        if s and s in q:
            q = q.replace(s, "")
            removed = True
    if removed:
        q = q.strip()
    if d2t.get("capitalize"):
        q = q.capitalize()
    text = d2t.get("pre_prompt", "")
    hint_field = d2t.get("hint_field")
    if hint_field:
        hint = get_path(row, hint_field)
        if not _absent_cell(hint, fmt):
            text += f"{hint}\n"
    text += q
    opts = d2t.get("options") or {}
    render = opts.get("render", not opts.get("from_question", False))
    if choices and render:
        if opts.get("labelled") and "field" in opts:
            lines = [str(v) for v in get_path(row, opts["field"])]
        else:
            fmt_s = d2t.get("option_format", "{letter}. {text}")
            lines = [fmt_s.format(letter=k, text=v) for k, v in choices.items()]
        text += d2t.get("options_prefix", "\n") + "\n".join(lines) + d2t.get("options_suffix", "")
    text += d2t.get("post_prompt", "")
    return text
