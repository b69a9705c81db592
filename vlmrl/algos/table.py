"""The algorithm table: what each `algo.name` means to the trainer, and the recipe check that uses it.

Per algorithm: how advantages are computed ("group": GRPO's z-score per group; "centered": Dr.GRPO's r - mean;
"dtpo": DTPO's per-token mix of two z-scored rewards), the default loss aggregation (`algo.loss_agg` overrides
it), whether the PPO ratio is per token or per sequence (GSPO), and the reward and rollout mode it needs.
DAPO differs from GRPO only in its recipe (clip-higher, dynamic sampling), which are settings, not table rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmrl.algos.losses import AGG_MODES


@dataclass(frozen=True)
class Algorithm:
    name: str
    advantage: str  # "group" | "centered" | "dtpo"
    loss_agg: str  # one of AGG_MODES or "dtpo" (alpha * non-final turns + final turns)
    level: str = "token"  # "token" or "sequence" (GSPO's sequence ratio)
    reward: str | None = None  # the reward.name it needs (None: any)
    mode: str | None = None  # the rollout.mode it needs (None: any)
    why: str = ""  # the reason for `reward` / `mode`, for the error message


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("grpo", "group", "token-mean"),
    Algorithm("dapo", "group", "token-mean"),
    Algorithm("dr_grpo", "centered", "seq-mean-token-sum-norm"),
    Algorithm("gspo", "group", "seq-mean-token-mean", level="sequence"),
    Algorithm("dtpo", "dtpo", "dtpo", reward="dtpo", mode="tool",
              why="DTPO's advantages need the outcome and tool rewards and decouple tool-call and answer turns"),
)}

LOSS_AGGS = AGG_MODES + ("dtpo",)


def check_algorithm(name: str, reward: str, mode: str, loss_agg: str = "") -> Algorithm:
    """The table row of `algo.name`; ValueError naming the keys when the name is unknown, the recipe's
    reward.name or rollout.mode is not the one the algorithm needs, or algo.loss_agg is not a known mode."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo.name must be one of {', '.join(ALGORITHMS)}, got {name!r}")
    algo = ALGORITHMS[name]
    if algo.reward is not None and reward not in (algo.reward, "parts"):  # "parts": reward.parts (roles)
        raise ValueError(f"algo.name={name} needs reward.name={algo.reward}, got reward.name={reward} ({algo.why}; "
                         "or give reward.parts with outcome and tool roles)")
    if algo.mode is not None and mode != algo.mode:
        raise ValueError(f"algo.name={name} needs rollout.mode={algo.mode}, got rollout.mode={mode} ({algo.why})")
    if loss_agg and loss_agg not in LOSS_AGGS:
        raise ValueError(f"algo.loss_agg must be one of {', '.join(LOSS_AGGS)} (or empty for the algorithm's "
                         f"default), got {loss_agg!r}")
    return algo
