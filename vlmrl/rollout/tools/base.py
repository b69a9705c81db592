"""The tool contract: what a tool the rollout engine can run must provide, and what it gets and gives.

A tool is a class with
- ``name``: the name the model writes in ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  (a recipe's ``rollout.tool_name``; the engine passes it to the constructor);
- ``schema(coords, style) -> dict``: its JSON function schema for the system prompt's ``<tools>`` block,
  and ``short_prompt(coords) -> str``: the one-line declaration of the "minimal" prompt style;
- ``example() -> str``: one well-formed call, quoted in error messages the model sees;
- ``validate(arguments: dict) -> args | ToolCallError``: checks the ``arguments`` object as the model wrote
  it; a model mistake is a :class:`ToolCallError` (shown to the model), never an exception;
- ``run(args, context: ToolContext) -> Observation | ToolCallError``: executes a validated call.

:meth:`Tool.read` is the whole model-facing step (the generic parser of vlmrl.rollout.tools.parse, then
``validate``); :meth:`Tool.observation` and :meth:`Tool.error_observation` build the observation text.
A tool's ``record`` (a JSON-able dict) lands in the trajectory's tool-call record and its trace line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

INSTRUCTION = ("Here is the result. Continue reasoning and answer in <answer></answer>, "
               "or call the tool again.")
ERROR_INSTRUCTION = ("The tool call was not executed. Continue reasoning and answer in <answer></answer>, "
                     "or call the tool again with valid arguments.")


@dataclass(frozen=True)
class ToolCall:
    """A well-formed call: ``arguments`` as the model wrote them (a JSON object), ``raw`` the
    ``<tool_call>...</tool_call>`` block and ``span`` its (start, end) in the text; ``args`` the tool's
    validated arguments once :meth:`Tool.read` has checked them (None from the bare parser)."""

    name: str
    arguments: dict
    raw: str
    span: tuple[int, int] = (0, 0)
    args: Any = None
    ok: bool = field(default=True, init=False)


@dataclass(frozen=True)
class ToolCallError:
    """An invalid call. ``message`` is meant for the model (it starts with "Error: "); ``kind`` is a
    short machine-readable reason for logs (the parser's: no_closing_tag, several_calls, too_long,
    malformed_json, several_objects, not_an_object, not_finite, wrong_name, missing_arguments,
    bad_arguments; each tool adds its own). ``record``: what the tool wants in the trace even so."""

    message: str
    kind: str
    raw: str = ""
    record: dict = field(default_factory=dict)
    ok: bool = field(default=False, init=False)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ToolImage:
    """An image a tool shows the model, already sized for the vision tower (sides multiples of the
    factor): which of the sample's images it shows (``source``) and, for a region, the box in the
    coordinates of the image the model named (``box_seen``) and in original pixels (``box_original``)."""

    image: Any  # PIL image
    source: int = 0
    box_seen: list[float] | None = None
    box_original: list[int] | None = None
    kind: str = "crop"


@dataclass(frozen=True)
class Observation:
    """The observation (user) turn's text and image. With an image: ``before_image`` + image +
    ``after_image``; without (an error, or a text-only tool): ``after_image`` is None and
    ``before_image`` is the whole text. The chat-template wrapping (``<|im_start|>user`` ...
    ``<|im_end|>``) and the vision tokens are the engine's. ``record`` goes to the trace."""

    before_image: str
    after_image: str | None = None
    image: ToolImage | None = None
    record: dict = field(default_factory=dict)

    @property
    def has_image(self) -> bool:
        return self.after_image is not None

    def render(self, image_placeholder: str = "<|vision_start|><|image_pad|><|vision_end|>") -> str:
        """The whole text with ``image_placeholder`` where the image goes (for traces and tests)."""
        if self.after_image is None:
            return self.before_image
        return self.before_image + image_placeholder + self.after_image


