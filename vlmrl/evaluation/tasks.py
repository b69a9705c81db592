"""Benchmark tasks: a YAML spec per task (``eval/NAME.yaml``) and the readers of published files.

A task says where its data lives and how it is laid out (parquet with the Hugging Face Image struct,
TSV with base64 images as VLMEvalKit ships them, JSONL + an image folder), how a row becomes images +
prompt text (``doc_to_text``), which field is the target, the generation settings, and which scorer
aggregates the responses into which metrics. ``Task.load_docs(path)`` returns one dict per row:

``doc_id``      0-based row index in file order (a directory: files sorted by path, rows concatenated)
``prompt``      the full prompt text (pre_prompt + hint + question + options + post_prompt)
``question``    the raw question text
``target``      the target field's value (a str, or a list of answers)
``choices``     {letter: option text} for multiple-choice rows, else None
``images``      list of :class:`LazyImage` (call one to get an RGB ``PIL.Image``; nothing is decoded
                before that, and parquet/TSV image bytes are read from the file only then)
``row``         the row's other fields (image columns left out), for scorers and reports
``source``      "FILE row N", for messages

YAML keys (see ``eval/*.yaml``)::

    task: NAME
    description: one line
    data:
      path: default data file or folder (``vlmrl score --data`` / ``vlmrl eval --data`` override it)
      format: parquet | tsv | jsonl | json      (default: from the file extension)
      split: name of the split (documentation; ``{split}`` in ``files`` is replaced by it)
      files: glob of the files to read when the path is a folder (default: every file of the format)
      image_field: column holding the image(s) (none: a text-only task)
      image_kind: auto | hf_image | base64 | path | bytes
      image_root: folder that relative image paths start from (default: the data file's folder)
    doc_to_text:
      style: default | mathvista
      question_field: question
      hint_field: column put on its own line before the question when non-empty
      options: {columns: [A, B, C, D]} | {field: choices, labelled: false} | {from_question: true}
               (+ render: true/false: whether the options are written into the prompt)
      option_format: "{letter}. {text}"
      options_prefix: "\\n"          options_suffix: ""
      pre_prompt: ""                 post_prompt: ""
      remove: [text cut out of the question, e.g. an instruction the post_prompt replaces]
      capitalize: false
    target_field: answer
    generation: {max_new_tokens: 16, temperature: 0}
    scorer: a name in vlmrl.evaluation.scorers.SCORERS
    scorer_args: {...}                 (scorer options)
    fields: {role: column}             (columns the scorer reads; dotted paths reach into dicts)
    metrics: [names reported, in order]
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from vlmrl.data.images import IMAGE_KINDS, LazyImage, image_cells
from vlmrl.data.tables import FILE_TYPES, parquet_columns, read_json, read_jsonl, read_parquet

from .scorers.choice import LETTERS, parse_labelled_options, parse_options
from .scorers.mathvista import mathvista_prompt

FORMATS = ("parquet", "tsv", "jsonl", "json")
# pandas' default NA strings: VLMEvalKit reads its TSVs with pandas, so an option or hint cell
# holding one of these is absent there.
_PANDAS_NA = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
}


def tasks_dir() -> Path:
    """Folder of the task YAMLs: ``$VLMRL_TASKS_DIR``, else ``eval/`` at the repository root."""
    env = os.environ.get("VLMRL_TASKS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "eval"


def list_tasks() -> list[str]:
    d = tasks_dir()
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.yaml")):
        try:
            with open(p, encoding="utf-8") as f:
                spec = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(spec, dict) and "task" in spec and "scorer" in spec:
            out.append(p.stem)
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _absent_cell(v, fmt: str) -> bool:
    """An empty option / hint cell: None, NaN, blank, the text "nan" (lmms-eval's parquet exports),
    or in a TSV one of pandas' NA strings (VLMEvalKit reads its TSVs with pandas)."""
    return _missing(v) or not str(v).strip() or str(v) == "nan" or (fmt == "tsv" and str(v) in _PANDAS_NA)


# ------------------------------------------------------------------------------------- readers


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


_READERS = {"parquet": _read_parquet, "tsv": _read_tsv, "jsonl": _read_jsonl, "json": _read_json}


# ------------------------------------------------------------------------------------------ task


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


_MISSING = object()


@dataclass
class DataSpec:
    path: str | None = None
    format: str | None = None
    split: str | None = None
    files: str | None = None
    image_field: str | None = None
    image_kind: str = "auto"
    image_root: str | None = None


_TOP_KEYS = {
    "task", "description", "data", "doc_to_text", "target_field", "generation", "scorer",
    "scorer_args", "fields", "metrics",
}
_DATA_KEYS = set(DataSpec.__dataclass_fields__)
_D2T_KEYS = {
    "style", "question_field", "hint_field", "options", "option_format", "options_prefix",
    "options_suffix", "pre_prompt", "post_prompt", "remove", "capitalize",
}
_OPTION_KEYS = {"columns", "field", "labelled", "from_question", "render"}


@dataclass
class Task:
    """A benchmark task loaded from its YAML spec (see the module doc for the keys)."""

    name: str
    scorer: str
    metrics: list[str]
    data: DataSpec = field(default_factory=DataSpec)
    doc_to_text: dict = field(default_factory=dict)
    target_field: str = "answer"
    generation: dict = field(default_factory=lambda: {"max_new_tokens": 64, "temperature": 0})
    scorer_args: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)
    description: str = ""
    spec_path: Path | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, spec: dict, spec_path: Path | None = None) -> "Task":
        where = str(spec_path) if spec_path else "task spec"
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected a mapping at the top level")
        unknown = set(spec) - _TOP_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
        for key in ("task", "scorer", "metrics"):
            if key not in spec:
                raise ValueError(f"{where}: missing required key {key!r}")
        data = spec.get("data") or {}
        if not isinstance(data, dict) or set(data) - _DATA_KEYS:
            raise ValueError(f"{where}: data: unknown key(s) {sorted(set(data) - _DATA_KEYS)}; allowed: {sorted(_DATA_KEYS)}")
        ds = DataSpec(**data)
        if ds.format is not None and ds.format not in FORMATS:
            raise ValueError(f"{where}: data.format {ds.format!r} is not one of {FORMATS}")
        if ds.image_kind not in IMAGE_KINDS:
            raise ValueError(f"{where}: data.image_kind {ds.image_kind!r} is not one of {IMAGE_KINDS}")
        d2t = spec.get("doc_to_text") or {}
        if not isinstance(d2t, dict) or set(d2t) - _D2T_KEYS:
            raise ValueError(f"{where}: doc_to_text: unknown key(s) {sorted(set(d2t) - _D2T_KEYS)}; allowed: {sorted(_D2T_KEYS)}")
        opts = d2t.get("options")
        if opts is not None and (not isinstance(opts, dict) or set(opts) - _OPTION_KEYS):
            raise ValueError(f"{where}: doc_to_text.options must be a mapping with keys among {sorted(_OPTION_KEYS)}")
        if d2t.get("style", "default") not in ("default", "mathvista"):
            raise ValueError(f"{where}: doc_to_text.style must be 'default' or 'mathvista'")
        metrics = spec["metrics"]
        if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
            raise ValueError(f"{where}: metrics must be a non-empty list of names")
        task = cls(
            name=str(spec["task"]),
            scorer=str(spec["scorer"]),
            metrics=list(metrics),
            data=ds,
            doc_to_text=dict(d2t),
            target_field=str(spec.get("target_field", "answer")),
            generation=dict(spec.get("generation") or {"max_new_tokens": 64, "temperature": 0}),
            scorer_args=dict(spec.get("scorer_args") or {}),
            fields=dict(spec.get("fields") or {}),
            description=str(spec.get("description", "")),
            spec_path=spec_path,
        )
        from .scorers import get_scorer

        get_scorer(task.scorer, where=where)  # unknown scorer: clear error now
        return task

    # ------------------------------------------------------------------ accessors
    def field_name(self, role: str, default: str | None = None) -> str | None:
        """Column name the scorer reads for ``role`` (``fields:`` in the YAML), else ``default``."""
        return self.fields.get(role, default)

    def field_value(self, doc: dict, role: str, default=_MISSING):
        """The value of ``role``'s column in a doc's row (dotted paths allowed)."""
        name = self.field_name(role, role)
        value = get_path(doc["row"], name, _MISSING)
        if value is _MISSING:
            if default is not _MISSING:
                return default
            raise ValueError(f"{doc.get('source', 'doc')}: missing field {name!r} (task {self.name}, role {role!r})")
        return value

    def resolve_files(self, path: str | Path | None = None) -> list[Path]:
        """The data files for ``path`` (default: ``data.path``): the file itself, or for a folder the
        files matching ``data.files`` sorted by path."""
        raw = path if path is not None else self.data.path
        if raw is None:
            raise ValueError(f"task {self.name}: no data path (give one; the task has no default)")
        p = Path(raw).expanduser()
        if not p.exists():
            hint = "" if path is not None else " (the task's default; pass --data)"
            raise FileNotFoundError(f"task {self.name}: data path {p} does not exist{hint}")
        if p.is_file():
            return [p]
        pattern = self.data.files
        if pattern:
            if "{split}" in pattern:
                pattern = pattern.replace("{split}", self.data.split or "")
            files = sorted((f for f in p.glob(pattern) if f.is_file()), key=lambda f: str(f))
        else:
            fmt = self.data.format
            exts = [e for e, v in FILE_TYPES.items() if v == fmt] if fmt else list(FILE_TYPES)
            files = sorted((f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts), key=lambda f: str(f))
        if not files:
            want = pattern or f"*.{self.data.format or '{parquet,tsv,jsonl,json}'}"
            raise FileNotFoundError(f"task {self.name}: no data files matching {want!r} under {p}")
        return files

    def file_format(self, path: Path) -> str:
        fmt = FILE_TYPES.get(path.suffix.lower()) or self.data.format
        if fmt is None:
            raise ValueError(f"{path}: cannot tell the file format from the extension; set data.format in the task")
        return fmt

    # ------------------------------------------------------------------ loading
    def load_docs(self, path: str | Path | None = None, *, images: bool = True, limit: int | None = None) -> list[dict]:
        """Read the benchmark file(s) into docs (see the module doc). ``images=False`` skips the
        image column entirely (scoring needs no pixels); ``limit`` keeps the first N docs."""
        from .scorers import get_scorer

        scorer = get_scorer(self.scorer)
        docs: list[dict] = []
        for fpath in self.resolve_files(path):
            fmt = self.file_format(fpath)
            rows, getters, lazy_single = _READERS[fmt](fpath, self.data.image_field, images)
            root = fpath.parent
            if self.data.image_root:
                r = Path(self.data.image_root).expanduser()
                root = r if r.is_absolute() else fpath.parent / r
            for i, row in enumerate(rows):
                if limit is not None and len(docs) >= limit:
                    return docs
                source = f"{fpath} row {i}"
                doc = self._make_doc(len(docs), row, source, fmt)
                if images and self.data.image_field:
                    doc["images"] = self._lazy_images(getters[i], lazy_single, root, source)
                for role in scorer.required_fields:
                    self.field_value(doc, role)  # raises naming file, row and field
                if scorer.check is not None:
                    scorer.check(self, doc)
                docs.append(doc)
        return docs

    def _lazy_images(self, getter, lazy_single: bool, root: Path, source: str) -> list[LazyImage]:
        if getter is None:
            return []
        kind = self.data.image_kind
        src = f"{source} field {self.data.image_field!r}"
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

    def _make_doc(self, doc_id: int, row: dict, source: str, fmt: str) -> dict:
        d2t = self.doc_to_text
        qfield = d2t.get("question_field", "question")
        q = get_path(row, qfield, _MISSING)
        if q is _MISSING or _missing(q):
            raise ValueError(f"{source}: missing field {qfield!r} (the question)")
        target = get_path(row, self.target_field, _MISSING)
        if target is _MISSING:
            raise ValueError(f"{source}: missing field {self.target_field!r} (the target)")
        question = str(q)
        choices = self._choices(row, question, source, fmt)
        doc = {
            "doc_id": doc_id,
            "prompt": self._render(row, question, choices, fmt),
            "question": question,
            "target": target,
            "choices": choices,
            "images": [],
            "row": row,
            "source": source,
        }
        return doc

    def _choices(self, row: dict, question: str, source: str, fmt: str) -> dict[str, str] | None:
        opts = self.doc_to_text.get("options")
        if self.doc_to_text.get("style") == "mathvista":
            values = get_path(row, self.field_name("choices", "choices"))
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

    def _render(self, row: dict, question: str, choices, fmt: str) -> str:
        d2t = self.doc_to_text
        if d2t.get("style") == "mathvista":
            f = self.field_name
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

    # ------------------------------------------------------------------ scoring
    def score(self, docs: list[dict], responses: dict[int, str]):
        """``(metrics, per_doc)`` for responses keyed by doc_id (see ``scorers.score_docs``)."""
        from .scorers import score_docs

        return score_docs(self, docs, responses)


def load_task(name_or_path: str | Path) -> Task:
    """A task by name (``eval/NAME.yaml``, see :func:`tasks_dir`) or by YAML path."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if s.endswith((".yaml", ".yml")) or os.sep in s or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"task spec {p} does not exist")
    else:
        p = tasks_dir() / f"{s}.yaml"
        if not p.is_file():
            known = ", ".join(list_tasks()) or "(none found)"
            raise ValueError(f"unknown task {s!r}; known tasks in {tasks_dir()}: {known}")
    try:
        with open(p, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: invalid YAML ({e})") from None
    return Task.from_dict(spec, spec_path=p)
