"""The rollout engine: the crop-tool loop with a scripted sampler, and sampling/teacher-forcing consistency."""

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vlmrl.models.codec import Seq
from vlmrl.models.hf_sampler import HFSampler
from vlmrl.models.sampler import Generation, Sampler
from vlmrl.rollout.engine import PromptTooLong, RolloutConfig, RolloutEngine
from vlmrl.rollout.trajectory import load_traces, save_traces

CALL = '<think>zoom</think><tool_call>{"name": "crop", "arguments": {"bbox_2d": [%s]}}</tool_call>'
ANSWER = "<think>ok</think><answer>7</answer>"


def user_only(sample, cfg, family):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]


def make_sample(size=(448, 448), sid="s0"):
    img = Image.new("RGB", size, (250, 250, 250))
    return SimpleNamespace(id=sid, images=[img], question="What digit?", answer="7", answer_type="number",
                           choices=None, meta={"gt_boxes": [[0, 0, 100, 100]]})


class Scripted(Sampler):
    """Returns fixed texts: script[turn] lists the outputs for that turn's active rows, in order.
    A text ending in '...' is cut without a stop (finish 'length')."""

    def __init__(self, tokenizer, script: dict[int, list[str]]):
        self.tokenizer, self.script, self.turn = tokenizer, script, 0

    def sync_weights(self, model):
        pass

    def generate(self, prompts, params):
        texts = self.script[self.turn]
        self.turn += 1
        assert len(texts) == len(prompts) * params.n
        out = []
        for text in texts:
            if text.endswith("..."):
                ids = self.tokenizer.encode(text[:-3], add_special_tokens=False)
                out.append(Generation(ids, [-0.5] * len(ids), "length"))
                continue
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if "</tool_call>" not in text:
                ids.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
            out.append(Generation(ids, [-0.5] * len(ids), "stop"))
        return out


def engine_for(pol, script, **cfg):
    base = dict(mode="tool", max_turns=2, max_new_tokens=128, crop_min_pixels=4 * 28 * 28, crop_max_pixels=224 * 224,
                max_total_tokens=2000)
    base.update(cfg)
    return RolloutEngine(pol, RolloutConfig(**base), messages_fn=user_only, sampler=Scripted(pol.tokenizer, script))


@pytest.fixture
def pol(tiny_policies):
    return tiny_policies["qwen2_5_vl"]  # absolute pixel coordinates of the seen (224x224) view


def _spans(traj):
    """(turn id, mask) runs of a trajectory after its prompt."""
    runs = []
    for t, m in zip(traj.turn_ids[traj.prompt_len:], traj.response_mask[traj.prompt_len:]):
        if runs and tuple(runs[-1][:2]) == (t, m):
            runs[-1][2] += 1
        else:
            runs.append([t, m, 1])
    return [tuple(r) for r in runs]


def test_valid_call_then_answer(pol):
    tok = pol.tokenizer
    eng = engine_for(pol, {0: [CALL % "0, 0, 112, 112"], 1: [ANSWER]})
    (t,) = eng.rollout([make_sample()], n_per_prompt=1)
    assert t.finish_reason == "answered"
    assert [im.kind for im in t.images] == ["input", "crop"]
    assert t.images[0].seen_size == (224, 224) and t.images[0].visual_tokens == 64
    # seen [0,0,112,112] of 224 -> original [0,0,224,224]; a 224x224 crop is 64 tokens
    assert t.images[1].box_original == [0, 0, 224, 224] and t.images[1].seen_size == (224, 224)
    assert t.visual_tokens == 64 + 64
    (call,) = t.tool_calls
    assert call.valid and call.box_original == [0, 0, 224, 224] and call.turn == 0
    n0 = len(tok.encode(CALL % "0, 0, 112, 112", add_special_tokens=False))
    n1 = len(tok.encode(ANSWER, add_special_tokens=False)) + 1  # + <|im_end|>
    spans = _spans(t)
    assert spans[0] == (0, 1, n0) and spans[-1] == (1, 1, n1)
    assert spans[1][:2] == (0, 0) and len(spans) == 3  # observation: not policy, belongs to turn 0
    assert t.num_response_tokens == n0 + n1
    assert all(lp == 0 for lp, m in zip(t.logprobs, t.response_mask) if not m)
    obs = tok.decode(t.ids[t.prompt_len + n0:len(t.ids) - n1])
    assert obs.startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\n<|vision_start|>")
    assert obs.count("<|image_pad|>") == 64 and obs.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    ids = torch.tensor(t.ids)
    assert int((ids == pol.image_token_id).sum()) == t.visual_tokens
    assert int((ids == pol.image_token_id)[torch.tensor(t.response_mask).bool()].sum()) == 0
    assert t.turns == [CALL % "0, 0, 112, 112", ANSWER]


