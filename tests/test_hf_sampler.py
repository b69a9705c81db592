"""The HF sampler through the Sampler interface: sampling rules, parameters, seeding, weight syncs.
(Its speed paths, KV reuse across turns included, are in tests/test_hf_sampler_kv.py.)"""

import pytest
import torch
from PIL import Image

from vlmrl.models.hf_sampler import HFSampler, HFSamplerConfig, sample_tokens
from vlmrl.models.sampler import Prompt, SamplingParams


def _prompt(pol, image, text):
    tok = pol.tokenizer
    ids = (tok.encode("<|im_start|>user\n", add_special_tokens=False)
           + pol.codec.image_placeholder(pol.codec.vision(image))
           + tok.encode(text + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False))
    return Prompt(ids, [image])


def test_generate_never_samples_vision_tokens_and_records_logprobs(tiny_policies):
    pol = tiny_policies["qwen2_5_vl"]
    # make the vision tokens overwhelmingly likely: they still must never be sampled
    bias = torch.zeros(pol.model.lm_head.weight.shape[0])
    bias[pol.banned_token_ids] = 100.0
    handle = pol.model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        s = _prompt(pol, Image.new("RGB", (56, 56), "red"), "Q")
        gens = HFSampler(pol).generate([s], SamplingParams(max_new_tokens=12, n=4, seed=0))
    finally:
        handle.remove()
    assert len(gens) == 4
    for g in gens:
        assert not set(g.ids) & set(pol.banned_token_ids)
        assert len(g.ids) == len(g.logprobs) and all(lp <= 0 for lp in g.logprobs)


def test_generate_is_seeded_and_greedy_is_deterministic(tiny_policies):
    pol = tiny_policies["qwen2_vl"]
    sampler = HFSampler(pol)
    s = _prompt(pol, Image.new("RGB", (56, 56), "red"), "Q")
    a = sampler.generate([s], SamplingParams(max_new_tokens=8, n=2, generator=torch.Generator().manual_seed(3)))
    b = sampler.generate([s], SamplingParams(max_new_tokens=8, n=2, generator=torch.Generator().manual_seed(3)))
    c = sampler.generate([s], SamplingParams(max_new_tokens=8, n=2, seed=3))  # a seed: the same generator
    assert [g.ids for g in a] == [g.ids for g in b] == [g.ids for g in c]
    g1 = sampler.generate([s], SamplingParams(max_new_tokens=8, temperature=0))
    g2 = sampler.generate([s], SamplingParams(max_new_tokens=8, temperature=0))
    assert g1[0].ids == g2[0].ids


def test_generate_stops_on_stop_string(tiny_policies):
    pol = tiny_policies["qwen2_vl"]
    stop = pol.tokenizer.convert_tokens_to_ids("</tool_call>")
    bias = torch.zeros(pol.model.lm_head.weight.shape[0])
    bias[stop] = 50.0
    handle = pol.model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        s = _prompt(pol, Image.new("RGB", (56, 56), "red"), "Q")
        g = HFSampler(pol).generate([s], SamplingParams(max_new_tokens=8, stop_strings=("</tool_call>",)))[0]
    finally:
        handle.remove()
    assert g.finish == "stop" and g.ids == [stop]


def test_samples_per_prompt_may_differ(tiny_policies):
    """n=[1, 3]: prompt-major, 1 + 3 generations; greedy, each equals that prompt sampled on its own."""
    pol = tiny_policies["qwen2_5_vl"]
    sampler = HFSampler(pol)
    p = [_prompt(pol, Image.new("RGB", (56, 56), "red"), "Q"),
         _prompt(pol, Image.new("RGB", (112, 56), "blue"), "A longer question")]
    both = sampler.generate(p, SamplingParams(max_new_tokens=[4, 6], temperature=0, n=[1, 3]))
    alone = (sampler.generate(p[:1], SamplingParams(max_new_tokens=4, temperature=0))
             + sampler.generate(p[1:], SamplingParams(max_new_tokens=6, temperature=0, n=3)))
    assert len(both) == 4 and [g.ids for g in both] == [g.ids for g in alone]
    assert len(both[0].ids) <= 4 and all(len(g.ids) <= 6 for g in both[1:])
    for g, h in zip(both, alone):
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(h.logprobs), atol=1e-5)


