"""Tool registry: recipes name the tool the rollout engine runs (``rollout.tool``), users plug in their own.

``get_tool(spec)`` takes a registered name ("crop", "nested_crop") or a user class as
``package.module:ClassName`` / ``path/to/file.py:ClassName`` (loaded like user rewards, vlmrl.loading), a
subclass of vlmrl.rollout.tools.base.Tool; ``make_tool(spec, name)`` builds it with the name the model
writes (``rollout.tool_name``).
"""

from __future__ import annotations

from vlmrl.loading import load_object
from vlmrl.rollout.tools.base import Tool
from vlmrl.rollout.tools.crop import CropTool
from vlmrl.rollout.tools.nested_crop import NestedCropTool

DEFAULT_TOOL = "crop"
_REGISTRY: dict[str, type[Tool]] = {}
_LOADED: dict[str, type[Tool]] = {}  # user specs, loaded once per process


def register_tool(name: str):
    """Class decorator registering a Tool subclass under ``name``; ValueError if the name is taken."""
    def deco(cls: type[Tool]) -> type[Tool]:
        if not (isinstance(cls, type) and issubclass(cls, Tool)):
            raise TypeError(f"register_tool({name!r}): {cls!r} is not a subclass of vlmrl.rollout.tools.Tool")
        if _REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"tool {name!r} is already registered ({_REGISTRY[name].__module__}."
                             f"{_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = cls
        return cls
    return deco


def available_tools() -> list[str]:
    """Registered tool names."""
    return sorted(_REGISTRY)


def _is_tool_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, Tool)


def get_tool(spec: str) -> type[Tool]:
    """A registered tool class by name, or a user class by 'module:Class' / 'path/to/file.py:Class'."""
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if ":" in spec:
        if spec not in _LOADED:
            _LOADED[spec] = load_object(spec, "tool", "class", _is_tool_class,
                                        "not a subclass of vlmrl.rollout.tools.Tool")
        return _LOADED[spec]
    raise KeyError(f"unknown tool {spec!r}; registered: {available_tools()}, "
                   "or give 'module:Class' / 'path/to/file.py:Class'")


def make_tool(spec: str = DEFAULT_TOOL, name: str | None = None) -> Tool:
    """An instance of the tool ``spec`` that the model calls as ``name`` (None: the class's own name)."""
    return get_tool(spec or DEFAULT_TOOL)(name)


register_tool("crop")(CropTool)
register_tool("nested_crop")(NestedCropTool)
