"""Format rewards: the direct template <think>..</think><answer>..</answer> and the tool template.

Two styles (`reward.format_style`):
- "strict" (vlmrl's): only whitespace and newlines around and between tags, and a trailing end-of-turn token
  (<|im_end|>, <|endoftext|>) is ignored. Tag contents may not contain another of the template's tags;
  <answer> and <tool_call> must be non-empty, <think> may be empty.
- "official" (AdaptVision's, verl/utils/reward_score/general_qa_bbox.py:122-201 in AdaptVision/AdaptVision):
  any text between </think> and <answer> (or <tool_call>), empty tags allowed, each tag exactly once per turn, no
  <tool_call> in an answer turn and no <answer> in a tool-call turn. A one-turn response and the tool-call turns
  are stripped of surrounding whitespace; the final answer turn after a tool call is not (as there).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

_BODY = r"(?:(?!</?(?:think|answer|tool_call)>).)"
_END = r"(?:<\|im_end\|>|<\|endoftext\|>)*"
_DIRECT_RE = re.compile(rf"\s*<think>{_BODY}*</think>\s*<answer>{_BODY}*</answer>\s*{_END}\s*", re.S)
_TOOL_RE = re.compile(rf"\s*<think>{_BODY}*</think>\s*<tool_call>{_BODY}*</tool_call>\s*{_END}\s*", re.S)


def _nonblank_tags(text: str, tag: str) -> bool:
    m = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
    return m is not None and m.group(1).strip() != ""


def format_direct(response: str) -> float:
    """1.0 if the response is exactly <think>...</think><answer>...</answer> (modulo whitespace), else 0."""
    return float(bool(_DIRECT_RE.fullmatch(response)) and _nonblank_tags(response, "answer"))


def format_tool_call_turn(turn: str) -> float:
    """1.0 if an assistant turn is exactly <think>...</think><tool_call>...</tool_call>, else 0."""
    return float(bool(_TOOL_RE.fullmatch(turn)) and _nonblank_tags(turn, "tool_call"))


def format_tool(turns: Sequence[str]) -> float:
    """1.0 if every non-final turn is a think + tool_call turn and the final turn a think + answer turn."""
    if not turns:
        return 0.0
    return float(all(format_tool_call_turn(t) for t in turns[:-1]) and format_direct(turns[-1]) == 1.0)


def format_reward(response: str, sample: dict) -> dict:
    """Reward fn: the tool template over sample["turns"] when given, else the direct template on response.

    A one-turn trajectory under the tool template is scored like the direct template.
    """
    turns = sample.get("turns")
    fmt = format_tool(turns) if turns else format_direct(response)
    return {"reward": fmt, "format": fmt}


_OFFICIAL_ANSWER = re.compile(r"^<think>.*</think>.*<answer>.*</answer>$", re.S)
_OFFICIAL_TOOL = re.compile(r"^<think>.*</think>.*<tool_call>.*</tool_call>$", re.S)
_TRAILING_END = re.compile(rf"{_END}\s*$")


def _official_turn(text: str, final: bool) -> bool:
    once = ("<think>", "</think>") + (("<answer>", "</answer>") if final else ("<tool_call>", "</tool_call>"))
    banned = ("<tool_call>", "</tool_call>") if final else ("<answer>", "</answer>")
    return (bool((_OFFICIAL_ANSWER if final else _OFFICIAL_TOOL).match(text))
            and all(text.count(tag) == 1 for tag in once) and not any(tag in text for tag in banned))


def format_official(turns: Sequence[str]) -> float:
    """AdaptVision's format score of a trajectory's assistant turns (1.0 or 0.0; see the module docstring).
    Trailing end-of-turn tokens are dropped first (AdaptVision decodes without special tokens)."""
    turns = [_TRAILING_END.sub("", t) for t in turns]
    if not turns:
        return 0.0
    if len(turns) == 1:
        return float(_official_turn(turns[0].strip(), final=True))
    return float(all(_official_turn(t.strip(), final=False) for t in turns[:-1])
                 and _official_turn(turns[-1], final=True))


def format_reward_official(response: str, sample: dict) -> dict:
    """Reward fn: format_official over sample["turns"] when given, else over the response alone."""
    fmt = format_official(sample.get("turns") or [response])
    return {"reward": fmt, "format": fmt}


FORMAT_STYLES: dict[str, Callable[[str, dict], dict]] = {"strict": format_reward, "official": format_reward_official}


def format_fn(style: str) -> Callable[[str, dict], dict]:
    """The format reward fn of a `reward.format_style`; ValueError naming the styles otherwise."""
    try:
        return FORMAT_STYLES[style]
    except (KeyError, TypeError):
        raise ValueError(f"reward.format_style must be one of {', '.join(FORMAT_STYLES)}, got {style!r}") from None
