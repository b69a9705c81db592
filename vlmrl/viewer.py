"""`vlmrl view`: render rollout traces into one self-contained HTML file.

    vlmrl view TRACES.jsonl            # from `vlmrl rollout`, a training step, or `vlmrl eval` samples
    vlmrl view RUN_DIR                 # a `vlmrl train` run: every traces/step-*.jsonl, with a step selector
    vlmrl view RUN_DIR --model CKPT --out report.html --limit 500 --step 10 --step 20

The page needs no network and no external library: CSS and vanilla JS are inline, images are embedded
as base64 data URIs (each distinct image once). Per trajectory it shows the question and answer, every
assistant turn, every tool call (invalid ones and their errors in red), the first view with the crop
boxes drawn over it (and ground-truth boxes, dashed, when the sample has them), the crops, the rewards
and their parts, the finish reason and the visual-token count. Samples of one prompt form a group
(side by side or stacked) with a table of their rewards and advantages. Filters: correct / wrong,
tool / no tool / tool error, truncated, step.

Tokens: the file holds token ids only; they are decoded with the tokenizer of `--model DIR`, else of
the run (RUN_DIR/tokenizer.json, RUN_DIR/model/, the newest RUN_DIR/checkpoints/*/). Tokens can be
coloured by response mask, turn, sampling log-prob and every per-token statistic the traces carry
(advantage, perception KL, entropy, ...); hovering a token shows its numbers. Without a tokenizer the
page shows the turn texts and says why there is no token view.

Safety: every text from the traces is HTML-escaped in Python or inserted with `textContent` in JS;
the embedded JSON escapes `<`, `>` and `&`, so model output cannot inject markup or script.

`format_trajectory(traj)` renders one trajectory as plain text (used by tools/replay.py).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmrl.rollout.trajectory import iter_jsonl

DEFAULT_LIMIT = 200
TRUNCATED = ("length", "max_turns")
COLLAPSE_TOKENS = ("<|image_pad|>", "<|video_pad|>")
# keys of an eval-sample line that are not scores
_EVAL_NON_SCORE = {"doc_id", "step", "prompt_index", "sample_index", "visual_tokens", "num_turns", "turns",
                   "resps", "filtered_resps", "tool_calls", "images", "input", "target", "question", "answer"}
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
                (b"BM", "image/bmp"))


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


# --------------------------------------------------------------------------- reading traces


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


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)) and math.isfinite(x):
        return float(x)
    return None


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


# --------------------------------------------------------------------------- tokens


def _has_tokenizer(d: Path) -> bool:
    return d.is_dir() and ((d / "tokenizer.json").exists() or (d / "tokenizer_config.json").exists())


def find_tokenizer_dir(source: Path) -> Path | None:
    """A tokenizer near the traces: the run dir itself, its model/, or its newest checkpoints/*/."""
    source = Path(source)
    bases = [source] if source.is_dir() else []
    start = source if source.is_dir() else source.parent
    bases += [start, start.parent]
    seen = set()
    for base in bases:
        if base in seen:
            continue
        seen.add(base)
        if _has_tokenizer(base):
            return base
        if _has_tokenizer(base / "model"):
            return base / "model"
        ck = base / "checkpoints"
        if ck.is_dir():
            cands = [c for c in ck.iterdir() if _has_tokenizer(c)]
            if cands:
                return max(cands, key=lambda c: (_step_of_name(c) or -1, c.name))
    return None


def load_tokenizer(model: str | Path | None, source: Path) -> tuple[Any, str | None, str | None]:
    """(tokenizer or None, where it came from, note for the reader)."""
    if model is not None:
        model = Path(model)
        if not model.exists():
            raise FileNotFoundError(f"--model {model}: no such directory")
        where = model
    else:
        where = find_tokenizer_dir(source)
        if where is None:
            return None, None, ("no tokenizer found (looked for tokenizer.json in the run directory, model/ and "
                                "checkpoints/*/): showing turn texts without per-token colouring; pass --model DIR")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any loading failure is reported the same way
        if model is not None:
            raise ValueError(f"--model {model}: cannot load a tokenizer ({type(e).__name__}: {e})") from None
        return None, None, f"could not load the tokenizer in {where} ({type(e).__name__}: {e}); no token view"
    return tok, str(where), None


class TokenDecoder:
    """Per-token texts; a character split over several byte-level tokens shows on the token completing it."""

    def __init__(self, tok):
        self.tok = tok
        self.vocab: dict[int, str] = {}
        self.collapse = set()
        for t in COLLAPSE_TOKENS:
            i = tok.convert_tokens_to_ids(t)
            if isinstance(i, int) and i != getattr(tok, "unk_token_id", None):
                self.collapse.add(i)

    def one(self, i: int) -> str:
        s = self.vocab.get(i)
        if s is None:
            s = self.vocab[i] = self.tok.decode([i], skip_special_tokens=False)
        return s

    def decode(self, ids: list[int]) -> dict[int, str]:
        """Overrides: position -> text where the text differs from the single-token decode."""
        over: dict[int, str] = {}
        start = None
        for k, i in enumerate(ids):
            s = self.one(i)
            if start is None and not s.endswith("\ufffd"):
                continue
            if start is None:
                start = k
            text = self.tok.decode(ids[start:k + 1], skip_special_tokens=False)
            if text.endswith("\ufffd") and k - start < 8:
                over[k] = ""
                continue
            over[k] = text
            start = None
        return over


# --------------------------------------------------------------------------- images


