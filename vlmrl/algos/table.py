"""The algorithm table: what each `algo.name` means to the trainer, and the recipe check that uses it.

Per algorithm: how advantages are computed ("group": GRPO's z-score per group; "centered": Dr.GRPO's r - mean;
"dtpo": DTPO's per-token mix of two z-scored rewards), the default loss aggregation (`algo.loss_agg` overrides
it), whether the PPO ratio is per token or per sequence (GSPO), the reward and rollout mode it needs, and its
defaults for settings a recipe may leave out: the clip range (`algo.clip_low` / `algo.clip_high`), the reward the
dynamic-sampling filter looks at (`algo.filter_metric`), and how the reference-KL and entropy terms are averaged.
DAPO differs from GRPO in its defaults (clip-higher 0.2/0.28, filter on accuracy) and its recipe (dynamic sampling).
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
    clip_low: float = 0.2  # default algo.clip_low
    clip_high: float = 0.2  # default algo.clip_high
    filter_metric: str = "total"  # default algo.filter_metric: "total" reward or a reward part ("accuracy")
    reg_agg: str = ""  # aggregation of the reference-KL and entropy terms ("" = the policy loss's weights)


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("grpo", "group", "token-mean"),
    # DAPO (Yu et al. 2025): clip-higher; verl's DAPO filters groups on accuracy (docs/algo/dapo.md, metric: acc)
    Algorithm("dapo", "group", "token-mean", clip_high=0.28, filter_metric="accuracy"),
    Algorithm("dr_grpo", "centered", "seq-mean-token-sum-norm"),
    # GSPO (Zheng et al. 2025, sec. 5.1): clip 3e-4 / 4e-4 on the sequence ratio
    Algorithm("gspo", "group", "seq-mean-token-mean", level="sequence", clip_low=3e-4, clip_high=4e-4),
    # AdaptVision: clip 0.2/0.24; entropy (and KL) are plain token means (verl/workers/actor/dp_actor.py:345-356)
    Algorithm("dtpo", "dtpo", "dtpo", reward="dtpo", mode="tool", clip_high=0.24, reg_agg="token-mean",
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
