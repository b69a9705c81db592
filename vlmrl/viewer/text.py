"""Plain text: format_trajectory, one trajectory as readable text (used by tools/replay.py)."""

from __future__ import annotations

from vlmrl.viewer.fmt import _box, _fmt


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
