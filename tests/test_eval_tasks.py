"""Every benchmark task end to end on a few rows in its published layout (written here, in tmp_path):
load the docs, check prompts and images, score predictions that hit the rule's edge cases, and
compare with metrics worked out by hand. Also the loaders' behaviour and errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlmrl.evaluation.fixtures import (
    SAMPLE_TASKS,
    png_base64,
    png_bytes,
    write_image,
    write_jsonl,
    write_parquet,
    write_sample_benchmark,
    write_tsv,
)
from vlmrl.evaluation.scorers import SCORERS, score_docs
from vlmrl.evaluation.tasks import LazyImage, Task, list_tasks, load_task

ALL_TASKS = [
    "vstar_bench", "hrbench4k", "hrbench8k", "mme_realworld_lite", "chartqa", "docvqa_val", "infovqa_val",
    "textvqa_val", "mathvista_testmini", "mmstar", "pope", "realworldqa", "mmbench_en_dev", "zoom",
]
EXPECTED_METRICS = {
    "docvqa_val": ["anls"],
    "infovqa_val": ["anls"],
    "chartqa": ["relaxed_overall", "relaxed_human_split", "relaxed_augmented_split"],
    "textvqa_val": ["vqa_accuracy"],
    "pope": ["accuracy", "precision", "recall", "f1", "yes_ratio"],
    "mmbench_en_dev": ["circular_accuracy"],
    "hrbench4k": ["single", "cross", "average"],
    "hrbench8k": ["single", "cross", "average"],
    "mathvista_testmini": ["accuracy"],
    "vstar_bench": ["overall", "direct_attributes", "relative_position"],
    "mmstar": ["accuracy", "macro"],
    "realworldqa": ["accuracy"],
    "mme_realworld_lite": ["accuracy"],
    "zoom": ["accuracy", "accuracy_zoom", "accuracy_no_zoom"],
}
RED, BLUE = (200, 30, 30), (30, 30, 200)
assert sorted(SAMPLE_TASKS) == sorted(ALL_TASKS)


def score(task_name, path, responses):
    task = load_task(task_name)
    docs = task.load_docs(path)
    assert len(docs) == len(responses)
    metrics, per_doc = task.score(docs, dict(enumerate(responses)))
    assert list(metrics) == EXPECTED_METRICS[task_name]
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert [r["doc_id"] for r in per_doc] == list(range(len(docs)))
    return metrics, per_doc, docs


# --------------------------------------------------------------------------------- spec files


def test_every_task_yaml_loads():
    assert set(ALL_TASKS) <= set(list_tasks())
    for name in ALL_TASKS:
        t = load_task(name)
        assert t.name == name
        assert t.scorer in SCORERS
        assert t.metrics == EXPECTED_METRICS[name]
        assert t.generation["temperature"] == 0 and t.generation["max_new_tokens"] > 0


@pytest.mark.parametrize("name", ALL_TASKS)
def test_sample_benchmark_roundtrip(tmp_path, name):
    """The sample writer's layout loads, its images decode, and the targets score perfectly."""
    path = write_sample_benchmark(name, tmp_path)
    task = load_task(name)
    docs = task.load_docs(path)
    assert docs and [d["doc_id"] for d in docs] == list(range(len(docs)))
    for d in docs:
        assert isinstance(d["prompt"], str)
        assert d["question"].lower() in d["prompt"].lower() or task.doc_to_text.get("remove")
        assert d["images"] and all(isinstance(im, LazyImage) for im in d["images"])
        im = d["images"][0]()
        assert im.mode == "RGB" and im.size == (16, 12)
    perfect = {d["doc_id"]: (d["target"][0] if isinstance(d["target"], list) else str(d["target"])) for d in docs}
    metrics, _ = task.score(docs, perfect)
    assert metrics and all(v == 1.0 for k, v in metrics.items() if k != "yes_ratio")


# --------------------------------------------------------------------------------------- tasks