def test_bad_prompts_and_params_get_clear_errors(tiny_policies):
    pol = tiny_policies["qwen2_5_vl"]
    sampler = HFSampler(pol)
    s = _prompt(pol, Image.new("RGB", (56, 56), "red"), "Q")
    k = s.ids.index(pol.image_token_id)
    bad = Prompt(s.ids[:k] + s.ids[k + 1:], s.images)  # one image token fewer than the image needs
    with pytest.raises(ValueError, match="prompt 1: 3 image tokens in the text but the 1 image"):
        sampler.generate([s, bad], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="max_new_tokens: 1 values for 2 prompts"):
        sampler.generate([s, s], SamplingParams(max_new_tokens=[2]))
    with pytest.raises(ValueError, match="n must be >= 1"):
        sampler.generate([s], SamplingParams(n=0))
    with pytest.raises(ValueError, match="top_p"):
        sampler.generate([s], SamplingParams(top_p=0.0))
    with pytest.raises(TypeError, match="prompt 0: expected a vlmrl.models.sampler.Prompt"):
        sampler.generate([s.ids], SamplingParams())


def test_sync_weights_forgets_the_cached_rows(tiny_policies, tiny_dirs):
    """After a weight sync a prompt that extends a row of the call before is prefilled in full (its cache holds
    the old weights' keys); without one it continues the row. Another model is refused."""
    from vlmrl.models.policy import Policy

    pol = tiny_policies["qwen2_5_vl"]
    sampler = HFSampler(pol)
    s = _prompt(pol, Image.new("RGB", (56, 56), "red"), "Q")
    more = pol.tokenizer.encode("<|im_end|>\n<|im_start|>user\nok<|im_end|>\n<|im_start|>assistant\n",
                                add_special_tokens=False)
    params = SamplingParams(max_new_tokens=4, seed=0)
    for sync in (False, True):
        g = sampler.generate([s], params)[0]
        if sync:
            sampler.sync_weights(pol.model)
        sampler.generate([Prompt(s.ids + g.ids + more, s.images)], params)
        assert sampler.continued is not sync
    other = Policy.load(tiny_dirs["qwen2_5_vl"], dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="its policy's own model"):
        sampler.sync_weights(other.model)


def test_reuse_kv_off_always_prefills_in_full(tiny_policies):
    pol = tiny_policies["qwen2_5_vl"]
    sampler = HFSampler(pol, HFSamplerConfig(reuse_kv=False))
    s = _prompt(pol, Image.new("RGB", (56, 56), "red"), "Q")
    g = sampler.generate([s], SamplingParams(max_new_tokens=4, seed=0))[0]
    sampler.generate([Prompt(s.ids + g.ids + [pol.tokenizer.convert_tokens_to_ids("<|im_end|>")], s.images)],
                     SamplingParams(max_new_tokens=2))
    assert not sampler.continued


def test_sample_tokens_top_p_keeps_nucleus():
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 2000))
    tok = sample_tokens(logp, top_p=0.7, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(tok, minlength=4).float() / 2000
    assert counts[2] == 0 and counts[3] == 0
    assert abs(counts[0] - 0.625) < 0.05
    full = sample_tokens(logp, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(full, minlength=4).float() / 2000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04)


def test_several_samples_of_a_continuing_prompt_prefill_in_full(tiny_policies):
    """A cache kept once per prompt cannot be repeated per sample again: a call asking n > 1 samples of prompts that
    extend remembered rows prefills in full, and gives what a sampler with no remembered rows gives."""
    pol = tiny_policies["qwen2_5_vl"]
    sampler, fresh = HFSampler(pol, HFSamplerConfig(share_prompt_min=0)), HFSampler(pol)
    s = _prompt(pol, Image.new("RGB", (56, 56), "red"), "Q")
    gens = sampler.generate([s], SamplingParams(max_new_tokens=3, n=2, seed=0))
    later = [Prompt(s.ids + g.ids + [pol.tokenizer.convert_tokens_to_ids("<|im_end|>")], s.images) for g in gens]
    params = SamplingParams(max_new_tokens=4, n=2, seed=1)
    a = sampler.generate(later, params)
    assert not sampler.continued and len(a) == 4
    assert [g.ids for g in a] == [g.ids for g in fresh.generate(later, params)]
