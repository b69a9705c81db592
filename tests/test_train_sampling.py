"""Trainer rules from the official code, without a model: the dynamic-sampling metric, the short batch after the
last try, DAPO's overlong punishment, per-algorithm defaults, and DTPO's plain token-mean entropy and KL terms.

Official snapshots: volcengine/verl @ b178a3cd56f5, hiyouga/EasyR1 @ b44b311b669b, AdaptVision/AdaptVision @
9b7d57c0df97.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from vlmrl import algos
from vlmrl.config import AlgoConfig, ConfigError, load_config
from vlmrl.rewards.compose import ComposedReward
from vlmrl.train.loss import micro_batch_loss
from vlmrl.train.trainer import Trainer

GROUPS = torch.tensor([0, 0, 1, 1, 2, 2])
# group 0: both correct, formats differ (total std > 0, accuracy std 0); group 1: one correct; group 2: all 0
ACC = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
TOTAL = [1.5, 1.0, 0.5, 1.5, 0.0, 0.0]


def keep(overrides):
    cfg = load_config(None, ["algo.dynamic_sampling=true", *overrides])
    rewards = ComposedReward.from_config(cfg.reward, cfg.algo.name)
    return Trainer._keep_groups(SimpleNamespace(cfg=cfg, rewards=rewards), TOTAL, {"accuracy": ACC}, GROUPS)


def test_dynamic_sampling_metric_accuracy_for_dapo_total_otherwise():
    """verl's DAPO filters groups on accuracy (docs/algo/dapo.md:78-84, `metric: acc`: drop groups whose outputs'
    metric are all the same); AdaptVision's rejection sampling on the total reward (verl/trainer/ppo/
    ray_trainer_bbox.py:1497-1500 there: std of the summed reward < 1e-4). Group 0 (accuracy 1, 1; total 1.5, 1.0)
    is dropped on accuracy and kept on the total."""
    assert keep(["algo.name=dapo"]) == [False, True, False]
    assert keep(["algo.name=grpo"]) == [True, True, False]
    assert keep(["algo.name=dapo", "algo.filter_metric=total"]) == [True, True, False]
    with pytest.raises(ValueError, match="algo.filter_metric='format' is not a reward part"):
        keep(["algo.name=grpo", "algo.filter_metric=format"])


class Scripted(Trainer):
    """A trainer whose rollouts are scripted: every round returns groups whose rewards are all equal but one."""

    def __init__(self, cfg, good_per_round):
        self.cfg, self.step_idx, self.sampling_stats, self._group_images = cfg, 0, {}, {}
        self.rewards = ComposedReward.from_config(cfg.reward, cfg.algo.name)
        self.good = list(good_per_round)

    def _rollout(self, n, first_group_id):
        good = self.good.pop(0) if self.good else 0
        return [SimpleNamespace(group_id=first_group_id + g, ok=g < good) for g in range(n) for _ in range(2)]

    def _score(self, trajs, groups):
        total = [float(t.ok and i % 2) for i, t in enumerate(trajs)]
        return total, {"accuracy": total}


def test_short_batch_after_the_last_try_is_loud():
    """Up to algo.max_sampling_tries rounds (default 10: verl's DAPO max_num_gen_batches, docs/algo/dapo.md:81;
    EasyR1 max_try_make_batch 20, verl/trainer/config.py:113). 4 groups wanted, 1 good group per round, 3 tries:
    3 kept, 1 short, a RuntimeWarning and the metrics sampling/tries = 3, sampling/short_groups = 1."""
    cfg = load_config(None, ["algo.dynamic_sampling=true", "algo.max_sampling_tries=3", "train.prompts_per_step=4"])
    tr = Scripted(cfg, [1, 1, 1, 1])
    with pytest.warns(RuntimeWarning, match="only 3 of 4 groups passed the group filters after 3 rollout rounds"):
        trajs, total, parts, kept, zero = tr.collect()
    assert sum(kept) == 3 and len(kept) == 4 + 3 + 2
    assert tr.sampling_stats == {"sampling/tries": 3, "sampling/short_groups": 1}
    full = Scripted(cfg, [4])
    full.collect()
    assert full.sampling_stats == {"sampling/tries": 1, "sampling/short_groups": 0}
    assert AlgoConfig().max_sampling_tries == 10


def test_overlong_penalty_dapo_rule():
    """verl/workers/reward_manager/dapo.py:116-122: expected = max_len - buffer; exceed = L - expected;
    r = min(-exceed / buffer * penalty_factor, 0). max_len 20, buffer 5 (expected 15):
    L = 10, 15, 16, 18, 20 -> 0, 0, -0.2, -0.6, -1.0; penalty factor 0.5 halves them."""
    lengths = torch.tensor([10, 15, 16, 18, 20])
    assert algos.overlong_penalty(lengths, 20, 5).tolist() == pytest.approx([0, 0, -0.2, -0.6, -1.0])
    assert algos.overlong_penalty(lengths, 20, 5, 0.5).tolist() == pytest.approx([0, 0, -0.1, -0.3, -0.5])
    assert algos.overlong_penalty(lengths, 20, 0).tolist() == [0.0] * 5
    with pytest.raises(ValueError):
        algos.overlong_penalty(lengths, 20, 21)
    with pytest.raises(ConfigError, match=r"algo.overlong_buffer \(60\) must be at most the response length cap \(48"):
        load_config(None, ["rollout.max_new_tokens=48", "algo.overlong_buffer=60"])


def test_per_algorithm_defaults_apply_where_the_recipe_is_silent():
    """GSPO paper (Zheng et al. 2025, sec. 5.1): clip 3e-4 / 4e-4 (verl examples/gspo_trainer/test_gspo_3b_math.sh:72-73
    "as recommended by the paper, see Sec. 5.1"); DAPO clip-higher 0.2/0.28; AdaptVision's run script
    (scripts/run_adaptvision.sh:42, clip_ratio_high=0.24). A recipe's own values win."""
    clip = {n: (load_config(None, [f"algo.name={n}"] + (["reward.name=dtpo", "rollout.mode=tool"] if n == "dtpo"
                                                         else [])).algo) for n in ("grpo", "dapo", "gspo", "dtpo")}
    assert {n: (a.clip_low, a.clip_high) for n, a in clip.items()} == {
        "grpo": (0.2, 0.2), "dapo": (0.2, 0.28), "gspo": (3e-4, 4e-4), "dtpo": (0.2, 0.24)}
    assert clip["dapo"].filter_metric == "accuracy" and clip["grpo"].filter_metric == "total"
    own = load_config(None, ["algo.name=gspo", "algo.clip_high=0.001"]).algo
    assert (own.clip_low, own.clip_high) == (3e-4, 0.001)
    gspo = load_config("recipes/gspo.yaml").algo
    assert (gspo.name, gspo.clip_low, gspo.clip_high) == ("gspo", 3e-4, 4e-4)


