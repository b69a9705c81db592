"""Reward registry: recipes name rewards, users plug in their own functions.

A per-trajectory reward function has the signature ``fn(response: str, sample: dict) -> float | dict``:

- ``response``: the final assistant turn's text (in tool mode too; earlier turns are in ``turns``);
- ``sample``: ``answer``, ``answer_type`` ("choice" | "number" | "word" | "math"), ``choices``
  (optional list), ``meta`` (dict, e.g. gt_boxes), ``turns`` (list of all assistant turn texts) and
  ``tool_calls`` (int, how many tool calls the trajectory made), ``crops`` (the valid crop boxes, original
  pixels), ``image_size`` ((W, H) of the first image's original) and ``group_id`` (which rows share a prompt);
- a dict return must hold the key "reward"; its other numeric entries are logged as parts.

``get_reward`` takes a registered name, ``package.module:function`` or ``path/to/file.py:function``.
Several rewards with weights, batch signatures ``fn(responses, samples) -> list``, async functions and timeouts:
vlmrl/rewards/compose.py (a recipe's ``reward.parts``).
"""

from __future__ import annotations

import numbers
from typing import Callable, Union

from vlmrl.loading import Registry
from vlmrl.rewards.accuracy import accuracy_reward
from vlmrl.rewards.format import format_reward, format_reward_official

RewardFn = Callable[[str, dict], Union[float, dict]]
REWARDS = Registry("reward", "function")  # reloads a user file on every get, as it always did
_REGISTRY: dict[str, RewardFn] = REWARDS.entries


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering fn under name; ValueError if the name is taken by another function."""
    return REWARDS.register(name)


def available_rewards() -> list[str]:
    """Registered reward names."""
    return REWARDS.names()


def load_reward_fn(spec: str) -> RewardFn:
    """Load ``module:function`` or ``path/to/file.py:function``; clear errors for a missing file,
    module or function, or a non-callable attribute (vlmrl.loading.load_object)."""
    return REWARDS.load(spec)


def get_reward(name: str) -> RewardFn:
    """A registered reward by name, or a user function by 'module:function' / 'file.py:function'."""
    return REWARDS.get(name)


def call_reward(fn: RewardFn, response: str, sample: dict) -> tuple[float, dict[str, float]]:
    """Call a reward fn and normalise its result to (reward, parts); TypeError on a bad return."""
    return reward_value(fn(response, sample), getattr(fn, "__qualname__", repr(fn)))


def reward_value(out, name: str) -> tuple[float, dict[str, float]]:
    """A reward fn's return value (a number, or a dict with "reward" and other numbers) as (reward, parts);
    TypeError naming the function `name` on anything else."""
    if isinstance(out, dict):
        if "reward" not in out:
            raise TypeError(f"reward fn {name} returned a dict without the key 'reward': {sorted(out)}")
        bad = {k: v for k, v in out.items() if not isinstance(v, numbers.Real)}
        if bad:
            raise TypeError(f"reward fn {name} returned non-numeric entries {bad}")
        return float(out["reward"]), {k: float(v) for k, v in out.items() if k != "reward"}
    if isinstance(out, numbers.Real):
        return float(out), {}
    raise TypeError(f"reward fn {name} returned {type(out).__name__}; expected a float or a dict with 'reward'")


register_reward("accuracy")(accuracy_reward)
register_reward("format")(format_reward)
register_reward("format_official")(format_reward_official)
