"""Reading data tables: JSONL, JSON and parquet files as rows that know where they come from.

One layer under both the training-data loaders (``vlmrl/data/loaders.py``: vlmrl, EasyR1 and TRL rows) and
the benchmark tasks (``vlmrl/evaluation/tasks.py``: lmms-eval-shaped YAMLs), so a file is read, and a bad
file reported, the same way for both:

- :func:`read_jsonl` / :func:`read_json` return :class:`Record` s (the row's dict, its 0-based row index and,
  for JSONL, its 1-based line); malformed input raises :class:`~vlmrl.data.sample.DataError` naming the
  file, the row and the line.
- :class:`ParquetCells` reads one (image) column of a parquet file one row group at a time, on demand, so
  a benchmark's image bytes are never all in memory; :func:`read_parquet` returns the other columns' rows
  and a ParquetCells per image column; :class:`LazyRowImages` is one row's images of such a column.

TSV files are read by their users: training TSVs carry JSON cells and option columns
(``loaders._read_tsv``), VLMEvalKit TSVs carry base64 images re-read from their byte offsets
(``evaluation/task_files._read_tsv``). Decoding an image cell (bytes, base64, paths, HF image dicts) is
``vlmrl/data/images.py``'s job.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sample import DataError

FILE_TYPES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".tsv": "tsv"}
"""File extension -> table type."""

JSON_LIST_KEYS = ("data", "rows", "questions", "annotations")
"""Keys under which a JSON file that is an object holds its list of rows (the first that is a list wins)."""


@dataclass
class Record:
    """One row of a table: its fields, its 0-based index among the file's rows, its 1-based line (JSONL)."""

    data: dict
    row: int
    line: int | None = None


def file_type(path: Path) -> str | None:
    """The table type of ``path`` from its extension (jsonl, json, parquet, tsv), None when unknown."""
    return FILE_TYPES.get(Path(path).suffix.lower())


def read_jsonl(path: Path, skipped: list[str] | None = None) -> list[Record]:
    """The file's rows (blank lines skipped); a line that is not a JSON object raises, or with ``skipped``
    given is noted there and left out."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            row = len(out)
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                err = DataError(f"invalid JSON: {e}", file=path, row=row, line=lineno)
            else:
                if isinstance(obj, dict):
                    out.append(Record(obj, row, lineno))
                    continue
                err = DataError(f"a row must be a JSON object, got {type(obj).__name__}", file=path, row=row,
                                line=lineno)
            if skipped is None:
                raise err
            skipped.append(str(err))
    return out


def read_json(path: Path) -> list[Record]:
    """The rows of a JSON file: a list of objects, or an object holding that list under one of
    :data:`JSON_LIST_KEYS` (or as its only list-valued field)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e}", file=path) from None
    if isinstance(obj, dict):
        named = [k for k in JSON_LIST_KEYS if isinstance(obj.get(k), list)]
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if named or len(lists) == 1:
            obj = obj[(named or lists)[0]]
        else:
            raise DataError(f"a JSON dataset must be a list of row objects (or {{\"data\": [...]}}); this object "
                            f"has {len(lists)} list fields", file=path)
    if not isinstance(obj, list):
        raise DataError(f"a JSON dataset must be a list of row objects, got {type(obj).__name__}", file=path)
    out = []
    for i, rec in enumerate(obj):
        if not isinstance(rec, dict):
            raise DataError(f"a row must be a JSON object, got {type(rec).__name__}", file=path, row=i)
        out.append(Record(rec, i))
    return out


def parquet_columns(path: Path) -> list[str]:
    """The column names of a parquet file (its schema only is read)."""
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as e:  # pyarrow raises its own error types for broken files
        raise DataError(f"cannot read parquet: {e}", file=path) from None


class ParquetCells:
    """One column of a parquet file, read one row group at a time when a cell is asked for (the last row
    group read is kept). ``is_list``: the column holds a list per row (several images)."""

    def __init__(self, path: Path, column: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path, self.column = Path(path), column
        pf = pq.ParquetFile(path)
        ctype = pf.schema_arrow.field(column).type
        self.is_list = pa.types.is_list(ctype) or pa.types.is_large_list(ctype)
        self._starts = []
        n = 0
        for i in range(pf.metadata.num_row_groups):
            self._starts.append(n)
            n += pf.metadata.row_group(i).num_rows
        self._n = n
        self._pf = None
        self._cache: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return self._n

    def _group(self, row: int):
        import pyarrow.parquet as pq

        if not 0 <= row < self._n:
            raise IndexError(row)
        rg = bisect.bisect_right(self._starts, row) - 1
        if self._cache is None or self._cache[0] != rg:
            if self._pf is None:
                self._pf = pq.ParquetFile(self.path)
            table = self._pf.read_row_group(rg, columns=[self.column])
            self._cache = (rg, table.column(0))
        return self._cache[1][row - self._starts[rg]]

    def cell(self, row: int) -> Any:
        """Row ``row``'s value as Python objects (a list for a list column; None for a null cell)."""
        return self._group(row).as_py()

    def lengths(self) -> list[int]:
        """Per row, the number of values in the cell: a list's length, 1 for a scalar, 0 for a null cell
        (every row group is read once, without turning cells into Python objects)."""
        out = []
        for row in range(self._n):
            scalar = self._group(row)
            out.append(0 if not scalar.is_valid else (len(scalar) if self.is_list else 1))
        return out


class LazyRowImages(Sequence):
    """The images of one parquet row: their number is known, their bytes are read from the file only when
    indexed."""

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


def read_parquet(path: Path, image_fields: tuple[str, ...] = ()) -> tuple[list[Record], dict[str, ParquetCells]]:
    """The rows of a parquet file without its image columns, and a :class:`ParquetCells` per image column
    present (image bytes are read only when a cell is asked for)."""
    import pyarrow.parquet as pq

    names = parquet_columns(path)
    lazy = {name: ParquetCells(path, name) for name in image_fields if name in names}
    try:
        table = pq.read_table(path, columns=[n for n in names if n not in lazy])
    except Exception as e:  # pyarrow raises its own error types for broken files
        raise DataError(f"cannot read parquet: {e}", file=path) from None
    return [Record(rec, i) for i, rec in enumerate(table.to_pylist())], lazy
