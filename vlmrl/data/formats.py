"""Row formats of training data: each row of a vlmrl, EasyR1 or TRL file normalised to one shape.

:func:`normalize_row` checks one row's text fields and image references (no image is decoded) and returns
the fields of a :class:`~vlmrl.data.loaders.RowInfo`: ``id, images, image_field, question, answer,
answer_type, choices, meta``. Every error is a :class:`~vlmrl.data.sample.DataError` (or
``FileNotFoundError`` for a missing image file) naming the file, the row and the field.

- **vlmrl** (what ``vlmrl make-data`` writes): ``{"id", "images": [ref, ...], "question", "answer",
  "answer_type"?, "choices"?, "meta"?}``; ``image`` (one ref) is accepted for ``images``.
- **easyr1**: ``{"problem", "answer", "images"?}``; ``problem`` holds one ``<image>`` placeholder per
  image, exactly (EasyR1 splits the text on them).
- **trl**: ``{"prompt", "image" | "images", "solution" | "answer" | "ground_truth" | "completion"}``;
  ``prompt`` is a string or a list of chat messages (``content`` a string or a list of parts, image
  parts ``{"type": "image"}``). Image markers (``<image>`` in strings, image parts in messages) are
  optional, but when present their number must equal the number of images.

:func:`detect_format` picks the format from a row's fields (``question`` -> vlmrl, ``problem`` -> easyr1,
``prompt`` -> trl); :func:`infer_answer_type` guesses the answer type of a row that does not give one.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .images import check_image_ref
from .sample import ANSWER_TYPES, IMAGE_PLACEHOLDER, Where, choice_letter
from .tables import LazyRowImages

FORMATS = ("vlmrl", "easyr1", "trl")
TRL_ANSWER_FIELDS = ("solution", "answer", "ground_truth", "completion")


_NUMBER_RE = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?%?$")
_OPTION_RE = re.compile(r"(^|\n)\s*\(?([A-H])[.):]\s", re.M)
_MATH_RE = re.compile(r"[\\^$_{}=]|\d\s*/\s*\d|\d\s*[+*]\s*\d|sqrt|pi\b")


def infer_answer_type(answer: str, question: str = "", choices: list[str] | None = None) -> str:
    """Best guess when a row does not say: choices given (or a single letter with lettered options in
    the question) -> "choice"; a plain number -> "number"; LaTeX / an expression -> "math"; else "word"."""
    a = answer.strip()
    if choices:
        return "choice"
    if re.fullmatch(r"\(?[A-H]\)?\.?", a) and _OPTION_RE.search(question or ""):
        return "choice"
    if a and any(ch.isdigit() for ch in a) and _NUMBER_RE.match(a):
        return "number"
    if _MATH_RE.search(a):
        return "math"
    return "word"


def clean_question(text: str) -> str:
    """Remove ``<image>`` placeholders and the whitespace they leave."""
    if IMAGE_PLACEHOLDER not in text:
        return text.strip()
    s = re.sub(r"[ \t]*<image>[ \t]*", " ", text)
    lines = [ln.strip() for ln in s.split("\n")]
    s = "\n".join(lines)
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip()


def _get_str(rec: dict, key: str, w: Where, *, required: bool = True, allow_number: bool = False) -> str | None:
    if key not in rec or rec[key] is None:
        if required:
            raise w.at(key).error("missing field" if key not in rec else "field is null")
        return None
    v = rec[key]
    if isinstance(v, str):
        return v
    if allow_number and isinstance(v, (int, float)) and not isinstance(v, bool):
        if isinstance(v, float) and not math.isfinite(v):
            raise w.at(key).error(f"must be a finite number or a string, got {v!r}")
        return str(v)
    raise w.at(key).error(f"must be a string{' or a number' if allow_number else ''}, got {type(v).__name__}")


def _image_list(rec: dict, keys: tuple[str, ...], w: Where, *, required: bool) -> tuple[Any, str]:
    """(list of refs, field name). A single ref under ``image`` becomes a one-element list."""
    for key in keys:
        if key not in rec:
            continue
        v = rec[key]
        if v is None:
            return [], key
        if isinstance(v, LazyRowImages):
            return v, key
        if key.endswith("images"):
            if isinstance(v, (list, tuple)):
                return list(v), key
            raise w.at(key).error(f"must be a list of images, got {type(v).__name__}")
        if isinstance(v, (list, tuple)):
            return list(v), key
        return [v], key
    if required:
        raise w.at(keys[0]).error("missing field")
    return [], keys[0]


def _check_refs(images: Any, field: str, root: Path, w: Where, check_files: bool) -> None:
    if isinstance(images, LazyRowImages):
        return
    for k, ref in enumerate(images):
        name = f"{field}[{k}]" if field.endswith("images") else field
        if ref is None:
            raise w.at(name).error("image is null")
        if check_files:
            check_image_ref(ref, root, w.at(name))


def _choices(rec: dict, w: Where) -> list[str] | None:
    v = rec.get("choices")
    if v is None:
        return None
    if not isinstance(v, (list, tuple)):
        raise w.at("choices").error(f"must be a list of strings, got {type(v).__name__}")
    out = []
    for k, c in enumerate(v):
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, (int, float)) and not isinstance(c, bool):
            out.append(str(c))
        else:
            raise w.at(f"choices[{k}]").error(f"must be a string, got {type(c).__name__}")
    if len(out) > 26:
        raise w.at("choices").error(f"at most 26 choices, got {len(out)}")
    return out or None


def _placeholders(text: str, n_images: int, w: Where, field: str, *, strict: bool) -> None:
    n = text.count(IMAGE_PLACEHOLDER)
    if (strict or n > 0) and n != n_images:
        raise w.at(field).error(
            f"has {n} '{IMAGE_PLACEHOLDER}' placeholder{'s' if n != 1 else ''} but the row has {n_images} "
            f"image{'s' if n_images != 1 else ''}"
        )


def _message_text(content: Any, w: Where, field: str) -> tuple[str, int]:
    """(text, number of image parts) of one chat message's content."""
    if isinstance(content, str):
        return content, content.count(IMAGE_PLACEHOLDER)
    if not isinstance(content, list):
        raise w.at(field).error(f"message content must be a string or a list of parts, got {type(content).__name__}")
    texts, n_img = [], 0
    for j, part in enumerate(content):
        if not isinstance(part, dict) or "type" not in part:
            raise w.at(f"{field}[{j}]").error("a content part must be an object with a 'type'")
        t = part["type"]
        if t in ("image", "image_url", "image_pil"):
            n_img += 1
        elif t == "text":
            txt = part.get("text")
            if not isinstance(txt, str):
                raise w.at(f"{field}[{j}].text").error("text part must have a string 'text'")
            texts.append(txt)
            n_img += txt.count(IMAGE_PLACEHOLDER)
        else:
            raise w.at(f"{field}[{j}].type").error(f"unsupported content part type {t!r}")
    return "\n".join(texts), n_img