def test_docvqa_anls(tmp_path):
    img = png_bytes()
    rows = [
        ("abcd", "abxy"),  # 1 - 2/4 = 0.5, kept
        ("abcd", "axyz"),  # 0.25 -> 0
        ("abcdefghi", "abcdexxxx"),  # 1 - 4/9, just above 0.5
        ("abcdefghi", "abcdxxxxx"),  # 1 - 5/9 < 0.5 -> 0
        ("abcd", "  ABxy  "),  # raw-length quirk: 1 - 2/8
    ]
    parquet_rows = [
        {"questionId": i, "question": f"q{i}?", "question_types": ["form"], "image": img, "docId": 7,
         "answers": [gt], "data_split": "val"}
        for i, (gt, _) in enumerate(rows)
    ]
    parquet_rows.append({"questionId": 5, "question": "who?", "question_types": ["form"], "image": img, "docId": 7,
                         "answers": ["nope", "Smith"], "data_split": "val"})
    path = write_parquet(tmp_path / "validation-00000-of-00001.parquet", parquet_rows)
    responses = [p for _, p in rows] + ["smith"]
    metrics, per_doc, docs = score("docvqa_val", path, responses)
    expected = [0.5, 0.0, 1 - 4 / 9, 0.0, 1 - 2 / 8, 1.0]
    assert [r["score"] for r in per_doc] == pytest.approx(expected)
    assert metrics["anls"] == pytest.approx(sum(expected) / 6)
    assert docs[0]["prompt"] == "q0?\nAnswer the question using a single word or phrase."
    assert docs[5]["target"] == ["nope", "Smith"]


def test_infovqa_anls(tmp_path):
    img = png_bytes()
    path = write_parquet(tmp_path / "validation-00000-of-00001.parquet", [
        {"questionId": 1, "question": "how many?", "answers": ["12", "twelve"], "answer_type": ["single span"], "image": img},
        {"questionId": 2, "question": "how many?", "answers": ["12"], "answer_type": ["single span"], "image": img},
    ])
    metrics, _, _ = score("infovqa_val", path, ["Twelve", "13"])  # 1.0; 1 - 1/2 = 0.5
    assert metrics["anls"] == pytest.approx(0.75)


def test_chartqa_relaxed(tmp_path):
    img = png_bytes()
    data = [
        ("human_test", "0.12", "12%"),  # percent: 0.12 vs 0.12 -> right
        ("human_test", "0", "0.0"),  # zero target: string comparison -> wrong
        ("human_test", "0", " 0 "),  # stripped -> right
        ("augmented_test", "100", "105"),  # exactly 5% -> right
        ("augmented_test", "100", "105.1"),  # 5.1% -> wrong
        ("augmented_test", "Yes", "yes"),  # case-insensitive -> right
        ("augmented_test", "2009", "2009."),  # Python's float() reads "2009." -> right
        ("augmented_test", "2009", "in 2009"),  # not a number, not equal -> wrong
    ]
    path = write_parquet(tmp_path / "test-00000-of-00001.parquet",
                         [{"type": t, "question": "q?", "answer": a, "image": img} for t, a, _ in data])
    metrics, per_doc, _ = score("chartqa", path, [p for _, _, p in data])
    assert [r["score"] for r in per_doc] == [1, 0, 1, 1, 0, 1, 1, 0]
    assert metrics == pytest.approx({"relaxed_overall": 5 / 8, "relaxed_human_split": 2 / 3,
                                     "relaxed_augmented_split": 3 / 5})


def test_textvqa_vqa_accuracy(tmp_path):
    img = png_bytes()
    data = [
        (["two", "2"] + ["tree"] * 8, "Two."),  # (2*(1/3) + 8*(2/3)) / 10 = 0.6
        (["don't"] * 10, "dont"),  # contraction -> 1
        (["the cat"] * 3 + ["dog"] * 7, "a cat"),  # articles: (3*(2/3) + 7) / 10 = 0.9
        (["samsung"] * 10, "nokia"),  # 0
    ]
    path = write_parquet(tmp_path / "validation-00000-of-00001.parquet", [
        {"image_id": f"i{i}", "question_id": i, "question": "what is it?", "question_tokens": ["what"], "image": img,
         "image_width": 16, "image_height": 12, "answers": a, "image_classes": [], "set_name": "val", "ocr_tokens": []}
        for i, (a, _) in enumerate(data)
    ])
    metrics, per_doc, docs = score("textvqa_val", path, [p for _, p in data])
    assert [r["score"] for r in per_doc] == pytest.approx([0.6, 1.0, 0.9, 0.0])
    assert metrics["vqa_accuracy"] == pytest.approx(2.5 / 4)
    assert docs[0]["prompt"].startswith("What is it?\n")  # lmms-eval capitalises the question


