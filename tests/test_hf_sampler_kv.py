"""The HF sampler's fast paths give the results of the simple ones (no timing here: see tools/bench/rollout.py).

- the in-place KVCache and its row operations equal plain tensor concatenation / indexing, with the prompt kept
  once per group (`share_prefix`) as with it repeated per row;
- attention over a group-shared prompt equals ordinary attention (a hand-computed case) and sdpa;
- decoding through oneDNN-packed weights equals the modules, and follows the weights when they change;
- a later turn that continues the rows of the sampler's previous call (only the new tokens prefilled) equals a
  full re-prefill, for greedy and seeded sampling, in `HFSampler.generate` and in two-turn tool rollouts, for the
  three Qwen-VL families; prompts that extend no remembered row are prefilled in full;
- the decoding loop's greedy tokens equal transformers' own `generate`;
- the vision tower sees each prompt's image once per group, not G times;
- the trainer's length-sorted no-grad pass returns each trajectory's own log-probs.
"""

import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vlmrl.models.codec import Seq
from vlmrl.models.decoding import DecodeStep, PackedLinears, attend_shared_prefix, can_fuse
from vlmrl.models.hf_sampler import HFSampler, HFSamplerConfig
from vlmrl.models.kvcache import BufferLayer, KVCache, compaction_runs
from vlmrl.models.sampler import Prompt, SamplingParams
from vlmrl.rollout.engine import RolloutConfig, RolloutEngine

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
CALL = '<think>zoom</think><tool_call>{"name": "crop", "arguments": {"bbox_2d": [%s]}}</tool_call>'
NO_REUSE = HFSamplerConfig(reuse_kv=False)


def _prompt(pol, size, text):
    tok = pol.tokenizer
    image = Image.new("RGB", size, (200, 30, 90))
    ids = (tok.encode("<|im_start|>user\n", add_special_tokens=False) + pol.codec.image_placeholder(pol.codec.vision(image))
           + tok.encode(text + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False))
    return Prompt(ids, [image])


def _seq(pol, prompt):
    """A prompt as the scorer takes it (its images encoded)."""
    return Seq(list(prompt.ids), [pol.codec.vision(im) for im in prompt.images])


def _observation(pol, crop, text):
    tok = pol.tokenizer
    return (tok.encode("<|im_end|>\n<|im_start|>user\n<tool_response>", add_special_tokens=False)
            + pol.codec.image_placeholder(pol.codec.vision(crop))
            + tok.encode(text + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False))


def _generate(sampler, prompts, max_new_tokens=64, temperature=1.0, n=1, generator=None, stop_strings=()):
    return sampler.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, n=n,
                                                    generator=generator, stop_strings=stop_strings))


def _remembered(sampler):
    """The cache of the rows the sampler remembers from its last call (None when it remembers none)."""
    return sampler._last[0].state.cache if sampler._last else None


@contextmanager
def forced(lm_head, ids):
    """The k-th call of `lm_head` within the block makes token ids[k] certain for every row."""
    pending = iter(ids)

    def hook(module, inputs, output):
        t = next(pending, None)
        return output if t is None else output.index_add(-1, torch.tensor([t]), torch.full_like(output[..., :1], 1e4))

    handle = lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _assert_same(a, b, atol=1e-5):
    assert [g.ids for g in a] == [g.ids for g in b]
    assert [g.finish for g in a] == [g.finish for g in b]
    for x, y in zip(a, b):
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=atol)


# --------------------------------------------------------------------------- the cache itself

