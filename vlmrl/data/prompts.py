"""Prompt templates: chat messages in the Hugging Face format for direct answers and the crop-tool mode.

Messages look like ``[{"role": "system", "content": str}, {"role": "user", "content": [{"type": "image"},
..., {"type": "text", "text": ...}]}]``; pass them to ``processor.apply_chat_template``. Images always
come first in the user turn (one ``{"type": "image"}`` part per image; ``include_images=True`` also
puts the PIL image in the part under ``"image"``).

- :func:`direct_messages`: question (+ choices as ``A. foo``) + the instruction to reply as
  ``<think>...</think><answer>...</answer>``.
- :func:`tool_messages`: a system prompt declaring the crop tool in Qwen's tool format (``# Tools``,
  ``<tools>`` one JSON schema per line ``</tools>``, and the ``<tool_call>`` instruction) and a user
  turn asking to think, then either call the tool or answer.
- ``style="compact"`` gives short versions of both for tiny models, where prompt length costs time;
  ``style="minimal"`` the shortest: no instruction in the user turn, the tool declared by one example call
  (for models taught the format by a warm start: ~70 tokens instead of ~350); ``style="bare"`` no text
  at all but the question (an empty system turn, so the chat template adds no default one): the tool and
  the answer format exist only in what a warm start taught. The quickstart uses it: in a small random
  model every prompt token dilutes the few image tokens, and reading the image is learned ~4x faster.
- :func:`crop_tool_schema` returns the tool's JSON schema (name configurable, default ``crop``;
  AdaptVision calls it ``request_local_region``).

Coordinate conventions for ``bbox_2d`` (``coords=``; the vocabulary of ``vlmrl/family.py``): ``"absolute"``
(pixels of the image the model sees; Qwen2.5-VL), ``"rel1000"`` (0-1000; Qwen2-VL, Qwen3-VL), ``"rel1"`` (0-1).
"""

from __future__ import annotations

import json
from typing import Any

from vlmrl.family import CONVENTIONS

from .sample import Sample, render_choices

DEFAULT_TOOL_NAME = "crop"
STYLES = ("full", "compact", "minimal", "bare")

DEFAULT_SYSTEM = "You are a helpful assistant."
COMPACT_SYSTEM = "You answer questions about images."

_COORD_TEXT = {
    "absolute": "absolute pixel coordinates of the image you see, (0, 0) is the top-left corner",
    "rel1000": "relative coordinates from 0 to 1000 of the image you see, (0, 0) is the top-left corner "
                    "and (1000, 1000) the bottom-right",
    "rel1": "relative coordinates from 0 to 1 of the image you see, (0, 0) is the top-left corner "
                 "and (1, 1) the bottom-right",
}
_COORD_SHORT = {"absolute": "pixels of the image you see", "rel1000": "0-1000 relative", "rel1": "0-1 relative"}

_ANSWER_HINT = {
    "choice": "the letter of the correct option",
    "number": "a number",
    "word": "a single word or short phrase",
    "math": "the final result",
}
_ANSWER_HINT_COMPACT = {"choice": "the letter", "number": "a number", "word": "one word", "math": "the result"}

# Qwen2.5 / Qwen3 chat templates' tool block, verbatim apart from the function lines.
_TOOLS_HEADER = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
_TOOLS_FOOTER_COMPACT = (
    "</tools>\n"
    'For each function call return <tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>'
)


def _check(style: str, coords: str | None = None) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if coords is not None and coords not in CONVENTIONS:
        raise ValueError(f"coords must be one of {CONVENTIONS}, got {coords!r}")


def crop_tool_schema(name: str = DEFAULT_TOOL_NAME, coords: str = "absolute", style: str = "full") -> dict:
    """JSON schema (OpenAI/Qwen function format) of the crop tool with one argument ``bbox_2d``."""
    _check(style, coords)
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"tool name must be a non-empty identifier, got {name!r}")
    if style == "compact":
        desc = f"Zoom in: returns the region bbox_2d of the image at high resolution ({_COORD_SHORT[coords]})."
        arg_desc = f"[x1, y1, x2, y2], {_COORD_SHORT[coords]}"
    else:
        desc = (
            "Crop a region of the image and return it at high resolution, to look at small details. "
            f"The box is given in {_COORD_TEXT[coords]}."
        )
        arg_desc = f"The region as [x1, y1, x2, y2] (top-left and bottom-right corners), in {_COORD_TEXT[coords]}."
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": desc,
            "parameters": {
                "type": "object",
                "properties": {
                    "bbox_2d": {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 4,
                        "maxItems": 4,
                        "description": arg_desc,
                    }
                },
                "required": ["bbox_2d"],
            },
        },
    }