def test_pope(tmp_path):
    img = png_bytes()
    data = [
        ("yes", "Yes."),  # TP
        ("no", "No, there is not."),  # TN
        ("no", "There is a dog."),  # FP
        ("yes", "I do not see one. Yes."),  # first sentence has "not": FN
        ("yes", "NO"),  # case-sensitive rule: yes -> TP
        ("no", "no"),  # TN
    ]
    path = write_parquet(tmp_path / "test-00000-of-00001.parquet", [
        {"id": str(i), "question_id": str(i), "question": "Is there a dog in the image?", "answer": a,
         "image_source": "x", "image": img, "category": "adversarial"}
        for i, (a, _) in enumerate(data)
    ])
    metrics, per_doc, _ = score("pope", path, [p for _, p in data])
    assert [r["parsed"] for r in per_doc] == ["yes", "no", "yes", "no", "yes", "no"]
    assert metrics == pytest.approx({"accuracy": 4 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 3 / 6})


def _mmbench_row(index, answer, opts, image, hint="", question="What colour is it?"):
    row = {"index": index, "question": question, "hint": hint, "A": "", "B": "", "C": "", "D": "", "answer": answer,
           "category": "color", "image": image, "source": "demo", "l2-category": "perception", "split": "dev"}
    row.update(opts)
    return row


def test_mmbench_circular(tmp_path):
    b64 = png_base64(RED)
    four = {"A": "red", "B": "blue", "C": "green", "D": "white"}
    rows = [
        _mmbench_row(0, "A", {"A": "red", "B": "blue"}, b64, hint="Look at the square."),
        _mmbench_row(1, "C", four, b64),
        _mmbench_row(2, "B", four, b64),
        _mmbench_row(3, "B", four, b64),
        _mmbench_row(1000000, "B", {"A": "blue", "B": "red"}, "0"),  # image given by reference
        _mmbench_row(1000001, "D", {"A": "blue", "B": "green", "C": "white", "D": "red"}, "1"),
        _mmbench_row(2000001, "C", {"A": "green", "B": "white", "C": "red", "D": "blue"}, "1"),
    ]
    path = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows)
    responses = [
        "A",  # g0 right
        "C",  # g1 right
        "I cannot tell",  # g2 wrong (nothing matched; never a random option)
        "A cat is sitting. The answer is B",  # g3 right: two lone capitals, "answer is B"
        "The answer is (B).",  # g0 copy right
        "C",  # g1 copy wrong -> the whole group is wrong
        "red",  # g1 second copy: option text -> C, right (does not save the group)
    ]
    metrics, per_doc, docs = score("mmbench_en_dev", path, responses)
    assert [r["parsed"] for r in per_doc] == ["A", "C", None, "B", "B", "C", "C"]
    assert metrics["circular_accuracy"] == pytest.approx(2 / 4)  # groups 0 and 3
    assert docs[0]["prompt"] == ("Look at the square.\nWhat colour is it?\nA. red\nB. blue\n"
                                 "Answer with the option's letter from the given choices directly.")
    assert docs[0]["choices"] == {"A": "red", "B": "blue"}  # empty C/D columns are absent options
    # the copy's image is the referenced row's image
    assert docs[4]["images"][0]().getpixel((0, 0)) == RED


def test_hrbench_cycles(tmp_path):
    b64 = png_base64()
    spec = [  # (category, cycle, answer, response)
        ("single", "cycle0", "A", "A"), ("single", "cycle0", "B", "C"),  # cycle0 single: 1/2
        ("single", "cycle1", "C", "C"), ("single", "cycle1", "D", "(D)"),  # cycle1 single: 2/2
        ("cross", "cycle0", "A", "A."),  # cycle0 cross: 1/1
        ("cross", "cycle1", "A", "A"), ("cross", "cycle1", "B", "D"), ("cross", "cycle1", "C", "none"),  # 1/3
    ]
    rows = [{"index": i, "question": "Q?", "A": "w", "B": "x", "C": "y", "D": "z", "answer": a,
             "category": c, "image": b64 if i == 0 else "0", "cycle_category": cy}
            for i, (c, cy, a, _) in enumerate(spec)]
    path = write_tsv(tmp_path / "hr_bench_4k.tsv", rows)
    metrics, _, docs = score("hrbench4k", path, [r for *_, r in spec])
    single = (0.5 + 1.0) / 2
    cross = (1.0 + 1 / 3) / 2  # per-cycle mean; the micro mean would be 2/4
    assert metrics == pytest.approx({"single": single, "cross": cross, "average": (single + cross) / 2})
    assert docs[0]["prompt"] == "Q?\nA. w\nB. x\nC. y\nD. z\nAnswer the option letter directly."