class ImageStore:
    """Distinct image files as data URIs, keyed by a short content hash."""

    def __init__(self):
        self.uris: dict[str, str] = {}
        self.by_path: dict[str, str | None] = {}
        self.problems: list[str] = []

    def add(self, path: Path | None) -> str | None:
        if path is None:
            return None
        key = str(path)
        if key in self.by_path:
            return self.by_path[key]
        h = None
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            self.problems.append(f"image {path}: cannot read ({e.strerror or e})")
        else:
            mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), None)
            if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
                mime = "image/webp"
            if mime is None:
                self.problems.append(f"image {path}: not a PNG/JPEG/GIF/WEBP/BMP file")
            else:
                h = "i" + hashlib.sha1(data).hexdigest()[:12]
                if h not in self.uris:
                    self.uris[h] = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
        self.by_path[key] = h
        return h


# --------------------------------------------------------------------------- rendering


def _fmt(v: Any, nd: int = 3) -> str:
    x = _num(v)
    if x is None:
        return "—" if v is None else str(v)
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.{nd}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{nd}f}".rstrip("0").rstrip(".")


def _box(b: Any) -> str:
    if not isinstance(b, (list, tuple)):
        return "—"
    return "[" + ", ".join(_fmt(x, 1) for x in b) + "]"


def _advantage_summary(r: dict) -> str:
    adv = r["stats"].get("advantage")
    if not adv or r["ids"] is None:
        v = r["rewards"].get("advantage")
        return _fmt(v) if v is not None else "—"
    per_turn: dict[int, list[float]] = {}
    for a, m, t in zip(adv, r["response_mask"], r["turn_ids"]):
        if m and _num(a) is not None:
            per_turn.setdefault(t, []).append(float(a))
    if not per_turn:
        return "—"
    means = [sum(v) / len(v) for _, v in sorted(per_turn.items())]
    if max(means) - min(means) < 1e-6:
        return _fmt(means[0])
    return " / ".join(_fmt(m) for m in means)


def _round(x: Any) -> Any:
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, float):
        return round(x, 4) if math.isfinite(x) else None
    return x


def _stat_scale(name: str, values: list[float]) -> dict:
    if name == "logprob":
        return {"kind": "prob", "s": 1.0}
    vals = sorted(abs(v) for v in values)
    s = vals[min(len(vals) - 1, int(0.99 * len(vals)))] if vals else 1.0
    s = s or (vals[-1] if vals else 1.0) or 1.0
    return {"kind": "div" if any(v < 0 for v in values) else "seq", "s": s}


def _json_script(obj: Any) -> str:
    s = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_CSS = """
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2230;background:#f3f4f7}
#bar{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid #d5d8e0;padding:8px 14px;display:flex;flex-wrap:wrap;gap:6px 16px;align-items:center}
#bar .fg{display:flex;gap:3px;align-items:center}#bar .fg>span{color:#667;margin-right:3px}
button.fb,#layout{border:1px solid #c3c7d1;background:#f7f8fa;border-radius:4px;padding:2px 8px;cursor:pointer;font:inherit}
button.fb[aria-pressed=true]{background:#2d5bd7;border-color:#2d5bd7;color:#fff}
#count{font-weight:600}main{padding:10px 14px}h1{font-size:17px;margin:10px 14px 2px}
.notes{margin:6px 14px;padding:6px 10px;background:#fff7e0;border:1px solid #e8c96a;border-radius:4px}
.group{background:#fff;border:1px solid #d5d8e0;border-radius:6px;margin:0 0 14px;padding:10px}
.ghead .q{font-size:15px;white-space:pre-wrap}.ghead .meta{color:#556;margin:3px 0}
table.gtab{border-collapse:collapse;margin:6px 0;font-size:13px}table.gtab td,table.gtab th{border:1px solid #dde;padding:2px 7px;text-align:right}
table.gtab th{background:#f0f2f6}table.gtab td:first-child,table.gtab th:first-child{text-align:left}
.cards{display:grid;gap:10px}body.side .cards{grid-template-columns:repeat(var(--g,1),minmax(330px,1fr));overflow-x:auto}
article.traj{border:1px solid #d9dce4;border-radius:5px;padding:8px;background:#fcfcfd;min-width:0}
article.traj[hidden],.group[hidden]{display:none}
.chead{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin-bottom:4px}
.badge{border-radius:10px;padding:0 7px;font-size:12px;background:#e4e7ee}
.fin-answered,.ok{background:#d3f2d6;color:#145a1c}.fin-length,.fin-max_turns{background:#ffe2b8;color:#7a4300}
.fin-error,.bad{background:#f9d0d0;color:#8a1010}
.rew{display:flex;flex-wrap:wrap;gap:4px;margin:3px 0}.rew span{font-size:12px;background:#eef1f8;border-radius:3px;padding:0 5px}
.rew span.total{background:#dfe6fb;font-weight:600}
.imgs{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin:6px 0}
figure{margin:0;max-width:100%}figcaption{font-size:11px;color:#556;max-width:360px}
.imbox{position:relative;display:inline-block;max-width:100%;line-height:0}
.imbox img{max-width:100%;height:auto;display:block;border:1px solid #ccd;image-rendering:auto}
.first img{max-width:min(100%,360px)}.crop img{max-width:min(100%,240px)}
.imbox svg{position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none}
rect.box{fill:rgba(255,40,40,.12);stroke:#ff2020;stroke-width:2.5px;vector-effect:non-scaling-stroke}
rect.gt{fill:none;stroke:#1e6bff;stroke-width:2px;stroke-dasharray:5 3;vector-effect:non-scaling-stroke}
svg text{fill:#ff2020;font:bold 13px sans-serif;paint-order:stroke;stroke:#fff;stroke-width:3px}
ol.turns{margin:4px 0;padding-left:0;list-style:none}ol.turns li{margin:4px 0}
.tlabel{font-size:12px;color:#667}pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#f2f3f6;padding:4px 6px;border-radius:3px}
.call{border-left:4px solid #2e9b45;background:#eef9f0;padding:3px 7px;margin:3px 0;font-size:12.5px}
.call.err{border-left-color:#d42020;background:#fde8e8}.call .emsg{color:#b00000;font-weight:600}
details.tok{margin-top:6px}details.tok summary{cursor:pointer;color:#2d4fb0;font-size:13px}
.toks{white-space:pre-wrap;word-break:break-word;font:12.5px/1.55 ui-monospace,Menlo,Consolas,monospace;background:#fff;border:1px solid #e2e4ea;padding:4px;margin-top:3px}
.tk{border-radius:2px}.tk.pol{border-bottom:1px solid #9bb}.chip{background:#dde3f3;color:#345;border-radius:3px;padding:0 3px;font-size:11px}
.tnote{font-size:12px;color:#8a5a00}.legend{font-size:12px;color:#445}
#selftest{display:none}
"""

