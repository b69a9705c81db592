"""Tools the rollout engine can run: the contract, the generic call parser, the registry, the built-ins.

- base.py: the Tool contract (name, prompt schema, validate, run -> Observation) and what flows through it;
- parse.py: the generic ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` parser;
- coords.py: box coordinate conventions and each model family's;
- crop.py: the crop tool (box mapping, cropping, the first view, box coverage);
- nested_crop.py: crop from any image seen so far (N-turn zooming);
- registry.py: names -> tool classes, user tools from ``file.py:Class``.
"""

from vlmrl.rollout.tools.base import Observation, Tool, ToolCall, ToolCallError, ToolContext, ToolImage
from vlmrl.rollout.tools.coords import CONVENTIONS, default_convention, to_seen_pixels
from vlmrl.rollout.tools.crop import (
    CROP_INSTRUCTION,
    CROP_MAX_PIXELS,
    CROP_MIN_PIXELS,
    DEFAULT_TOOL_NAME,
    ERROR_INSTRUCTION,
    FIRST_VIEW_MAX_PIXELS,
    FIRST_VIEW_MIN_PIXELS,
    FIRST_VIEW_SCALE,
    MAX_BOX_ASPECT,
    MIN_SEEN_SIZE,
    CropTool,
    MappedBox,
    box_coverage,
    check_bbox,
    crop_image,
    first_view,
    map_box,
)
from vlmrl.rollout.tools.nested_crop import NestedCropTool
from vlmrl.rollout.tools.parse import MAX_TOOL_CALL_CHARS, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, has_tool_call, parse_tool_call
from vlmrl.rollout.tools.registry import DEFAULT_TOOL, available_tools, get_tool, make_tool, register_tool

__all__ = [
    "CONVENTIONS", "CROP_INSTRUCTION", "CROP_MAX_PIXELS", "CROP_MIN_PIXELS", "DEFAULT_TOOL", "DEFAULT_TOOL_NAME",
    "ERROR_INSTRUCTION", "FIRST_VIEW_MAX_PIXELS", "FIRST_VIEW_MIN_PIXELS", "FIRST_VIEW_SCALE",
    "MAX_BOX_ASPECT", "MAX_TOOL_CALL_CHARS", "MIN_SEEN_SIZE", "TOOL_CALL_CLOSE", "TOOL_CALL_OPEN",
    "CropTool", "MappedBox", "NestedCropTool", "Observation", "Tool", "ToolCall", "ToolCallError", "ToolContext",
    "ToolImage", "available_tools", "box_coverage", "check_bbox", "crop_image", "default_convention", "first_view",
    "get_tool", "has_tool_call", "make_tool", "map_box", "parse_tool_call", "register_tool", "to_seen_pixels",
]