def test_hrbench8k(tmp_path):
    b64 = png_base64()
    rows = [{"index": 0, "question": "Q?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "A", "category": "single",
             "image": b64, "cycle_category": "c0"},
            {"index": 1, "question": "Q?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "A", "category": "cross",
             "image": b64, "cycle_category": "c0"}]
    path = write_tsv(tmp_path / "hr_bench_8k.tsv", rows)
    metrics, _, _ = score("hrbench8k", path, ["A", "B"])
    assert metrics == pytest.approx({"single": 1.0, "cross": 0.0, "average": 0.5})


def test_vstar_jsonl_and_image_folder(tmp_path):
    write_image(tmp_path / "direct_attributes" / "sa_1.jpg", RED)
    write_image(tmp_path / "direct_attributes" / "sa_2.jpg", BLUE)
    write_image(tmp_path / "relative_position" / "sa_3.jpg")
    inst = "Answer with the option's letter from the given choices directly."
    rows = [
        {"image": "direct_attributes/sa_1.jpg", "text": f"What is the color of the cup?\n(A) red\n(B) blue\n(C) green\n(D) white\n{inst}",
         "category": "direct_attributes", "question_id": 0, "label": "A"},
        {"image": "direct_attributes/sa_2.jpg", "text": f"What is the material of the bag?\n(A) cloth\n(B) leather\n(C) paper\n(D) plastic\n{inst}",
         "category": "direct_attributes", "question_id": 1, "label": "A"},
        {"image": "relative_position/sa_3.jpg", "text": f"Is the cup on the left or right of the dog?\n(A) left\n(B) right\n{inst}",
         "category": "relative_position", "question_id": 2, "label": "A"},
        {"image": "relative_position/sa_3.jpg", "text": f"Is the cat above or below the table?\n(A) above\n(B) below\n{inst}",
         "category": "relative_position", "question_id": 3, "label": "B"},
    ]
    path = write_jsonl(tmp_path / "test_questions.jsonl", rows)
    responses = ["A", "(B) leather", "left", "The answer is (B)."]
    metrics, per_doc, docs = score("vstar_bench", path, responses)
    assert [r["parsed"] for r in per_doc] == ["A", "B", "A", "B"]
    assert metrics == pytest.approx({"overall": 3 / 4, "direct_attributes": 1 / 2, "relative_position": 1.0})
    assert docs[0]["prompt"] == rows[0]["text"]  # the instruction is not repeated
    assert docs[2]["choices"] == {"A": "left", "B": "right"}
    assert docs[1]["images"][0]().getpixel((3, 3)) == BLUE


def test_mmstar_micro_and_macro(tmp_path):
    img = png_bytes()
    q = "Which colour?\nOptions: A: red, B: blue, C: green, D: black"
    rows = [
        {"index": 0, "question": q, "image": img, "answer": "A", "category": "coarse perception", "l2_category": "x",
         "meta_info": {"source": "s", "split": "val", "image_path": "0.jpg"}},
        {"index": 1, "question": q, "image": img, "answer": "B", "category": "coarse perception", "l2_category": "x",
         "meta_info": {"source": "s", "split": "val", "image_path": "1.jpg"}},
        {"index": 2, "question": q, "image": img, "answer": "D", "category": "coarse perception", "l2_category": "y",
         "meta_info": {"source": "s", "split": "val", "image_path": "2.jpg"}},
        {"index": 3, "question": q, "image": img, "answer": "A", "category": "math", "l2_category": "z",
         "meta_info": {"source": "s", "split": "val", "image_path": "3.jpg"}},
    ]
    path = write_parquet(tmp_path / "val-00000-of-00001.parquet", rows)
    metrics, per_doc, docs = score("mmstar", path, ["A", "Option B", "C. green", ""])
    assert [r["score"] for r in per_doc] == [1, 1, 0, 0]
    assert metrics == pytest.approx({"accuracy": 2 / 4, "macro": (2 / 3 + 0.0) / 2})
    assert docs[0]["choices"] == {"A": "red", "B": "blue", "C": "green", "D": "black"}