def _finish(rec: dict, *, id_: str, images: Any, image_field: str, question: str, answer: str,
            answer_type: str | None, choices: list[str] | None, meta: dict, w: Where, default_type: str | None,
            consumed: set[str]) -> dict:
    if answer_type is None:
        answer_type = default_type or infer_answer_type(answer, question, choices)
    if answer_type not in ANSWER_TYPES:
        raise w.at("answer_type").error(f"must be one of {list(ANSWER_TYPES)}, got {answer_type!r}")
    if answer_type == "choice" and choices:
        a = answer.strip()
        letters = [choice_letter(i) for i in range(len(choices))]
        if a not in letters:
            if a in choices:
                meta.setdefault("answer_text", a)
                answer = letters[choices.index(a)]
            else:
                raise w.at("answer").error(
                    f"multiple-choice answer must be one of the letters {letters[0]}-{letters[-1]} "
                    f"(or the text of a choice), got {answer!r}"
                )
        else:
            answer = a
    extra = {k: v for k, v in rec.items() if k not in consumed and not isinstance(v, (bytes, LazyRowImages))}
    for k, v in extra.items():
        meta.setdefault(k, v)
    return dict(id=id_, images=images, image_field=image_field, question=question, answer=answer,
                answer_type=answer_type, choices=choices, meta=meta)


def _meta(rec: dict, w: Where) -> dict:
    m = rec.get("meta")
    if m is None:
        return {}
    if isinstance(m, str):  # meta stored as JSON text (TSV, parquet without nested types)
        try:
            m = json.loads(m)
        except json.JSONDecodeError as e:
            raise w.at("meta").error(f"is text but not valid JSON: {e}") from None
    if not isinstance(m, dict):
        raise w.at("meta").error(f"must be an object, got {type(m).__name__}")
    if m.get("gt_boxes") is not None:
        _check_boxes(m["gt_boxes"], w)
    return dict(m)


def _check_boxes(boxes: Any, w: Where) -> None:
    """meta.gt_boxes: a list of [x1, y1, x2, y2] with finite numbers, x1 < x2 and y1 < y2 (the DTPO crop
    judge divides by their areas)."""
    if not isinstance(boxes, list):
        raise w.at("meta.gt_boxes").error(f"must be a list of [x1, y1, x2, y2] boxes, got {type(boxes).__name__}")
    for k, b in enumerate(boxes):
        name = f"meta.gt_boxes[{k}]"
        if not (isinstance(b, list) and len(b) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)):
            raise w.at(name).error(f"must be [x1, y1, x2, y2] with 4 finite numbers, got {b!r:.80}")
        if not (b[0] < b[2] and b[1] < b[3]):
            raise w.at(name).error(f"is empty: need x1 < x2 and y1 < y2, got {b}")


def _id(rec: dict, w: Where, default: str) -> str:
    v = rec.get("id")
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise w.at("id").error(f"must be a string or an integer, got {type(v).__name__}")
    return str(v)


