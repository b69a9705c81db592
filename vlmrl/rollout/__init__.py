"""Rollouts: the tools (vlmrl.rollout.tools), the multi-turn engine (engine.py), trajectories and their
traces (trajectory.py), a scripted policy for demonstrations and tests (scripted.py), `vlmrl rollout` (cli.py).

The tool names are exported here (``from vlmrl.rollout import parse_tool_call, map_box, CropTool``); the
engine is imported from vlmrl.rollout.engine (it pulls in torch and the model code).
"""

from vlmrl.rollout.tools import *  # noqa: F403 - the tool API is this package's public API
from vlmrl.rollout.tools import __all__  # noqa: F401