def test_invalid_json_gets_error_turn_without_image(pol):
    eng = engine_for(pol, {0: ['<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, </tool_call>'], 1: [ANSWER]})
    (t,) = eng.rollout([make_sample()])
    assert t.finish_reason == "answered"
    assert [im.kind for im in t.images] == ["input"] and t.visual_tokens == 64
    (call,) = t.tool_calls
    assert not call.valid and call.error.startswith("Error")
    text = pol.tokenizer.decode(t.ids[t.prompt_len:])
    assert "<tool_response>\nError" in text and text.count("<|image_pad|>") == 0


def test_out_of_range_box_is_rejected(pol):
    eng = engine_for(pol, {0: [CALL % "300, 300, 400, 400"], 1: [ANSWER]})
    (t,) = eng.rollout([make_sample()])
    assert not t.tool_calls[0].valid and "outside" in t.tool_calls[0].error.lower()
    assert len(t.images) == 1 and t.finish_reason == "answered"


def test_tiny_box_is_expanded_around_centre(pol):
    eng = engine_for(pol, {0: [CALL % "100, 100, 104, 110"], 1: [ANSWER]})
    (t,) = eng.rollout([make_sample()])
    c = t.tool_calls[0]
    assert c.valid and c.box_seen == [88.0, 91.0, 116.0, 119.0]  # 28x28 around (102, 105)
    assert c.box_original == [176, 182, 232, 238]
    assert t.images[1].box_original == [176, 182, 232, 238]


def test_second_call_hits_max_turns(pol):
    eng = engine_for(pol, {0: [CALL % "0, 0, 112, 112"], 1: [CALL % "0, 0, 50, 50"]})
    (t,) = eng.rollout([make_sample()])
    assert t.finish_reason == "max_turns"
    assert [c.valid for c in t.tool_calls] == [True, False]
    assert "turn limit" in t.tool_calls[1].error
    assert len(t.images) == 2 and t.turn_ids[-1] == 1 and t.response_mask[-1] == 1


def test_no_call_answers_in_one_turn_and_groups_are_prompt_major(pol):
    eng = engine_for(pol, {0: [ANSWER, CALL % "0, 0, 112, 112", ANSWER, "<think>long..."], 1: [ANSWER]})
    trajs = eng.rollout([make_sample(sid="a"), make_sample(sid="b")], n_per_prompt=2)
    assert [(t.sample_id, t.sample_index) for t in trajs] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert [t.finish_reason for t in trajs] == ["answered", "answered", "answered", "length"]
    assert [len(t.turns) for t in trajs] == [1, 2, 1, 1]
    assert [t.visual_tokens for t in trajs] == [64, 128, 64, 64]
    assert max(trajs[0].turn_ids) == 0


def test_samples_per_prompt_and_group_ids(pol):
    """n_per_prompt gives each prompt its own number of samples; each prompt's samples form one group whose id
    counts from first_group_id; equal counts as a list are the same rollout as the int."""
    cfg = RolloutConfig(mode="direct", max_new_tokens=3, temperature=1.0, image_max_pixels=112 * 112)
    eng = RolloutEngine(pol, cfg, messages_fn=user_only)
    samples = [make_sample(sid="a"), make_sample((224, 112), sid="b"), make_sample(sid="c")]
    trajs = eng.rollout(samples, n_per_prompt=[1, 3, 2], generator=torch.Generator().manual_seed(0), first_group_id=10)
    assert [(t.sample_id, t.sample_index, t.group_id, t.prompt_index) for t in trajs] == [
        ("a", 0, 10, 0), ("b", 0, 11, 1), ("b", 1, 11, 1), ("b", 2, 11, 1), ("c", 0, 12, 2), ("c", 1, 12, 2)]
    assert all(t.ids[:t.prompt_len] == trajs[1].ids[:trajs[1].prompt_len] for t in trajs[1:4])  # b's own prompt
    assert trajs[1].prompt_len != trajs[0].prompt_len and all(t.num_response_tokens >= 1 for t in trajs)
    as_list = eng.rollout(samples[:2], n_per_prompt=[2, 2], generator=torch.Generator().manual_seed(1))
    as_int = eng.rollout(samples[:2], n_per_prompt=2, generator=torch.Generator().manual_seed(1))
    assert [t.ids for t in as_list] == [t.ids for t in as_int] and [t.group_id for t in as_int] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"n_per_prompt has 2 entries for 3 samples"):
        eng.rollout(samples, n_per_prompt=[1, 2])
    with pytest.raises(ValueError, match=r"n_per_prompt\[1\] must be an integer >= 1, got 0"):
        eng.rollout(samples, n_per_prompt=[1, 0, 2])


