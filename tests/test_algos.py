"""GRPO-family algorithms: advantages, PPO-clip/GSPO losses and their aggregations, KL, entropy, filters."""

import math

import pytest
import torch

from vlmrl.algos import (
    accuracy_window_keep,
    dynamic_sampling_keep,
    entropy_from_logits,
    expand_group_keep,
    group_std,
    grpo_advantages,
    kl_estimate,
    masked_mean,
    policy_loss,
    ppo_clip_loss,
    sampled_entropy,
    zero_std_fraction,
)

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


# ---------------------------------------------------------------- advantages


def test_grpo_vs_dr_grpo_on_a_concrete_group():
    r = t([1.0, 0.0, 0.0, 0.0])
    # mean 0.25; unbiased var = (0.75^2 + 3 * 0.25^2) / 3 = 0.25 -> std 0.5
    assert torch.allclose(grpo_advantages(r, 4), t([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6))
    assert torch.allclose(grpo_advantages(r, 4, scale="none"), t([0.75, -0.25, -0.25, -0.25]))


def test_grpo_groups_are_consecutive_blocks():
    r = t([1.0, 0.0, 3.0, 5.0])
    adv = grpo_advantages(r, 2, eps=0.0)
    std = math.sqrt(0.5)  # unbiased std of a pair differing by 1
    # pair (3, 5): mean 4, unbiased std sqrt(2) -> (-1/sqrt 2, 1/sqrt 2)
    assert torch.allclose(adv[2:], t([-1 / math.sqrt(2), 1 / math.sqrt(2)]))
    assert torch.allclose(adv[:2], t([0.5 / std, -0.5 / std]))


@pytest.mark.parametrize("value", [0.1, 0.7, 1.0, 0.0, -3.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_rewards_give_zero_advantage_no_nan(value, dtype):
    r = torch.full((6,), value, dtype=dtype)
    for scale in ("group", "none"):
        adv = grpo_advantages(r, 3, scale=scale)
        assert not torch.isnan(adv).any()
        assert torch.equal(adv, torch.zeros_like(adv))


def test_grpo_group_size_one_and_bad_shapes():
    assert torch.equal(grpo_advantages(t([1.0, 2.0, 3.0]), 1), torch.zeros(3, dtype=D))
    with pytest.raises(ValueError):
        grpo_advantages(t([1.0, 2.0, 3.0, 4.0, 5.0]), 2)
    with pytest.raises(ValueError):
        grpo_advantages(t([1.0, 2.0]), 2, scale="bogus")
    assert grpo_advantages(torch.tensor([1, 0]), 2).dtype == torch.float32  # int rewards are accepted


# rows 0..5 in three interleaved groups of unequal size: id 4 = rows 0, 2, 5; id 1 = rows 1, 4; id 9 = row 3
IDS = torch.tensor([4, 1, 4, 9, 1, 4])
R = t([1.0, 0.0, 3.0, 5.0, 1.0, 2.0])


def test_grpo_by_group_id_with_groups_of_three_two_and_one():
    # id 4: (1, 3, 2), mean 2, unbiased std 1; id 1: (0, 1), mean 0.5, std sqrt(0.5); id 9: one row -> 0
    s2 = math.sqrt(0.5)
    assert torch.allclose(grpo_advantages(R, IDS, eps=0.0), t([-1.0, -0.5 / s2, 1.0, 0.0, 0.5 / s2, 0.0]))
    assert torch.allclose(grpo_advantages(R, IDS, scale="none"), t([-1.0, -0.5, 1.0, 0.0, 0.5, 0.0]))
    assert torch.equal(grpo_advantages(R, [4, 1, 4, 9, 1, 4]), grpo_advantages(R, IDS))  # a list of ids works too
    # consecutive equal blocks given as ids give bit-identical results to the group size
    assert torch.equal(grpo_advantages(R, torch.tensor([0, 0, 1, 1, 2, 2])), grpo_advantages(R, 2))
    with pytest.raises(ValueError, match="one id per row"):
        grpo_advantages(R, IDS[:5])
    with pytest.raises(ValueError, match="integer"):
        grpo_advantages(R, IDS.float())


# ---------------------------------------------------------------- aggregation


def _unit_ratio_case():
    """ratio 1 everywhere, so the per-token loss is -A; row 0 has 2 tokens, row 1 has 1."""
    logp = t([[-1.0, -2.0, -3.0], [-0.5, -0.7, -0.9]]).requires_grad_()
    old = logp.detach().clone()
    mask = t([[1, 1, 0], [1, 0, 0]])
    adv = t([1.0, -4.0])  # per-token losses: row 0: -1, -1; row 1: +4
    return logp, old, adv, mask


def test_token_mean():
    logp, old, adv, mask = _unit_ratio_case()
    loss, m = policy_loss(logp, old, adv, mask, agg="token-mean")
    assert loss.item() == pytest.approx((-1 - 1 + 4) / 3)
    loss.backward()
    # d/dlogp of -A*exp(logp-old) at ratio 1 = -A, divided by the 3 tokens
    assert torch.allclose(logp.grad, t([[-1 / 3, -1 / 3, 0], [4 / 3, 0, 0]]))
    assert float(m["ratio_mean"]) == pytest.approx(1.0)
    assert float(m["approx_kl"]) == pytest.approx(0.0)


def test_seq_mean_token_mean():
    logp, old, adv, mask = _unit_ratio_case()
    loss, _ = policy_loss(logp, old, adv, mask, agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(((-1 - 1) / 2 + 4 / 1) / 2)
    loss.backward()
    assert torch.allclose(logp.grad, t([[-1 / 4, -1 / 4, 0], [4 / 2, 0, 0]]))


def test_seq_mean_token_sum_norm_dr_grpo():
    logp, old, adv, mask = _unit_ratio_case()
    loss, _ = policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm")
    assert loss.item() == pytest.approx((-1 - 1 + 4) / (2 * 3))  # B=2, norm_len defaults to T=3
    loss8, _ = policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm", norm_len=8)
    assert loss8.item() == pytest.approx(2 / (2 * 8))
    loss.backward()
    assert torch.allclose(logp.grad, t([[-1 / 6, -1 / 6, 0], [4 / 6, 0, 0]]))


def test_token_level_advantages_and_masked_garbage():
    logp, old, _, mask = _unit_ratio_case()
    adv = t([[1.0, 3.0, 99.0], [-2.0, 99.0, 99.0]])
    logp2 = logp.detach().clone()
    logp2[0, 2] = float("-inf")  # padding garbage under mask 0 must not leak
    old2 = logp2.clone()
    loss, _ = policy_loss(logp2, old2, adv, mask)
    assert loss.item() == pytest.approx((-1 - 3 + 2) / 3)
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, agg="mean")


def test_empty_mask_gives_zero_not_nan():
    logp = torch.zeros(2, 3, dtype=D)
    mask = torch.zeros(2, 3, dtype=D)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        loss, m = policy_loss(logp, logp, t([1.0, 1.0]), mask, agg=agg)
        assert loss.item() == 0.0 and not math.isnan(float(m["clip_frac_low"]))
    assert masked_mean(t([1.0, 2.0]), t([0.0, 0.0])).item() == 0.0


# ---------------------------------------------------------------- clipping at the boundaries


def _ratios(values):
    return torch.log(t(values)).requires_grad_(), torch.zeros(len(values), dtype=D)


def test_clip_higher_boundaries():
    eps = 1e-3
    # A > 0: upper bound 1 + 0.28 (clip-higher); below the lower bound nothing is clipped for A > 0
    # A < 0: lower bound 1 - 0.2; above the upper bound nothing is clipped for A < 0
    r = [1.28 - eps, 1.28 + eps, 0.8 - eps, 0.8 + eps, 0.8 - eps, 1.28 + eps]
    a = t([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    logp, old = _ratios(r)
    per_tok, regions = ppo_clip_loss(torch.exp(logp - old), a, 0.2, 0.28)
    expected = t([-(1.28 - eps), -1.28, -(0.8 - eps), 0.8 + eps, 0.8, 1.28 + eps])
    assert torch.allclose(per_tok, expected)
    per_tok.sum().backward()
    # gradient of -A*r w.r.t. logp is -A*r where unclipped, 0 where clipped
    assert torch.allclose(logp.grad, t([-(1.28 - eps), 0.0, -(0.8 - eps), 0.8 + eps, 0.0, 1.28 + eps]))
    assert regions["clip_high"].tolist() == [False, True, False, False, False, False]
    assert regions["clip_low"].tolist() == [False, False, False, False, True, False]


def test_clip_metrics_fractions():
    r = [1.3, 1.1, 0.7, 0.9]
    logp, old = _ratios(r)
    a = t([1.0, 1.0, -1.0, -1.0])
    _, m = policy_loss(logp.view(1, 4), old.view(1, 4), a.view(1, 4), torch.ones(1, 4), clip_low=0.2, clip_high=0.28)
    assert float(m["clip_frac_high"]) == pytest.approx(1 / 4)
    assert float(m["clip_frac_low"]) == pytest.approx(1 / 4)
    assert float(m["dual_clip_frac"]) == 0.0
    assert float(m["ratio_mean"]) == pytest.approx(sum(r) / 4)
    assert float(m["approx_kl"]) == pytest.approx(-sum(math.log(x) for x in r) / 4)


def test_dual_clip_boundaries():
    eps = 1e-3
    r = [3 - eps, 3 + eps, 10.0, 10.0]
    a = t([-1.0, -1.0, -2.0, 1.0])
    logp, old = _ratios(r)
    per_tok, regions = ppo_clip_loss(torch.exp(logp - old), a, 0.2, 0.2, dual_clip=3.0)
    # A<0: l = min(max(-A r, -A clip r), 3|A|); A>0 unaffected by the dual clip
    assert torch.allclose(per_tok, t([3 - eps, 3.0, 6.0, -1.2]))
    per_tok.sum().backward()
    assert torch.allclose(logp.grad, t([3 - eps, 0.0, 0.0, 0.0]))
    assert regions["dual_clip"].tolist() == [False, True, True, False]
    with pytest.raises(ValueError):
        ppo_clip_loss(torch.ones(1), torch.ones(1), 0.2, 0.2, dual_clip=1.0)


# ---------------------------------------------------------------- GSPO


def test_gspo_sequence_ratio_hand_case():
    old = torch.zeros(2, 3, dtype=D)
    logp = t([[0.05, 0.15, 7.0], [-0.1, 5.0, 5.0]]).requires_grad_()  # masked entries are garbage
    mask = t([[1, 1, 0], [1, 0, 0]])
    adv = t([1.0, -1.0])
    s0, s1 = math.exp(0.1), math.exp(-0.1)  # exp(mean log-ratio) per sequence, both inside 1 +- 0.2
    loss, m = policy_loss(logp, old, adv, mask, level="sequence")  # default agg: seq-mean-token-mean
    assert loss.item() == pytest.approx((-s0 + s1) / 2)
    assert float(m["ratio_mean"]) == pytest.approx((2 * s0 + s1) / 3)
    loss.backward()
    # GSPO gradient: -A * s_i / |y_i| per token, averaged over the 2 sequences
    assert torch.allclose(logp.grad, t([[-s0 / 4, -s0 / 4, 0.0], [s1 / 2, 0.0, 0.0]]))


def test_gspo_clips_the_whole_sequence():
    old = torch.zeros(1, 2, dtype=D)
    logp = t([[0.1, 0.5]]).requires_grad_()  # token ratios 1.105 (inside) and 1.65; s = exp(0.3) = 1.35
    loss, m = policy_loss(logp, old, t([1.0]), torch.ones(1, 2), level="sequence")
    assert loss.item() == pytest.approx(-1.2)
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert float(m["clip_frac_high"]) == 1.0
    token_loss, _ = policy_loss(logp.detach(), old, t([1.0]), torch.ones(1, 2))
    assert token_loss.item() == pytest.approx(-(math.exp(0.1) + 1.2) / 2)  # token level clips one token only


# ---------------------------------------------------------------- KL and entropy


def test_kl_estimators_values():
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])
    d = math.log(2.0)
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(d)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * d * d)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 + d - 1.0)  # exp(-d) - (-d) - 1
    assert kl_estimate(ref, logp, "k3").item() == pytest.approx(2.0 - d - 1.0)
    assert kl_estimate(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_k3_clamps_the_log_ratio_and_the_estimate():
    """verl low_var_kl (verl/trainer/ppo/core_algos.py:1890-1896 @ b178a3cd56f5) and EasyR1 compute_kl
    (verl/trainer/core_algos.py:590-594 @ b44b311b669b): x = clamp(ref - logp, -20, 20), k3 = clamp(e^x - x - 1,
    -10, 10). Hand values: x = -20 -> e^-20 + 19 -> 10; x = 20 -> e^20 - 21 -> 10; x = 2 -> e^2 - 3 = 4.389."""
    logp = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    ref = torch.tensor([-100.0, 100.0, 2.0])
    k = kl_estimate(logp, ref, "k3")
    assert k.tolist() == pytest.approx([10.0, 10.0, math.exp(2) - 3])
    k.sum().backward()
    assert torch.isfinite(logp.grad).all()
    assert logp.grad.tolist() == pytest.approx([0.0, 0.0, 1 - math.exp(2)])  # capped tokens pass no gradient


def test_entropy_from_logits_exact_and_stable():
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(t([0.0, float("-inf"), 0.0])).item() == pytest.approx(math.log(2))
    assert entropy_from_logits(t([1000.0, 0.0])).item() == pytest.approx(0.0, abs=1e-12)
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0))
    ref = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(entropy_from_logits(logits), ref, atol=1e-6)
    x = t([[0.0, float("-inf"), 1.0]]).requires_grad_()
    entropy_from_logits(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_sampled_entropy():
    logp = t([[-1.0, -2.0, -9.0]])
    assert sampled_entropy(logp, t([[1, 1, 0]])).item() == pytest.approx(1.5)


# ---------------------------------------------------------------- group filters


def test_dynamic_sampling_keep_and_zero_std_fraction():
    r = t([1, 1, 1, 1, 1, 0, 1, 1, 0.5, 0.5 + 1e-5, 0.5, 0.5])
    assert dynamic_sampling_keep(r, 4).tolist() == [False, True, False]
    assert zero_std_fraction(r, 4) == pytest.approx(2 / 3)
    assert dynamic_sampling_keep(r, 4, min_std=1e-6).tolist() == [False, True, True]
    assert dynamic_sampling_keep(t([1.0, 2.0]), 1).tolist() == [False, False]
    assert expand_group_keep(torch.tensor([True, False]), 2).tolist() == [True, True, False, False]


def test_accuracy_window_is_exclusive():
    acc = t([0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0])
    assert accuracy_window_keep(acc, 4).tolist() == [False, False, True, True]
    assert accuracy_window_keep(acc, 4, low=0.25, high=0.75).tolist() == [False, False, False, False]
    assert accuracy_window_keep(acc, 4, low=0.2, high=0.8).tolist() == [False, False, True, True]


def test_filters_by_group_id_with_unequal_groups():
    # group order is by id: 1 (rows 1, 4), 4 (rows 0, 2, 5), 9 (row 3)
    assert torch.allclose(group_std(R, IDS), t([math.sqrt(0.5), 1.0, 0.0]))
    assert dynamic_sampling_keep(R, IDS).tolist() == [True, True, False]
    assert zero_std_fraction(R, IDS) == pytest.approx(1 / 3)
    acc = t([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # means: id 1 -> 0, id 4 -> 2/3, id 9 -> 1
    assert accuracy_window_keep(acc, IDS).tolist() == [False, True, False]
    rows = expand_group_keep(torch.tensor([False, True, False]), IDS)
    assert rows.tolist() == [True, False, True, False, False, True]
    with pytest.raises(ValueError, match="3 flags for 2 groups"):
        expand_group_keep(torch.tensor([True, True, True]), torch.tensor([0, 0, 1]))


def test_loss_weights_reproduce_every_aggregation_and_split_exactly():
    from vlmrl.algos import dtpo_loss, loss_weights, policy_loss, token_policy_loss

    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 6, generator=g)
    old = logp + 0.3 * torch.randn(4, 6, generator=g)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    for agg, level in [("token-mean", "token"), ("seq-mean-token-mean", "token"),
                       ("seq-mean-token-sum-norm", "token"), ("seq-mean-token-mean", "sequence")]:
        ref, _ = policy_loss(logp, old, adv, mask, 0.2, 0.28, agg=agg, level=level)
        per_tok, _ = token_policy_loss(logp, old, adv, mask, 0.2, 0.28, level=level)
        w = loss_weights(mask, agg)
        # summed over two micro-batches with weights computed on the whole batch
        split = (per_tok[:2] * w[:2]).sum() + (per_tok[2:] * w[2:]).sum()
        assert torch.allclose(split, ref, atol=1e-6), agg
    final = torch.zeros_like(mask)
    final[:, 4:] = 1
    ref, _ = dtpo_loss(logp, old, adv, mask, final_turn_mask=final, alpha=0.5, clip_low=0.2, clip_high=0.24)
    per_tok, _ = token_policy_loss(logp, old, adv, mask, 0.2, 0.24)
    w = loss_weights(mask, "dtpo", final_mask=final, alpha=0.5)
    assert torch.allclose((per_tok * w).sum(), ref, atol=1e-6)
    # a hand case: token-mean over 3 tokens
    m = torch.tensor([[0, 1, 1], [0, 0, 1]])
    assert torch.allclose(loss_weights(m, "token-mean"), m / 3.0)
    assert torch.allclose(loss_weights(m, "seq-mean-token-mean"), torch.tensor([[0, 0.25, 0.25], [0, 0, 0.5]]))
