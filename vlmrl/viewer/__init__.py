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

Modules: read (trace files -> Report), tokens (tokenizer lookup, TokenDecoder), images (ImageStore),
page (the HTML), assets (its CSS and JS), text (format_trajectory), fmt (shared value formatting);
this module: build_report and the CLI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmrl.viewer.fmt import esc
from vlmrl.viewer.images import ImageStore
from vlmrl.viewer.page import render_html
from vlmrl.viewer.read import DEFAULT_LIMIT, TRUNCATED, Report, load_report, trace_files
from vlmrl.viewer.text import format_trajectory
from vlmrl.viewer.tokens import COLLAPSE_TOKENS, TokenDecoder, find_tokenizer_dir, load_tokenizer

__all__ = ["COLLAPSE_TOKENS", "DEFAULT_LIMIT", "TRUNCATED", "ImageStore", "Report", "TokenDecoder", "add_args",
           "build_report", "esc", "find_tokenizer_dir", "format_trajectory", "load_report", "load_tokenizer",
           "render_html", "run", "trace_files"]


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
