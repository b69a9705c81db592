"""Dataset loaders: JSONL, JSON, parquet and TSV files in the vlmrl, EasyR1 and TRL row formats.

Entry point: :func:`load_dataset` returns a :class:`VQADataset`. Text fields of every row are read and
validated when the dataset is loaded (missing or mistyped fields, ``<image>`` placeholders that do not
match the images, image paths outside the dataset root or missing); images are decoded only when a
row is accessed (``dataset[i]``), so a big dataset costs little to open. An image that cannot be used
(empty, truncated or not an image file, over ``max_image_pixels``, an aspect ratio above 200) raises a
DataError naming the row and field when its row is accessed; the trainer skips and counts such rows.

Row formats (``format="auto"`` picks one from the fields of the first row: ``question`` -> vlmrl,
``problem`` -> easyr1, ``prompt`` -> trl) are checked and normalised in ``vlmrl/data/formats.py``; files
are read by ``vlmrl/data/tables.py`` (JSONL, JSON, parquet) and :func:`_read_tsv` here (training TSVs:
JSON cells, VLMEvalKit-style option columns A, B, ...).

An image reference is an HF ``Image`` struct ``{"bytes", "path"}``, raw bytes, a base64 string (or a
``data:image/...;base64,`` URI), or a path relative to the dataset root (the directory of the data
file unless ``image_root`` is given). Other fields of a row are kept in ``Sample.meta``.

Errors are :class:`~vlmrl.data.sample.DataError` (a ValueError) or ``FileNotFoundError``; their
messages name the file, the row (0-based record index; JSONL also gives the 1-based line) and the field.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .formats import FORMATS, detect_format, normalize_row
from .images import DEFAULT_MAX_IMAGE_PIXELS, check_aspect_ratio, load_image
from .sample import ANSWER_TYPES, DataError, Sample, Where, choice_letter
from .tables import FILE_TYPES, LazyRowImages, Record, parquet_columns, read_json, read_jsonl, read_parquet

SPLIT_FILE_NAMES = ("data", "train")
"""Names looked up in a directory when no split is given, in this order."""


# ---------------------------------------------------------------------------------------------------
# reading files into records


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
    """The rows of a parquet file, image columns as :class:`LazyRowImages` (read when a row is accessed)."""
    records, lazy = read_parquet(path, image_keys)
    lengths = {key: cells.lengths() for key, cells in lazy.items()}
    for rec in records:
        for key, cells in lazy.items():
            rec.data[key] = LazyRowImages(cells, rec.row, lengths[key][rec.row])
    return records


# ---------------------------------------------------------------------------------------------------
# row normalisation


@dataclass
class RowInfo:
    """A validated row: text fields and image references (not decoded)."""

    id: str
    images: Any  # list of refs or LazyRowImages
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
        fmt_row = fmt_file or "vlmrl"
        for rec in records:
            w = Where(file=file, row=rec.row, line=rec.line)
            try:
                d = normalize_row(fmt_row, rec.data, w, root, f"{file.stem}-{rec.row}", answer_type, check_files)
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
