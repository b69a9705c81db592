"""Tool registry: recipes name the tool the rollout engine runs (``rollout.tool``), users plug in their own.

``get_tool(spec)`` takes a registered name ("crop", "nested_crop") or a user class as
``package.module:ClassName`` / ``path/to/file.py:ClassName`` (loaded like user rewards, vlmrl.loading), a
subclass of vlmrl.rollout.tools.base.Tool; ``make_tool(spec, name)`` builds it with the name the model
writes (``rollout.tool_name``).
"""

from __future__ import annotations

from vlmrl.loading import Registry
from vlmrl.rollout.tools.base import Tool
from vlmrl.rollout.tools.crop import CropTool
from vlmrl.rollout.tools.nested_crop import NestedCropTool

DEFAULT_TOOL = "crop"


def _is_tool_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, Tool)


TOOLS = Registry("tool", "class", _is_tool_class, "not a subclass of vlmrl.rollout.tools.Tool", cache=True)


def register_tool(name: str):
    """Class decorator registering a Tool subclass under ``name``; ValueError if the name is taken."""
    return TOOLS.register(name)


def available_tools() -> list[str]:
    """Registered tool names."""
    return TOOLS.names()


def get_tool(spec: str) -> type[Tool]:
    """A registered tool class by name, or a user class by 'module:Class' / 'path/to/file.py:Class'
    (each file loaded once per process)."""
    return TOOLS.get(spec)


def make_tool(spec: str = DEFAULT_TOOL, name: str | None = None) -> Tool:
    """An instance of the tool ``spec`` that the model calls as ``name`` (None: the class's own name)."""
    return get_tool(spec or DEFAULT_TOOL)(name)


register_tool("crop")(CropTool)
register_tool("nested_crop")(NestedCropTool)