_JS = r"""
(function(){
'use strict';
var DATA = JSON.parse(document.getElementById('vlmrl-data').textContent);
var cards = Array.prototype.slice.call(document.querySelectorAll('article.traj'));
var groups = Array.prototype.slice.call(document.querySelectorAll('section.group'));
Array.prototype.forEach.call(document.querySelectorAll('img[data-img]'), function(im){
  var u = DATA.images[im.getAttribute('data-img')]; if (u) im.src = u; });
var state = {outcome:'all', tool:'all', finish:'all', step:''};
function match(c){
  var d = c.dataset;
  if (state.step !== '' && d.step !== state.step) return false;
  if (state.outcome === 'correct' && d.correct !== '1') return false;
  if (state.outcome === 'wrong' && d.correct !== '0') return false;
  if (state.tool === 'tool' && d.tool !== '1') return false;
  if (state.tool === 'notool' && d.tool !== '0') return false;
  if (state.tool === 'toolerr' && d.toolerr !== '1') return false;
  if (state.finish === 'truncated' && d.trunc !== '1') return false;
  if (state.finish === 'answered' && d.finish !== 'answered') return false;
  return true;
}
function apply(){
  var n = 0;
  cards.forEach(function(c){ var ok = match(c); c.hidden = !ok; if (ok) n++; });
  groups.forEach(function(g){ g.hidden = !g.querySelector('article.traj:not([hidden])'); });
  document.getElementById('count').textContent = 'showing ' + n + ' of ' + cards.length + ' trajectories';
  if (colourMode !== 'none') openVisible();
  return n;
}
Array.prototype.forEach.call(document.querySelectorAll('button.fb'), function(b){
  b.addEventListener('click', function(){
    var f = b.getAttribute('data-f');
    state[f] = b.getAttribute('data-v');
    Array.prototype.forEach.call(document.querySelectorAll('button.fb[data-f="' + f + '"]'), function(o){
      o.setAttribute('aria-pressed', o === b ? 'true' : 'false'); });
    apply();
  });
});
var stepSel = document.getElementById('f-step');
if (stepSel) stepSel.addEventListener('change', function(){ state.step = stepSel.value; apply(); });
var layout = document.getElementById('layout');
function setLayout(side){ document.body.classList.toggle('side', side);
  layout.textContent = side ? 'layout: side by side' : 'layout: stacked'; }
layout.addEventListener('click', function(){ setLayout(!document.body.classList.contains('side')); });

// ---- tokens
var colourMode = 'none';
var colourSel = document.getElementById('colour');
function fmt(x){ if (x === null || x === undefined) return '—'; return (Math.abs(x) >= 100 || x === Math.round(x)) ? String(x) : x.toFixed(4); }
function bg(mode, tk, i){
  if (mode === 'none') return '';
  if (mode === 'mask') return tk.m[i] ? 'rgba(60,180,90,.28)' : 'rgba(120,120,130,.14)';
  if (mode === 'turn') { if (tk.turn[i] < 0) return ''; var h = (tk.turn[i] * 83 + 200) % 360;
    return 'hsla(' + h + ',70%,' + (tk.m[i] ? '75%' : '90%') + ',.9)'; }
  var arr = tk.stats[mode]; if (!arr) return '';
  var v = arr[i]; if (v === null || v === undefined) return '';
  var sc = DATA.scales[mode] || {kind:'seq', s:1};
  if (sc.kind === 'prob') { if (!tk.m[i]) return ''; var p = Math.exp(v); return 'rgba(230,40,40,' + (0.85 * (1 - p)).toFixed(3) + ')'; }
  if (!tk.m[i] && v === 0) return '';
  var x = Math.max(-1, Math.min(1, v / sc.s));
  if (sc.kind === 'div') return x >= 0 ? 'rgba(30,170,70,' + (0.8 * x).toFixed(3) + ')' : 'rgba(225,40,40,' + (-0.8 * x).toFixed(3) + ')';
  return 'rgba(255,130,0,' + (0.85 * Math.abs(x)).toFixed(3) + ')';
}
function text(tk, i){ var o = tk.over[i]; if (o !== undefined) return o; var s = DATA.vocab[tk.ids[i]]; return s === undefined ? '\u25a1' : s; }
function title(tk, i){
  var s = '#' + i + '  id ' + tk.ids[i] + '  ' + JSON.stringify(text(tk, i)) + '\nmask ' + tk.m[i] + '  turn ' + tk.turn[i];
  Object.keys(tk.stats).forEach(function(k){ var v = tk.stats[k][i];
    s += '\n' + k + ' ' + fmt(v); if (k === 'logprob' && v !== null && tk.m[i]) s += ' (p=' + Math.exp(v).toFixed(3) + ')'; });
  return s;
}
function renderInto(box, tk, lo, hi){
  var i = lo;
  while (i < hi) {
    var id = tk.ids[i];
    if (DATA.collapse.indexOf(id) >= 0) {
      var j = i; while (j < hi && tk.ids[j] === id) j++;
      var c = document.createElement('span'); c.className = 'chip';
      c.textContent = '[' + DATA.vocab[id] + ' \u00d7' + (j - i) + ']';
      c.title = 'tokens ' + i + '\u2013' + (j - 1) + ': ' + (j - i) + ' image tokens';
      box.appendChild(c); i = j; continue;
    }
    var s = document.createElement('span'); s.className = tk.m[i] ? 'tk pol' : 'tk';
    s.textContent = text(tk, i); s.title = title(tk, i); s.setAttribute('data-i', i);
    box.appendChild(s); i++;
  }
}
function colour(det){
  var tk = DATA.tokens[det.getAttribute('data-uid')]; if (!tk) return;
  Array.prototype.forEach.call(det.querySelectorAll('span.tk'), function(s){
    s.style.background = bg(colourMode, tk, +s.getAttribute('data-i')); });
}
function render(det){
  if (det.getAttribute('data-done')) return;
  var tk = DATA.tokens[det.getAttribute('data-uid')]; if (!tk) return;
  det.setAttribute('data-done', '1');
  var wrap = det.querySelector('.tokwrap');
  var pd = document.createElement('details'); var ps = document.createElement('summary');
  ps.textContent = 'prompt: ' + tk.pl + ' tokens'; pd.appendChild(ps);
  var pb = document.createElement('div'); pb.className = 'toks'; renderInto(pb, tk, 0, tk.pl); pd.appendChild(pb);
  wrap.appendChild(pd);
  var rb = document.createElement('div'); rb.className = 'toks'; renderInto(rb, tk, tk.pl, tk.ids.length);
  wrap.appendChild(rb);
  colour(det);
}
function openVisible(){
  Array.prototype.forEach.call(document.querySelectorAll('article.traj:not([hidden]) details.tok[data-uid]'), function(d){
    if (!d.open) d.open = true; render(d); colour(d); });
}
Array.prototype.forEach.call(document.querySelectorAll('details.tok[data-uid]'), function(d){
  d.addEventListener('toggle', function(){ if (d.open) render(d); });
});
var LEGEND = {none:'', mask:'green: policy tokens (response mask 1); grey: prompt, observations, images',
  turn:'one hue per turn; lighter: tool observations', logprob:'red: unlikely sampled tokens (1 - p)'};
function legend(){
  var sc = DATA.scales[colourMode], s = LEGEND[colourMode];
  if (s === undefined && sc) s = sc.kind === 'div' ? 'red: \u2212' + fmt(sc.s) + ' \u2026 green: +' + fmt(sc.s) : 'orange: 0 \u2026 ' + fmt(sc.s);
  document.getElementById('legend').textContent = s ? colourMode + ': ' + s + ' (hover a token for its numbers)' : '';
}
if (colourSel) colourSel.addEventListener('change', function(){
  colourMode = colourSel.value; legend();
  if (colourMode !== 'none') openVisible();
  Array.prototype.forEach.call(document.querySelectorAll('details.tok[data-done]'), colour);
});

// ---- URL hash: #colour=advantage, #stacked, #selftest
var hash = location.hash.replace(/^#/, '').split('&');
setLayout(DATA.defaultSide && hash.indexOf('stacked') < 0);
hash.forEach(function(h){ var kv = h.split('=');
  if (kv[0] === 'colour' && colourSel && colourSel.querySelector('option[value="' + kv[1] + '"]')) {
    colourSel.value = kv[1]; colourSel.dispatchEvent(new Event('change')); } });
apply();

function selftest(){
  var r = {};
  function visible(){ return document.querySelectorAll('article.traj:not([hidden])').length; }
  function click(f, v){ document.querySelector('button.fb[data-f="' + f + '"][data-v="' + v + '"]').click(); return visible(); }
  r.trajectories = cards.length; r.groups = groups.length; r.visible = visible();
  var imgs = document.querySelectorAll('article.traj img');
  r.images = imgs.length;
  r.images_loaded = Array.prototype.filter.call(imgs, function(im){ return im.complete && im.naturalWidth > 0; }).length;
  r.boxes = document.querySelectorAll('article.traj svg rect.box').length;
  r.tool_errors_shown = document.querySelectorAll('article.traj .call.err').length;
  r.filters = {correct: click('outcome', 'correct'), wrong: click('outcome', 'wrong')}; click('outcome', 'all');
  r.filters.tool = click('tool', 'tool'); r.filters.notool = click('tool', 'notool');
  r.filters.toolerr = click('tool', 'toolerr'); click('tool', 'all');
  r.filters.truncated = click('finish', 'truncated'); click('finish', 'all');
  r.visible_after = visible();
  r.colour_modes = colourSel ? Array.prototype.map.call(colourSel.options, function(o){ return o.value; }) : [];
  r.coloured = {};
  r.colour_modes.forEach(function(m){ colourSel.value = m; colourSel.dispatchEvent(new Event('change'));
    r.coloured[m] = Array.prototype.filter.call(document.querySelectorAll('span.tk'), function(s){ return s.style.background !== ''; }).length; });
  r.token_spans = document.querySelectorAll('span.tk').length;
  r.token_titles = Array.prototype.filter.call(document.querySelectorAll('span.tk'), function(s){ return s.title.indexOf('mask') >= 0; }).length;
  r.hostile_text_shown = document.body.textContent.indexOf('\u003cscript\u003ealert(1)\u003c/script\u003e') >= 0;
  r.injected_elements = document.querySelectorAll('main script, main iframe, main img:not([data-img]), main [onerror], main [onload]').length;
  r.step_options = stepSel ? stepSel.options.length - 1 : 0;
  r.alerts = window.__vlmrlAlerts; r.errors = window.__vlmrlErrors;
  var pre = document.createElement('pre'); pre.id = 'selftest'; pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
}
if (hash.indexOf('selftest') >= 0) window.addEventListener('load', function(){
  try { selftest(); } catch (e) { window.__vlmrlErrors.push('selftest: ' + e);
    var pre = document.createElement('pre'); pre.id = 'selftest';
    pre.textContent = JSON.stringify({errors: window.__vlmrlErrors}); document.body.appendChild(pre); } });
})();
"""

