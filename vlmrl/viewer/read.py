"""Reading traces: the trace files of a file or a run directory, and each JSONL line (a trajectory or an
eval sample) normalised into the record the page renders, collected into a Report."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmrl.rollout.trajectory import iter_jsonl
from vlmrl.viewer.fmt import _num

DEFAULT_LIMIT = 200
TRUNCATED = ("length", "max_turns")
# keys of an eval-sample line that are not scores
_EVAL_NON_SCORE = {"doc_id", "step", "prompt_index", "sample_index", "visual_tokens", "num_turns", "turns",
                   "resps", "filtered_resps", "tool_calls", "images", "input", "target", "question", "answer"}


@dataclass
class Report:
    """Everything the page shows: normalised records plus notes for the reader."""

    records: list[dict]
    notes: list[str] = field(default_factory=list)
    total: int = 0  # trajectories available before --limit / --step
    source: str = ""
    tokenizer: str | None = None  # where the tokenizer came from


def _step_of_name(path: Path) -> int | None:
    m = re.search(r"step[-_]?0*(\d+)", path.stem)
    return int(m.group(1)) if m else None


def trace_files(source: Path) -> list[Path]:
    """The JSONL trace files of a file or a run directory, in step order."""
    if source.is_file():
        return [source]
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or directory (expected a traces JSONL file or a run directory)")
    files = sorted((source / "traces").glob("*.jsonl")) or sorted(source.glob("*.jsonl"))
    files = [f for f in files if f.name != "metrics.jsonl"]
    if not files:
        raise FileNotFoundError(f"{source}: no trace files (looked for {source / 'traces'}/*.jsonl and {source}/*.jsonl)")
    return sorted(files, key=lambda f: (_step_of_name(f) is None, _step_of_name(f) or 0, f.name))


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _pick_files(files: list[Path], counts: list[int], limit: int) -> list[int]:
    """Indices of files to read when all of them would exceed `limit`: evenly spaced, always the last."""
    total = sum(counts)
    if total <= limit or len(files) == 1:
        return list(range(len(files)))
    avg = max(1.0, total / len(files))
    k = max(1, min(len(files), int(limit // avg)))
    if k == 1:
        return [len(files) - 1]
    idx = sorted({round(i * (len(files) - 1) / (k - 1)) for i in range(k)})
    return idx


def _flatten_text(x: Any) -> list[str]:
    """lmms-eval `resps` are lists of lists of strings."""
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    if isinstance(x, (list, tuple)):
        out = []
        for y in x:
            out.extend(_flatten_text(y))
        return out
    return [json.dumps(x)]


def _image_entry(im: Any, base: Path) -> dict:
    if isinstance(im, str):
        im = {"path": im}
    if not isinstance(im, dict):
        return {"kind": "input", "path": None, "note": f"unreadable image entry {im!r:.60}"}
    d = dict(im)
    d.setdefault("kind", "input")
    d.setdefault("turn", -1 if d["kind"] == "input" else None)
    if d.get("path"):
        p = Path(d["path"])
        d["abs_path"] = p if p.is_absolute() else base / p
    return d


def _normalise(d: Any, where: str, base: Path, step: int | None) -> dict:
    """One JSONL line -> the record the page renders (a trajectory or an eval sample)."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
    r: dict[str, Any] = {"where": where, "step": d.get("step", step)}
    if "ids" in d:
        for key in ("ids", "response_mask", "turn_ids"):
            if not isinstance(d.get(key), list):
                raise ValueError(f"{where}: field {key!r} must be a list")
        n = len(d["ids"])
        for key in ("response_mask", "turn_ids"):
            if len(d[key]) != n:
                raise ValueError(f"{where}: field {key!r} has {len(d[key])} entries but 'ids' has {n}")
        r.update(kind="trajectory", prompt_index=d.get("prompt_index", 0), sample_index=d.get("sample_index", 0),
                 sample_id=d.get("sample_id", ""), question=d.get("question", ""), answer=d.get("answer", ""),
                 answer_type=d.get("answer_type", ""), choices=d.get("choices"), meta=d.get("meta") or {},
                 turns=_flatten_text(d.get("turns")), tool_calls=list(d.get("tool_calls") or []),
                 finish_reason=d.get("finish_reason", ""), visual_tokens=d.get("visual_tokens"),
                 mode=d.get("mode", ""), rewards=dict(d.get("rewards") or {}), ids=d["ids"],
                 response_mask=d["response_mask"], turn_ids=d["turn_ids"], prompt_len=d.get("prompt_len", 0),
                 stats={}, dropped_stats=[])
        lp = d.get("logprobs")
        if isinstance(lp, list) and len(lp) == n and any(x for x in lp):
            r["stats"]["logprob"] = lp
        for key, arr in (d.get("token_stats") or {}).items():
            if isinstance(arr, list) and len(arr) == n:
                r["stats"][key] = arr
            else:
                r["dropped_stats"].append(f"token_stats[{key!r}] has {len(arr) if isinstance(arr, list) else 'no'} "
                                          f"entries for {n} tokens")
    elif any(k in d for k in ("resps", "turns", "doc_id", "input", "filtered_resps")):
        rewards = dict(d.get("rewards") or {})
        if not rewards:
            for k, v in d.items():
                if k not in _EVAL_NON_SCORE and isinstance(v, (bool, int, float)) and _num(v) is not None:
                    rewards[k] = float(v)
        turns = _flatten_text(d.get("turns")) or _flatten_text(d.get("resps"))
        doc = d.get("doc_id", d.get("prompt_index", 0))
        r.update(kind="eval", prompt_index=doc, sample_index=d.get("sample_index", 0), sample_id=str(doc),
                 question=d.get("input", d.get("question", "")), answer=d.get("target", d.get("answer", "")),
                 answer_type=d.get("answer_type", ""), choices=d.get("choices"), meta=d.get("meta") or {},
                 turns=turns, tool_calls=[c for c in (d.get("tool_calls") or []) if isinstance(c, dict)],
                 finish_reason=d.get("finish_reason", ""), visual_tokens=d.get("visual_tokens"),
                 mode=d.get("mode", ""), rewards=rewards, ids=None, stats={}, dropped_stats=[])
        filtered = _flatten_text(d.get("filtered_resps"))
        if filtered and filtered != turns[-1:]:
            r["filtered"] = filtered
    else:
        raise ValueError(f"{where}: not a trajectory (no 'ids') nor an eval sample (no 'resps'/'doc_id'); "
                         f"keys: {sorted(d)[:12]}")
    if not isinstance(r["question"], str):
        r["question"] = json.dumps(r["question"])
    r["images"] = [_image_entry(im, base) for im in (d.get("images") or [])]
    if r["visual_tokens"] is None:
        vt = [im.get("visual_tokens") for im in r["images"] if isinstance(im.get("visual_tokens"), int)]
        r["visual_tokens"] = sum(vt) if vt else None
    r["correct"] = _correct(r["rewards"])
    r["tool"] = bool(r["tool_calls"])
    r["tool_error"] = any((not c.get("valid", True)) or c.get("error") for c in r["tool_calls"])
    r["truncated"] = r["finish_reason"] in TRUNCATED
    return r


