"""Reading a benchmark task's data files: rows, and per row a getter of its image cell.

``READERS[format](path, image_field, with_images)`` returns ``(rows, getters, lazy_single)``: the rows
without the image column, per row a zero-argument getter of its image cell (None without images), and
whether a row holds one image read only when used. JSONL, JSON and parquet go through the shared table
layer (``vlmrl/data/tables.py``); VLMEvalKit TSVs are read here (their base64 image column is re-read from
the row's byte offset on demand). :func:`doc_images` turns a getter into the doc's
:class:`~vlmrl.data.images.LazyImage` s.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Callable

from vlmrl.data.images import LazyImage, image_cells
from vlmrl.data.tables import parquet_columns, read_json, read_jsonl, read_parquet


def _read_parquet(path: Path, image_field: str | None, with_images: bool):
    """Rows (image column left out) and, per row, a zero-arg getter of its image cell (read from the file
    one row group at a time when called)."""
    records, lazy = read_parquet(path, (image_field,) if image_field else ())
    rows = [r.data for r in records]
    getters: list[Callable[[], Any] | None] = [None] * len(rows)
    if not (with_images and image_field):
        return rows, getters, True
    if image_field not in lazy:
        raise ValueError(f"{path}: no image column {image_field!r} (columns: {', '.join(parquet_columns(path))})")
    cells = lazy[image_field]
    getters = [(lambda i=i: cells.cell(i)) for i in range(len(rows))]
    # Several images per row: the cells are read when the docs are built, so each doc knows its image count.
    return rows, getters, not cells.is_list


class _Tracker:
    """Line iterator over a binary file that knows the byte offset of the next line."""

    def __init__(self, f):
        self.f = f
        self.pos = f.tell()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.f.readline()
        if not line:
            raise StopIteration
        self.pos += len(line)
        return line.decode("utf-8")


def _raise_csv_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def _read_tsv(path: Path, image_field: str | None, with_images: bool):
    """Rows of a VLMEvalKit-style TSV (pandas' quoting), the image column left out of the rows and
    re-read from its byte offset on demand. An image cell of at most 64 characters is the ``index``
    of the row that holds the image (VLMEvalKit's convention for repeated images)."""
    _raise_csv_limit()
    rows, offsets, refs = [], [], []
    with open(path, "rb") as f:
        tracker = _Tracker(f)
        reader = csv.reader(tracker, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty TSV file (no header)") from None
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        img_col = header.index(image_field) if image_field in header else None
        if with_images and image_field and img_col is None:
            raise ValueError(f"{path}: no image column {image_field!r} (columns: {', '.join(header)})")
        while True:
            start = tracker.pos
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise ValueError(f"{path}: row {len(rows)}: malformed TSV ({e})") from None
            if not rec:
                continue
            if len(rec) != len(header):
                raise ValueError(
                    f"{path}: row {len(rows)}: {len(rec)} fields, the header has {len(header)}"
                )
            row = {k: v for k, v in zip(header, rec) if k != image_field}
            rows.append(row)
            offsets.append(start)
            refs.append(rec[img_col] if img_col is not None and len(rec[img_col]) <= 64 else None)
    getters: list[Callable[[], Any] | None] = [None] * len(rows)
    if with_images and img_col is not None:
        index_to_row = {}
        if "index" in header:
            index_to_row = {str(r["index"]): i for i, r in enumerate(rows)}

        def cell_at(i: int) -> str:
            with open(path, "rb") as f:
                f.seek(offsets[i])
                rec = next(csv.reader(_Tracker(f), delimiter="\t"))
            return rec[img_col]

        def getter(i: int):
            ref = refs[i]
            if ref is not None and ref.strip():
                j = index_to_row.get(ref.strip())
                if j is None or refs[j] is not None:
                    raise ValueError(
                        f"{path}: row {i}: image field {ref!r} is neither base64 nor the index of a row with an image"
                    )
                i = j
            return ("base64", cell_at(i))

        getters = [(lambda i=i: getter(i)) for i in range(len(rows))]
    return rows, getters, True


def _read_jsonl(path: Path, image_field: str | None, with_images: bool):
    return _split_image_field([r.data for r in read_jsonl(path)], image_field, with_images)


def _read_json(path: Path, image_field: str | None, with_images: bool):
    return _split_image_field([r.data for r in read_json(path)], image_field, with_images)


def _split_image_field(rows, image_field, with_images):
    getters: list[Callable[[], Any] | None] = [None] * len(rows)
    if image_field:
        out = []
        for i, row in enumerate(rows):
            value = row.get(image_field)
            out.append({k: v for k, v in row.items() if k != image_field})
            if with_images:
                getters[i] = (lambda v=value: v)
        rows = out
    return rows, getters, False


READERS = {"parquet": _read_parquet, "tsv": _read_tsv, "jsonl": _read_jsonl, "json": _read_json}


def doc_images(getter, lazy_single: bool, kind: str, image_field: str, root: Path, source: str) -> list[LazyImage]:
    """The LazyImages of one doc from its image-cell getter (see READERS): read when used for one image
    per row, else now (so the doc knows its image count; image files are checked to exist)."""
    if getter is None:
        return []
    src = f"{source} field {image_field!r}"
    if lazy_single:
        # The cell is read only when the image is used: one image per row.
        def read() -> bytes:
            found = image_cells(getter(), kind, root, src)
            if not found:
                raise ValueError(f"{src}: no image in this row")
            return found[0].read_bytes()

        return [LazyImage(read, src)]
    images = image_cells(getter(), kind, root, src)
    for im in images:
        if im.path is not None and not im.path.is_file():
            raise FileNotFoundError(f"{src}: image file {im.path} does not exist")
    return images