def test_direct_mode_uses_full_resolution_and_ignores_calls(pol):
    eng = engine_for(pol, {0: [CALL % "0, 0, 112, 112"]}, mode="direct")
    (t,) = eng.rollout([make_sample()])
    assert t.images[0].seen_size == (448, 448) and t.visual_tokens == 256
    assert t.finish_reason == "answered" and not t.tool_calls


def test_length_cap_and_prompt_too_long(pol):
    eng = engine_for(pol, {0: [CALL % "0, 0, 112, 112"]}, max_total_tokens=140)
    (t,) = eng.rollout([make_sample()])
    assert t.finish_reason == "length" and len(t.images) == 1  # the crop would not fit
    eng = engine_for(pol, {}, max_total_tokens=50)
    with pytest.raises(PromptTooLong, match="sample 's0'.*max_total_tokens=50"):
        eng.rollout([make_sample()])


def test_placeholder_mismatch_is_a_clear_error(pol):
    s = make_sample()
    s.images.append(Image.new("RGB", (56, 56)))
    with pytest.raises(ValueError, match="1 image placeholder\\(s\\) but the sample has 2"):
        engine_for(pol, {}).rollout([s])


def test_traces_round_trip(pol, tmp_path):
    eng = engine_for(pol, {0: [CALL % "0, 0, 112, 112"], 1: [ANSWER]})
    trajs = eng.rollout([make_sample()])
    path = save_traces(tmp_path / "traces.jsonl", trajs)
    (back,) = load_traces(path)
    assert back.ids == trajs[0].ids and back.response_mask == trajs[0].response_mask
    assert back.tool_calls == trajs[0].tool_calls and back.finish_reason == "answered"
    assert [Image.open(im.path).size for im in back.images] == [(224, 224), (224, 224)]


class ForcedFirstTurn(HFSampler):
    """Turn 0 emits a fixed tool call (with the model's own log-probs for it); later turns sample for real."""

    def __init__(self, base, text):
        super().__init__(base)
        self.forced = base.tokenizer.encode(text, add_special_tokens=False)
        self.turn = 0

    def generate(self, prompts, params):
        self.turn += 1
        if self.turn > 1:
            return super().generate(prompts, params)
        out = []
        for p in prompts:
            full = Seq(p.ids + self.forced, [self.codec.vision(im) for im in p.images])
            mask = torch.zeros(1, len(full.ids), dtype=torch.long)
            mask[0, len(p.ids):] = 1
            lp = self.policy.logprobs([full], mask)[0, len(p.ids):].tolist()
            out += [Generation(list(self.forced), lp, "stop")] * params.n
        return out


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_teacher_forced_pass_reproduces_sampled_logprobs(family, tiny_policies):
    base = tiny_policies[family]
    box = "0, 0, 112, 112" if family == "qwen2_5_vl" else "0, 0, 500, 500"
    sampler = ForcedFirstTurn(base, CALL % box)
    cfg = RolloutConfig(mode="tool", max_turns=2, max_new_tokens=24, crop_min_pixels=4 * 28 * 28,
                        crop_max_pixels=256 * 256, temperature=1.0)
    samples = [make_sample(), make_sample((336, 448), sid="s1")]
    trajs = RolloutEngine(base, cfg, messages_fn=user_only, sampler=sampler).rollout(samples, n_per_prompt=3,
                                                                                       generator=torch.Generator().manual_seed(1))
    assert all(len(t.turns) == 2 and t.tool_calls[0].valid for t in trajs)
    seqs = [Seq(t.ids, t.vision) for t in trajs]
    T = max(len(s.ids) for s in seqs)
    mask = torch.zeros(len(trajs), T, dtype=torch.long)
    rec = torch.zeros(len(trajs), T)
    for b, t in enumerate(trajs):
        mask[b, T - len(t.ids):] = torch.tensor(t.response_mask)
        rec[b, T - len(t.ids):] = torch.tensor(t.logprobs)
    with torch.no_grad():
        lp = base.logprobs(seqs, mask)
    assert (mask.sum(1) > len(sampler.forced)).all()  # real sampled tokens in the second turn
    assert torch.allclose(lp * mask, rec * mask, atol=1e-4), ((lp - rec) * mask).abs().max()