def test_buffer_layer_matches_concatenation_and_indexing():
    g = torch.Generator().manual_seed(0)
    k0, v0 = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    layer = BufferLayer(reserve=2)
    layer.update(k0, v0)
    layer.batch_repeat_interleave(3)
    keys, vals = k0.repeat_interleave(3, 0), v0.repeat_interleave(3, 0)
    for _ in range(4):  # past the reserve: the buffers grow
        k1, v1 = torch.randn(6, 3, 1, 4, generator=g), torch.randn(6, 3, 1, 4, generator=g)
        out_k, out_v = layer.update(k1, v1)
        keys, vals = torch.cat([keys, k1], 2), torch.cat([vals, v1], 2)
        assert torch.equal(out_k, keys) and torch.equal(out_v, vals)
    assert layer.get_seq_length() == 9
    layer.batch_select_indices(torch.tensor([4, 1]))
    assert torch.equal(layer.keys, keys[[4, 1]])
    valid = torch.tensor([[0, 1, 1, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    runs, new_valid = compaction_runs(valid, [3, 5])
    assert runs == [[(1, 2), (4, 1)], [(0, 5)]]
    assert new_valid.tolist() == [[False, False, True, True, True], [True] * 5]
    layer.compact([1, 0], runs[::-1], 5, reserve=1)  # kept rows in a new order
    assert torch.equal(layer.keys[1, :, 2:], keys[4][:, [1, 2, 4]]) and torch.equal(layer.values[0], vals[1][:, :5])
    assert (layer.keys[1, :, :2] == 0).all()


def test_shared_prefix_layer_equals_a_repeated_one():
    """A prompt cache kept once for its G rows (decoded tokens in each row's own buffer, growing past the
    reserve) holds, column for column, what the repeated cache holds, and compacts to the same rows."""
    g = torch.Generator().manual_seed(1)
    k0, v0 = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    shared, plain = BufferLayer(reserve=2), BufferLayer(reserve=2)
    for layer in (shared, plain):
        layer.update(k0, v0)
    shared.share_prefix(3)
    plain.batch_repeat_interleave(3)
    assert shared.prefix_len == 4 and shared.keys.shape == (6, 3, 0, 5)
    for step in range(3):
        k1, v1 = torch.randn(6, 3, 1, 5, generator=g), torch.randn(6, 3, 1, 5, generator=g)
        if step < 2:  # the fused decoding step: the rows' own columns
            out_k, _ = shared.append(k1, v1)
            plain.update(k1, v1)
            assert torch.equal(out_k, plain.keys[:, :, 4:])
        else:  # a transformers forward: every column of each row, prompt included
            out_k, out_v = shared.update(k1, v1)
            full_k, full_v = plain.update(k1, v1)
            assert torch.equal(out_k, full_k) and torch.equal(out_v, full_v)
    assert shared.get_seq_length() == plain.get_seq_length() == 7
    assert torch.equal(shared.prefix[0], k0) and torch.equal(shared.prefix[1], v0)
    valid = torch.ones(6, 7, dtype=torch.bool)
    valid[4, [0, 5]] = False  # a padded prompt column and an idle step
    runs, _ = compaction_runs(valid, [5, 6, 7])  # runs that cross the prompt/own-buffer boundary
    for layer in (shared, plain):
        layer.compact([0, 4, 5], runs, 7, reserve=1)
    assert shared.prefix is None and shared.group == 1
    assert torch.equal(shared.keys, plain.keys) and torch.equal(shared.values, plain.values)
    with pytest.raises(ValueError, match="compact them first"):
        layer = BufferLayer()
        layer.update(k0, v0)
        layer.share_prefix(2)
        layer.batch_repeat_interleave(2)


def test_compaction_can_keep_the_prompt_shared():
    """Rows that go on to a later turn, the same number per prompt: compacting only their own columns (the prompt
    stays stored once, reduced to the prompts still used) holds, column for column, what copying each row's
    prompt into its own columns holds."""
    g = torch.Generator().manual_seed(3)
    P, G = 4, 3
    k0, v0 = torch.randn(2, 2, P, 5, generator=g), torch.randn(2, 2, P, 5, generator=g)
    shared, plain = BufferLayer(reserve=3), BufferLayer(reserve=3)
    for layer in (shared, plain):
        layer.update(k0, v0)
    shared.share_prefix(G)
    plain.batch_repeat_interleave(G)
    for _ in range(3):
        k1, v1 = torch.randn(6, 2, 1, 5, generator=g), torch.randn(6, 2, 1, 5, generator=g)
        shared.append(k1, v1)
        plain.update(k1, v1)
    valid = torch.ones(6, P + 3, dtype=torch.bool)
    valid[3:, 0] = False  # prompt 1 is left-padded
    valid[4, P + 1] = False  # a row that sat out a step
    rows, keep = [3, 4], [6, 5]  # two rows of prompt 1 go on, each with all its tokens
    runs, full_valid = compaction_runs(valid[rows], keep)
    plain.compact(rows, runs, max(keep), reserve=1)
    own_runs, own_valid = compaction_runs(valid[rows][:, P:], [3, 2])
    shared.compact(rows, [[(s + P, n) for s, n in r] for r in own_runs], 3, reserve=1, prefixes=[1])
    assert shared.group == 2 and torch.equal(shared.prefix[0], k0[1:]) and torch.equal(shared.prefix[1], v0[1:])
    k2, v2 = torch.randn(2, 2, 1, 5, generator=g), torch.randn(2, 2, 1, 5, generator=g)
    got_k, got_v = shared.update(k2, v2)
    want_k, want_v = plain.update(k2, v2)
    # the same keys wherever a column is valid in both layouts: [prompt | own, right-aligned] vs right-aligned
    mask_shared = torch.cat([valid[rows][:, :P], own_valid, torch.ones(2, 1, dtype=torch.bool)], 1)
    mask_plain = torch.cat([full_valid, torch.ones(2, 1, dtype=torch.bool)], 1)
    for j in range(2):
        assert torch.equal(got_k[j][:, mask_shared[j]], want_k[j][:, mask_plain[j]])
        assert torch.equal(got_v[j][:, mask_shared[j]], want_v[j][:, mask_plain[j]])
    bad = BufferLayer()
    bad.update(k0, v0)
    bad.share_prefix(G)
    with pytest.raises(ValueError, match="same number per kept prompt"):  # 2 rows of prompt 0, 1 of prompt 1
        bad.compact([0, 1, 3], [[], [], []], 0, reserve=1, prefixes=[0, 1])


def test_attention_over_a_shared_prompt_by_hand():
    """One prompt (2 keys), G=2 rows, one kv head, one query head, d=1: softmax over [prompt, own] scores."""
    q = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    pk, pv = torch.tensor([1.0, -1.0]).view(1, 1, 2, 1), torch.tensor([10.0, 20.0]).view(1, 1, 2, 1)
    keys, values = torch.tensor([0.5, 0.0]).view(2, 1, 1, 1), torch.tensor([30.0, 40.0]).view(2, 1, 1, 1)
    zero = torch.zeros(1, 1, 1, 2), torch.zeros(2, 1, 1, 1)
    out = attend_shared_prefix(q, pk, pv, keys, values, *zero, scale=1.0).flatten()
    # row 0: scores [1, -1, 0.5] -> softmax weights on [10, 20, 30]; row 1: scores [2, -2, 0] on [10, 20, 40]
    for row, (scores, vals) in enumerate((([1.0, -1.0, 0.5], [10.0, 20.0, 30.0]), ([2.0, -2.0, 0.0], [10.0, 20.0, 40.0]))):
        e = [math.exp(s) for s in scores]
        assert out[row].item() == pytest.approx(sum(w * v for w, v in zip(e, vals)) / sum(e), rel=1e-6)
    # a masked prompt column (-inf) takes no weight
    pmask = torch.tensor([0.0, float("-inf")]).view(1, 1, 1, 2)
    out = attend_shared_prefix(q, pk, pv, keys, values, pmask, zero[1], scale=1.0).flatten()
    e = [math.exp(1.0), math.exp(0.5)]
    assert out[0].item() == pytest.approx((10 * e[0] + 30 * e[1]) / sum(e), rel=1e-6)


def test_attention_over_a_shared_prompt_equals_sdpa_on_the_repeated_cache():
    g = torch.Generator().manual_seed(2)
    B, G, H, gq, d, P, T = 2, 3, 2, 2, 8, 5, 4
    q = torch.randn(B * G, H, gq, d, generator=g)
    pk, pv = torch.randn(B, H, P, d, generator=g), torch.randn(B, H, P, d, generator=g)
    keys, values = torch.randn(B * G, H, T, d, generator=g), torch.randn(B * G, H, T, d, generator=g)
    valid = torch.ones(B * G, P + T, dtype=torch.bool)
    valid[G:, :2] = False  # prompt 1 is left-padded
    valid[1, P + 2] = False  # a row that sat out a step
    additive = torch.zeros(valid.shape).masked_fill(~valid, float("-inf"))[:, None, None]
    out = attend_shared_prefix(q, pk, pv, keys, values, additive[::G, ..., :P], additive[..., P:], scale=0.3)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([pk.repeat_interleave(G, 0), keys], 2), torch.cat([pv.repeat_interleave(G, 0), values], 2),
        attn_mask=additive, scale=0.3)
    assert torch.allclose(out, ref, atol=1e-6)


def test_packed_linear_weights_equal_the_modules_and_follow_updates():
    torch.manual_seed(0)
    lin, x = torch.nn.Linear(16, 24), torch.randn(3, 1, 16)
    assert PackedLinears()._packed(lin, x) is None  # by default a weight this small is not worth packing
    packs = PackedLinears(min_numel=0)
    with torch.inference_mode():
        assert torch.allclose(packs.linear(lin, x), lin(x), atol=1e-5)
    if packs.enabled:
        assert lin in packs._packs  # the packed path ran
    with torch.no_grad():
        lin.weight.mul_(-2.0)  # an optimizer step changes the weight in place
    with torch.inference_mode():
        assert torch.allclose(packs.linear(lin, x), lin(x), atol=1e-5)
    hooked = torch.nn.Linear(16, 24)
    hooked.register_forward_hook(lambda m, i, o: o + 1.0)
    with torch.inference_mode():
        assert torch.allclose(packs.linear(hooked, x), hooked(x))  # hooks run: not packed
    assert hooked not in packs._packs
    assert PackedLinears(enabled=False).linear(lin, x).shape == (3, 1, 24)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_with_shared_prompt_cache_and_packed_weights_equals_the_plain_path(family, tiny_policies):
    """G samples of each prompt: the same tokens, log-probs and second-turn cache reuse with the prompt cache
    kept once per group and oneDNN-packed weights as with the cache repeated per row and the modules."""
    pol = tiny_policies[family]
    f = pol.factor
    prompts = [_prompt(pol, (2 * f, 2 * f), "Q"), _prompt(pol, (4 * f, 2 * f), "A longer question here?")]
    kw = dict(max_new_tokens=[6, 10], n=3, temperature=1.0)
    default = HFSampler(pol)
    plain_default = _generate(default, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert _remembered(default).layers[0].prefix is None  # a tiny model's prompt: not worth it
    # the fast paths, which the tiny models are under the size thresholds of
    fast_sampler = HFSampler(pol, HFSamplerConfig(share_prompt_min=0, packed_min_numel=0))
    fast = _generate(fast_sampler, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert _remembered(fast_sampler).layers[0].prefix is not None  # the shared layout was used
    assert len(fast_sampler.linears._packs) > 0  # and packed weights
    plain_sampler = HFSampler(pol, HFSamplerConfig(share_prompt_cache=False, packed_weights=False))
    plain = _generate(plain_sampler, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert _remembered(plain_sampler).layers[0].prefix is None
    _assert_same(fast, plain)
    _assert_same(plain_default, plain)
    more = pol.tokenizer.encode("<|im_end|>\n<|im_start|>user\nok<|im_end|>\n<|im_start|>assistant\n",
                                add_special_tokens=False)
    outs = []
    for sampler, gens in ((fast_sampler, fast), (plain_sampler, plain)):  # each continues its own rows
        seqs = [Prompt(prompts[i // 3].ids + g.ids + more, prompts[i // 3].images) for i, g in enumerate(gens)]
        outs.append(_generate(sampler, seqs[::2], max_new_tokens=5, temperature=0))
        assert sampler.continued  # only the new tokens were prefilled
    _assert_same(*outs)


def test_packed_decoding_follows_an_optimizer_step(tiny_dirs):
    """The packed weight copies made by one rollout are replaced after the weights change, so the next
    rollout samples from the updated policy (the same as decoding through the modules)."""
    from vlmrl.models.policy import Policy

    pol = Policy.load(tiny_dirs["qwen2_vl"], dtype="float32", device="cpu")
    sampler = HFSampler(pol, HFSamplerConfig(packed_min_numel=0, share_prompt_min=0))
    f = pol.factor
    prompts = [_prompt(pol, (2 * f, 2 * f), "Q")]
    before = _generate(sampler, prompts, max_new_tokens=8, temperature=0, n=2)
    params = [p for p in pol.model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    sampler.sync_weights(pol.model)
    after = _generate(sampler, prompts, max_new_tokens=8, temperature=0, n=2)
    modules = HFSampler(pol, HFSamplerConfig(packed_weights=False, share_prompt_min=0))
    _assert_same(after, _generate(modules, prompts, max_new_tokens=8, temperature=0, n=2))
    assert [g.logprobs for g in after] != [g.logprobs for g in before]


# --------------------------------------------------------------------------- KV reuse across turns

def _first_turn(sampler, greedy):
    pol = sampler.policy
    f = pol.factor
    prompts = [_prompt(pol, (2 * f, 2 * f), "What?"), _prompt(pol, (4 * f, 2 * f), "What is in the top left corner?")]
    gens = _generate(sampler, prompts, max_new_tokens=[5, 9], n=2, temperature=0 if greedy else 1.0,
                     generator=torch.Generator().manual_seed(0))
    return prompts, gens


def _second_turn(pol, prompts, gens):
    """Each row's history plus an observation with a crop (sizes and texts differ per row)."""
    f = pol.factor
    crops = [Image.new("RGB", size, "green") for size in ((2 * f, 4 * f), (2 * f, 2 * f))]
    out = []
    for i, g in enumerate(gens):
        p, crop = prompts[i // 2], crops[i % 2]
        out.append(Prompt(p.ids + g.ids + _observation(pol, crop, "ok " * (i + 1)), p.images + [crop]))
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("greedy", [True, False])
def test_reused_cache_equals_full_prefill(family, greedy, tiny_policies):
    pol = tiny_policies[family]
    sampler = HFSampler(pol)
    prompts, gens = _first_turn(sampler, greedy)
    later = _second_turn(pol, prompts, gens)
    pick = [3, 0, 2]  # a subset of the rows, out of order: as when only some rows called the tool
    kw = dict(max_new_tokens=10, temperature=0 if greedy else 1.0)
    a = _generate(sampler, [later[i] for i in pick], generator=torch.Generator().manual_seed(5), **kw)
    assert sampler.continued  # the reuse path ran
    b = _generate(HFSampler(pol, NO_REUSE), [later[i] for i in pick], generator=torch.Generator().manual_seed(5), **kw)
    _assert_same(a, b)
    # and both are what a teacher-forced pass over the whole sequences computes
    seqs = [Seq(later[i].ids + g.ids, _seq(pol, later[i]).images) for i, g in zip(pick, a)]
    T = max(len(s.ids) for s in seqs)
    mask, rec = torch.zeros(len(seqs), T, dtype=torch.long), torch.zeros(len(seqs), T)
    for k, g in enumerate(a):
        mask[k, T - len(g.ids):] = 1
        rec[k, T - len(g.ids):] = torch.tensor(g.logprobs)
    with torch.no_grad():
        lp = pol.logprobs(seqs, mask)
    assert torch.allclose(lp * mask, rec, atol=1e-5), ((lp - rec) * mask).abs().max()


def _record_compactions(monkeypatch) -> list:
    """The `prefixes` argument of every `KVCache.compact` call from here on (None: the prompt was copied)."""
    calls, compact = [], KVCache.compact

    def spy(self, *args, prefixes=None, **kwargs):
        calls.append(prefixes)
        return compact(self, *args, prefixes=prefixes, **kwargs)

    monkeypatch.setattr(KVCache, "compact", spy)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_later_turns_keep_the_shared_prompt_cache(family, tiny_policies, monkeypatch):
    """Every row goes on for two more turns (a crop, then text): with the prompt cache kept once per group
    through both compactions, tokens and log-probs equal those of the cache copied per row and of a full
    prefill."""
    pol = tiny_policies[family]
    calls = _record_compactions(monkeypatch)
    more = pol.tokenizer.encode("<|im_end|>\n<|im_start|>user\nok<|im_end|>\n<|im_start|>assistant\n",
                                add_special_tokens=False)
    kw = dict(max_new_tokens=6, temperature=1.0)
    configs = {"shared": HFSamplerConfig(share_prompt_min=0), "copied": HFSamplerConfig(share_prompt_min=1 << 60),
               "full": HFSamplerConfig(share_prompt_min=1 << 60, reuse_kv=False)}
    results = {}
    for mode, config in configs.items():
        sampler = HFSampler(pol, config)
        prompts, gens = _first_turn(sampler, greedy=False)
        if mode != "full":
            assert (_remembered(sampler).layers[0].prefix is not None) == (mode == "shared")
        seqs = _second_turn(pol, prompts, gens)
        second = _generate(sampler, seqs, generator=torch.Generator().manual_seed(5), **kw)
        seqs = [Prompt(s.ids + g.ids + more, s.images) for s, g in zip(seqs, second)]
        third = _generate(sampler, seqs, generator=torch.Generator().manual_seed(6), **kw)
        assert sampler.continued == (mode != "full")
        results[mode] = second + third
    assert calls == [[0, 1], [0, 1], None, None]  # shared: both turns kept both prompts; copied: none
    _assert_same(results["shared"], results["copied"])
    _assert_same(results["shared"], results["full"])


def test_rows_are_continued_once_and_only_by_prompts_that_extend_them(tiny_policies):
    """The sampler remembers the rows of its last call only: a call after a continuing one finds its rows gone and
    prefills in full; a prompt whose ids or image objects differ from every row's (equal pixels in another image
    object included) makes the call prefill in full. Every way gives the same results."""
    pol = tiny_policies["qwen2_5_vl"]
    sampler, full = HFSampler(pol), HFSampler(pol, NO_REUSE)
    prompts, gens = _first_turn(sampler, greedy=True)
    later = _second_turn(pol, prompts, gens)
    kw = dict(max_new_tokens=6, temperature=0)
    a = _generate(sampler, later[:2], **kw)
    assert sampler.continued
    b = _generate(sampler, later[2:], **kw)  # the rows of the first turn were replaced by a's
    assert not sampler.continued
    _assert_same(a + b, _generate(full, later, **kw))
    for edit in ("ids", "image object"):
        prompts, gens = _first_turn(sampler, greedy=True)
        p = _second_turn(pol, prompts, gens)[0]
        if edit == "ids":
            p = Prompt([p.ids[0] + 1] + p.ids[1:], p.images)
        else:
            p = Prompt(p.ids, [p.images[0].copy()] + p.images[1:])
        _assert_same(_generate(sampler, [p], **kw), _generate(full, [p], **kw))
        assert not sampler.continued


def _user_only(sample, cfg, family):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]


def test_continuing_exactly_the_cached_tokens(tiny_policies):
    """A sequence that adds nothing to a row's cached tokens: its last token is fed again, same result."""
    pol = tiny_policies["qwen3_vl"]
    sampler = HFSampler(pol)
    prompts, gens = _first_turn(sampler, greedy=False)
    rows = [0, 1]  # their caps ended them before the loop did: all their tokens were fed back
    assert all(len(sampler._last[i].ids) == len(prompts[0].ids) + len(gens[i].ids) for i in rows)
    reuse = [Prompt(prompts[0].ids + gens[i].ids, prompts[0].images) for i in rows]
    kw = dict(max_new_tokens=6, temperature=1.0)
    a = _generate(sampler, reuse, generator=torch.Generator().manual_seed(1), **kw)
    assert sampler.continued
    _assert_same(a, _generate(HFSampler(pol, NO_REUSE), reuse, generator=torch.Generator().manual_seed(1), **kw))


def _seed3():
    return torch.Generator().manual_seed(3)


def _tool_engine(pol, reuse_kv, **sampler_config):
    cfg = RolloutConfig(mode="tool", max_turns=2, max_new_tokens=48, crop_min_pixels=4 * 28 * 28,
                        crop_max_pixels=256 * 256, temperature=1.0)
    sampler = HFSampler(pol, HFSamplerConfig(reuse_kv=reuse_kv, **sampler_config))
    return RolloutEngine(pol, cfg, messages_fn=_user_only, sampler=sampler)


def _samples():
    return [SimpleNamespace(id=sid, images=[Image.new("RGB", size, (250, 250, 250))], question="What digit?",
                            answer="7", answer_type="number", choices=None, meta={})
            for size, sid in (((448, 448), "s0"), ((336, 448), "s1"))]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shared", [False, True])
def test_two_turn_rollout_with_reused_cache_equals_reprefill(family, shared, tiny_policies, monkeypatch):
    """Turn 0 is decoded step by step (a crop call made certain), turn 1 samples for real: the trajectories with
    KV reuse equal those with a full re-prefill, and teacher forcing reproduces turn 1's sampled log-probs.
    `shared`: the prompt cache is kept once per group in both turns (every row calls the tool)."""
    pol = tiny_policies[family]
    extra = dict(share_prompt_min=0) if shared else {}
    calls = _record_compactions(monkeypatch)
    box = "0, 0, 112, 112" if family == "qwen2_5_vl" else "0, 0, 500, 500"
    call = pol.tokenizer.encode(CALL % box, add_special_tokens=False)
    runs = []
    for reuse_kv in (True, False):
        with forced(pol.core.lm_head, call):
            engine = _tool_engine(pol, reuse_kv, **extra)
            runs.append(engine.rollout(_samples(), n_per_prompt=3, generator=_seed3()))
            assert engine.sampler.continued == reuse_kv
            assert not engine.sampler._last  # the rollout ended: the rows' cache is freed
    fast, slow = runs
    assert calls == [[0, 1] if shared else None]  # the reusing run's one compaction
    assert all(len(t.turns) == 2 and t.tool_calls[0].valid for t in fast)
    for a, b in zip(fast, slow):
        assert a.ids == b.ids and a.response_mask == b.response_mask and a.turn_ids == b.turn_ids
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
    seqs = [Seq(t.ids, t.vision) for t in fast]
    T = max(len(s.ids) for s in seqs)
    mask, rec = torch.zeros(len(fast), T, dtype=torch.long), torch.zeros(len(fast), T)
    for k, t in enumerate(fast):
        turn1 = [m and tid == 1 for m, tid in zip(t.response_mask, t.turn_ids)]
        mask[k, T - len(t.ids):] = torch.tensor(turn1, dtype=torch.long)
        rec[k, T - len(t.ids):] = torch.tensor(t.logprobs)
    assert (mask.sum(1) > 0).all()
    with torch.no_grad():
        lp = pol.logprobs(seqs, mask)
    assert torch.allclose(lp * mask, rec * mask, atol=1e-4), ((lp - rec) * mask).abs().max()


# --------------------------------------------------------------------------- the decoding loop

def _step_logits(pol, prompts, tokens, fused):
    """Logits of a few decoding steps (the same tokens fed to every row) after a fresh prefill."""
    sampler = HFSampler(pol)
    with torch.inference_mode():
        rows = sampler._prefill_fresh([_seq(pol, p) for p in prompts], prompts, reserve=len(tokens))
        step = DecodeStep(pol.core, rows.cache, int(rows.pos.min()), int(rows.pos.max()) + len(tokens), fused=fused)
        valid, pos, out = rows.valid, rows.pos, []
        for t in tokens:
            valid = torch.cat([valid, torch.ones(len(prompts), 1, dtype=torch.bool)], dim=1)
            out.append(step(torch.full((len(prompts),), t), pos, valid))
            pos = pos + 1
    return torch.stack(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_decoding_step_equals_the_transformers_language_model(family, tiny_policies):
    pol = tiny_policies[family]
    assert can_fuse(pol.core.model.language_model, KVCache(1))
    f = pol.factor
    prompts = [_prompt(pol, (2 * f, 2 * f), "Q"), _prompt(pol, (4 * f, 2 * f), "A longer question here?")]
    tokens = pol.tokenizer.encode("look at the top left", add_special_tokens=False)
    fused, plain = (_step_logits(pol, prompts, tokens, fused=x) for x in (True, False))
    assert torch.allclose(fused, plain, atol=1e-5), (fused - plain).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decoding_equals_transformers_generate(family, tiny_policies):
    pol = tiny_policies[family]
    f = pol.factor
    prompts = [_prompt(pol, (2 * f, 2 * f), "Q"), _prompt(pol, (4 * f, 2 * f), "A longer question here?")]
    ours = _generate(HFSampler(pol), prompts, max_new_tokens=12, temperature=0)
    batch = pol.collate([_seq(pol, p) for p in prompts])
    batch.pop("position_ids")
    with torch.no_grad():
        out = pol.model.generate(**batch, do_sample=False, max_new_tokens=12, pad_token_id=pol.pad_token_id,
                                 eos_token_id=pol.eos_token_ids, suppress_tokens=pol.banned_token_ids)
    for g, row in zip(ours, out[:, batch["input_ids"].shape[1]:].tolist()):
        assert g.ids == row[:len(g.ids)]


def test_hf_dynamic_cache_fallback_gives_the_same_tokens(tiny_policies, monkeypatch):
    """Models whose cache cannot be a KVCache (sliding-window layers) decode through the HF forward; their rows
    are not remembered for a next turn."""
    from transformers import DynamicCache

    pol = tiny_policies["qwen2_5_vl"]
    f = pol.factor
    prompts = [_prompt(pol, (2 * f, 2 * f), "Q"), _prompt(pol, (4 * f, 2 * f), "A longer question here?")]
    sampler = HFSampler(pol)
    fast = _generate(sampler, prompts, max_new_tokens=8, temperature=0)
    assert sampler._last
    monkeypatch.setattr(HFSampler, "_new_cache", lambda self, reserve: DynamicCache(config=pol.core.config))
    slow = _generate(sampler, prompts, max_new_tokens=8, temperature=0)
    _assert_same(fast, slow)
    assert not sampler._last


def test_multi_token_stop_string_stops_after_it(tiny_policies):
    pol = tiny_policies["qwen2_vl"]
    stop = "zoom region"
    ids = pol.tokenizer.encode("look " + stop + " then", add_special_tokens=False)
    assert len(pol.tokenizer.encode(stop, add_special_tokens=False)) > 1
    with forced(pol.core.lm_head, ids * 2):  # the prefill's call and the decoding steps' calls
        g = _generate(HFSampler(pol), [_prompt(pol, (56, 56), "Q")], max_new_tokens=len(ids), stop_strings=(stop,))[0]
    assert g.finish == "stop" and pol.tokenizer.decode(g.ids).endswith(stop)


def test_vision_tower_encodes_each_prompt_once_per_group(tiny_policies):
    pol = tiny_policies["qwen2_5_vl"]
    f = pol.factor
    prompts = [_prompt(pol, (2 * f, 2 * f), "Q"), _prompt(pol, (4 * f, 4 * f), "Q")]
    seen = []
    handle = pol.core.model.visual.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        _generate(HFSampler(pol), prompts, max_new_tokens=3, n=8, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert sum(seen) == sum(pol.codec.vision(im).pixel_values.shape[0] for p in prompts for im in p.images)


def test_no_grad_logprobs_sorted_by_length_keep_each_rows_values(tiny_policies):
    from vlmrl.train.batch import RolloutBatch, left_pad
    from vlmrl.train.trainer import Trainer

    pol = tiny_policies["qwen2_5_vl"]
    f = pol.factor
    seqs = [_seq(pol, _prompt(pol, (2 * f, 2 * f), "Q " * k)) for k in (5, 1, 9, 3)]
    masks = [[0] * (len(s.ids) - 3) + [1, 1, 1] for s in seqs]
    mask = left_pad(masks, 0, torch.long)
    batch = RolloutBatch(seqs=seqs, lengths=[len(s.ids) for s in seqs], group_ids=torch.arange(4),
                         response_mask=mask, loss_mask=mask, turn_ids=mask - 1, old_logp=torch.zeros(mask.shape))
    # the trainer parts it uses: share_prompt off, one unsharded process
    no_sharing = SimpleNamespace(_share_groups=lambda batch: None, dist=SimpleNamespace(sharded=False))
    got = Trainer._no_grad_logprobs(no_sharing, pol, seqs, batch, 1.0, chunk=2)
    assert got.shape == mask.shape
    for i, (s, m) in enumerate(zip(seqs, masks)):
        with torch.no_grad():
            one = pol.logprobs([s], torch.tensor([m]))[0].tolist()
        row = batch.row(got, i)
        assert len(row) == len(s.ids) and torch.allclose(torch.tensor(row), torch.tensor(one), atol=1e-5)


def test_first_turn_prefix_is_part_of_the_turn_and_keeps_the_cache(tiny_policies):
    """`first_turn_prefix` (eval baselines): the forced text opens turn 0 with log-prob 0, the model writes the
    rest, and turn 1 with the reused cache equals a full re-prefill."""
    from dataclasses import replace

    pol = tiny_policies["qwen2_5_vl"]
    text = CALL % "0, 0, 112, 112"
    cut = text.index("[")
    prefix, rest = text[:cut], pol.tokenizer.encode(text[cut:], add_special_tokens=False)
    n_prefix = len(pol.tokenizer.encode(prefix, add_special_tokens=False))
    runs = []
    for reuse_kv in (True, False):
        eng = _tool_engine(pol, reuse_kv)
        eng.cfg = replace(eng.cfg, first_turn_prefix=prefix)
        with forced(pol.core.lm_head, rest):
            runs.append(eng.rollout(_samples(), n_per_prompt=2, generator=_seed3()))
    fast, slow = runs
    for t in fast:
        assert t.turns[0] == text and len(t.turns) == 2 and t.tool_calls[0].valid
        start = t.prompt_len
        assert t.response_mask[start:start + n_prefix] == [1] * n_prefix
        assert t.logprobs[start:start + n_prefix] == [0.0] * n_prefix
    for a, b in zip(fast, slow):
        assert a.ids == b.ids and a.response_mask == b.response_mask
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def test_first_turn_prefix_fills_in_each_question(tiny_policies):
    """`{question}` in the prefix is each sample's own question: a whole forced call (cut at its stop string),
    and a forced opening the model continues (log-prob 0 on exactly that sample's forced tokens)."""
    from dataclasses import replace

    pol = tiny_policies["qwen2_5_vl"]
    samples = _samples()
    samples[1].question = "Which letter is on the tag?"
    call = CALL % "0, 0, 112, 112"
    eng = _tool_engine(pol, True)
    eng.cfg = replace(eng.cfg, first_turn_prefix="<think>{question}</think>" + call[len("<think>zoom</think>"):])
    trajs = eng.rollout(samples, n_per_prompt=2, generator=_seed3())
    for t, s in zip(trajs, [samples[0]] * 2 + [samples[1]] * 2):
        assert t.turns[0].startswith(f"<think>{s.question}</think><tool_call>") and t.tool_calls[0].valid
    eng.cfg = replace(eng.cfg, first_turn_prefix="<think>{question} I", max_turns=1)
    trajs = eng.rollout(samples, n_per_prompt=2, generator=_seed3())
    for t, s in zip(trajs, [samples[0]] * 2 + [samples[1]] * 2):
        n = len(pol.tokenizer.encode(f"<think>{s.question} I", add_special_tokens=False))
        assert t.turns[0].startswith(f"<think>{s.question} I")
        assert t.logprobs[t.prompt_len:t.prompt_len + n] == [0.0] * n and t.logprobs[t.prompt_len + n] != 0.0