def tools_block(schemas: list[dict], style: str = "full") -> str:
    """``# Tools ... <tools>\\n{schema}\\n...</tools> ...<tool_call>`` text (one JSON schema per line)."""
    _check(style)
    lines = "\n".join(json.dumps(s, ensure_ascii=False) for s in schemas)
    if style == "compact":
        return f"# Tools\n<tools>\n{lines}\n{_TOOLS_FOOTER_COMPACT}"
    return f"{_TOOLS_HEADER}\n{lines}\n{_TOOLS_FOOTER}"


def crop_tool_line(name: str = DEFAULT_TOOL_NAME, coords: str = "absolute") -> str:
    """The crop tool declared by one example call (the "minimal" style's system prompt)."""
    _check("minimal", coords)
    call = '{"name": "%s", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}' % name
    return f"Zoom tool, box in {_COORD_SHORT[coords]}: <tool_call>{call}</tool_call>"


def tool_system_prompt(tool_name: str = DEFAULT_TOOL_NAME, coords: str = "absolute", style: str = "full",
                       system: str | None = None, schema: dict | None = None, line: str | None = None) -> str:
    """System prompt of the tool mode: ``system`` (default per style) + the tool block. ``schema`` (the
    tool's JSON schema) and ``line`` (its one-line declaration for the minimal style) come from the tool
    (vlmrl.rollout.tools: ``Tool.schema`` / ``Tool.short_prompt``); None: the crop tool's."""
    if style == "bare":
        _check(style, coords)
        return system or ""
    if style == "minimal":
        _check(style, coords)
        line = crop_tool_line(tool_name, coords) if line is None else line
        return f"{system + chr(10) if system else ''}{line}"
    base = system if system is not None else (DEFAULT_SYSTEM if style == "full" else COMPACT_SYSTEM)
    block = tools_block([crop_tool_schema(tool_name, coords, style) if schema is None else schema], style)
    return f"{base}\n\n{block}" if base else block


def question_text(question: str, choices: list[str] | None = None) -> str:
    """The question, followed by the rendered options (``A. foo``) when there are any."""
    q = question.strip()
    if choices:
        q = f"{q}\n{render_choices(choices)}"
    return q


def direct_instruction(answer_type: str | None = None, style: str = "full") -> str:
    """The instruction appended to the question in direct-answer mode."""
    _check(style)
    if style == "compact":
        hint = _ANSWER_HINT_COMPACT.get(answer_type or "")
        return "Reply <think>...</think><answer>" + (hint or "answer") + "</answer>."
    hint = _ANSWER_HINT.get(answer_type or "")
    text = ("First think about the question step by step inside <think> </think> tags, then give the final "
            "answer inside <answer> </answer> tags, i.e. <think> reasoning </think><answer> answer </answer>.")
    if hint:
        text += f" The answer should be {hint}."
    return text


def tool_instruction(tool_name: str = DEFAULT_TOOL_NAME, answer_type: str | None = None, style: str = "full") -> str:
    """The instruction appended to the question in tool mode."""
    _check(style)
    if style == "compact":
        hint = _ANSWER_HINT_COMPACT.get(answer_type or "")
        return (f"Think in <think></think>, then call {tool_name} to zoom in, or reply <answer>"
                + (hint or "answer") + "</answer>.")
    hint = _ANSWER_HINT.get(answer_type or "")
    text = (
        "First think step by step inside <think> </think> tags. Then, if the image is too small or unclear to "
        f"answer, call the {tool_name} tool to look at a region at high resolution; otherwise give the final "
        "answer inside <answer> </answer> tags."
    )
    if hint:
        text += f" The answer should be {hint}."
    return text