def test_realworldqa_choice_and_open(tmp_path):
    img = png_bytes()
    mc = "What is in front?\nA. a car\nB. a bus\nC. a bike\nPlease answer directly with only the letter of the correct option and nothing else."
    op = "How many lanes are there?\nPlease answer directly with a single word or number."
    rows = [{"image": img, "question": mc, "answer": "A"}, {"image": img, "question": mc, "answer": "B"},
            {"image": img, "question": op, "answer": "3"}, {"image": img, "question": op.replace("How many lanes", "Is it raining"), "answer": "Yes"}]
    path = write_parquet(tmp_path / "test-00000-of-00001.parquet", rows)
    metrics, per_doc, _ = score("realworldqa", path, ["A.", "a car", "Three.", "No"])
    assert [r["score"] for r in per_doc] == [1, 0, 1, 0]
    assert metrics["accuracy"] == 0.5


def test_mme_realworld_lite(tmp_path):
    b64 = png_base64()
    opts = ["(A) red", "(B) blue", "(C) white", "(D) black", "(E) The image does not feature the car."]
    rows = [{"index": i, "question": "What colour is the car?", "multi-choice options": opts, "answer": a,
             "category": "Perception/Monitoring", "l2-category": "color", "bytes": b64}
            for i, a in enumerate(["A", "C", "D", "E"])]
    path = write_parquet(tmp_path / "train-00000-of-00001.parquet", rows, image_columns=())
    responses = ["The best answer is A", "Based on the image, C", "d", ""]
    metrics, per_doc, docs = score("mme_realworld_lite", path, responses)
    # official regex: first capital A-E anywhere ("Based" -> B, wrong); "d" -> D; empty -> no answer
    assert [r["parsed"] for r in per_doc] == ["A", "B", "D", None]
    assert metrics["accuracy"] == 0.5
    assert "The choices are listed below:\n(A) red\n" in docs[0]["prompt"]
    assert docs[0]["images"][0]().size == (16, 12)


def test_mathvista(tmp_path):
    img = png_bytes()

    def row(pid, answer, qt, at, choices=None, precision=None):
        return {"pid": str(pid), "question": f"question {pid}", "image": f"images/{pid}.jpg", "decoded_image": img,
                "choices": choices, "unit": None, "precision": precision, "answer": answer, "question_type": qt,
                "answer_type": at, "metadata": {"split": "testmini", "source": "x"}, "query": "q"}

    frac = ["3/11", "8/11", "6/11", "3/5"]
    rows = [
        row(1, "3", "free_form", "integer"),
        row(2, "1.5", "free_form", "float", precision=1.0),  # precision stored as a float
        row(3, "0.33", "free_form", "float", precision=2.0),
        row(4, "8/11", "multi_choice", "text", choices=frac),
        row(5, "4", "free_form", "integer"),
        row(6, "[2007, 2008]", "free_form", "list"),
        row(7, "8/11", "multi_choice", "text", choices=frac),
    ]
    path = write_parquet(tmp_path / "testmini-00000-of-00001.parquet", rows, image_columns=("decoded_image",))
    responses = ["The answer is 3.", "1.50", "0.333", "(B) 8/11", "3.7", "between [2007,2008]", "I don't know"]
    metrics, per_doc, docs = score("mathvista_testmini", path, responses)
    assert [r["parsed"] for r in per_doc] == ["3", "1.5", "0.33", "8/11", "3", "[2007, 2008]", None]
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert docs[1]["prompt"] == "question 2\nAnswer the question using a single floating-point number with one decimal place."
    assert docs[3]["prompt"].endswith("D. 3/5\nAnswer with the option's letter from the given choices directly.")


