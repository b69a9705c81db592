"""Fidelity to the official code (issue 22): each expected number comes from the official rule, worked by hand.

Official snapshots read: volcengine/verl @ b178a3cd56f5, hiyouga/EasyR1 @ b44b311b669b, MikeWangWZHL/PAPO (the PAPO
release, an EasyR1 fork) @ fb63bf4533b7, AdaptVision/AdaptVision @ 9b7d57c0df97.
"""

import math

import pytest
import torch

from vlmrl.algos import policy_loss

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


# ---------------------------------------------------------------- PPO ratio: log-ratio clamp, dual clip


def test_token_log_ratio_is_clamped_at_20_before_exp():
    """EasyR1 verl/trainer/core_algos.py:476-478 (ratio = exp(clamp(log_ratio, -20, 20))) and verl
    verl/trainer/ppo/core_algos.py:1210-1213 (negative_approx_kl clamped to [-20, 20] before exp).
    log-ratio 25 with A = -1: l = max(-A*e^20, -A*1.2) = e^20 = 485165195.41 (unclamped e^25 = 7.2e10);
    log-ratio 100 in float32 would be inf; clamped it is e^20 too. A clamped token passes no gradient."""
    logp = t([[25.0, 0.1]], torch.float32).requires_grad_()
    old = torch.zeros(1, 2)
    loss, _ = policy_loss(logp, old, t([[-1.0, -1.0]], torch.float32), torch.ones(1, 2))
    # token 2: ratio e^0.1 = 1.10517 inside [0.8, 1.2] -> l = 1.10517
    assert loss.item() == pytest.approx((math.exp(20) + math.exp(0.1)) / 2, rel=1e-6)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 1].item() == pytest.approx(math.exp(0.1) / 2, rel=1e-6)
    big, _ = policy_loss(t([[100.0]], torch.float32), torch.zeros(1, 1), t([[-1.0]], torch.float32), torch.ones(1, 1))
    assert math.isfinite(big.item()) and big.item() == pytest.approx(math.exp(20), rel=1e-6)


def test_dual_clip_matches_easyr1_rule():
    """EasyR1 verl/trainer/core_algos.py:497-504: pg3 = -A * clip_ratio_dual; where A < 0 the loss is
    min(max(pg1, pg2), pg3), else max(pg1, pg2); clip_ratio_dual defaults to 3.0 (verl/workers/actor/config.py:111).
    ratios e^2 = 7.389, e^0.5 = 1.6487, e^-1 = 0.3679 with A = -2, -2, +1 and clip 0.2/0.28:
    l = min(2*7.389, 2*3) = 6; min(2*1.6487, 6) = 3.2974; max(-0.3679, -0.8) = -0.3679."""
    logp = t([[2.0, 0.5, -1.0]])
    loss, m = policy_loss(logp, torch.zeros(1, 3), t([[-2.0, -2.0, 1.0]]), torch.ones(1, 3), 0.2, 0.28, dual_clip=3.0)
    assert loss.item() == pytest.approx((6.0 + 2 * math.exp(0.5) + -math.exp(-1.0)) / 3)
    assert float(m["dual_clip_frac"]) == pytest.approx(1 / 3)


# ---------------------------------------------------------------- GSPO


def test_gspo_sequence_log_ratio_clamped_at_10():
    """verl compute_policy_loss_gspo, verl/trainer/ppo/core_algos.py:1297-1301: log s_i,t = logp - sg[logp] +
    sg[mean_t(logp - old)], clamped to max 10, then exp. Mean log-ratio 12 -> s = e^10 = 22026.47; with A = -1 and
    GSPO's clip 3e-4/4e-4: l = max(e^10, 1.0004) = e^10 on both tokens (seq-mean-token-mean: e^10), no gradient.
    Mean log-ratio 0.5 (s = 1.6487) with A = +1 is clipped: l = -(1 + 4e-4) = -1.0004."""
    logp = t([[11.0, 13.0]]).requires_grad_()
    loss, _ = policy_loss(logp, torch.zeros(1, 2, dtype=D), t([-1.0]), torch.ones(1, 2), 3e-4, 4e-4, level="sequence")
    assert loss.item() == pytest.approx(math.exp(10))
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    inside, _ = policy_loss(t([[0.4, 0.6]]), torch.zeros(1, 2, dtype=D), t([1.0]), torch.ones(1, 2), 3e-4, 4e-4,
                            level="sequence")
    assert inside.item() == pytest.approx(-1.0004)
