"""Dataset loaders: JSONL, JSON, parquet and TSV files in the vlmrl, EasyR1 and TRL row formats.

Entry point: :func:`load_dataset` returns a :class:`VQADataset`. Text fields of every row are read and
validated when the dataset is loaded (missing or mistyped fields, ``<image>`` placeholders that do not
match the images, image paths outside the dataset root or missing); images are decoded only when a
row is accessed (``dataset[i]``), so a big dataset costs little to open. An image that cannot be used
(empty, truncated or not an image file, over ``max_image_pixels``, an aspect ratio above 200) raises a
DataError naming the row and field when its row is accessed; the trainer skips and counts such rows.

Row formats (``format="auto"`` picks one from the fields of the first row: ``question`` -> vlmrl,
``problem`` -> easyr1, ``prompt`` -> trl):

- **vlmrl** (what ``vlmrl make-data`` writes): ``{"id", "images": [ref, ...], "question", "answer",
  "answer_type"?, "choices"?, "meta"?}``; ``image`` (one ref) is accepted for ``images``.
- **easyr1**: ``{"problem", "answer", "images"?}``; ``problem`` holds one ``<image>`` placeholder per
  image, exactly (EasyR1 splits the text on them).
- **trl**: ``{"prompt", "image" | "images", "solution" | "answer" | "ground_truth" | "completion"}``;
  ``prompt`` is a string or a list of chat messages (``content`` a string or a list of parts, image
  parts ``{"type": "image"}``). Image markers (``<image>`` in strings, image parts in messages) are
  optional, but when present their number must equal the number of images.

An image reference is an HF ``Image`` struct ``{"bytes", "path"}``, raw bytes, a base64 string (or a
``data:image/...;base64,`` URI), or a path relative to the dataset root (the directory of the data
file unless ``image_root`` is given). Other fields of a row are kept in ``Sample.meta``.

Errors are :class:`~vlmrl.data.sample.DataError` (a ValueError) or ``FileNotFoundError``; their
messages name the file, the row (0-based record index; JSONL also gives the 1-based line) and the field.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .images import DEFAULT_MAX_IMAGE_PIXELS, check_aspect_ratio, check_image_ref, load_image
from .sample import ANSWER_TYPES, IMAGE_PLACEHOLDER, DataError, Sample, Where, choice_letter
from .tables import FILE_TYPES, ParquetCells, Record, parquet_columns, read_json, read_jsonl, read_parquet

FORMATS = ("vlmrl", "easyr1", "trl")
SPLIT_FILE_NAMES = ("data", "train")
"""Names looked up in a directory when no split is given, in this order."""

TRL_ANSWER_FIELDS = ("solution", "answer", "ground_truth", "completion")


# ---------------------------------------------------------------------------------------------------
# reading files into records


class _LazyImages(Sequence):
    """The images of one parquet row, read from the file's image column only when indexed."""

    def __init__(self, cells: ParquetCells, index: int, n: int):
        self._cells = cells
        self._index = index
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(self._n))]
        if not -self._n <= k < self._n:
            raise IndexError(k)
        value = self._cells.cell(self._index)
        return value[k] if self._cells.is_list else value


def _parse_tsv_cell(key: str, value: str) -> Any:
    if value == "":
        return None
    v = value.strip()
    if key in ("images", "choices", "meta", "prompt", "completion") and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            if key in ("images", "choices", "meta"):
                raise
            return value
    if key == "image" and v[:1] == "[":
        return json.loads(v)
    return value


def _read_tsv(path: Path) -> list[Record]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not reader.fieldnames:
            raise DataError("TSV file has no header row", file=path)
        for i, raw in enumerate(reader):
            if None in raw:
                raise DataError(f"row has {len(raw) - 1 + len(raw[None])} cells but the header has "
                                f"{len(reader.fieldnames)}", file=path, row=i, line=reader.line_num)
            rec = {}
            for k, v in raw.items():
                try:
                    rec[k] = _parse_tsv_cell(k, v if v is not None else "")
                except json.JSONDecodeError as e:
                    raise DataError(f"invalid JSON in a TSV cell: {e}", file=path, row=i, field=k) from None
            # VLMEvalKit-style option columns A, B, C, ...
            if "choices" not in rec and "A" in rec and "B" in rec:
                opts = []
                for j in range(26):
                    letter = choice_letter(j)
                    if rec.get(letter) in (None, ""):
                        break
                    opts.append(rec.pop(letter))
                for j in range(len(opts), 26):
                    rec.pop(choice_letter(j), None)
                rec["choices"] = opts
            if "id" not in rec and "index" in rec:
                rec["id"] = rec.pop("index")
            out.append(Record(rec, i))
    return out