class RecordingSampler(Sampler):
    """A second Sampler implementation, independent of the HF one: turn 0 answers every row with a crop call, later
    turns with an answer; it records what it was given. Proof that the engine needs only the interface."""

    def __init__(self, tokenizer, call):
        self.tokenizer, self.call, self.calls, self.synced, self.released = tokenizer, call, [], [], 0

    def generate(self, prompts, params):
        self.calls.append((prompts, params))
        text = self.call if len(self.calls) == 1 else ANSWER + "<|im_end|>"
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return [Generation(list(ids), [-0.25] * len(ids), "stop") for p in prompts for _ in range(params.n)]

    def sync_weights(self, model):
        self.synced.append(model)

    def release(self):
        self.released += 1


def test_a_minimal_sampler_drives_the_engine_through_a_tool_turn(pol):
    fake = RecordingSampler(pol.tokenizer, CALL % "0, 0, 112, 112")
    cfg = RolloutConfig(mode="tool", max_turns=2, max_new_tokens=40, max_total_tokens=2000, temperature=0.7,
                        top_p=0.9, crop_min_pixels=4 * 28 * 28, crop_max_pixels=224 * 224)
    samples = [make_sample(), make_sample((336, 448), sid="s1")]
    trajs = RolloutEngine(pol, cfg, messages_fn=user_only, sampler=fake).rollout(samples, n_per_prompt=2)
    assert len(fake.calls) == 2
    (first, p0), (second, p1) = fake.calls
    # turn 0: one prompt per sample, its first view as a PIL image; 2 samples each; the config's sampling settings
    assert len(first) == 2 and p0.n == 2 and (p0.temperature, p0.top_p) == (0.7, 0.9)
    assert p0.stop_strings == ("</tool_call>",) and p0.max_new_tokens == [40, 40]
    assert [[im.size for im in p.images] for p in first] == [[(224, 224)], [(168, 224)]]
    assert all(isinstance(im, Image.Image) for p in first for im in p.images)
    # turn 1: every trajectory's whole history (prompt, call, observation) with its view and its crop
    assert len(second) == 4 and p1.n == 1
    for t, p in zip(trajs, second):
        assert t.tool_calls[0].valid and t.finish_reason == "answered"
        assert t.ids[:len(p.ids)] == p.ids and t.response_mask[len(p.ids):] == [1] * (len(t.ids) - len(p.ids))
        assert [im.kind for im in t.images] == ["input", "crop"] and p.images == [im.image for im in t.images]
        # the trajectory keeps the codec's encodings of exactly those images (encoded once, shared)
        assert all(v is pol.codec.vision(im) for v, im in zip(t.vision, p.images))
        assert t.logprobs[t.prompt_len:t.prompt_len + 3] == [-0.25] * 3
    assert p1.max_new_tokens == [min(40, 2000 - len(p.ids)) for p in second]
    assert fake.synced == []  # the engine never syncs weights: that is the trainer's business
    assert fake.released == 1  # but says when no later turn will extend the rows


def test_rollout_settings_are_the_recipe_section():
    """One schema: a recipe's rollout section is the engine's RolloutConfig; bad values are refused when the
    recipe loads (ConfigError naming the recipe and the fields), not at the first rollout."""
    from vlmrl.config import Config, ConfigError, load_config

    assert Config().rollout == RolloutConfig() and RolloutConfig().mode == "direct"
    cfg = load_config(None, ["rollout.mode=tool", "hf_sampler.reuse_kv=false", "rollout.first_turn_prefix=<think>"])
    assert isinstance(cfg.rollout, RolloutConfig) and (cfg.rollout.mode, cfg.hf_sampler.reuse_kv) == ("tool", False)
    with pytest.raises(ConfigError, match=r"crop_max_pixels \(0\) must be >= crop_min_pixels \(200704\)"):
        load_config(None, ["rollout.crop_max_pixels=0"])
    with pytest.raises(ConfigError, match="rollout mode must be 'tool' or 'direct', got 'chat'"):
        load_config(None, ["rollout.mode=chat"])
