"""Rollouts: the tools (vlmrl.rollout.tools), the multi-turn engine (engine.py), trajectories and their
traces (trajectory.py), a scripted policy for demonstrations and tests (scripted.py), `vlmrl rollout` (cli.py).

The tool names are exported here (``from vlmrl.rollout import parse_tool_call, map_box, CropTool``); so are the
engine and the trajectory record (``RolloutEngine``, ``Trajectory``, ``save_traces``, ``load_traces``), imported on
first use (the engine pulls in torch and the model code).
"""

from vlmrl._lazy import lazy_exports
from vlmrl.rollout.tools import *  # noqa: F403 - the tool API is this package's public API
from vlmrl.rollout.tools import __all__ as _TOOL_NAMES

_EXPORTS = {"RolloutEngine": "vlmrl.rollout.engine", "PromptTooLong": "vlmrl.rollout.engine",
            "Trajectory": "vlmrl.rollout.trajectory", "TrajImage": "vlmrl.rollout.trajectory",
            "ToolCallRecord": "vlmrl.rollout.trajectory", "save_traces": "vlmrl.rollout.trajectory",
            "load_traces": "vlmrl.rollout.trajectory"}
__all__ = [*_TOOL_NAMES, *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