def _read_parquet(path: Path, image_keys: tuple[str, ...]) -> list[Record]:
    """The rows of a parquet file, image columns as :class:`_LazyImages` (read when a row is accessed)."""
    records, lazy = read_parquet(path, image_keys)
    lengths = {key: cells.lengths() for key, cells in lazy.items()}
    for rec in records:
        for key, cells in lazy.items():
            rec.data[key] = _LazyImages(cells, rec.row, lengths[key][rec.row])
    return records


# ---------------------------------------------------------------------------------------------------
# row normalisation


@dataclass
class RowInfo:
    """A validated row: text fields and image references (not decoded)."""

    id: str
    images: Any  # list of refs or _LazyImages
    image_field: str
    question: str
    answer: str
    answer_type: str
    choices: list[str] | None
    meta: dict
    row: int
    line: int | None
    file: Path
    root: Path


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
        if isinstance(v, _LazyImages):
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
    if isinstance(images, _LazyImages):
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
    extra = {k: v for k, v in rec.items() if k not in consumed and not isinstance(v, (bytes, _LazyImages))}
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


_NORMALIZERS = {"vlmrl": _norm_vlmrl, "easyr1": _norm_easyr1, "trl": _norm_trl}


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


# ---------------------------------------------------------------------------------------------------
# dataset


class VQADataset(Sequence):
    """Validated rows; ``dataset[i]`` decodes row i's images and returns a :class:`Sample`.

    Attributes: ``files`` (data files read), ``format`` (row format), ``skipped`` (messages of rows
    skipped with ``on_error="skip"``), ``max_image_pixels``."""

    def __init__(self, rows: list[RowInfo], *, files: list[Path], format: str,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, skipped: list[str] | None = None):
        self.rows = rows
        self.files = files
        self.format = format
        self.max_image_pixels = max_image_pixels
        self.skipped = list(skipped or [])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.get(i)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.get(i)

    def __repr__(self) -> str:
        files = ", ".join(str(f) for f in self.files[:3]) + (" ..." if len(self.files) > 3 else "")
        return f"VQADataset({len(self)} rows, format={self.format!r}, files=[{files}])"

    def where(self, i: int) -> Where:
        r = self.rows[i]
        return Where(file=r.file, row=r.row, line=r.line)

    def get(self, i: int, *, decode: bool = True) -> Sample:
        """Row ``i`` as a Sample; ``decode=False`` leaves ``images`` as the raw references."""
        r = self.rows[i]
        w = Where(file=r.file, row=r.row, line=r.line)
        if decode:
            images = []
            for k in range(len(r.images)):
                name = f"{r.image_field}[{k}]" if r.image_field.endswith("images") else r.image_field
                im = load_image(r.images[k], r.root, max_pixels=self.max_image_pixels, where=w.at(name))
                check_aspect_ratio(im.size, w.at(name))
                images.append(im)
        else:
            images = list(r.images)
        return Sample(images=images, question=r.question, answer=r.answer, answer_type=r.answer_type,
                      choices=list(r.choices) if r.choices else None, meta=dict(r.meta), id=r.id,
                      source=str(r.file), row=r.row)

    def check_images(self) -> int:
        """Decode every image once (raising the first error); returns the number of images."""
        n = 0
        for i in range(len(self)):
            n += len(self.get(i).images)
        return n

    def select(self, indices) -> "VQADataset":
        return VQADataset([self.rows[i] for i in indices], files=self.files, format=self.format,
                          max_image_pixels=self.max_image_pixels, skipped=self.skipped)