def _norm_vlmrl(rec, w, root, default_id, default_type, check_files):
    question = _get_str(rec, "question", w)
    answer = _get_str(rec, "answer", w, allow_number=True)
    images, field = _image_list(rec, ("images", "image"), w, required=True)
    _check_refs(images, field, root, w, check_files)
    _placeholders(question, len(images), w, "question", strict=False)
    at = _get_str(rec, "answer_type", w, required=False)
    return _finish(rec, id_=_id(rec, w, default_id), images=images, image_field=field,
                   question=clean_question(question), answer=answer, answer_type=at, choices=_choices(rec, w),
                   meta=_meta(rec, w), w=w, default_type=default_type,
                   consumed={"id", "images", "image", "question", "answer", "answer_type", "choices", "meta"})


def _norm_easyr1(rec, w, root, default_id, default_type, check_files):
    problem = _get_str(rec, "problem", w)
    answer = _get_str(rec, "answer", w, allow_number=True)
    images, field = _image_list(rec, ("images", "image"), w, required=False)
    _check_refs(images, field, root, w, check_files)
    _placeholders(problem, len(images), w, "problem", strict=True)
    at = _get_str(rec, "answer_type", w, required=False)
    return _finish(rec, id_=_id(rec, w, default_id), images=images, image_field=field,
                   question=clean_question(problem), answer=answer, answer_type=at, choices=_choices(rec, w),
                   meta=_meta(rec, w), w=w, default_type=default_type,
                   consumed={"id", "images", "image", "problem", "answer", "answer_type", "choices", "meta"})


def _norm_trl(rec, w, root, default_id, default_type, check_files):
    if "prompt" not in rec or rec["prompt"] is None:
        raise w.at("prompt").error("missing field")
    prompt = rec["prompt"]
    images, field = _image_list(rec, ("images", "image"), w, required=False)
    _check_refs(images, field, root, w, check_files)
    meta = _meta(rec, w)
    if isinstance(prompt, str):
        _placeholders(prompt, len(images), w, "prompt", strict=False)
        question = clean_question(prompt)
    elif isinstance(prompt, list):
        if not prompt:
            raise w.at("prompt").error("empty message list")
        n_img, user_text, system = 0, None, None
        for j, msg in enumerate(prompt):
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                raise w.at(f"prompt[{j}]").error("a message must be an object with 'role' and 'content'")
            text, k = _message_text(msg["content"], w, f"prompt[{j}].content")
            n_img += k
            if msg["role"] == "user":
                user_text = text
            elif msg["role"] == "system":
                system = text
        if user_text is None:
            raise w.at("prompt").error("no user message")
        if n_img and n_img != len(images):
            raise w.at("prompt").error(
                f"has {n_img} image marker{'s' if n_img != 1 else ''} but the row has {len(images)} "
                f"image{'s' if len(images) != 1 else ''}"
            )
        question = clean_question(user_text)
        if system is not None:
            meta.setdefault("system", system)
        if len(prompt) > (2 if system is not None else 1):
            meta.setdefault("prompt_messages", prompt)
    else:
        raise w.at("prompt").error(f"must be a string or a list of messages, got {type(prompt).__name__}")
    answer = None
    for key in TRL_ANSWER_FIELDS:
        if key in rec and rec[key] is not None:
            v = rec[key]
            if key == "completion" and isinstance(v, list):
                texts = [m.get("content") for m in v if isinstance(m, dict) and m.get("role") == "assistant"]
                if not texts:
                    raise w.at(key).error("no assistant message")
                v = _message_text(texts[-1], w, key)[0]
            answer = _get_str({key: v}, key, w, allow_number=True)
            break
    if answer is None:
        raise w.at(TRL_ANSWER_FIELDS[0]).error(f"missing field (one of {', '.join(TRL_ANSWER_FIELDS)})")
    at = _get_str(rec, "answer_type", w, required=False)
    return _finish(rec, id_=_id(rec, w, default_id), images=images, image_field=field, question=question,
                   answer=answer, answer_type=at, choices=_choices(rec, w), meta=meta, w=w,
                   default_type=default_type,
                   consumed={"id", "images", "image", "prompt", "answer_type", "choices", "meta",
                             *TRL_ANSWER_FIELDS})


NORMALIZERS = {"vlmrl": _norm_vlmrl, "easyr1": _norm_easyr1, "trl": _norm_trl}


def detect_format(keys: Any) -> str | None:
    """Row format from a row's field names: question -> vlmrl, problem -> easyr1, prompt -> trl."""
    keys = set(keys)
    if "question" in keys:
        return "vlmrl"
    if "problem" in keys:
        return "easyr1"
    if "prompt" in keys:
        return "trl"
    return None


def normalize_row(fmt: str, rec: dict, w: Where, root: Path, default_id: str, default_type: str | None,
                  check_files: bool) -> dict:
    """One row of format ``fmt`` as the fields of a RowInfo (see the module doc); ``w`` names the row."""
    return NORMALIZERS[fmt](rec, w, root, default_id, default_type, check_files)
