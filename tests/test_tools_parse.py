"""Reading tool calls: the generic parser (envelope) and the crop tool's argument checks, as the model sees them."""

from __future__ import annotations

import json

import pytest

from vlmrl.rollout import (
    MAX_TOOL_CALL_CHARS,
    CropTool,
    ToolCall,
    ToolCallError,
    has_tool_call,
    parse_tool_call,
)


def wrap(body: str) -> str:
    return f"<tool_call>{body}</tool_call>"


def call_json(bbox, name="crop") -> str:
    return wrap(json.dumps({"name": name, "arguments": {"bbox_2d": bbox}}))


def read(text, tool_name="crop"):
    """The crop tool's whole model-facing step: the generic parser, then bbox_2d checks."""
    return CropTool(tool_name).read(text)


# ------------------------------------------------------------------------------------------ parse: valid


def test_no_tag_is_answer_turn():
    assert parse_tool_call("<think>hmm</think><answer>B</answer>") is None
    assert parse_tool_call("") is None
    assert read("<answer>3</answer>") is None
    assert not has_tool_call("<answer>3</answer>")
    assert has_tool_call("x <tool_call>")


@pytest.mark.parametrize(
    "text, bbox",
    [
        (call_json([1, 2, 30, 40]), (1.0, 2.0, 30.0, 40.0)),
        (call_json([1.5, 2.25, 30.0, 4e1]), (1.5, 2.25, 30.0, 40.0)),
        (call_json([-5, 0, 10, 10]), (-5.0, 0.0, 10.0, 10.0)),  # parses; mapping clamps later
        (
            '<think>the sign is small, zoom in</think>\n<tool_call>\n  {"name": "crop",\n   "arguments": '
            '{ "bbox_2d" : [ 10 , 20 ,\n 110, 120 ] } }\n</tool_call>',
            (10.0, 20.0, 110.0, 120.0),
        ),
        (
            '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4], "label": "sign"}, "id": 7}'
            "</tool_call><|im_end|>",
            (1.0, 2.0, 3.0, 4.0),
        ),
    ],
)
def test_valid_calls(text, bbox):
    call = read(text)
    assert isinstance(call, ToolCall) and call.ok
    assert call.name == "crop"
    assert call.args == bbox and all(type(v) is float for v in call.args)
    assert call.arguments["bbox_2d"] == list(bbox)  # as written
    assert call.raw.startswith("<tool_call>") and call.raw.endswith("</tool_call>")
    assert text[call.span[0] : call.span[1]] == call.raw


def test_configurable_tool_name():
    text = call_json([1, 2, 3, 4], name="request_local_region")
    call = read(text, tool_name="request_local_region")
    assert isinstance(call, ToolCall) and call.name == "request_local_region"
    err = read(text)
    assert isinstance(err, ToolCallError) and err.kind == "wrong_name"
    assert "request_local_region" in err.message and '"crop"' in err.message


# ------------------------------------------------------------------------------------------ parse: errors


def err_of(text, **kw) -> ToolCallError:
    out = read(text, **kw)
    assert isinstance(out, ToolCallError), out
    assert not out.ok
    assert out.message.startswith("Error: ")
    assert str(out) == out.message
    return out


