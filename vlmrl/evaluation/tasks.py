"""Benchmark tasks: a YAML spec per task (``eval/NAME.yaml``), loaded into a :class:`Task`.

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

Where the parts live: this module parses and checks the spec and finds the data files; ``task_files.py``
reads them (rows + lazy image cells, through ``vlmrl/data/tables.py`` and ``vlmrl/data/images.py``);
``task_docs.py`` builds each doc's prompt, target and options.

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

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlmrl.data.images import IMAGE_KINDS, LazyImage  # noqa: F401  (LazyImage: the docs' image type)
from vlmrl.data.tables import FILE_TYPES

from .task_docs import _MISSING, get_path, make_doc
from .task_files import READERS, doc_images

FORMATS = ("parquet", "tsv", "jsonl", "json")
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


# ------------------------------------------------------------------------------------------ task




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

        from .scorers import check_metrics

        get_scorer(task.scorer, where=where)  # unknown scorer: clear error now
        check_metrics(task, where=where)  # a metric the scorer never produces: clear error now
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
            rows, getters, lazy_single = READERS[fmt](fpath, self.data.image_field, images)
            root = fpath.parent
            if self.data.image_root:
                r = Path(self.data.image_root).expanduser()
                root = r if r.is_absolute() else fpath.parent / r
            for i, row in enumerate(rows):
                if limit is not None and len(docs) >= limit:
                    return docs
                source = f"{fpath} row {i}"
                doc = make_doc(self, len(docs), row, source, fmt)
                if images and self.data.image_field:
                    doc["images"] = doc_images(getters[i], lazy_single, self.data.image_kind, self.data.image_field,
                                               root, source)
                for role in scorer.required_fields:
                    self.field_value(doc, role)  # raises naming file, row and field
                if scorer.check is not None:
                    scorer.check(self, doc)
                docs.append(doc)
        return docs

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
