"""HTML rendering: a Report (and optionally a tokenizer) into the one self-contained page."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vlmrl.viewer.assets import _CSS, _HEAD_JS, _JS
from vlmrl.viewer.fmt import _box, _fmt, _num, esc
from vlmrl.viewer.images import ImageStore
from vlmrl.viewer.read import Report
from vlmrl.viewer.tokens import TokenDecoder


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
