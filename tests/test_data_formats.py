"""Training-data row formats (vlmrl/data/formats.py): the EasyR1 and TRL adapters, answer types, questions,
and the field errors that name the file, the row and the field."""

from __future__ import annotations

import pytest
from test_data_loaders import BLUE, GREEN, RED, _error, b64, png, root, write_jsonl  # noqa: F401  (root: a fixture)

from vlmrl.data import DataError, infer_answer_type, load_dataset
from vlmrl.data.formats import clean_question


def test_easyr1_adapter(root):
    rows = [
        {"problem": "<image>Find x in the figure.", "answer": "4", "images": ["img/blue.png"]},
        {"problem": "Compare <image> with <image>. Which is bigger?\nA. left\nB. right", "answer": "B",
         "images": ["img/blue.png", {"bytes": b64(RED), "path": None}]},
        {"problem": "What is 2+2?", "answer": "\\frac{8}{2}"},
    ]
    ds = load_dataset(write_jsonl(root / "easy.jsonl", rows))
    assert ds.format == "easyr1"
    s0, s1, s2 = list(ds)
    assert (s0.question, s0.answer, s0.answer_type, len(s0.images)) == ("Find x in the figure.", "4", "number", 1)
    assert s1.question == "Compare with . Which is bigger?\nA. left\nB. right"
    assert s1.answer_type == "choice" and s1.images[1].getpixel((0, 0)) == RED
    assert (s2.images, s2.answer_type) == ([], "math")


def test_trl_adapter_string_and_messages(root):
    rows = [
        {"prompt": "What color is it?", "image": {"bytes": b64(GREEN), "path": None}, "solution": "green"},
        {"prompt": [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                 {"type": "text", "text": "Same color?"}]}],
         "images": ["img/blue.png", b64(BLUE)], "answer": "yes", "extra_col": 5},
        {"prompt": [{"role": "user", "content": "How many? <image>"}], "images": ["img/blue.png"],
         "completion": [{"role": "assistant", "content": "2"}]},
    ]
    ds = load_dataset(write_jsonl(root / "trl.jsonl", rows))
    assert ds.format == "trl"
    s0, s1, s2 = list(ds)
    assert (s0.question, s0.answer, s0.images[0].getpixel((0, 0))) == ("What color is it?", "green", GREEN)
    assert (s1.question, s1.answer, len(s1.images), s1.meta["system"], s1.meta["extra_col"]) == (
        "Same color?", "yes", 2, "Be brief.", 5)
    assert (s2.question, s2.answer, s2.answer_type) == ("How many?", "2", "number")


def test_format_override_and_answer_type_override(root):
    rows = [{"question": "q", "images": [], "answer": "yes"}]
    path = write_jsonl(root / "d.jsonl", rows)
    assert load_dataset(path, answer_type="word")[0].answer_type == "word"
    with pytest.raises(DataError, match=r"row 0 \(line 1\), field 'problem': missing field"):
        load_dataset(path, format="easyr1")
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_dataset(path, format="llava")


def test_choice_answer_given_as_text_becomes_letter(root):
    path = write_jsonl(root / "d.jsonl", [{"question": "q", "images": [], "answer": "dog", "choices": ["cat", "dog"]}])
    s = load_dataset(path)[0]
    assert (s.answer, s.answer_type, s.meta["answer_text"]) == ("B", "choice", "dog")


def test_infer_answer_type_and_clean_question():
    assert infer_answer_type("12.5") == "number"
    assert infer_answer_type("1,000") == "number"
    assert infer_answer_type("cat") == "word"
    assert infer_answer_type("x^2+1") == "math"
    assert infer_answer_type("C", "Pick one:\nA. a\nB. b\nC. c") == "choice"
    assert infer_answer_type("a", choices=["a", "b"]) == "choice"
    assert clean_question("<image>\nWhat is this?") == "What is this?"
    assert clean_question("Look at <image> and answer.") == "Look at and answer."



# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "row, field, reason",
    [
        ({"images": [], "answer": "a", "question": None}, "question", "null"),
        ({"images": [], "answer": "a", "question": ["x"]}, "question", "must be a string"),
        ({"images": [], "question": "q"}, "answer", "missing field"),
        ({"images": [], "question": "q", "answer": {"x": 1}}, "answer", "must be a string or a number"),
        ({"images": [], "question": "q", "answer": True}, "answer", "must be a string or a number"),
        ({"question": "q", "answer": "a"}, "images", "missing field"),
        ({"images": "img/a.png", "question": "q", "answer": "a"}, "images", "must be a list"),
        ({"images": [], "question": "q", "answer": "a", "choices": "ab"}, "choices", "must be a list"),
        ({"images": [], "question": "q", "answer": "a", "choices": ["x", None]}, "choices[1]", "must be a string"),
        ({"images": [], "question": "q", "answer": "Z", "choices": ["x", "y"]}, "answer", "letters A-B"),
        ({"images": [], "question": "q", "answer": "a", "meta": [1]}, "meta", "must be an object"),
        ({"images": [], "question": "q", "answer": "a", "answer_type": "essay"}, "answer_type", "must be one of"),
        ({"images": [None], "question": "q", "answer": "a"}, "images[0]", "null"),
        ({"images": [12], "question": "q", "answer": "a"}, "images[0]", "got int"),
        ({"images": [], "question": "q <image>", "answer": "a"}, "question", "1 '<image>' placeholder but the row has 0"),
    ],
)
def test_field_errors_name_file_row_field(tmp_path, row, field, reason):
    msg = _error(tmp_path, [row])
    assert f"field '{field}'" in msg and reason in msg, msg


def test_placeholder_mismatch_easyr1_and_trl(tmp_path):
    (tmp_path / "a.png").write_bytes(png(RED))
    path = write_jsonl(tmp_path / "e.jsonl", [{"problem": "no placeholder", "answer": "1", "images": ["a.png"]}])
    with pytest.raises(DataError, match=r"e\.jsonl, row 0 \(line 1\), field 'problem': has 0 '<image>' placeholders "
                                        r"but the row has 1 image"):
        load_dataset(path)
    path = write_jsonl(tmp_path / "e2.jsonl", [{"problem": "<image><image>", "answer": "1", "images": ["a.png"]}])
    with pytest.raises(DataError, match="field 'problem': has 2 '<image>' placeholders but the row has 1 image"):
        load_dataset(path)
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": [{"role": "user", "content": [
        {"type": "image"}, {"type": "image"}, {"type": "text", "text": "q"}]}], "image": "a.png", "solution": "1"}])
    with pytest.raises(DataError, match=r"t\.jsonl, row 0 \(line 1\), field 'prompt': has 2 image markers but the "
                                        r"row has 1 image"):
        load_dataset(path)
    path = write_jsonl(tmp_path / "t2.jsonl", [{"prompt": "q", "image": "a.png"}])
    with pytest.raises(DataError, match="field 'solution': missing field"):
        load_dataset(path)