def find_data_files(path: str | os.PathLike, split: str | None = None) -> list[Path]:
    """The data file(s) for ``path``: the file itself, or in a directory ``{split}.{jsonl,json,parquet,tsv}``
    (split None: ``data.*``, then ``train.*``), or sharded ``{split}-*.parquet`` / ``data/{split}-*.parquet``
    (the Hugging Face hub layout)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.exists():
        raise FileNotFoundError(f"dataset not found: {p}")
    names = (split,) if split else SPLIT_FILE_NAMES
    tried = []
    for name in names:
        for ext in FILE_TYPES:
            cand = p / f"{name}{ext}"
            tried.append(cand.name)
            if cand.is_file():
                return [cand]
        for base in (p, p / "data"):
            shards = sorted(base.glob(f"{name}-*.parquet"))
            tried.append(str((base / f"{name}-*.parquet").relative_to(p)))
            if shards:
                return shards
    present = sorted(x.name for x in p.iterdir())[:20]
    raise FileNotFoundError(
        f"no data file in {p} for split {split!r}: looked for {', '.join(tried)}; the directory holds {present}"
    )


def _file_type(path: Path) -> str:
    ft = FILE_TYPES.get(path.suffix.lower())
    if ft is None:
        raise DataError(f"unsupported file type {path.suffix!r}; expected one of {', '.join(FILE_TYPES)}", file=path)
    return ft


def load_dataset(path: str | os.PathLike, format: str = "auto", split: str | None = None, *,
                 image_root: str | os.PathLike | None = None, answer_type: str | None = None,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, on_error: str = "raise",
                 check_files: bool = True, limit: int | None = None) -> VQADataset:
    """Open a VQA dataset.

    path:         a data file (.jsonl, .json, .parquet, .tsv) or a directory (see :func:`find_data_files`).
    format:       "auto" | "vlmrl" | "easyr1" | "trl" (auto: from the fields of the first row).
    split:        file name to look for in a directory (e.g. "train", "test").
    image_root:   directory that relative image paths are resolved against (default: the data file's).
    answer_type:  answer type for rows that do not give one (default: inferred per row).
    max_image_pixels: decompression-bomb cap used when images are decoded (None: PIL's own only).
    on_error:     "raise" (default) or "skip": skip invalid rows, keeping their messages in ``.skipped``.
    check_files:  check at load time that image path references exist inside the root (JSON, JSONL and
                  TSV rows; parquet image columns are read, and checked, only when a row is accessed).
    limit:        read at most this many rows per file.
    """
    if format not in ("auto", *FORMATS):
        raise ValueError(f"unknown dataset format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if answer_type is not None and answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
    files = find_data_files(path, split)
    rows: list[RowInfo] = []
    skipped: list[str] = []
    fmt = None if format == "auto" else format
    for file in files:
        ft = _file_type(file)
        if ft == "parquet":
            cols = parquet_columns(file)
            fmt_file = fmt or detect_format(cols)
            if fmt_file is None:
                raise DataError(f"cannot tell the row format from the columns {cols}; expected 'question' "
                                f"(vlmrl), 'problem' (easyr1) or 'prompt' (trl); pass format=", file=file)
            records = _read_parquet(file, ("images", "image"))
        else:
            if ft == "jsonl":
                records = read_jsonl(file, skipped if on_error == "skip" else None)
            else:
                records = {"json": read_json, "tsv": _read_tsv}[ft](file)
            fmt_file = fmt
            if fmt_file is None and records:
                fmt_file = detect_format(records[0].data)
                if fmt_file is None:
                    raise DataError(
                        f"cannot tell the row format from the fields {sorted(records[0].data)}; expected "
                        f"'question' (vlmrl), 'problem' (easyr1) or 'prompt' (trl); pass format=",
                        file=file, row=0, line=records[0].line)
        if fmt is None and fmt_file is not None:
            fmt = fmt_file
        if limit is not None:
            records = records[:limit]
        root = Path(image_root) if image_root is not None else file.parent
        normalize = _NORMALIZERS[fmt_file or "vlmrl"]
        for rec in records:
            w = Where(file=file, row=rec.row, line=rec.line)
            try:
                d = normalize(rec.data, w, root, f"{file.stem}-{rec.row}", answer_type, check_files)
            except (DataError, FileNotFoundError) as e:
                if on_error == "raise":
                    raise
                skipped.append(str(e))
                continue
            rows.append(RowInfo(row=rec.row, line=rec.line, file=file, root=root, **d))
    return VQADataset(rows, files=files, format=fmt or "vlmrl", max_image_pixels=max_image_pixels, skipped=skipped)


def load_samples(path: str | os.PathLike, **kwargs) -> list[Sample]:
    """``list(load_dataset(path, **kwargs))``: every row decoded (small datasets, tests)."""
    return list(load_dataset(path, **kwargs))
