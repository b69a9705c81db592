"""The model-family table: every fact vlmrl keeps per Qwen-VL family, and the bbox coordinate conventions.

One row per family (``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``): the checkpoint ``model_type`` that
names it, the vision patch size and spatial merge (an image side is a multiple of ``patch * merge``), the
image normalisation of the released checkpoints, and the coordinate convention the family was trained
to write boxes in. Everything else (image sizing in ``data/vision.py``, the processor, the policy, the
crop tool, the prompts, the eval harness) reads this table.

Coordinate conventions for a ``bbox_2d`` (one vocabulary, used by recipes' ``rollout.coord_convention``,
the crop tool and the prompt builders' ``coords=``):

- ``"absolute"``: pixels of the image the model sees (Qwen2.5-VL).
- ``"rel1000"``: 0..1000 relative to the seen image (Qwen2-VL and Qwen3-VL).
- ``"rel1"``: 0..1 relative to the seen image.
"""

from __future__ import annotations

from dataclasses import dataclass

CONVENTIONS = ("absolute", "rel1000", "rel1")
CONVENTION_RANGE = {"absolute": None, "rel1000": 1000.0, "rel1": 1.0}
"""Full-image coordinate of each convention (None: pixels of the seen image)."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Family:
    """What vlmrl needs to know about one Qwen-VL family."""

    name: str
    model_type: str  # config.json "model_type" of its checkpoints
    patch: int  # vision patch side in pixels
    merge: int  # spatial merge: merge x merge patches become one language-model token
    convention: str  # bbox coordinate convention the family was trained with
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    fsdp_wrap: tuple[str, ...] = ()  # module classes FSDP shards one by one: the decoder layer and the vision block

    @property
    def factor(self) -> int:
        """Side multiple of a resized image: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL."""
        return self.patch * self.merge


FAMILIES = {
    f.name: f
    for f in (
        Family("qwen2_vl", "qwen2_vl", 14, 2, "rel1000", CLIP_MEAN, CLIP_STD,
               ("Qwen2VLDecoderLayer", "Qwen2VLVisionBlock")),
        Family("qwen2_5_vl", "qwen2_5_vl", 14, 2, "absolute", CLIP_MEAN, CLIP_STD,
               ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock")),
        Family("qwen3_vl", "qwen3_vl", 16, 2, "rel1000", HALF, HALF,
               ("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock")),
    )
}
FAMILY_OF_MODEL_TYPE = {f.model_type: f.name for f in FAMILIES.values()}


def normalise_family(name: str) -> str:
    """``"Qwen2.5-VL"``, ``"qwen2.5-vl"`` -> ``"qwen2_5_vl"`` (the table's key)."""
    return name.strip().lower().replace("-", "_").replace(".", "_")


def get_family(name: str) -> Family:
    """The table row for a family name (spelled as :func:`normalise_family` accepts); a clear error else."""
    key = normalise_family(name) if isinstance(name, str) else name
    try:
        return FAMILIES[key]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILIES)}") from None


def default_convention(family: str) -> str:
    """Coordinate convention a model family was trained with: "absolute" for Qwen2.5-VL,
    "rel1000" for Qwen2-VL and Qwen3-VL. Accepts "qwen2_5_vl", "qwen2.5-vl", "Qwen2.5-VL", ..."""
    return get_family(family).convention