@pytest.mark.parametrize(
    "text, kind, fragment",
    [
        (wrap('{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}'), "malformed_json", "not valid JSON"),
        (wrap("{'name': 'crop'}"), "malformed_json", "not valid JSON"),
        (wrap("   \n "), "malformed_json", "empty"),
        (
            wrap('{"name": "crop", "arguments": {"bbox_2d": [1,2,3,4]}} {"name": "crop", "arguments": {"bbox_2d": [1,2,3,4]}}'),
            "several_objects",
            "exactly one JSON object",
        ),
        (call_json([1, 2, 3, 4]) + call_json([5, 6, 7, 8]), "several_calls", "2 <tool_call> blocks"),
        ('<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}', "no_closing_tag", "</tool_call>"),
        (call_json([1, 2, 3, 4], name="zoom"), "wrong_name", 'unknown tool "zoom"'),
        (wrap('{"arguments": {"bbox_2d": [1, 2, 3, 4]}}'), "wrong_name", 'no "name"'),
        (wrap('{"name": "crop"}'), "missing_arguments", '"arguments"'),
        (wrap('{"name": "crop", "arguments": "[1, 2, 3, 4]"}'), "bad_arguments", "JSON object, got a string"),
        (wrap('{"name": "crop", "arguments": {"box": [1, 2, 3, 4]}}'), "missing_bbox", '"bbox_2d"'),
        (wrap("[1, 2, 3, 4]"), "not_an_object", "JSON object, got a list"),
        (call_json("1, 2, 3, 4"), "bbox_not_a_list", "got a string"),
        (call_json({"x1": 1}), "bbox_not_a_list", "got an object"),
        (call_json([1, 2, 3]), "wrong_arity", "got 3 values"),
        (call_json([1, 2, 3, 4, 5]), "wrong_arity", "got 5 values"),
        (call_json([]), "wrong_arity", "got 0 values"),
        (call_json([[1, 2, 3, 4]]), "wrong_arity", "got 1 values"),
        (call_json([[1, 2], [3, 4], 5, 6]), "not_a_number", "value 1 is a list"),
        (call_json([1, "12", 3, 4]), "not_a_number", 'value 2 is a string ("12")'),
        (call_json([1, 2, True, 4]), "not_a_number", "value 3 is a boolean"),
        (call_json([1, 2, 3, None]), "not_a_number", "value 4 is null"),
        (wrap('{"name": "crop", "arguments": {"bbox_2d": [NaN, 2, 3, 4]}}'), "not_finite", "NaN"),
        (wrap('{"name": "crop", "arguments": {"bbox_2d": [1, Infinity, 3, 4]}}'), "not_finite", "Infinity"),
        (wrap('{"name": "crop", "arguments": {"bbox_2d": [1, 2, -Infinity, 4]}}'), "not_finite", "Infinity"),
        (wrap('{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 1e400]}}'), "not_finite", "finite"),
        (wrap('{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 1' + "0" * 400 + "]}}"), "not_finite", "finite"),
    ],
)
def test_malformed_calls(text, kind, fragment):
    err = err_of(text)
    assert err.kind == kind
    assert fragment in err.message


def test_error_messages_are_readable():
    assert err_of(call_json([1, 2, 3])).message == (
        "Error: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got 3 values."
    )
    # malformed JSON tells the model the expected format
    assert '"bbox_2d": [x1, y1, x2, y2]' in err_of(wrap("{oops")).message


def test_huge_and_deep_inputs():
    err = err_of(wrap("[" * 10**6 + "]" * 10**6))
    assert err.kind == "too_long" and str(MAX_TOOL_CALL_CHARS) in err.message
    depth = MAX_TOOL_CALL_CHARS // 2 - 2  # deeper than the recursion limit, under the size cap
    err = err_of(wrap("[" * depth + "]" * depth))
    assert err.kind == "malformed_json"
    body = '{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, ' + "[" * depth + "]" * depth + "]}}"
    assert err_of(wrap(body[: MAX_TOOL_CALL_CHARS])).kind in {"malformed_json", "not_a_number"}
    # a 4000-digit integer overflows float: an error, not an exception
    assert err_of(wrap('{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, ' + "9" * 4000 + "]}}")).kind == "not_finite"
    # long text around a valid call is fine
    assert isinstance(read("x" * 10**6 + call_json([1, 2, 3, 4]) + "y" * 10**6), ToolCall)


def test_non_str_is_a_caller_bug():
    with pytest.raises(TypeError):
        parse_tool_call(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        read(None)  # type: ignore[arg-type]




# ------------------------------------------------------------------------------------------ the generic parser


def test_parser_is_tool_agnostic():
    """The bare parser checks only the envelope: any arguments object comes back as written."""
    text = wrap('{"name": "count", "arguments": {"colour": "red", "n": [1, 2]}}')
    call = parse_tool_call(text, "count")
    assert isinstance(call, ToolCall) and call.args is None
    assert call.arguments == {"colour": "red", "n": [1, 2]} and call.raw == text
    assert isinstance(parse_tool_call(call_json([1, 2]), "crop"), ToolCall)  # bbox checks are the crop tool's


def test_parser_hint_is_the_tool_example():
    generic = parse_tool_call(wrap("{oops"), "count")
    assert generic.message.endswith('Use: <tool_call>{"name": "count", "arguments": {...}}</tool_call>')
    own = parse_tool_call(wrap("{oops"), "count", example="<tool_call>EXAMPLE</tool_call>")
    assert own.message.endswith("Use: <tool_call>EXAMPLE</tool_call>")
    # the crop tool's messages quote its call format, with the configured name
    assert read(wrap("{oops"), "zoom_in").message.endswith(
        'Use: <tool_call>{"name": "zoom_in", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}</tool_call>')
