"""Our calls into transformers use the names the installed release wants: 5.24 renamed `past_key_values` to `cache`
and `gradient_checkpointing_enable` to `activation_checkpointing_enable`, and the old names warn on every call (37
FutureWarnings in one quickstart log). Sampling (with the KV cache, the fused and the HF decoding step), the
shared-prompt log-prob pass and a gradient-checkpointed load must raise no deprecation warning; older releases keep
the old names (vlmrl.models.kvcache.cache_arg)."""

import warnings

import pytest
import torch
from PIL import Image

from vlmrl.models.kvcache import cache_arg
from vlmrl.models.last_mlp import checkpointing
from vlmrl.models.sampler import Prompt, SamplingParams


def _deprecations(caught):
    return [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))
            and ("past_key_values" in str(w.message) or "checkpointing" in str(w.message))]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_sampling_and_scoring_raise_no_deprecation_warning(family, tiny_policies, monkeypatch):
    import functools

    from vlmrl.models import hf_sampler
    from vlmrl.models.codec import Seq
    from vlmrl.models.decoding import DecodeStep

    pol = tiny_policies[family]
    tok = pol.tokenizer
    image = Image.new("RGB", (2 * pol.factor, 2 * pol.factor), (200, 30, 90))
    ids = (tok.encode("<|im_start|>user\n", add_special_tokens=False) + pol.codec.image_placeholder(pol.codec.vision(image))
           + tok.encode("colour?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fused in (None, False):  # the fused decoding step where it applies, then transformers' text model
            monkeypatch.setattr(hf_sampler, "DecodeStep", functools.partial(DecodeStep, fused=fused))
            out = hf_sampler.HFSampler(pol).generate([Prompt(ids, [image])], SamplingParams(max_new_tokens=3, n=2,
                                                                           generator=torch.Generator().manual_seed(0)))
        seqs = [Seq(ids + g.ids, [pol.codec.vision(image)]) for g in out]
        mask = torch.tensor([[0] * len(ids) + [1] * len(g.ids) for g in out])
        pol.logprobs(seqs, mask, share_prefix=True)  # the prompt once, its cache handed to the rows
    assert _deprecations(caught) == []


def test_gradient_checkpointing_load_raises_no_deprecation_warning(tiny_dirs):
    from vlmrl.models.policy import Policy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pol = Policy.load(tiny_dirs["qwen2_5_vl"], dtype="float32", device="cpu", gradient_checkpointing=True)
    assert _deprecations(caught) == []
    assert checkpointing(pol.core)  # what the shared-prompt pass reads (vlmrl.models.last_mlp)


def test_cache_arg_follows_the_forward_signature():
    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, **kwargs):
            return cache

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, **kwargs):
            return past_key_values

    c = object()
    assert cache_arg(New(), c) == {"cache": c} and New()(**cache_arg(New(), c)) is c
    assert cache_arg(Old(), c) == {"past_key_values": c} and Old()(**cache_arg(Old(), c)) is c
