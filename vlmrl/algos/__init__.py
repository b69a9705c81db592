"""Pure tensor functions for RL: advantages, policy losses, KL estimators, PAPO terms, group filters, and the
algorithm table (vlmrl.algos.table) that says which of them each `algo.name` uses."""

from vlmrl.algos.advantages import dtpo_advantages, dtpo_mix, final_turn_mask, grpo_advantages, last_turn_ids
from vlmrl.algos.compose import (
    AGGREGATIONS,
    composed_advantages,
    part_contributions,
    part_group_std,
    signal_group_std,
    variance_shares,
)
from vlmrl.algos.filters import (
    accuracy_window_keep,
    dynamic_sampling_keep,
    expand_group_keep,
    group_std,
    zero_std_fraction,
)
from vlmrl.algos.losses import (
    loss_totals,
    loss_weights,
    token_policy_loss,
    weighted_sum,
    AGG_MODES,
    dtpo_loss,
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    policy_loss,
    ppo_clip_loss,
    sampled_entropy,
)
from vlmrl.algos.mismatch import logp_mismatch, tis_weights
from vlmrl.algos.papo import double_entropy, perception_kl, random_patch_mask
from vlmrl.algos.shaping import overlong_penalty
from vlmrl.algos.table import ALGORITHMS, Algorithm, check_algorithm

__all__ = [
    "AGGREGATIONS",
    "composed_advantages",
    "dtpo_mix",
    "part_contributions",
    "part_group_std",
    "signal_group_std",
    "variance_shares",
    "logp_mismatch",
    "tis_weights",
    "ALGORITHMS",
    "Algorithm",
    "check_algorithm",
    "loss_totals",
    "loss_weights",
    "token_policy_loss",
    "weighted_sum",
    "AGG_MODES",
    "accuracy_window_keep",
    "double_entropy",
    "dtpo_advantages",
    "dtpo_loss",
    "dynamic_sampling_keep",
    "entropy_from_logits",
    "expand_group_keep",
    "final_turn_mask",
    "group_std",
    "grpo_advantages",
    "kl_estimate",
    "last_turn_ids",
    "masked_mean",
    "overlong_penalty",
    "perception_kl",
    "policy_loss",
    "ppo_clip_loss",
    "random_patch_mask",
    "sampled_entropy",
    "zero_std_fraction",
]