class FakePolicy:
    device = torch.device("cpu")

    def __init__(self, logp, ent):
        self.logp, self.ent = logp, ent

    def logprobs(self, seqs, mask, temperature=1.0, with_entropy=False, share_prefix=False):
        return (self.logp, self.ent) if with_entropy else self.logp


class FakeBatch:
    def __init__(self, **kw):
        self.tis_weight = None  # RolloutBatch's field: no sampler/trainer mismatch weights (HF sampler)
        self.__dict__.update(kw)

    def take(self, x, rows):
        return x[rows]


def test_dtpo_entropy_and_kl_are_plain_token_means():
    """AdaptVision verl/workers/actor/dp_actor.py:345-358: entropy_loss = masked_mean(entropy, response_mask),
    kl_loss = masked_mean(kld, response_mask): plain token means, while only the policy term is split by turn.
    Two rows of 3 tokens, the first token of row 0 non-final: entropies 3, 1, 1 / 1, 1, 1 -> token mean 8/6 (the
    alpha-split weights would give 0.5 * 3 + 5/5 = 2.5); k3 with ref - logp = ln 2 on that token only:
    2 - ln 2 - 1 = 0.30685, token mean 0.30685 / 6 = 0.051142 (split: 0.5 * 0.30685 = 0.15343)."""
    mask = torch.ones(2, 3)
    final = torch.tensor([[False, True, True], [True, True, True]])
    w = algos.loss_weights(mask, "dtpo", final_mask=final, alpha=0.5)
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    ref = torch.full((2, 3), -1.0)
    ref[0, 0] += math.log(2)
    batch = FakeBatch(seqs=[None, None], loss_mask=mask, old_logp=torch.full((2, 3), -1.0),
                      advantages=torch.zeros(2, 3), ref_logp=ref)
    a = AlgoConfig(name="dtpo", entropy_coef=0.1, kl_coef=0.2)
    pol = FakePolicy(logp, torch.tensor([[3.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    _, out = micro_batch_loss(pol, a, "token", batch, [0, 1], w, 6, 1.0, False, reg_token_mean=True)
    k3 = 2 - math.log(2) - 1
    assert out["loss/entropy"] == pytest.approx(-0.1 * 8 / 6)
    assert out["ref_kl"] == pytest.approx(k3 / 6)
    _, split = micro_batch_loss(pol, a, "token", batch, [0, 1], w, 6, 1.0, False)  # the other algorithms' rule
    assert split["loss/entropy"] == pytest.approx(-0.1 * 2.5) and split["ref_kl"] == pytest.approx(0.5 * k3)


def test_perception_kl_term_value_in_the_training_loss():
    """PAPO's kl_prcp (MikeWangWZHL/PAPO @ fb63bf4533b7, verl/workers/actor/dp_actor.py:329-368): compute_kl(log_probs,
    aug_log_probs, "low_var_kl"), token-averaged, subtracted with coefficient gamma. Six tokens, the masked
    log-prob higher by ln 2 on one: k = 2 - ln 2 - 1 = 0.30685 there, 0 elsewhere -> KL_prcp = 0.30685 / 6 =
    0.051142 and the loss term -0.02 * 0.051142 = -0.0010228."""
    mask = torch.ones(2, 3)
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    masked = torch.full((2, 3), -1.0)
    masked[1, 2] += math.log(2)
    batch = FakeBatch(seqs=[None, None], loss_mask=mask, old_logp=torch.full((2, 3), -1.0),
                      advantages=torch.zeros(2, 3), masked_logp=masked)
    a = AlgoConfig(name="grpo")
    a.papo.enabled, a.papo.gamma = True, 0.02
    _, out = micro_batch_loss(FakePolicy(logp, torch.zeros(2, 3)), a, "token", batch, [0, 1],
                              algos.loss_weights(mask), 6, 1.0, False)
    k = 2 - math.log(2) - 1
    assert out["perception_kl"] == pytest.approx(k / 6) and out["loss/perception"] == pytest.approx(-0.02 * k / 6)