assert "</" not in _JS, "the inline script must not contain '</' (it would end the <script> element)"

_HEAD_JS = """window.__vlmrlErrors=[];window.__vlmrlAlerts=[];
window.addEventListener('error',function(e){window.__vlmrlErrors.push(String(e.message)+' @'+e.lineno+':'+e.colno);});
window.addEventListener('unhandledrejection',function(e){window.__vlmrlErrors.push('unhandled rejection: '+e.reason);});
if(location.hash.indexOf('selftest')>=0){window.alert=function(m){window.__vlmrlAlerts.push(String(m));};}"""


def _svg_overlay(first: dict, boxes: list[tuple[list, str]], gts: list[list]) -> str:
    w, h = first.get("seen_size") or (0, 0)
    if not w or not h or not (boxes or gts):
        return ""
    parts = [f'<svg viewBox="0 0 {int(w)} {int(h)}" preserveAspectRatio="none" aria-hidden="true">']
    ow, oh = first.get("original_size") or (w, h)
    ow, oh = ow or w, oh or h
    for g in gts:
        try:
            x1, y1, x2, y2 = (float(v) for v in g)
        except (TypeError, ValueError):
            continue
        sx, sy = w / ow, h / oh
        parts.append(f'<rect class="gt" x="{x1 * sx:.1f}" y="{y1 * sy:.1f}" width="{(x2 - x1) * sx:.1f}" '
                     f'height="{(y2 - y1) * sy:.1f}"><title>ground truth</title></rect>')
    for b, label in boxes:
        try:
            x1, y1, x2, y2 = (float(v) for v in b)
        except (TypeError, ValueError):
            continue
        parts.append(f'<rect class="box" x="{x1:.1f}" y="{y1:.1f}" width="{max(x2 - x1, 0):.1f}" '
                     f'height="{max(y2 - y1, 0):.1f}"></rect>'
                     f'<text x="{x1 + 3:.1f}" y="{y1 + 14:.1f}">{esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _image_html(im: dict, store: ImageStore, overlay: str = "", cls: str = "") -> str:
    h = store.add(im.get("abs_path"))
    kind = im.get("kind", "input")
    seen = im.get("seen_size")
    cap = [esc(kind if kind != "input" else "first view")]
    if kind == "crop":
        cap[0] = f"crop (turn {esc(im.get('turn'))})"
        cap.append(f"box seen {_box(im.get('box_seen'))} → original {_box(im.get('box_original'))}")
    if seen:
        cap.append(f"{esc(seen[0])}×{esc(seen[1])}")
    if im.get("original_size") and kind == "input":
        cap.append(f"original {esc(im['original_size'][0])}×{esc(im['original_size'][1])}")
    if im.get("visual_tokens") is not None:
        cap.append(f"{esc(im['visual_tokens'])} visual tokens")
    if h is None:
        why = im.get("note") or (f"image file missing: {im.get('path')}" if im.get("path") else "image not saved")
        body = f'<div class="tnote">{esc(why)}</div>'
    else:
        wh = f' width="{int(seen[0])}" height="{int(seen[1])}"' if seen and len(seen) == 2 else ""
        body = f'<div class="imbox"><img data-img="{h}" alt="{esc(kind)}"{wh}>{overlay}</div>'
    return f'<figure class="{cls}">{body}<figcaption>{" · ".join(cap)}</figcaption></figure>'


def _card(r: dict, store: ImageStore, has_tokens: bool, token_note: str | None) -> str:
    fin = r["finish_reason"] or "?"
    attrs = {
        "id": r["uid"], "data-step": "" if r["step"] is None else r["step"],
        "data-correct": {True: "1", False: "0", None: ""}[r["correct"]], "data-tool": int(r["tool"]),
        "data-toolerr": int(r["tool_error"]), "data-trunc": int(r["truncated"]), "data-finish": fin,
    }
    out = ['<article class="traj" ' + " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items()) + ">"]
    head = [f"<b>g{esc(r['sample_index'])}</b>", f'<span class="badge fin-{esc(fin)}">{esc(fin)}</span>']
    if r["correct"] is not None:
        head.append(f'<span class="badge {"ok" if r["correct"] else "bad"}">{"correct" if r["correct"] else "wrong"}</span>')
    if r["tool"]:
        head.append(f'<span class="badge {"bad" if r["tool_error"] else ""}">'
                    f'{len(r["tool_calls"])} tool call{"s" if len(r["tool_calls"]) != 1 else ""}'
                    f'{" · error" if r["tool_error"] else ""}</span>')
    if r["visual_tokens"] is not None:
        head.append(f'<span class="badge">{esc(r["visual_tokens"])} visual tokens</span>')
    if r["ids"] is not None:
        head.append(f'<span class="badge">{sum(1 for m in r["response_mask"] if m)} response tokens</span>')
    if r["mode"]:
        head.append(f'<span class="badge">{esc(r["mode"])}</span>')
    out.append('<div class="chead">' + "".join(head) + "</div>")
    if r["rewards"]:
        items = sorted(r["rewards"].items(), key=lambda kv: (kv[0] != "total", kv[0]))
        out.append('<div class="rew">' + "".join(
            f'<span class="{"total" if k == "total" else ""}">{esc(k)} {esc(_fmt(v))}</span>' for k, v in items)
            + f'<span>advantage {esc(_advantage_summary(r))}</span></div>')
    # images: the first view with the crop boxes, then the crops
    imgs = r["images"]
    if imgs:
        firsts = [im for im in imgs if im.get("kind") == "input"]
        crops = [im for im in imgs if im.get("kind") != "input"]
        # a nested_crop call's box is on the image it names (image_index): only those on the first view are drawn
        boxes = [(c.get("box_seen"), f"t{c.get('turn')}") for c in r["tool_calls"]
                 if c.get("box_seen") and not c.get("image_index")]
        if not boxes:
            boxes = [(c.get("box_seen"), f"t{c.get('turn')}") for c in crops if c.get("box_seen")]
        gts = (r["meta"] or {}).get("gt_boxes") or []
        parts = []
        for j, im in enumerate(firsts):
            parts.append(_image_html(im, store, _svg_overlay(im, boxes if j == 0 else [], gts if j == 0 else []),
                                     "first"))
        parts += [_image_html(im, store, cls="crop") for im in crops]
        out.append('<div class="imgs">' + "".join(parts) + "</div>")
    # turns with their tool calls
    calls: dict[Any, list[dict]] = {}
    for c in r["tool_calls"]:
        calls.setdefault(c.get("turn"), []).append(c)
    out.append('<ol class="turns">')
    for k, text in enumerate(r["turns"]):
        out.append(f'<li><div class="tlabel">assistant turn {k}</div><pre class="ttext">{esc(text)}</pre>')
        for c in calls.pop(k, []) if r["kind"] == "trajectory" else []:
            out.append(_call_html(c))
        out.append("</li>")
    for c in [c for cs in calls.values() for c in cs]:  # eval samples, or calls without a matching turn
        out.append("<li>" + _call_html(c) + "</li>")
    if r.get("filtered"):
        out.append(f'<li><div class="tlabel">filtered response</div><pre>{esc(chr(10).join(r["filtered"]))}</pre></li>')
    out.append("</ol>")
    if r["ids"] is None:
        out.append('<div class="tnote">no token ids in this record (eval sample): text view only</div>')
    elif has_tokens:
        n = len(r["ids"])
        out.append(f'<details class="tok" data-uid="{r["uid"]}"><summary>tokens ({n} in all, '
                   f'{n - r["prompt_len"]} after the prompt)</summary><div class="tokwrap"></div></details>')
    elif token_note:
        out.append(f'<div class="tnote">{esc(token_note)}</div>')
    out.append("</article>")
    return "".join(out)


def _call_html(c: dict) -> str:
    ok = bool(c.get("valid", True)) and not c.get("error")
    turn = f" (turn {esc(c.get('turn'))})" if c.get("turn") is not None else ""
    rows = [f'<b>tool call{turn}: {"valid" if ok else "INVALID"}</b>']
    if c.get("error"):
        rows.append(f'<div class="emsg">error: {esc(c["error"])}</div>')
    if c.get("bbox") is not None:
        rows.append(f"<div>bbox as written {esc(_box(c['bbox']))}")
    if c.get("box_seen") is not None:
        rows.append(f" · seen {esc(_box(c['box_seen']))} · original {esc(_box(c.get('box_original')))}")
    if c.get("bbox") is not None:
        rows.append("</div>")
    if c.get("raw"):
        rows.append(f'<pre>{esc(c["raw"])}</pre>')
    return f'<div class="call{"" if ok else " err"}">' + "".join(rows) + "</div>"


def _group_html(key_step, members: list[dict], store: ImageStore, has_tokens: bool, token_note: str | None) -> str:
    r0 = members[0]
    step = "" if key_step is None else key_step
    out = [f'<section class="group" data-step="{esc(step)}" style="--g:{min(len(members), 4)}">', '<div class="ghead">']
    out.append(f'<div class="q"><b>Q:</b> {esc(r0["question"])}</div>')
    if r0.get("choices"):
        out.append('<div class="meta">choices: ' + " · ".join(
            f"<b>{chr(65 + i)}.</b> {esc(c)}" for i, c in enumerate(r0["choices"][:26])) + "</div>")
    meta = [f'answer <code>{esc(r0["answer"])}</code>' + (f' ({esc(r0["answer_type"])})' if r0["answer_type"] else ""),
            f"sample {esc(r0['sample_id'])}", f"prompt #{esc(r0['prompt_index'])}"]
    if r0["step"] is not None:
        meta.append(f"step {esc(r0['step'])}")
    meta.append(f"{len(members)} sample{'s' if len(members) != 1 else ''}")
    meta.append(f"file {esc(r0['file'])}")
    out.append('<div class="meta">' + " · ".join(meta) + "</div>")
    if len(members) > 1 or r0["rewards"]:
        keys = sorted({k for r in members for k in r["rewards"]}, key=lambda k: (k != "total", k))
        head = ["sample", "finish", "tool calls", *keys, "advantage", "resp. tokens"]
        rows = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
        for r in members:
            cells = [f'<a href="#{r["uid"]}">g{esc(r["sample_index"])}</a>', esc(r["finish_reason"]),
                     esc(len(r["tool_calls"])) + (" (error)" if r["tool_error"] else "")]
            cells += [esc(_fmt(r["rewards"].get(k))) for k in keys]
            cells.append(esc(_advantage_summary(r)))
            cells.append(esc(sum(1 for m in r["response_mask"] if m)) if r["ids"] is not None else "—")
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        tot = [_num(r["rewards"].get("total")) for r in members]
        tot = [t for t in tot if t is not None]
        summary = ""
        if len(tot) > 1:
            mu = sum(tot) / len(tot)
            sd = math.sqrt(sum((t - mu) ** 2 for t in tot) / (len(tot) - 1))
            summary = f'<div class="meta">total reward: mean {_fmt(mu)}, std {_fmt(sd)}' + (
                " (zero-std group: no learning signal)" if sd < 1e-4 else "") + "</div>"
        out.append('<table class="gtab">' + "".join(rows) + "</table>" + summary)
    out.append('</div><div class="cards">')
    out += [_card(r, store, has_tokens, token_note) for r in members]
    out.append("</div></section>")
    return "".join(out)


def render_html(report: Report, tokenizer=None, title: str | None = None) -> str:
    """The page for a report; `tokenizer` (optional) decodes token ids."""
    records = report.records
    notes = list(report.notes)
    token_note = None
    decoder = TokenDecoder(tokenizer) if tokenizer is not None else None
    has_ids = any(r["ids"] is not None for r in records)
    if has_ids and decoder is None:
        token_note = next((n for n in notes if "tokenizer" in n), "no tokenizer: no token view")
    store = ImageStore()
    tokens: dict[str, dict] = {}
    stat_values: dict[str, list[float]] = {}
    for n, r in enumerate(records):
        r["uid"] = f"r{n}"
        if decoder is not None and r["ids"] is not None:
            stats = {k: [_round(v) for v in arr] for k, arr in r["stats"].items()}
            for k, arr in stats.items():
                stat_values.setdefault(k, []).extend(
                    v for v, m in zip(arr, r["response_mask"]) if v is not None and (m or v != 0))
            for i in r["ids"]:
                decoder.one(i)
            tokens[r["uid"]] = {"ids": r["ids"], "m": [int(bool(m)) for m in r["response_mask"]],
                                "turn": r["turn_ids"], "pl": int(r["prompt_len"] or 0), "stats": stats,
                                "over": decoder.decode(r["ids"])}
    # group: (file, step, prompt_index) keeps training steps apart
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["file"], r["step"], r["prompt_index"]), []).append(r)
    body = [_group_html(k[1], sorted(m, key=lambda r: r["sample_index"] if isinstance(r["sample_index"], int) else 0),
                        store, decoder is not None, token_note) for k, m in groups.items()]
    notes += store.problems
    steps = sorted({r["step"] for r in records if r["step"] is not None})
    stat_names = sorted(stat_values, key=lambda k: (k != "logprob", k != "advantage", k))
    scales = {k: _stat_scale(k, v) for k, v in stat_values.items()}
    data = {"images": store.uris, "tokens": tokens, "scales": scales,
            "vocab": {str(i): s for i, s in decoder.vocab.items()} if decoder else {},
            "collapse": sorted(decoder.collapse) if decoder else [],
            "defaultSide": max((len(m) for m in groups.values()), default=1) > 1}
    title = title or f"vlmrl traces: {Path(report.source).name}"
    bar = []
    if len(steps) > 1:
        bar.append('<label class="fg"><span>step</span><select id="f-step"><option value="">all</option>'
                   + "".join(f'<option value="{esc(s)}">{esc(s)}</option>' for s in steps) + "</select></label>")

    def fgroup(name, label, items):
        return (f'<div class="fg"><span>{label}</span>' + "".join(
            f'<button class="fb" data-f="{name}" data-v="{v}" aria-pressed="{"true" if v == "all" else "false"}">'
            f"{t}</button>" for v, t in items) + "</div>")

    bar.append(fgroup("outcome", "outcome", [("all", "all"), ("correct", "correct"), ("wrong", "wrong")]))
    bar.append(fgroup("tool", "tool", [("all", "all"), ("tool", "tool"), ("notool", "no tool"), ("toolerr", "tool error")]))
    bar.append(fgroup("finish", "finish", [("all", "all"), ("answered", "answered"), ("truncated", "truncated")]))
    bar.append('<button id="layout" type="button">layout</button>')
    if decoder is not None and tokens:
        opts = [("none", "none"), ("mask", "response mask"), ("turn", "turn")] + [(k, k) for k in stat_names]
        bar.append('<label class="fg"><span>colour tokens by</span><select id="colour">' + "".join(
            f'<option value="{esc(v)}">{esc(t)}</option>' for v, t in opts) + "</select></label>")
    bar.append('<span id="count"></span><span class="legend" id="legend"></span>')
    n_fin = {}
    for r in records:
        n_fin[r["finish_reason"]] = n_fin.get(r["finish_reason"], 0) + 1
    info = [f"{len(records)} trajectories" + (f" of {report.total}" if report.total > len(records) else ""),
            f"{len(groups)} groups", ", ".join(f"{esc(k or '?')}: {v}" for k, v in sorted(n_fin.items()))]
    if report.tokenizer:
        info.append(f"tokenizer: {esc(report.tokenizer)}")
    notes_html = ('<div class="notes">' + "".join(f"<div>{esc(n)}</div>" for n in notes) + "</div>") if notes else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style><script>{_HEAD_JS}</script></head><body>"
        f'<div id="bar">{"".join(bar)}</div><h1>{esc(title)}</h1>'
        f'<div class="meta" style="margin:0 14px">{" · ".join(info)}</div>{notes_html}'
        f'<main>{"".join(body)}</main>'
        f'<script type="application/json" id="vlmrl-data">{_json_script(data)}</script>'
        f"<script>{_JS}</script></body></html>\n"
    )