def test_zoom_native_jsonl(tmp_path):
    for i in range(5):
        write_image(tmp_path / "images" / f"{i}.png")
    rows = [
        {"id": "0", "images": ["images/0.png"], "question": "Digit?", "answer": "7", "answer_type": "number",
         "meta": {"needs_zoom": True, "category": "digit", "gt_boxes": [[0, 0, 4, 4]]}},
        {"id": "1", "images": ["images/1.png"], "question": "Count?", "answer": "12", "answer_type": "number",
         "meta": {"needs_zoom": True, "category": "count", "gt_boxes": []}},
        {"id": "2", "images": ["images/2.png"], "question": "Colour?", "answer": "red", "answer_type": "word",
         "meta": {"needs_zoom": False, "category": "colour", "gt_boxes": []}},
        {"id": "3", "images": ["images/3.png"], "question": "Shape?", "answer": "B", "answer_type": "choice",
         "choices": ["circle", "square", "star"], "meta": {"needs_zoom": True, "category": "shape", "gt_boxes": []}},
        {"id": "4", "images": ["images/4.png"], "question": "Shape?", "answer": "star", "answer_type": "choice",
         "choices": ["circle", "square", "star"], "meta": {"needs_zoom": False, "category": "shape", "gt_boxes": []}},
    ]
    path = write_jsonl(tmp_path / "test.jsonl", rows)
    responses = ["<answer>7</answer>", "There are 12.0 boxes", "\\boxed{Red.}", "A", "<think>hmm</think><answer>(C)</answer>"]
    metrics, per_doc, docs = score("zoom", path, responses)
    assert [r["score"] for r in per_doc] == [1, 1, 1, 0, 1]
    # numbers: the last one counts ("3 or 12" -> 12), a percent sign is ignored
    _, per_doc, _ = score("zoom", path, ["<answer>5 or 7</answer>", "12%", "red", "B", "C"])
    assert [r["parsed"] for r in per_doc[:2]] == [7.0, 12.0] and [r["score"] for r in per_doc] == [1, 1, 1, 1, 1]
    assert metrics == pytest.approx({"accuracy": 4 / 5, "accuracy_zoom": 2 / 3, "accuracy_no_zoom": 1.0})
    assert docs[3]["prompt"] == "Shape?\nA. circle\nB. square\nC. star"
    assert docs[0]["images"][0].path == tmp_path / "images" / "0.png"
    # the directory form finds test.jsonl
    assert len(load_task("zoom").load_docs(tmp_path)) == 5


# ------------------------------------------------------------------------------------ loaders


def test_directory_files_sorted_and_concatenated(tmp_path):
    img = png_bytes()
    d = tmp_path / "chartqa" / "data"
    write_parquet(d / "test-00001-of-00002.parquet", [{"type": "human_test", "question": "second", "answer": "2", "image": img}])
    write_parquet(d / "test-00000-of-00002.parquet", [
        {"type": "human_test", "question": "first-a", "answer": "1", "image": img},
        {"type": "human_test", "question": "first-b", "answer": "1", "image": img}])
    write_parquet(d / "train-00000-of-00001.parquet", [{"type": "human_test", "question": "train", "answer": "9", "image": img}])
    docs = load_task("chartqa").load_docs(tmp_path / "chartqa")
    assert [(x["doc_id"], x["question"]) for x in docs] == [(0, "first-a"), (1, "first-b"), (2, "second")]


def test_scoring_load_skips_images(tmp_path):
    path = write_sample_benchmark("chartqa", tmp_path)
    docs = load_task("chartqa").load_docs(path, images=False)
    assert all(d["images"] == [] and "image" not in d["row"] for d in docs)
    assert len(load_task("chartqa").load_docs(path, limit=1)) == 1


def test_hf_image_struct_with_path_only(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", BLUE)
    path = write_parquet(tmp_path / "test-00000-of-00001.parquet", [
        {"type": "human_test", "question": "q", "answer": "1", "image": {"bytes": None, "path": "imgs/a.png"}}])
    docs = load_task("chartqa").load_docs(path)
    assert docs[0]["images"][0]().getpixel((0, 0)) == BLUE


def test_tsv_quoting_and_multiline_cells(tmp_path):
    b64 = png_base64(RED)
    rows = [_mmbench_row(0, "A", {"A": 'say "hi"', "B": "tab\tin text"}, b64, question="Line one\nline two?"),
            _mmbench_row(1, "B", {"A": "x", "B": "y"}, png_base64(BLUE))]
    path = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows)
    docs = load_task("mmbench_en_dev").load_docs(path)
    assert docs[0]["question"] == "Line one\nline two?"
    assert docs[0]["choices"] == {"A": 'say "hi"', "B": "tab\tin text"}
    assert docs[1]["images"][0]().getpixel((0, 0)) == BLUE  # read back from its byte offset
    assert docs[0]["images"][0]().getpixel((0, 0)) == RED


def test_tsv_bad_image_reference(tmp_path):
    path = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", [_mmbench_row(0, "A", {"A": "x", "B": "y"}, "42")])
    docs = load_task("mmbench_en_dev").load_docs(path)
    with pytest.raises(ValueError, match="row 0.*neither base64 nor the index"):
        docs[0]["images"][0]()


