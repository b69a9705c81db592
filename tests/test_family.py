"""The model-family table (vlmrl/family.py) and the one coordinate vocabulary every module reads from it."""

import pytest

from vlmrl.data.prompts import crop_tool_schema
from vlmrl.data.vision import image_factor
from vlmrl.family import (
    CONVENTIONS,
    FAMILIES,
    FAMILY_OF_MODEL_TYPE,
    default_convention,
    get_family,
    normalise_family,
)
from vlmrl.rollout.tools import coords as crop_tool


def test_table_facts():
    # Released checkpoints: 14 px patches for Qwen2/2.5-VL, 16 px for Qwen3-VL, 2x2 merge everywhere.
    assert [(f.name, f.patch, f.merge, f.factor) for f in FAMILIES.values()] == [
        ("qwen2_vl", 14, 2, 28), ("qwen2_5_vl", 14, 2, 28), ("qwen3_vl", 16, 2, 32)]
    assert FAMILY_OF_MODEL_TYPE == {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl"}
    assert get_family("qwen3_vl").image_mean == (0.5, 0.5, 0.5)
    assert get_family("qwen2_vl").image_std[0] == pytest.approx(0.26862954)


def test_names_and_conventions():
    assert normalise_family(" Qwen2.5-VL ") == "qwen2_5_vl"
    assert default_convention("Qwen2.5-VL") == "absolute"
    assert default_convention("qwen2_vl") == default_convention("qwen3_vl") == "rel1000"
    assert CONVENTIONS == ("absolute", "rel1000", "rel1")
    with pytest.raises(ValueError, match=r"unknown coordinate convention 'relative1000'.*rel1000"):
        crop_tool.to_seen_pixels([0, 0, 1, 1], (10, 10), "relative1000")
    with pytest.raises(ValueError, match=r"unknown model family 'llava'.*qwen2_5_vl"):
        get_family("llava")
    with pytest.raises(ValueError, match="unknown model family"):
        image_factor("llava")


def test_readers_use_the_one_vocabulary():
    # The crop tool, image sizing and the prompt builder read the same table and the same words.
    assert crop_tool.default_convention is default_convention
    assert crop_tool.CONVENTIONS is CONVENTIONS
    assert image_factor("qwen3_vl") == 32
    for convention in CONVENTIONS:
        crop_tool_schema(coords=convention)  # every convention has prompt text
    with pytest.raises(ValueError, match="coords"):
        crop_tool_schema(coords="relative1")
