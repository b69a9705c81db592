"""Sampler/trainer mismatch metrics and truncated importance sampling (vlmrl/algos/mismatch.py), by hand."""

import math

import pytest
import torch

from vlmrl.algos import logp_mismatch, tis_weights
from vlmrl.config import ConfigError, VLLMConfig, load_config


def test_logp_mismatch_by_hand():
    s = torch.tensor([[0.0, -1.0, -2.0], [-0.5, -0.5, 0.0]])
    t = torch.tensor([[9.0, -1.5, -1.0], [-0.25, -3.0, 0.0]])
    m = torch.tensor([[0, 1, 1], [1, 1, 0]])
    # |d| on the masked tokens: 0.5, 1.0, 0.25, 2.5
    assert logp_mismatch(s, t, m) == {"mean": pytest.approx(4.25 / 4), "max": pytest.approx(2.5)}
    assert logp_mismatch(s, t, torch.zeros_like(m)) == {"mean": 0.0, "max": 0.0}


def test_tis_weights_by_hand():
    """TRL GRPOTrainer (trl/trainer/grpo_trainer.py, _generate_and_score_completions): importance_sampling_ratio =
    exp(old_per_token_logps - sampling_per_token_logps), clamped at max=vllm_importance_sampling_cap, and
    per_token_loss * importance_sampling_ratio in _compute_loss; verl's tis_imp_ratio_cap (PR #2953) likewise."""
    trainer = torch.tensor([[-1.0, -2.0, -0.1, 0.0]])
    sampler = torch.tensor([[-1.0, -1.0, -3.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    w = tis_weights(trainer, sampler, mask, cap=2.0)
    # exp(0) = 1; exp(-1) = 0.3679; exp(2.9) = 18.17 -> capped at 2; unmasked -> 1
    assert w.tolist()[0] == pytest.approx([1.0, math.exp(-1.0), 2.0, 1.0])
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap must be > 0"):
        tis_weights(trainer, sampler, mask, cap=0.0)


def test_tis_weight_scales_the_policy_loss():
    """The trainer multiplies each token's PPO loss by its weight (vlmrl/train/loss.py): a weight-2 token counts
    twice, as a repeated token would."""
    from vlmrl.algos import token_policy_loss, weighted_sum

    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0]])
    adv = torch.tensor([[1.0, 1.0]])
    mask = torch.ones(1, 2)
    per_tok, _ = token_policy_loss(logp, old, adv, mask, 0.2, 0.2, None, "token")
    w = torch.tensor([[0.5, 0.5]])
    tis = torch.tensor([[2.0, 1.0]])
    assert float(weighted_sum(per_tok * tis, w).detach()) == pytest.approx(-(2.0 * 0.5 + 1.0 * 0.5))


def test_vllm_config_is_checked_when_the_recipe_loads():
    assert load_config(None, ["rollout.backend=vllm"]).vllm.old_logp == "trainer"
    for bad, msg in ((["rollout.backend=sglang"], "rollout.backend must be 'hf' or 'vllm'"),
                     (["vllm.mode=remote"], "vllm.mode must be 'colocated' or 'server'"),
                     (["vllm.old_logp=engine"], "vllm.old_logp must be"),
                     (["vllm.tis_cap=2", "vllm.old_logp=sampler"], "tis_cap needs vllm.old_logp: trainer"),
                     (["vllm.timeout=0"], "timeout > 0")):
        with pytest.raises(ConfigError, match=msg):
            load_config(None, bad)
    assert VLLMConfig(mode="server", server_urls=["http://h:1"]).server_urls == ["http://h:1"]


def test_server_sampler_without_urls_is_a_clear_error():
    from vlmrl.models.vllm_sampler import VLLMServerSampler

    with pytest.raises(ValueError, match="needs vllm.server_urls"):
        VLLMServerSampler(VLLMConfig(mode="server"))


def test_lora_weights_for_vllm_are_the_merged_model(tiny_dirs):
    """A LoRA policy's weights for vLLM (vlmrl/models/vllm_sampler.py:merged_lora_weights): the plain model's names,
    the values of peft's merge_and_unload (W + BA), and the trained model left as it was (adapters unmerged)."""
    import copy

    pytest.importorskip("peft", reason="the lora extra (peft) is not installed")
    from vlmrl.models.policy import Policy
    from vlmrl.models.vllm_sampler import model_weights

    pol = Policy.load(tiny_dirs["qwen2_5_vl"], dtype="float32", device="cpu", lora={"r": 4, "alpha": 8})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    before = {k: v.clone() for k, v in pol.model.state_dict().items()}
    got = dict(model_weights(pol.model))
    merged = copy.deepcopy(pol.model).merge_and_unload().state_dict()
    assert set(got) == set(merged) == set(Policy.load(tiny_dirs["qwen2_5_vl"], dtype="float32",
                                                      device="cpu").core.state_dict())
    assert max((got[k] - merged[k]).abs().max().item() for k in got) < 1e-6
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert (got[q] - before[f"base_model.model.{q.replace('.weight', '.base_layer.weight')}"]).abs().max() > 1e-3
    after = pol.model.state_dict()
    assert max((after[k] - before[k]).abs().max().item() for k in before) < 1e-6
