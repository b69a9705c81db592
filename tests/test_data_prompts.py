"""Prompt templates: message structure, the crop tool declared in Qwen's tool format, JSON round trip."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlmrl.data import Sample, build_messages, default_convention, crop_tool_schema, direct_messages, tool_messages
from vlmrl.data.prompts import parse_tools_block, tool_system_prompt


@pytest.fixture
def sample():
    return Sample(images=[Image.new("RGB", (8, 8))], question="Which shape is the large one?", answer="B",
                  answer_type="choice", choices=["circle", "square"], id="x")


def test_direct_messages(sample):
    msgs = direct_messages(sample)
    assert [m["role"] for m in msgs] == ["system", "user"]
    content = msgs[1]["content"]
    assert content[0] == {"type": "image"} and content[-1]["type"] == "text"
    text = content[-1]["text"]
    assert text.startswith("Which shape is the large one?\nA. circle\nB. square\n")
    assert "<think>" in text and "</think>" in text and "<answer>" in text and "</answer>" in text
    assert "letter" in text
    assert "<tools>" not in json.dumps(msgs)


def test_multiple_images_and_include_images(sample):
    sample.images = [Image.new("RGB", (4, 4)), Image.new("RGB", (5, 5))]
    msgs = direct_messages(sample, include_images=True)
    parts = msgs[1]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"]
    assert parts[1]["image"].size == (5, 5)
    no_sys = direct_messages(question="How many?", num_images=0, system="")
    assert [m["role"] for m in no_sys] == ["user"] and no_sys[0]["content"][0]["type"] == "text"


@pytest.mark.parametrize("style", ["full", "compact"])
@pytest.mark.parametrize("coords, phrase", [("absolute", "pixel"), ("rel1000", "1000"), ("rel1", "0-1")])
def test_tool_messages_declare_the_schema(sample, style, coords, phrase):
    msgs = tool_messages(sample, style=style, coords=coords)
    system = msgs[0]["content"]
    assert msgs[0]["role"] == "system"
    assert "# Tools" in system and "<tools>" in system and "</tools>" in system
    assert '<tool_call>' in system and '{"name": <function-name>, "arguments": <args-json-object>}' in system
    schemas = parse_tools_block(system)
    assert schemas == [crop_tool_schema("crop", coords, style)]
    fn = schemas[0]["function"]
    assert fn["name"] == "crop" and fn["parameters"]["required"] == ["bbox_2d"]
    bbox = fn["parameters"]["properties"]["bbox_2d"]
    assert bbox["type"] == "array" and bbox["minItems"] == bbox["maxItems"] == 4
    assert phrase in fn["description"].replace(" to ", "-").replace("from 0-1 ", "0-1 ")
    user = msgs[1]["content"][-1]["text"]
    assert "<think>" in user and "<answer>" in user and "crop" in user
    # the whole message list survives a JSON round trip (no PIL objects by default)
    assert json.loads(json.dumps(msgs)) == msgs


def test_full_tool_block_is_qwen_format():
    system = tool_system_prompt()
    assert ("You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{" in system)
    assert ("For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
            "<args-json-object>}\n</tool_call>") in system
    # one JSON schema per line between the tags
    inner = system.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert len(inner.splitlines()) == 1 and json.loads(inner)["type"] == "function"


def test_tool_name_configurable_and_compact_is_shorter(sample):
    msgs = tool_messages(sample, tool_name="request_local_region")
    assert parse_tools_block(msgs[0]["content"])[0]["function"]["name"] == "request_local_region"
    assert "request_local_region" in msgs[1]["content"][-1]["text"]
    full = json.dumps(tool_messages(sample))
    compact = json.dumps(tool_messages(sample, style="compact"))
    assert len(compact) < 0.7 * len(full)
    assert len(json.dumps(direct_messages(sample, style="compact"))) < len(json.dumps(direct_messages(sample)))


def test_build_messages_and_validation(sample):
    assert build_messages(sample, "tool") == tool_messages(sample)
    assert build_messages(sample, "direct", style="compact") == direct_messages(sample, style="compact")
    with pytest.raises(ValueError, match="mode"):
        build_messages(sample, "chat")
    with pytest.raises(ValueError, match="style"):
        direct_messages(sample, style="tiny")
    with pytest.raises(ValueError, match="coords"):
        tool_messages(sample, coords="normalized")
    assert default_convention("qwen2_5_vl") == "absolute"
    assert default_convention("qwen2_vl") == default_convention("qwen3_vl") == "rel1000"
