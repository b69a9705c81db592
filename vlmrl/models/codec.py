"""The codec: how token ids and images become Qwen-VL model inputs, shared by the scorer and the samplers.

- `VisionInput`: one image as the vision tower takes it (flattened patches, (t, h, w) patch grid, pixel size).
- `Seq`: a token-id list plus the `VisionInput`s of its image placeholders, in order.
- `Codec(processor, family)`: the family's token ids (image pad, padding, end of turn, vision specials), and
  - `encode_image(img)`: pixels + grid of a PIL image already sized to the family's factor (see data.vision);
    `vision(img)` is the same, memoised per image object, so the rollout engine, the sampler and the trainer
    share one encoding of each image;
  - `image_tokens(size)` / `image_placeholder(vis)`: an image's token count and its placeholder ids;
  - `check_seq(seq)`: image placeholders agree with the images;
  - `token_batch(seqs)` / `collate(seqs, core, device)`: the left-padded batch with `mm_token_type_ids` and
    explicit 3-D rope positions (`rope_positions`, from the model's own rope index).

Every batch is laid out left padded: row b, column T - len(b) + i is token i of sequence b.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from vlmrl.data.vision import image_factor
from vlmrl.family import get_family

VISION_SPECIAL = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass
class VisionInput:
    """One image as the vision tower takes it: flattened patches and its (t, h, w) patch grid."""

    pixel_values: torch.Tensor  # [t*h*w, C*temporal*patch*patch]
    grid_thw: tuple[int, int, int]
    size: tuple[int, int]  # (width, height) in pixels, after sizing

    def num_tokens(self, merge: int = 2) -> int:
        t, h, w = self.grid_thw
        return t * h * w // (merge * merge)


@dataclass
class Seq:
    """Token ids of one sequence and the images of its `<|image_pad|>` runs, in order."""

    ids: list[int]
    images: list[VisionInput] = field(default_factory=list)


class Codec:
    """Token ids and image encoding of one Qwen-VL family (a processor = tokenizer + image processor)."""

    def __init__(self, processor, family: str):
        self.processor = processor
        self.tokenizer = tok = processor.tokenizer
        self.image_processor = processor.image_processor
        self.family = family
        self.factor = image_factor(family)
        self.merge = get_family(family).merge
        self.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        self.eos_token_ids = sorted({tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")} - {None})
        self.banned_token_ids = [tok.convert_tokens_to_ids(t) for t in VISION_SPECIAL]
        self._encoded: dict[int, tuple[weakref.ref, VisionInput]] = {}  # id(image) -> (its weakref, encoding)

    # ------------------------------------------------------------------ images

    def encode_image(self, image) -> VisionInput:
        """Patchify a PIL image whose sides are multiples of the family factor (size it with fit_to_budget)."""
        w, h = image.size
        if w % self.factor or h % self.factor:
            raise ValueError(
                f"image of size {w}x{h} is not a multiple of {self.factor} per side; "
                "resize it with vlmrl.data fit_to_budget / smart_resize first")
        out = self.image_processor(images=[image], do_resize=False, return_tensors="pt")
        grid = tuple(int(x) for x in out["image_grid_thw"][0].tolist())
        return VisionInput(out["pixel_values"], grid, (w, h))

    def vision(self, image) -> VisionInput:
        """`encode_image(image)`, encoded once per image object while it lives (the same `VisionInput` each time).
        An image must not be drawn on after it was encoded (the encoding would not follow)."""
        key = id(image)
        hit = self._encoded.get(key)
        if hit is not None and hit[0]() is image:
            return hit[1]
        vis = self.encode_image(image)
        encoded = self._encoded
        self._encoded[key] = (weakref.ref(image, lambda _, key=key: encoded.pop(key, None)), vis)
        return vis

    def image_tokens(self, size: tuple[int, int]) -> int:
        """Image tokens of an image of `size` (w, h) pixels, sides multiples of the factor."""
        return (size[0] // self.factor) * (size[1] // self.factor)

    def image_placeholder(self, vis: VisionInput) -> list[int]:
        """Token ids of one image in a sequence: vision_start, n image pads, vision_end."""
        tok = self.tokenizer
        start, end = tok.convert_tokens_to_ids("<|vision_start|>"), tok.convert_tokens_to_ids("<|vision_end|>")
        return [start] + [self.image_token_id] * vis.num_tokens(self.merge) + [end]

    def check_seq(self, seq: Seq, where: str = "sequence") -> None:
        """Raise a clear error when image placeholders and images disagree."""
        ids = torch.tensor(seq.ids)
        n_tokens = int((ids == self.image_token_id).sum())
        expected = sum(v.num_tokens(self.merge) for v in seq.images)
        if n_tokens != expected:
            raise ValueError(
                f"{where}: {n_tokens} image tokens in the text but the {len(seq.images)} image(s) need {expected}")

    # ------------------------------------------------------------------ batches

    def token_batch(self, seqs: list[Seq]) -> dict:
        """input_ids, attention_mask, mm_token_type_ids (and image_grid_thw) of the left-padded sequences."""
        T = max(len(s.ids) for s in seqs)
        B = len(seqs)
        ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, T - len(s.ids):] = torch.tensor(s.ids, dtype=torch.long)
            attn[b, T - len(s.ids):] = 1
        mm = (ids == self.image_token_id).long() * attn
        batch = {"input_ids": ids, "attention_mask": attn, "mm_token_type_ids": mm}
        grids = [v.grid_thw for s in seqs for v in s.images]
        if grids:
            batch["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        return batch

    def collate(self, seqs: list[Seq], core, device: torch.device, tokens: dict | None = None) -> dict:
        """Left-pad sequences into model inputs on `device` with mm_token_type_ids and 3-D rope positions (`core`:
        the unwrapped transformers model, for its rope index; `tokens`: the seqs' `token_batch`, when the caller has
        it already)."""
        batch = dict(tokens) if tokens is not None else self.token_batch(seqs)
        images = [v for s in seqs for v in s.images]
        if images:
            batch["pixel_values"] = torch.cat([v.pixel_values for v in images], dim=0)
        batch["position_ids"] = self.rope_positions(batch, core)
        return {k: v.to(device) for k, v in batch.items()}

    @staticmethod
    def rope_positions(batch: dict, core) -> torch.Tensor:
        """[3, B, T] multimodal rope positions (padding gets position 0), from `core`'s `get_rope_index`."""
        inner = core.model if hasattr(core, "model") else core
        pos, _ = inner.get_rope_index(
            batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"), attention_mask=batch["attention_mask"])
        return pos