def test_missing_field_names_file_row_field(tmp_path):
    img = png_bytes()
    path = write_parquet(tmp_path / "test-00000-of-00001.parquet", [
        {"type": "human_test", "question": "q", "answer": "1", "image": img},
        {"type": "human_test", "question": None, "answer": "1", "image": img}])
    with pytest.raises(ValueError, match=r"test-00000-of-00001.parquet row 1: missing field 'question'"):
        load_task("chartqa").load_docs(path)
    path = write_parquet(tmp_path / "x" / "test-00000-of-00001.parquet", [{"question": "q", "answer": "1", "image": img}])
    with pytest.raises(ValueError, match=r"row 0: missing field 'type'"):
        load_task("chartqa").load_docs(path)


def test_bad_targets_are_errors(tmp_path):
    img = png_bytes()
    path = write_parquet(tmp_path / "test-00000-of-00001.parquet", [{"question": "q", "answer": "maybe", "image": img}])
    with pytest.raises(ValueError, match="row 0: POPE target must be 'yes' or 'no'"):
        load_task("pope").load_docs(path)
    path = write_tsv(tmp_path / "hr_bench_4k.tsv", [{"index": 0, "question": "Q", "A": "a", "B": "b", "C": "", "D": "",
                                                     "answer": "D", "category": "single", "image": "", "cycle_category": "c"}])
    with pytest.raises(ValueError, match="row 0: target 'D' is not one of the options"):
        load_task("hrbench4k").load_docs(path)


def test_missing_image_file_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [{"id": "0", "images": ["images/none.png"], "question": "q", "answer": "red",
                                                  "answer_type": "word", "meta": {"needs_zoom": False}}])
    with pytest.raises(FileNotFoundError, match="row 0 field 'images'.*none.png does not exist"):
        load_task("zoom").load_docs(path)
    assert len(load_task("zoom").load_docs(path, images=False)) == 1


def test_malformed_jsonl_names_the_line(tmp_path):
    p = tmp_path / "test.jsonl"
    p.write_text('{"question": "q"}\n{oops\n')
    with pytest.raises(ValueError, match=r"test.jsonl, row 1 \(line 2\): invalid JSON"):
        load_task("zoom").load_docs(p, images=False)


def test_missing_data_path_and_unknown_task(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("chartqa").load_docs(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no data files matching"):
        load_task("chartqa").load_docs(tmp_path)
    with pytest.raises(ValueError, match="unknown task 'nope'.*chartqa"):
        load_task("nope")


def test_spec_validation(tmp_path):
    base = {"task": "t", "scorer": "anls", "metrics": ["anls"]}
    assert Task.from_dict(base).name == "t"
    with pytest.raises(ValueError, match="unknown key"):
        Task.from_dict({**base, "bogus": 1})
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        Task.from_dict({**base, "scorer": "nope"})
    with pytest.raises(ValueError, match="missing required key 'metrics'"):
        Task.from_dict({"task": "t", "scorer": "anls"})
    with pytest.raises(ValueError, match="doc_to_text: unknown key"):
        Task.from_dict({**base, "doc_to_text": {"questoin_field": "q"}})
    p = tmp_path / "mine.yaml"
    p.write_text(json.dumps({**base, "data": {"format": "jsonl"}}))
    assert load_task(p).data.format == "jsonl"


def test_score_docs_checks_response_ids(tmp_path):
    task = load_task("chartqa")
    docs = task.load_docs(write_sample_benchmark("chartqa", tmp_path), images=False)
    with pytest.raises(ValueError, match="no response for doc_ids: 1"):
        score_docs(task, docs, {0: "12"})
    with pytest.raises(ValueError, match="unknown doc_ids: 7"):
        score_docs(task, docs, {0: "12", 1: "x", 7: "y"})
    # a subset of docs scores with just their responses (what `vlmrl eval --limit` needs)
    metrics, _ = score_docs(task, docs[:1], {0: "12"})
    assert metrics == {"relaxed_overall": 1.0, "relaxed_human_split": 1.0}


def test_lazy_image_decodes_rgb():
    from vlmrl.evaluation.fixtures import png_bytes as pb

    im = LazyImage(lambda: pb((1, 2, 3)), "test")()
    assert isinstance(im, Image.Image) and im.mode == "RGB" and im.getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(ValueError, match="src: image bytes is not a decodable image"):
        LazyImage(lambda: b"not an image", "src")()