@dataclass(frozen=True)
class ToolContext:
    """What a tool may look at when it runs: the sample's original images (full resolution), the images
    the trajectory has seen so far (vlmrl.rollout.trajectory.TrajImage: kind, seen_size, original_size,
    box_seen, box_original, image; the prompt's views first, then what tools returned), the model's
    coordinate convention ("absolute", "rel1000", "rel1"), the image side factor (28 or 32), the pixel
    budget for images the tool returns, the turn being answered, the smallest crop side before expansion and the
    resize filter (rollout.crop_min_box, rollout.resample)."""

    originals: Sequence[Any]
    seen: Sequence[Any]
    convention: str = "absolute"
    factor: int = 28
    min_pixels: int = 256 * 28 * 28
    max_pixels: int = 1024 * 28 * 28
    turn: int = 0
    min_box: float = 28.0  # crop boxes thinner than this (seen pixels) grow around their centre (0 = never)
    resample: int = 3  # PIL filter for resizing returned images (3 = BICUBIC, 1 = LANCZOS)


class Tool:
    """Base class of tools; subclasses override ``schema``, ``validate`` and ``run`` (and usually
    ``example``, ``short_prompt`` and the two instructions)."""

    name: str = "tool"
    instruction: str = INSTRUCTION  # after a result image or text
    error_instruction: str = ERROR_INSTRUCTION  # after an error message

    def __init__(self, name: str | None = None):
        if name:  # None or "": the class's own name
            self.name = name
        if not isinstance(self.name, str) or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"tool name must be a non-empty identifier, got {self.name!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # ---------------------------------------------------------------------------------- the contract

    def schema(self, coords: str = "absolute", style: str = "full") -> dict:
        """JSON function schema (OpenAI/Qwen format) shown in the system prompt."""
        return {"type": "function", "function": {"name": self.name, "description": "",
                                                 "parameters": {"type": "object", "properties": {}}}}

    def short_prompt(self, coords: str = "absolute") -> str:
        """One line declaring the tool, for the "minimal" prompt style."""
        return f"Tool: {self.example()}"

    def example(self) -> str:
        """One well-formed call, quoted in error messages."""
        return '<tool_call>{"name": "%s", "arguments": {}}</tool_call>' % self.name

    def validate(self, arguments: dict) -> Any:
        """The checked arguments, or a ToolCallError for the model."""
        return arguments

    def run(self, args: Any, context: ToolContext) -> Observation | ToolCallError:
        raise NotImplementedError(f"{type(self).__name__}.run")

    # ---------------------------------------------------------------------------------- shared steps

    def read(self, text: str) -> ToolCall | ToolCallError | None:
        """Parse the call in a generated turn and validate its arguments: None for an answer turn (no
        ``<tool_call>``), a ToolCall with ``args`` set, or a ToolCallError (its ``raw`` the call block)."""
        from vlmrl.rollout.tools.parse import parse_tool_call

        call = parse_tool_call(text, self.name, example=self.example())
        if call is None or isinstance(call, ToolCallError):
            return call
        args = self.validate(call.arguments)
        if isinstance(args, ToolCallError):
            return ToolCallError(args.message, args.kind, call.raw, args.record)
        return ToolCall(call.name, call.arguments, call.raw, call.span, args)

    def observation(self, image: ToolImage | None = None, text: str = "", record: dict | None = None) -> Observation:
        """A successful call's observation: ``<tool_response>\\n`` + image + ``\\n`` + instruction +
        ``\\n</tool_response>``; a text-only result is put where the image would go."""
        record = dict(record or {})
        if image is None:
            return Observation(TOOL_RESPONSE_OPEN + "\n" + text + "\n" + self.instruction + "\n" + TOOL_RESPONSE_CLOSE,
                               None, None, record)
        return Observation(TOOL_RESPONSE_OPEN + "\n", "\n" + self.instruction + "\n" + TOOL_RESPONSE_CLOSE, image,
                           record)

    def error_observation(self, error: ToolCallError | str) -> Observation:
        """``<tool_response>\\n`` + the error message + ``\\n`` + error instruction + ``\\n</tool_response>``,
        no image; the error's ``record`` is kept."""
        message = error.message if isinstance(error, ToolCallError) else str(error)
        parts = [message, self.error_instruction] if self.error_instruction else [message]
        record = error.record if isinstance(error, ToolCallError) else {}
        return Observation(TOOL_RESPONSE_OPEN + "\n" + "\n".join(parts) + "\n" + TOOL_RESPONSE_CLOSE, None, None,
                           dict(record))