def build_report(source: str | Path, out: str | Path | None = None, model: str | Path | None = None,
                 limit: int = DEFAULT_LIMIT, steps: list[int] | None = None, title: str | None = None) -> tuple[Path, Report]:
    """Read traces, decode tokens, write the HTML page. Returns (path written, report)."""
    source = Path(source)
    report = load_report(source, limit=limit, steps=steps)
    tok = None
    if any(r["ids"] is not None for r in report.records):
        tok, where, note = load_tokenizer(model, source)
        report.tokenizer = where
        if note:
            report.notes.insert(0, note)
    if out is None:
        out = (source / "traces.html") if source.is_dir() else source.with_suffix(".html")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report, tok, title), encoding="utf-8")
    return out, report


# --------------------------------------------------------------------------- plain text


def format_trajectory(t, width: int = 100) -> str:
    """A trajectory (Trajectory or its JSON dict) as readable text."""
    d = t.to_json() if hasattr(t, "to_json") else dict(t)
    lines = [(f"=== prompt {d.get('prompt_index')} sample {d.get('sample_index')} ({d.get('sample_id')}) "
              f"mode={d.get('mode')} finish={d.get('finish_reason')} visual_tokens={d.get('visual_tokens')}"),
             f"Q: {d.get('question')}", f"answer: {d.get('answer')} ({d.get('answer_type')})"]
    if d.get("choices"):
        lines.append("choices: " + " | ".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(d["choices"])))
    for im in d.get("images") or []:
        extra = f" box_seen={_box(im.get('box_seen'))} box_original={_box(im.get('box_original'))}" if im.get("kind") == "crop" else ""
        lines.append(f"[image {im.get('kind')} turn={im.get('turn')} seen={tuple(im.get('seen_size') or ())} "
                     f"original={tuple(im.get('original_size') or ())} tokens={im.get('visual_tokens')}{extra}"
                     + (f" file={im['path']}" if im.get("path") else "") + "]")
    calls: dict[int, list] = {}
    for c in d.get("tool_calls") or []:
        calls.setdefault(c.get("turn"), []).append(c)
    mask, turn_ids = d.get("response_mask") or [], d.get("turn_ids") or []
    for k, text in enumerate(d.get("turns") or []):
        n = sum(1 for m, tt in zip(mask, turn_ids) if m and tt == k)
        lines.append(f"--- assistant turn {k} ({n} tokens)")
        lines.append(text)
        for c in calls.pop(k, []):
            status = "valid" if c.get("valid") else "INVALID"
            lines.append(f"  > tool call {status}: bbox={_box(c.get('bbox'))} seen={_box(c.get('box_seen'))} "
                         f"original={_box(c.get('box_original'))}" + (f"  error: {c['error']}" if c.get("error") else ""))
    if d.get("rewards"):
        lines.append("rewards: " + ", ".join(f"{k}={_fmt(v)}" for k, v in d["rewards"].items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="traces JSONL (vlmrl rollout / train step / eval samples) or a vlmrl train run directory")
    p.add_argument("--out", help="HTML file to write (default: TRACES.html beside the file, or RUN_DIR/traces.html)")
    p.add_argument("--model", help="checkpoint or tokenizer directory to decode token ids with "
                                   "(default: the run's tokenizer.json, model/ or newest checkpoints/*/)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                   help=f"at most this many trajectories (default {DEFAULT_LIMIT}; a note says when capped)")
    p.add_argument("--step", type=int, action="append", help="only this training step (repeatable)")
    p.add_argument("--title", help="page title")


def run(args: argparse.Namespace) -> int:
    out, report = build_report(args.source, out=args.out, model=args.model, limit=args.limit, steps=args.step,
                               title=args.title)
    for note in report.notes:
        print(f"note: {note}")
    n_img = sum(1 for r in report.records for im in r["images"] if im.get("abs_path"))
    print(f"wrote {out}: {len(report.records)} trajectories, {n_img} images"
          + (f", tokens decoded with {report.tokenizer}" if report.tokenizer else ""))
    return 0
