"""Rewards: answer extraction, accuracy by answer type, format templates, registry and user rewards."""

import sys

import pytest

from vlmrl.rewards import (
    accuracy_reward,
    call_reward,
    extract_answer,
    format_direct,
    format_reward,
    format_tool,
    get_reward,
    load_reward_fn,
    math_match,
    parse_choice,
    parse_number,
    register_reward,
    registry,
    score_answer,
)

# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize("text, expected", [
    ("no tags at all", None),
    ("", None),
    (None, None),
    ("<think>x</think><answer> B </answer>", "B"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),  # last tag wins
    ("<answer>3</answer> and \\boxed{4}", "3"),  # the tag beats \boxed
    ("so \\boxed{\\frac{1}{\\sqrt{2}}} done", "\\frac{1}{\\sqrt{2}}"),  # nested braces
    ("\\boxed{1} then \\boxed{{a}+{b}}", "{a}+{b}"),  # last \boxed
    ("\\boxed{7} and a truncated \\boxed{\\frac{1}{", "7"),  # an unbalanced one is skipped
    ("<answer>unclosed", None),
    ("<answer>unclosed \\boxed{5}", "5"),
    ("<answer>The answer is \\boxed{12}</answer>", "12"),  # \boxed inside the tag is unwrapped
    ("<answer>\nmulti\nline\n</answer>", "multi\nline"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# ---------------------------------------------------------------- multiple choice

CHOICES = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B)", "B"), ("B) dog", "B"), ("(B) dog", "B"), ("B. dog", "B"),
    ("b", "B"), ("Answer: C", "C"), ("The answer is (D).", "D"), ("Option A", "A"), ("A. A cat", "A"),
    ("A or B", None), ("(A) or (B)", None), ("A, B", None), ("A/B", None), ("A and B", None), ("AB", None),
    ("E", None),  # out of range for 4 choices
    ("dog", "B"), ("The Dog.", "B"), ("horse", None), ("", None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, CHOICES) == expected


def test_choice_accuracy():
    def acc(pred, answer, choices=CHOICES):
        return score_answer(pred, answer, "choice", choices)

    assert acc("B) dog", "B") == 1.0
    assert acc("(B)", "(B)") == 1.0
    assert acc("A or B", "B") == 0.0
    assert acc("B", "dog") == 1.0  # a target given as the option text
    assert acc("B", 1) == 1.0  # a target given as a 0-based index
    assert acc("E", "E", None) == 1.0  # without choices any letter is an option
    assert acc("C", "B") == 0.0


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("text, expected", [
    ("1,234", (1234.0, False)), ("12%", (12.0, True)), ("12 %", (12.0, True)), ("-3.5", (-3.5, False)),
    ("1/2", (0.5, False)), ("$1,000.50", (1000.5, False)), ("about 7 people", (7.0, False)),
    ("\u22122", (-2.0, False)), ("1e3", (1000.0, False)), ("3 or 4", None), ("none", None), ("5 and 5", (5.0, False)),
])
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("3 or 4", (4.0, False)), ("I count 3, no: 12%", (12.0, True)), ("1/2 of 10", (10.0, False)),
    ("none", None), ("7", (7.0, False)), ("2 and 1e999", (2.0, False)),
])
def test_parse_number_last(text, expected):
    # The zoom scorer's rule: the same number grammar, but the last of several numbers counts.
    assert parse_number(text, when_several="last") == expected


def test_parse_number_edges():
    assert parse_number("1e999") is None  # too large for a float: not a number, not an OverflowError
    assert parse_number(float("nan")) is None
    assert parse_number(3) == (3.0, False)
    with pytest.raises(ValueError, match="when_several"):
        parse_number("3", when_several="first")


def test_number_accuracy():
    def acc(pred, answer, **kw):
        return score_answer(pred, answer, "number", **kw)

    assert acc("1,234", "1234") == 1.0
    assert acc("100.9", "100") == 1.0 and acc("101.1", "100") == 0.0  # 1% relative by default
    assert acc("101.1", "100", rel_tol=0.05) == 1.0
    assert acc("12%", "12") == 1.0 and acc("12%", "0.12") == 1.0 and acc("0.12", "12%") == 1.0
    assert acc("12%", "13%") == 0.0
    assert acc("0", "0") == 1.0 and acc("0.001", "0") == 0.0  # a zero target uses the absolute tolerance
    assert acc("0.001", "0", abs_tol=0.01) == 1.0
    assert acc("3 or 4", "4") == 0.0
    assert acc("seven", "7") == 0.0
    assert acc("7", 7) == 1.0


# ---------------------------------------------------------------- words and math


def test_word_accuracy():
    assert score_answer("The Cat.", "cat", "word") == 1.0
    assert score_answer("a  red\ncar!", "Red car", "phrase") == 1.0
    assert score_answer("cats", "cat", "word") == 0.0
    assert score_answer("dog", ["cat", "dog"], "word") == 1.0  # any of several answers
    assert score_answer(None, "cat", "word") == 0.0
    with pytest.raises(ValueError, match="unknown answer_type"):
        score_answer("x", "x", "colour")


@pytest.mark.parametrize("pred, target, ok", [
    ("1/2", "0.5", True), ("0.5", "\\frac{1}{2}", True), ("\\frac{2}{4}", "1/2", True),
    ("x^2+1", "1+x^2", True), ("10^{-3}", "0.001", True), ("2", "3", False),
    ("\\frac{", "1", False), ("Hello  World", "hello world", True), ("", "1", False), ("x" * 5000, "1", False),
])
def test_math_accuracy(pred, target, ok):
    assert math_match(pred, target) is ok
    assert score_answer(pred, target, "math") == float(ok)


