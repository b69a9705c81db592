"""The generic Qwen tool-call parser: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

Tool-agnostic: it finds the one call block of a generated turn, reads its JSON (no code is evaluated;
NaN/Infinity are refused), and checks the envelope: a JSON object whose "name" is the tool's name and whose
"arguments" is an object. What the arguments must hold is each tool's ``validate`` (vlmrl.rollout.tools).
Model mistakes come back as :class:`ToolCallError` whose ``message`` is shown to the model; it never raises
for a ``str`` input.
"""

from __future__ import annotations

import json
from typing import Any

from vlmrl.rollout.tools.base import ToolCall, ToolCallError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

# Longest JSON body (characters between the tags) that is handed to json.loads. A real call is
# well under 200 characters; this bounds parse time and memory on degenerate generations.
MAX_TOOL_CALL_CHARS = 4096


def has_tool_call(text: str) -> bool:
    """True when the text contains an opening ``<tool_call>`` tag (the turn is a tool turn)."""
    return TOOL_CALL_OPEN in text


def short_json(value: Any, limit: int = 40) -> str:
    """A value as JSON for an error message, cut to ``limit`` characters."""
    try:
        s = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError, RecursionError, OverflowError):
        s = repr(type(value).__name__)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def type_name(value: Any) -> str:
    """A JSON value's type in words ("a list", "null", ...), for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _NonFiniteConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteConstant(name)


def _loads(body: str) -> tuple[str, Any, int]:
    """json.loads with NaN/Infinity rejected. Returns (status, value, end) with status "ok",
    "nonfinite", "json" (message in value) or "extra" (trailing data after the first value)."""
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    stripped = body.strip()
    try:
        value, end = decoder.raw_decode(stripped)
    except _NonFiniteConstant as e:
        return "nonfinite", str(e), 0
    except json.JSONDecodeError as e:
        return "json", f"{e.msg} at character {e.pos}", 0
    except RecursionError:
        return "json", "nesting too deep", 0
    except (ValueError, OverflowError, MemoryError) as e:  # e.g. an integer with > 4300 digits
        return "json", str(e)[:80], 0
    if stripped[end:].strip():
        return "extra", value, end
    return "ok", value, end


def parse_tool_call(text: str, tool_name: str = "crop", example: str | None = None) -> ToolCall | ToolCallError | None:
    """Parse the ``<tool_call>{json}</tool_call>`` block of a generated assistant turn.

    Returns ``None`` when the text has no ``<tool_call>`` tag at all (an answer turn); otherwise a
    :class:`ToolCall` (name and the "arguments" object, unchecked) or a :class:`ToolCallError`. Text before
    the block and whitespace inside the tags are allowed; text after the closing tag is ignored. Errors: no
    closing tag; more than one block; a body over ``MAX_TOOL_CALL_CHARS``; malformed JSON or several JSON
    values; NaN/Infinity; a non-object; a name other than ``tool_name``; missing or non-object
    "arguments". Extra keys are ignored. ``example``, a well-formed call, is quoted in the messages
    (default: one with empty arguments). A non-str ``text`` is a caller bug and raises TypeError.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_tool_call expects a str, got {type(text).__name__}")
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return None
    hint = example if example is not None else '<tool_call>{"name": "%s", "arguments": {...}}</tool_call>' % tool_name
    body_start = start + len(TOOL_CALL_OPEN)
    close = text.find(TOOL_CALL_CLOSE, body_start)
    if text.count(TOOL_CALL_OPEN) > 1:
        return ToolCallError(
            "Error: only one tool call per turn is allowed, found "
            f"{text.count(TOOL_CALL_OPEN)} <tool_call> blocks. Call the tool once: {hint}",
            "several_calls",
            text[start:],
        )
    if close < 0:
        return ToolCallError(
            f"Error: the tool call has no closing </tool_call> tag. Use: {hint}",
            "no_closing_tag",
            text[start:],
        )
    end = close + len(TOOL_CALL_CLOSE)
    raw = text[start:end]
    body = text[body_start:close]

    def err(message: str, kind: str) -> ToolCallError:
        return ToolCallError("Error: " + message, kind, raw)

    if len(body) > MAX_TOOL_CALL_CHARS:
        return err(f"the tool call is too long ({len(body)} characters, at most {MAX_TOOL_CALL_CHARS}). Use: {hint}", "too_long")
    if not body.strip():
        return err(f"the tool call is empty. Use: {hint}", "malformed_json")

    status, obj, _ = _loads(body)
    if status == "nonfinite":
        return err(f"the tool call contains {obj}; coordinates must be finite numbers.", "not_finite")
    if status == "json":
        return err(f"the tool call is not valid JSON ({obj}). Use: {hint}", "malformed_json")
    if status == "extra":
        return err(f"the tool call must hold exactly one JSON object, found more after the first. Use: {hint}", "several_objects")
    if not isinstance(obj, dict):
        return err(f"the tool call must be a JSON object, got {type_name(obj)}. Use: {hint}", "not_an_object")

    name = obj.get("name")
    if name != tool_name:
        if name is None:
            return err(f'the tool call has no "name"; the only tool is "{tool_name}". Use: {hint}', "wrong_name")
        return err(f'unknown tool {short_json(name)}; the only tool is "{tool_name}". Use: {hint}', "wrong_name")
    if "arguments" not in obj:
        return err(f'the tool call has no "arguments". Use: {hint}', "missing_arguments")
    args = obj["arguments"]
    if not isinstance(args, dict):
        return err(f'"arguments" must be a JSON object, got {type_name(args)}. Use: {hint}', "bad_arguments")
    return ToolCall(name=tool_name, arguments=args, raw=raw, span=(start, end))
