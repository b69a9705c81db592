"""The generic exact-match scorer for a user's own task, and a task's metric list as a subset of
what its scorer produces."""

from __future__ import annotations

import pytest

from vlmrl.evaluation.fixtures import write_image, write_jsonl
from vlmrl.evaluation.scorers import SCORERS, normalize_words
from vlmrl.evaluation.tasks import Task


def _task(metrics=("accuracy", "accuracy_choice", "accuracy_number", "accuracy_word"), **extra):
    spec = {"task": "mine", "scorer": "exact_match", "metrics": list(metrics),
            "data": {"format": "jsonl", "image_field": "images", "image_kind": "path"},
            "doc_to_text": {"question_field": "question", "options": {"field": "choices"}},
            "target_field": "answer", **extra}
    return Task.from_dict(spec)


ROWS = [
    {"question": "Which digit?", "answer": "7", "answer_type": "number"},
    {"question": "Which digit?", "answer": "7"},  # inferred: number
    {"question": "Even or odd?", "answer": "odd"},  # inferred: word
    {"question": "Greater than 4?", "answer": "B", "choices": ["no", "yes"]},  # inferred: choice
    {"question": "Greater than 4?", "answer": "yes", "choices": ["no", "yes"], "answer_type": "choice"},
    {"question": "Animal?", "answer": ["the cat", "kitten"]},  # any of several answers
    {"question": "Length?", "answer": "2.5", "answer_type": "number"},
]


def _docs(tmp_path, rows=ROWS, **kw):
    write_image(tmp_path / "im.png")
    path = write_jsonl(tmp_path / "t.jsonl", [{**r, "images": ["im.png"]} for r in rows])
    task = _task(**kw)
    return task, task.load_docs(path)


def test_normalize_words():
    assert normalize_words("  The  Cat. ") == "cat"
    assert normalize_words("An odd, one!") == "odd one"
    assert normalize_words("3.5") == "3.5"  # a decimal point inside a number stays


def test_exact_match_values(tmp_path):
    task, docs = _docs(tmp_path)
    responses = [
        "<answer>seven</answer>",      # number word -> 7: right
        "It is 1 or 7.",               # the last number: right
        "<answer>Odd.</answer>",       # normalised word: right
        "(B)",                         # choice letter: right
        "A",                           # wrong option
        "\\boxed{A Kitten}",           # second acceptable answer, article dropped: right
        "2.5000001",                   # within the default tolerance 1e-6: right
    ]
    metrics, per_doc = task.score(docs, dict(enumerate(responses)))
    assert [r["score"] for r in per_doc] == [1, 1, 1, 1, 0, 1, 1]
    assert [r["answer_type"] for r in per_doc] == ["number", "number", "word", "choice", "choice", "word", "number"]
    assert per_doc[0]["parsed"] == 7.0 and per_doc[2]["parsed"] == "odd" and per_doc[3]["parsed"] == "B"
    assert metrics == pytest.approx({"accuracy": 6 / 7, "accuracy_choice": 1 / 2, "accuracy_number": 1.0,
                                     "accuracy_word": 1.0})
    assert list(metrics) == ["accuracy", "accuracy_choice", "accuracy_number", "accuracy_word"]
    # wrong: a different number, a different word, no number at all
    _, per_doc = task.score(docs, dict(enumerate(["8", "no digit", "even", "A", "B", "dog", "2.6"])))
    assert [r["score"] for r in per_doc] == [0, 0, 0, 0, 1, 0, 0]


def test_exact_match_choice_is_the_training_rewards_rule(tmp_path):
    """Choice rows score as the training reward parses them (vlmrl.rewards.accuracy.parse_choice): a letter
    alone or after a lead-in, or exactly one option's whole text. An option's text inside another word is no
    answer: "nothing" and "not sure" picked option "no" under VLMEvalKit's substring rule (can_infer_text, kept
    for the benchmark scorers), so the digits task scored them right against "no"."""
    from vlmrl.rewards.accuracy import parse_choice

    task, docs = _docs(tmp_path, rows=[{"question": "Greater than 4?", "answer": "A", "choices": ["no", "yes"]}])
    cases = {"A": 1, "(A)": 1, "Answer: A": 1, "<answer>no</answer>": 1, "No.": 1, "A) no": 1,
             "nothing": 0, "not sure": 0, "B": 0, "yes": 0, "A or B": 0, "": 0}
    for response, want in cases.items():
        _, per_doc = task.score(docs, {0: response})
        assert per_doc[0]["score"] == want, response
        reward = parse_choice(response.replace("<answer>", "").replace("</answer>", ""), ["no", "yes"])
        assert (reward == "A") == bool(want), response


def test_exact_match_tolerance_from_scorer_args(tmp_path):
    task, docs = _docs(tmp_path, rows=[{"question": "Length?", "answer": "2.5"}], scorer_args={"abs_tol": 0.1})
    assert task.score(docs, {0: "2.58"})[0]["accuracy"] == 1.0
    assert task.score(docs, {0: "2.65"})[0]["accuracy"] == 0.0


def test_metric_subset_and_unknown_metric(tmp_path):
    task, docs = _docs(tmp_path, metrics=["accuracy_word", "accuracy"])
    metrics, _ = task.score(docs, dict(enumerate(["7"] * len(docs))))
    assert list(metrics) == ["accuracy_word", "accuracy"]  # the task's order, only what it lists
    with pytest.raises(ValueError, match=r"metrics \['acc'\] are not produced by scorer 'exact_match'.*accuracy_number"):
        _task(metrics=["accuracy", "acc"])
    # the same rule for every built-in scorer: a subset loads, a foreign name does not
    assert Task.from_dict({"task": "p", "scorer": "pope", "metrics": ["f1"]}).metrics == ["f1"]
    with pytest.raises(ValueError, match="not produced by scorer 'anls'"):
        Task.from_dict({"task": "d", "scorer": "anls", "metrics": ["accuracy"]})
    # vstar's names follow its categories
    t = Task.from_dict({"task": "v", "scorer": "vstar", "metrics": ["overall", "colour"],
                        "scorer_args": {"categories": ["colour"]}})
    assert SCORERS["vstar"].metric_names(t) == ("overall", "colour")


def test_exact_match_bad_rows(tmp_path):
    with pytest.raises(ValueError, match=r"t.jsonl row 0: answer_type is number but the answer 'seven"):
        _docs(tmp_path, rows=[{"question": "q", "answer": "seven-ish", "answer_type": "number"}])
    with pytest.raises(ValueError, match=r"row 0: answer_type must be one of"):
        _docs(tmp_path, rows=[{"question": "q", "answer": "x", "answer_type": "free"}])
    with pytest.raises(ValueError, match=r"row 0: answer 'C' is neither an option letter"):
        _docs(tmp_path, rows=[{"question": "q", "answer": "C", "choices": ["no", "yes"]}])