def _correct(rewards: dict) -> bool | None:
    for key in ("accuracy", "acc", "correct", "exact_match", "score", "relaxed_accuracy"):
        v = _num(rewards.get(key))
        if v is not None:
            return v >= 0.5
    return None


def load_report(source: str | Path, limit: int = DEFAULT_LIMIT, steps: list[int] | None = None) -> Report:
    """Read traces (a file or a run directory) into normalised records, at most `limit` of them."""
    source = Path(source)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    files = trace_files(source)
    notes: list[str] = []
    if steps:
        named = [f for f in files if _step_of_name(f) is not None]
        if named:
            files = [f for f in files if _step_of_name(f) in set(steps)]
            if not files:
                have = sorted({_step_of_name(f) for f in named})
                raise ValueError(f"{source}: no trace file for step(s) {steps}; steps present: {have}")
    counts = [_count_lines(f) for f in files]
    total = sum(counts)
    picked = _pick_files(files, counts, limit) if limit else list(range(len(files)))
    records: list[dict] = []
    capped = False
    for i in picked:
        path = files[i]
        for n, d in iter_jsonl(path):
            if limit and len(records) >= limit:
                capped = True
                break
            r = _normalise(d, f"{path}, line {n}", path.parent, _step_of_name(path) if len(files) > 1 else None)
            if steps and r["step"] is not None and r["step"] not in steps:
                continue
            r["file"] = path.name
            records.append(r)
        if limit and len(records) >= limit and i != picked[-1]:
            capped = True
            break
    if capped or len(picked) < len(files):
        shown_steps = sorted({r["step"] for r in records if r["step"] is not None})
        notes.append(f"capped: showing {len(records)} of {total} trajectories"
                     + (f" from {len({r['file'] for r in records})} of {len(files)} trace files (steps {shown_steps})"
                        if len(files) > 1 else "")
                     + f"; raise --limit (now {limit}) or pick steps with --step")
    for r in records:
        for msg in r["dropped_stats"]:
            notes.append(f"{r['where']}: {msg}: not shown")
    if not records:
        raise ValueError(f"{source}: no trajectories to show")
    return Report(records=records, notes=notes, total=total, source=str(source))