def test_accuracy_reward_parts():
    sample = {"answer": "0.5", "answer_type": "number", "meta": {}}
    assert accuracy_reward("<think>hm</think><answer>1/2</answer>", sample) == {
        "reward": 1.0, "accuracy": 1.0, "answer_found": 1.0}
    assert accuracy_reward("0.5 but untagged", sample) == {"reward": 0.0, "accuracy": 0.0, "answer_found": 0.0}
    tol = {"answer": "100", "answer_type": "number", "meta": {"rel_tol": 0.1}}
    assert accuracy_reward("<answer>105</answer>", tol)["reward"] == 1.0


# ---------------------------------------------------------------- format


@pytest.mark.parametrize("text, ok", [
    ("<think>look</think><answer>B</answer>", True),
    ("  <think>\nlook\n</think>\n\n<answer>\nB\n</answer>\n", True),
    ("<think></think><answer>B</answer>", True),  # an empty think is allowed
    ("<think>look</think><answer>B</answer><|im_end|>", True),
    ("<answer>B</answer>", False),
    ("<think>look</think>", False),
    ("<think>look</think><answer>B</answer> trailing", False),
    ("preamble <think>look</think><answer>B</answer>", False),
    ("<think>look</think><answer>B</answer><answer>C</answer>", False),
    ("<think>a<answer>x</answer></think><answer>B</answer>", False),
    ("<think>look</think><answer>   </answer>", False),
    ("<think>look</think><tool_call>{}</tool_call>", False),
])
def test_format_direct(text, ok):
    assert format_direct(text) == float(ok)


def test_format_tool():
    call = '<think>zoom</think>\n<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>'
    answer = "<think>now I see</think>\n<answer>B</answer>"
    assert format_tool([call, answer]) == 1.0
    assert format_tool([call, call, answer]) == 1.0
    assert format_tool([answer]) == 1.0  # a direct answer in the tool template
    assert format_tool([answer, answer]) == 0.0  # a non-final turn must be a tool call
    assert format_tool([call, call]) == 0.0  # the final turn must answer
    assert format_tool(["<think>x</think><tool_call> </tool_call>", answer]) == 0.0
    assert format_tool([]) == 0.0
    assert format_reward(answer, {"turns": [call, answer]}) == {"reward": 1.0, "format": 1.0}
    assert format_reward("<answer>B</answer>", {}) == {"reward": 0.0, "format": 0.0}


# ---------------------------------------------------------------- registry and user rewards

USER_FILE = '''
def my_reward(response, sample):
    return {"reward": float(sample["answer"] in response), "length": len(response)}

NOT_CALLABLE = 3
'''


def test_registry_names_and_decorator():
    assert get_reward("accuracy") is accuracy_reward
    assert get_reward("format") is format_reward
    with pytest.raises(KeyError, match="registered"):
        get_reward("no_such_reward")

    @register_reward("test_len_reward")
    def length(response, sample):
        return float(len(response))

    try:
        assert get_reward("test_len_reward") is length
        assert call_reward(length, "abc", {}) == (3.0, {})
        register_reward("test_len_reward")(length)  # the same function again is fine
        with pytest.raises(ValueError, match="already registered"):
            register_reward("test_len_reward")(lambda r, s: 0.0)
    finally:
        registry._REGISTRY.pop("test_len_reward", None)


def test_user_reward_from_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    fn = get_reward(f"{path}:my_reward")
    assert call_reward(fn, "it is 42", {"answer": "42"}) == (1.0, {"length": 8.0})
    with pytest.raises(FileNotFoundError, match="file not found"):
        load_reward_fn(f"{tmp_path / 'missing.py'}:my_reward")
    with pytest.raises(AttributeError, match="no function 'nope'"):
        load_reward_fn(f"{path}:nope")
    with pytest.raises(TypeError, match="not callable"):
        load_reward_fn(f"{path}:NOT_CALLABLE")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ImportError, match="boom"):
        load_reward_fn(f"{broken}:f")


def test_user_reward_from_module(tmp_path, monkeypatch):
    (tmp_path / "user_reward_mod_xyz.py").write_text(USER_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        fn = get_reward("user_reward_mod_xyz:my_reward")
        assert fn("42", {"answer": "42"})["reward"] == 1.0
        assert get_reward("vlmrl.rewards.accuracy:accuracy_reward") is accuracy_reward
        with pytest.raises(ImportError, match="cannot import module"):
            load_reward_fn("no_such_module_xyz:fn")
        with pytest.raises(AttributeError, match="no function"):
            load_reward_fn("user_reward_mod_xyz:missing")
        with pytest.raises(ValueError, match="module:function"):
            load_reward_fn("user_reward_mod_xyz:")
    finally:
        sys.modules.pop("user_reward_mod_xyz", None)


def test_call_reward_checks_the_return_value():
    with pytest.raises(TypeError, match="without the key 'reward'"):
        call_reward(lambda r, s: {"score": 1.0}, "", {})
    with pytest.raises(TypeError, match="non-numeric"):
        call_reward(lambda r, s: {"reward": 1.0, "note": "x"}, "", {})
    with pytest.raises(TypeError, match="expected a float"):
        call_reward(lambda r, s: "1", "", {})
    assert call_reward(lambda r, s: 1, "", {}) == (1.0, {})
