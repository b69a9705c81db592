"""The codec: image encoding (memoised per image object), placeholders, sequence checks, left-padded batches."""

import gc

import pytest
import torch
from PIL import Image

from vlmrl.models.codec import Seq

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def _seq(codec, image, text):
    tok = codec.tokenizer
    v = codec.encode_image(image)
    ids = (tok.encode("<|im_start|>user\n", add_special_tokens=False) + codec.image_placeholder(v)
           + tok.encode(text + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False))
    return Seq(ids, [v])


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_matches_single_samples(family, tiny_policies):
    pol = tiny_policies[family]
    codec, f = pol.codec, pol.factor
    seqs = [
        _seq(codec, Image.new("RGB", (2 * f, 3 * f), (200, 10, 10)), "What colour is the shape?"),
        _seq(codec, Image.new("RGB", (4 * f, 2 * f), (10, 200, 10)), "Colour?"),
        _seq(codec, Image.effect_noise((3 * f, 3 * f), 40).convert("RGB"), "How many?"),
    ]
    assert len({len(s.ids) for s in seqs}) == 3
    with torch.no_grad():
        batched = pol.model(**codec.collate(seqs, pol.core, pol.device)).logits[:, -1]
        for i, s in enumerate(seqs):
            single = pol.model(**codec.collate([s], pol.core, pol.device)).logits[0, -1]
            assert torch.allclose(batched[i], single, atol=1e-5), (family, i, (batched[i] - single).abs().max())


def test_image_size_and_placeholder_checks(tiny_policies):
    codec = tiny_policies["qwen2_5_vl"].codec
    with pytest.raises(ValueError, match="not a multiple of 28"):
        codec.encode_image(Image.new("RGB", (50, 56)))
    s = _seq(codec, Image.new("RGB", (56, 56), "red"), "Q")
    codec.check_seq(s)
    k = s.ids.index(codec.image_token_id)
    s.ids = s.ids[:k] + s.ids[k + 1:]  # drop one image token
    with pytest.raises(ValueError, match="prompt 3: 3 image tokens in the text but the 1 image"):
        codec.check_seq(s, where="prompt 3")


@pytest.mark.parametrize("family", FAMILIES)
def test_image_token_counts_from_the_size(family, tiny_policies):
    """(w / factor) * (h / factor) tokens: 2x3 merged patches for a (2f, 3f) image; the placeholder wraps them."""
    codec = tiny_policies[family].codec
    f = codec.factor
    v = codec.encode_image(Image.new("RGB", (2 * f, 3 * f), "red"))
    assert codec.image_tokens((2 * f, 3 * f)) == 6 == v.num_tokens(codec.merge)
    ph = codec.image_placeholder(v)
    assert ph[1:-1] == [codec.image_token_id] * 6
    assert codec.tokenizer.convert_ids_to_tokens([ph[0], ph[-1]]) == ["<|vision_start|>", "<|vision_end|>"]


def test_vision_encodes_each_image_object_once(tiny_policies, monkeypatch):
    codec = tiny_policies["qwen2_vl"].codec
    calls = []
    encode = type(codec).encode_image
    monkeypatch.setattr(type(codec), "encode_image", lambda self, im: calls.append(im.size) or encode(self, im))
    a, b = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (56, 56), "red")
    va = codec.vision(a)
    assert codec.vision(a) is va and len(calls) == 1
    vb = codec.vision(b)  # equal pixels, another object: encoded on its own
    assert vb is not va and len(calls) == 2 and torch.equal(va.pixel_values, vb.pixel_values)
    n = len(codec._encoded)
    del a
    gc.collect()
    assert len(codec._encoded) == n - 1  # a dead image's encoding is dropped
