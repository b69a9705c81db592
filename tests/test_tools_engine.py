"""Tools through the rollout engine (scripted policy, tiny model): the nested crop tool's N-turn zooming, a
user tool named by a recipe (file.py:Class), and the registry's errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vlmrl.config import ConfigError, load_config
from vlmrl.data.prompts import parse_tools_block
from vlmrl.rollout import NestedCropTool, Tool, ToolContext, available_tools, get_tool, make_tool
from vlmrl.rollout.engine import RolloutConfig, RolloutEngine
from vlmrl.rollout.scripted import ScriptedSampler
from vlmrl.rollout.trajectory import TrajImage, load_traces, save_traces

ANSWER = "<think>ok</think><answer>7</answer>"


def nested(index, bbox, name="crop"):
    args = {"image_index": index, "bbox_2d": bbox}
    return f'<think>zoom</think><tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


def user_only(sample, cfg, family):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]


def noise(size=(448, 448), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_sample(image):
    return SimpleNamespace(id="s0", images=[image], question="What digit?", answer="7", answer_type="number",
                           choices=None, meta={"gt_boxes": [[150, 150, 200, 200]]})


def run(pol, turns, image=None, **cfg):
    """One trajectory of a 448x448 image whose assistant turns are `turns`, through the engine."""
    scripted = ScriptedSampler(pol.tokenizer, lambda row, turn: turns[turn])
    base = dict(mode="tool", max_turns=3, crop_min_pixels=4 * 28 * 28, crop_max_pixels=112 * 112, max_total_tokens=2000)
    eng = RolloutEngine(pol, RolloutConfig(**{**base, **cfg}), messages_fn=user_only, sampler=scripted)
    scripted.start(1)
    return eng, eng.rollout([make_sample(image or noise())], n_per_prompt=1)[0]


@pytest.fixture
def pol(tiny_policies):
    return tiny_policies["qwen2_5_vl"]  # absolute pixel coordinates; the 448x448 image's first view is 224x224


# ------------------------------------------------------------------------------------------ nested crop


def test_nested_crop_mapping_by_hand():
    """Original 1000x800; crop 1 showed original (200, 100, 600, 300) at 224x112 seen pixels. A box
    [56, 28, 112, 84] on image 1 is x 56..112 * 400/224 = 100..200, y 28..84 * 200/112 = 50..150 inside it:
    original (300, 150, 400, 250); cut from the original, so 100x100 original pixels fitted to the budget."""
    original = noise((1000, 800))
    seen = [TrajImage("input", (500, 400), (1000, 800), 1, -1),
            TrajImage("crop", (224, 112), (1000, 800), 1, 0, [100.0, 50.0, 300.0, 150.0], [200, 100, 600, 300])]
    tool = NestedCropTool()
    call = tool.read(nested(1, [56, 28, 112, 84]))
    assert call.args == (1, (56.0, 28.0, 112.0, 84.0))
    obs = tool.run(call.args, ToolContext([original], seen, "absolute", 28, 4 * 28 * 28, 112 * 112))
    assert obs.record == {"image_index": 1, "bbox": [56.0, 28.0, 112.0, 84.0], "box_seen": [56.0, 28.0, 112.0, 84.0],
                          "box_original": [300, 150, 400, 250], "area_raw": 56 * 56 / (224 * 112)}
    assert obs.image.image.size == (112, 112)  # smart_resize(100, 100) at factor 28
    assert obs.image.image.tobytes() == original.crop((300, 150, 400, 250)).resize((112, 112), Image.BICUBIC).tobytes()
    # image 0 is the first view: the box maps through the whole image (x2, as the crop tool does)
    first = tool.run(tool.read(nested(0, [100, 50, 300, 150])).args, ToolContext([original], seen, "absolute"))
    assert first.record["box_original"] == [200, 100, 600, 300]
    # in 0-1000 coordinates of image 1: [250, 250, 500, 750] -> seen [56, 28, 112, 84], the same box
    rel = tool.run(tool.read(nested(1, [250, 250, 500, 750])).args, ToolContext([original], seen, "rel1000", 28, 784, 12544))
    assert rel.record["box_original"] == [300, 150, 400, 250]


@pytest.mark.parametrize("arguments, kind, fragment", [
    ({"bbox_2d": [1, 2, 3, 4]}, "missing_index", '"image_index"'),
    ({"image_index": -1, "bbox_2d": [1, 2, 3, 4]}, "bad_index", "got -1"),
    ({"image_index": "1", "bbox_2d": [1, 2, 3, 4]}, "bad_index", 'got "1"'),
    ({"image_index": True, "bbox_2d": [1, 2, 3, 4]}, "bad_index", "got true"),
    ({"image_index": 0, "bbox_2d": [1, 2, 3]}, "wrong_arity", "got 3 values"),
])
def test_nested_crop_argument_errors(arguments, kind, fragment):
    err = NestedCropTool().validate(arguments)
    assert err.kind == kind and fragment in err.message and err.message.startswith("Error: ")


def test_nested_crop_prompt_schema():
    schema = NestedCropTool("zoom_in").schema("rel1000", "full")["function"]
    assert schema["name"] == "zoom_in" and schema["parameters"]["required"] == ["image_index", "bbox_2d"]
    assert "0 = the first image" in schema["parameters"]["properties"]["image_index"]["description"]
    assert '"image_index": k, "bbox_2d"' in NestedCropTool().short_prompt("absolute")


def test_two_nested_crops_then_an_answer(pol):
    """Turn 0 crops [0, 0, 112, 112] of the 224x224 first view: original (0, 0, 224, 224), shown at 112x112
    (the 112*112 budget halves it). Turn 1 crops [56, 56, 112, 112] of that crop (image 1): original
    (112, 112, 224, 224), 112x112 pixels cut from the ORIGINAL and shown unscaled, so pixel-equal to it.
    Turn 2 answers."""
    image = noise()
    eng, t = run(pol, [nested(0, [0, 0, 112, 112]), nested(1, [56, 56, 112, 112]), ANSWER], image=image,
                 tool="nested_crop")
    assert t.finish_reason == "answered" and len(t.turns) == 3
    assert [im.kind for im in t.images] == ["input", "crop", "crop"]
    assert [c.box_original for c in t.tool_calls] == [[0, 0, 224, 224], [112, 112, 224, 224]]
    assert [c.record["image_index"] for c in t.tool_calls] == [0, 1] and all(c.valid for c in t.tool_calls)
    assert [im.box_original for im in t.images[1:]] == [[0, 0, 224, 224], [112, 112, 224, 224]]
    assert [im.seen_size for im in t.images] == [(224, 224), (112, 112), (112, 112)]
    assert t.images[2].image.tobytes() == image.crop((112, 112, 224, 224)).tobytes()
    assert t.visual_tokens == 64 + 16 + 16
    assert t.tool_calls[1].arguments == {"image_index": 1, "bbox_2d": [56, 56, 112, 112]}


def test_nested_crop_bad_index_is_shown_to_the_model(pol):
    _, t = run(pol, [nested(0, [0, 0, 112, 112]), nested(5, [0, 0, 10, 10]), ANSWER], tool="nested_crop")
    assert t.finish_reason == "answered" and len(t.images) == 2  # no image for the bad call
    bad = t.tool_calls[1]
    assert not bad.valid and bad.error == "Error: image_index 5 does not exist; the images you have seen are 0 to 1."
    text = pol.tokenizer.decode(t.ids[t.prompt_len:])
    assert bad.error + "\nThe tool call was not executed." in text


# ------------------------------------------------------------------------------------------ a user tool

USER_TOOL = '''
from vlmrl.rollout.tools import Tool, ToolCallError


class MyTool(Tool):
    """Counts the pixels of the original image brighter than a level."""

    name = "count"

    def schema(self, coords="absolute", style="full"):
        return {"type": "function", "function": {"name": self.name, "description": "Count bright pixels.",
                "parameters": {"type": "object", "properties": {"level": {"type": "integer"}}, "required": ["level"]}}}

    def validate(self, arguments):
        level = arguments.get("level")
        if not isinstance(level, int) or isinstance(level, bool):
            return ToolCallError("Error: level must be an integer.", "bad_level")
        return level

    def run(self, level, context):
        n = sum(1 for v in context.originals[0].convert("L").tobytes() if v > level)
        return self.observation(text=f"{n} pixels are brighter than {level}.", record={"level": level, "count": n})
'''


def test_user_tool_from_a_recipe(pol, tmp_path):

    path = tmp_path / "my_tool.py"
    path.write_text(USER_TOOL)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"rollout:\n  mode: tool\n  tool: {path}:MyTool\n  tool_name: count\n  max_turns: 2\n")
    cfg = load_config(recipe).rollout
    assert cfg.tool == f"{path}:MyTool" and cfg.tool_name == "count"
    image = Image.new("RGB", (448, 448), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # 200 bright pixels
    call = '<tool_call>{"name": "count", "arguments": {"level": 128}}</tool_call>'
    scripted = ScriptedSampler(pol.tokenizer, lambda row, turn: [call, ANSWER][turn])
    eng = RolloutEngine(pol, cfg, sampler=scripted)  # the default prompt: the user tool's schema in the system turn
    sample = make_sample(image)
    system = eng.messages_fn(sample, cfg, pol.family)[0]["content"]
    assert parse_tools_block(system) == [eng.tool.schema("absolute", "full")]
    scripted.start(1)
    (t,) = eng.rollout([sample], n_per_prompt=1)
    assert t.finish_reason == "answered" and len(t.images) == 1  # a text-only observation
    assert "<tool_response>\n200 pixels are brighter than 128.\n" in pol.tokenizer.decode(t.ids[t.prompt_len:])
    save_traces(tmp_path / "traces.jsonl", [t])
    line = json.loads((tmp_path / "traces.jsonl").read_text())
    assert line["tool_calls"] == [{"turn": 0, "raw": call, "valid": True, "error": None, "name": "count",
                                   "arguments": {"level": 128}, "level": 128, "count": 200}]
    (back,) = load_traces(tmp_path / "traces.jsonl")
    assert back.tool_calls == t.tool_calls and back.tool_calls[0].record == {"level": 128, "count": 200}
    assert back.tool_calls[0].box_original is None  # the crop accessors are None for other tools


def test_old_trace_lines_still_load(tmp_path):
    """A trace line written before tools had a registry (crop fields at the top level) reads back with the
    same accessors."""
    old = {"turn": 0, "raw": "<tool_call>...</tool_call>", "valid": True, "bbox": [1.0, 2.0, 30.0, 40.0],
           "box_seen": [1.0, 2.0, 30.0, 40.0], "box_original": [2, 4, 60, 80], "error": None}
    from vlmrl.rollout.trajectory import ToolCallRecord

    c = ToolCallRecord.from_json(old)
    assert (c.bbox, c.box_seen, c.box_original, c.valid, c.name) == (old["bbox"], old["box_seen"], [2, 4, 60, 80], True, None)
    assert {k: v for k, v in c.to_json().items() if k in old} == old  # the same keys and values go back out


def test_registry_errors(tmp_path):
    assert {"crop", "nested_crop"} <= set(available_tools())
    assert type(make_tool("nested_crop", "zoom")) is NestedCropTool and make_tool("nested_crop", "zoom").name == "zoom"
    with pytest.raises(KeyError, match="unknown tool 'zoomer'.*registered"):
        get_tool("zoomer")
    with pytest.raises(ConfigError, match="rollout.tool: unknown tool 'zoomer'"):
        RolloutConfig(tool="zoomer")  # a recipe with a bad tool fails when it loads
    path = tmp_path / "tools.py"
    path.write_text("from vlmrl.rollout.tools import Tool\n\nclass Good(Tool):\n    pass\n\ndef not_a_tool():\n    pass\n")
    assert issubclass(get_tool(f"{path}:Good"), Tool)
    with pytest.raises(TypeError, match="not a subclass"):
        get_tool(f"{path}:not_a_tool")
    with pytest.raises(AttributeError, match="no class 'Missing'"):
        get_tool(f"{path}:Missing")
    with pytest.raises(FileNotFoundError, match="tool spec"):
        get_tool(f"{tmp_path / 'nope.py'}:Good")
    with pytest.raises(ValueError, match="identifier"):
        make_tool("crop", "two words")