def _fields(sample: Sample | None, question, choices, answer_type, num_images, images):
    if sample is not None:
        question = sample.question if question is None else question
        choices = sample.choices if choices is None else choices
        answer_type = sample.answer_type if answer_type is None else answer_type
        images = sample.images if images is None else images
    if question is None:
        raise ValueError("a question (or a sample) is required")
    if num_images is None:
        num_images = len(images) if images is not None else 1
    return question, choices, answer_type, num_images, images


def _user_turn(text: str, num_images: int, images, include_images: bool) -> dict:
    content: list[dict[str, Any]] = []
    for k in range(num_images):
        part: dict[str, Any] = {"type": "image"}
        if include_images:
            if images is None or k >= len(images):
                raise ValueError("include_images=True needs the images")
            part["image"] = images[k]
        content.append(part)
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def direct_messages(sample: Sample | None = None, *, question: str | None = None, choices: list[str] | None = None,
                    answer_type: str | None = None, num_images: int | None = None, images=None,
                    style: str = "full", system: str | None = None, include_images: bool = False) -> list[dict]:
    """Messages for a direct answer. ``system=""`` leaves the system turn out (the chat template may then
    add its default one); None uses the style's default."""
    _check(style)
    question, choices, answer_type, num_images, images = _fields(sample, question, choices, answer_type,
                                                                 num_images, images)
    text = question_text(question, choices)
    if style not in ("minimal", "bare"):
        text += f"\n{direct_instruction(answer_type, style)}"
    return [*direct_system_turn(style, system), _user_turn(text, num_images, images, include_images)]


def direct_system_turn(style: str, system: str | None = None) -> list[dict]:
    """The system turn of a direct-mode prompt ([] or one message): ``system``, else the style's default (none
    for "minimal"; an empty one for "bare", so the chat template adds no default system prompt either)."""
    sys_text = system if system is not None else {"full": DEFAULT_SYSTEM, "compact": COMPACT_SYSTEM}.get(style, "")
    return [{"role": "system", "content": sys_text}] if sys_text or style == "bare" else []


def tool_messages(sample: Sample | None = None, *, question: str | None = None, choices: list[str] | None = None,
                  answer_type: str | None = None, num_images: int | None = None, images=None,
                  style: str = "full", tool_name: str = DEFAULT_TOOL_NAME, coords: str = "absolute",
                  system: str | None = None, include_images: bool = False, schema: dict | None = None,
                  line: str | None = None) -> list[dict]:
    """Messages for the tool mode: the tool declared in the system turn (``schema``/``line``: see
    :func:`tool_system_prompt`; None: the crop tool), then the user turn."""
    _check(style, coords)
    question, choices, answer_type, num_images, images = _fields(sample, question, choices, answer_type,
                                                                 num_images, images)
    sys_text = tool_system_prompt(tool_name, coords, style, system, schema, line)
    text = question_text(question, choices)
    if style not in ("minimal", "bare"):
        text += f"\n{tool_instruction(tool_name, answer_type, style)}"
    return [{"role": "system", "content": sys_text}, _user_turn(text, num_images, images, include_images)]


def build_messages(sample: Sample, mode: str = "direct", style: str = "full", **kwargs) -> list[dict]:
    """``mode="direct"`` -> :func:`direct_messages`, ``mode="tool"`` -> :func:`tool_messages`."""
    if mode == "direct":
        return direct_messages(sample, style=style, **kwargs)
    if mode == "tool":
        return tool_messages(sample, style=style, **kwargs)
    raise ValueError(f"mode must be 'direct' or 'tool', got {mode!r}")


def parse_tools_block(system_text: str) -> list[dict]:
    """The JSON schemas between the ``<tools>`` and ``</tools>`` lines (one per line): the inverse of
    :func:`tools_block`, for tests and tooling."""
    lines = system_text.splitlines()
    try:
        start = lines.index("<tools>")
        end = lines.index("</tools>", start)
    except ValueError:
        raise ValueError("no <tools> ... </tools> block (each tag on its own line)") from None
    return [json.loads(line) for line in lines[start + 1:end] if line.strip()]
