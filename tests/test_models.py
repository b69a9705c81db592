"""The policy (loading, teacher-forced log-probs, LoRA, gradient checkpointing) and the offline tiny models.
(The codec is in tests/test_codec.py, sampling in tests/test_hf_sampler.py.)"""

import hashlib

import pytest
import torch
from PIL import Image

from vlmrl.models.codec import Seq
from vlmrl.models.hf_sampler import HFSampler
from vlmrl.models.policy import Policy, detect_family
from vlmrl.models.sampler import Prompt, SamplingParams
from vlmrl.models.tiny import make_tiny

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def _prompt(pol, image, text):
    tok = pol.tokenizer
    v = pol.codec.vision(image)
    ids = (tok.encode("<|im_start|>user\n", add_special_tokens=False) + pol.codec.image_placeholder(v)
           + tok.encode(text + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False))
    return Seq(ids, [v])


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("family", FAMILIES)
def test_make_tiny_round_trip_offline(family, tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import vlmrl.models.processor  # noqa: F401  (registers the image-only processor)

    path = tiny_dirs[family]
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    assert model.config.model_type == family
    proc = AutoProcessor.from_pretrained(path, local_files_only=True)
    assert type(proc).__name__ == "QwenVLImageProcessor"
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and "<|vision_start|><|image_pad|><|vision_end|>" in text
    inputs = proc(text=[text], images=[Image.new("RGB", (64, 64), "red")], return_tensors="pt")
    assert "mm_token_type_ids" in inputs
    logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    # same seed -> byte-identical weights; another seed -> different
    again = make_tiny(family, tmp_path / "again", size="tiny", seed=0)
    assert _digest(again) == _digest(path)
    other = make_tiny(family, tmp_path / "other", size="tiny", seed=1)
    assert _digest(other) != _digest(path)


def test_tokenizer_round_trips_text_and_keeps_tags_whole(tiny_policies):
    tok = tiny_policies["qwen2_5_vl"].tokenizer
    text = '<think>look</think><tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call> é 漢字'
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    for tag in ("<tool_call>", "</tool_call>", "<answer>", "</answer>", "<|im_end|>", "<|image_pad|>"):
        assert len(tok.encode(tag, add_special_tokens=False)) == 1


def test_chat_template_renders_tools_and_tool_calls(tiny_policies):
    tok = tiny_policies["qwen2_vl"].tokenizer
    tools = [{"type": "function", "function": {"name": "crop", "parameters": {"type": "object"}}}]
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}}]},
        {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "crop"}]},
    ]
    text = tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
    assert "# Tools" in text and '"name": "crop"' in text
    assert '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call><|im_end|>' in text
    assert "<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>crop\n</tool_response><|im_end|>" in text


@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_equal_hand_computation_from_raw_logits(family, tiny_policies):
    pol = tiny_policies[family]
    f = pol.factor
    tok = pol.tokenizer
    seqs = [_prompt(pol, Image.new("RGB", (2 * f, 2 * f), "blue"), "Q1"),
            _prompt(pol, Image.new("RGB", (3 * f, 2 * f), "red"), "A longer question")]
    responses = [tok.encode("<answer>4</answer><|im_end|>", add_special_tokens=False),
                 tok.encode("hi<|im_end|>", add_special_tokens=False)]
    full = [Seq(s.ids + r, s.images) for s, r in zip(seqs, responses)]
    T = max(len(s.ids) for s in full)
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, r in enumerate(responses):
        mask[b, T - len(r):] = 1
    with torch.no_grad():
        lp, ent = pol.logprobs(full, mask, with_entropy=True)
        for b, s in enumerate(full):
            logits = pol.model(**pol.collate([s])).logits[0]
            banned = pol.banned_token_ids
            logits[:, banned] = float("-inf")
            L = len(s.ids)
            for k in range(len(responses[b])):
                pos = L - len(responses[b]) + k  # index of the response token in the unpadded sequence
                row = torch.log_softmax(logits[pos - 1].double(), -1)
                expect = row[s.ids[pos]].item()
                got = lp[b, T - L + pos].item()
                assert abs(got - expect) < 1e-5
                p = row.exp()
                h = -(p[p > 0] * row[p > 0]).sum().item()
                assert abs(ent[b, T - L + pos].item() - h) < 1e-4
    assert (lp[mask == 0] == 0).all()


def test_bad_model_dirs_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_family(tmp_path / "nope")
    with pytest.raises(ValueError, match="no config.json"):
        detect_family(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="not a Qwen-VL model"):
        detect_family(tmp_path)


def test_lora_wraps_language_model_only(tiny_dirs):
    pytest.importorskip("peft")
    pol = Policy.load(tiny_dirs["qwen2_vl"], dtype="float32", device="cpu", lora={"r": 4, "alpha": 8})
    trainable = [n for n, p in pol.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    image = Image.new("RGB", (56, 56), "red")
    s = _prompt(pol, image, "Q")
    g = HFSampler(pol).generate([Prompt(s.ids, [image])], SamplingParams(max_new_tokens=3))
    assert len(g[0].ids) >= 1


def test_gradient_checkpointing_gives_same_grads(tiny_dirs):
    grads = []
    for ckpt in (False, True):
        pol = Policy.load(tiny_dirs["qwen2_vl"], dtype="float32", device="cpu", gradient_checkpointing=ckpt)
        pol.model.train()
        s = _prompt(pol, Image.new("RGB", (56, 56), "red"), "Q")
        full = Seq(s.ids + [5, 6, 7], s.images)
        mask = torch.zeros(1, len(full.ids), dtype=torch.long)
        mask[0, -3:] = 1
        pol.logprobs([full], mask).sum().backward()
        grads.append(pol.model.lm_head.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
