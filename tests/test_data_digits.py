"""`vlmrl make-data digits`: scikit-learn's bundled handwritten digits as VQA rows (vlmrl/data/digits.py), read
from a csv.gz or a wheel; the rows load for training and score through eval/digits.yaml."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import zipfile
from collections import Counter

import pytest
from PIL import Image

from vlmrl.cli import main
from vlmrl.data.digits import DIGITS_MEMBER, KINDS, digit_image, make_digits_dataset, plan_split, read_digits

# a 3 drawn as a bar at the top row: pixel (x, 0) = 16 for x in 2..5
BAR = [16 if (r == 0 and 2 <= c <= 5) else 0 for r in range(8) for c in range(8)]


def _csv(n=12) -> bytes:
    lines = [",".join(str(v) for v in BAR) + f",{i % 10}" for i in range(n)]
    return gzip.compress(("\n".join(lines) + "\n").encode())


@pytest.fixture
def source(tmp_path):
    p = tmp_path / "digits.csv.gz"
    p.write_bytes(_csv())
    return p


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rows_splits_and_answers(tmp_path, source, capsys):
    out = tmp_path / "d"
    assert main(["make-data", "digits", "--out", str(out), "--source", str(source), "--n", "6", "--n-test", "4",
                 "--image-size", "56", "--seed", "3", "--categories", "digit,parity,greater"]) == 0
    train, test = _rows(out / "train.jsonl"), _rows(out / "test.jsonl")
    assert len(train) == 6 and len(test) == 4
    printed = capsys.readouterr().out
    c = _answer_counts(train)
    assert f"train: greater A {c['greater']['A']}/B {c['greater']['B']}, parity even {c['parity']['even']}/odd " \
        f"{c['parity']['odd']}" in printed
    # no image in both splits; each row's answer follows from its label (label = source line index % 10)
    assert not {r["meta"]["source_index"] for r in train} & {r["meta"]["source_index"] for r in test}
    assert [r["meta"]["category"] for r in train] == ["digit", "parity", "greater"] * 2
    for r in train + test:
        label = r["meta"]["label"]
        assert label == r["meta"]["source_index"] % 10
        kind = r["meta"]["category"]
        if kind == "digit":
            assert (r["answer"], r["answer_type"]) == (str(label), "number")
        elif kind == "parity":
            assert (r["answer"], r["answer_type"]) == ("even" if label % 2 == 0 else "odd", "word")
        else:
            k = int(r["question"].rstrip("?").split()[-1])
            assert r["choices"] == ["yes", "no"] and r["answer"] == ("A" if label > k else "B")
        im = Image.open(out / r["images"][0])
        assert im.size == (56, 56) and im.mode == "RGB"
        assert im.getpixel((28, 2))[0] < 60 and im.getpixel((28, 40))[0] == 255  # ink at the top bar, white below
    info = json.loads((out / "info.json").read_text())
    assert info["n"] == 6 and info["source_sha256"] and info["kinds"] == ["digit", "parity", "greater"]
    # same seed, same test set whatever n; another seed, another shuffle
    make_digits_dataset(tmp_path / "e", n=2, n_test=4, seed=3, source=source, kinds=KINDS)
    assert _rows(tmp_path / "e" / "test.jsonl") == test
    make_digits_dataset(tmp_path / "f", n=2, n_test=4, seed=4, source=source, kinds=KINDS)
    assert _rows(tmp_path / "f" / "test.jsonl") != test


def _answer_counts(rows) -> dict:
    out = {}
    for r in rows:
        out.setdefault(r["meta"]["category"], Counter())[r["answer"]] += 1
    return out


def test_yes_no_and_even_odd_balanced_within_each_split(tmp_path):
    """Labels skewed to high and even digits (uniform K in 0-8 would answer "greater than K?" yes ~2/3 of the
    time, and the parity question even ~2/3): within each split and for several sizes, yes/no and even/odd differ
    by at most 1; every answer still follows from its label and K; the test split stays the same whatever n."""
    weights = [1, 1, 3, 1, 3, 1, 3, 2, 3, 2]  # 0..9: evens 13 of 20, 9s (always yes) twice the 0s (always no)
    labels = random.Random(5).choices(range(10), weights=weights, k=200)
    src = tmp_path / "skew.csv.gz"
    src.write_bytes(gzip.compress("".join(",".join(map(str, BAR)) + f",{lab}\n" for lab in labels).encode()))
    for n in (7, 61, 150):
        out = tmp_path / f"d{n}"
        info = make_digits_dataset(out, n=n, n_test=45, seed=1, source=src, image_size=8, kinds=KINDS)
        for split in ("train", "test"):
            rows = _rows(out / f"{split}.jsonl")
            counts = _answer_counts(rows)
            assert counts == {k: Counter(v) for k, v in info["counts"][split].items()}
            yes, no = counts["greater"]["A"], counts["greater"]["B"]
            even, odd = counts["parity"]["even"], counts["parity"]["odd"]
            assert abs(yes - no) <= 1 and abs(even - odd) <= 1, (n, split, counts)
            assert yes + no == sum(r["meta"]["category"] == "greater" for r in rows)
            for r in rows:
                assert r["meta"]["label"] == labels[r["meta"]["source_index"]]
                if r["meta"]["category"] == "greater":
                    k = int(r["question"].rstrip("?").split()[-1])
                    assert 0 <= k <= 8 and r["answer"] == ("A" if r["meta"]["label"] > k else "B")
            # images stay in their split: the train rows are the n images after the 45 test images
            assert len({r["meta"]["source_index"] for r in rows}) == len(rows)
        assert (out / "test.jsonl").read_text() == (tmp_path / "d7" / "test.jsonl").read_text()


def test_plan_split_values_and_label_limits():
    rng = random.Random(0)
    # only 9s: every greater-than answer is yes, whatever K (the label-imposed limit); K still in 0-8
    plan = plan_split([(i, 9) for i in range(6)], ("greater",), rng)
    assert all(kind == "greater" and 0 <= k <= 8 and 9 > k for _, _, kind, k in plan)
    # two 9s (always yes) and a 0 (always no); the four free 5s make up the rest: 7 rows, so yes and no differ by 1
    items = [(0, 9), (1, 5), (2, 5), (3, 9), (4, 5), (5, 0), (6, 5)]
    ans = ["yes" if lab > k else "no" for _, lab, _, k in plan_split(items, ("greater",), random.Random(1))]
    assert abs(ans.count("yes") - ans.count("no")) == 1 and ans[0] == ans[3] == "yes" and ans[5] == "no"
    # parity slots (every other row): evens 0, 2, 4 first, then odds; the odd images move up into parity slots
    items = [(i, lab) for i, lab in enumerate([0, 2, 4, 6, 8, 1, 3, 5])]
    plan = plan_split(items, ("parity", "digit"), random.Random(0))
    asked = [lab for _, lab, kind, _ in plan if kind == "parity"]
    assert sorted(p[0] for p in plan) == list(range(8)) and [lab % 2 for lab in asked] == [0, 1, 0, 1]
    # all even: no odd image to take, so all parity answers stay even (the limit), nothing lost
    plan = plan_split([(i, 2 * i % 10) for i in range(6)], KINDS, random.Random(0))
    assert [p[0] for p in plan] == list(range(6))


def test_wheel_source_kinds_and_errors(tmp_path, source, capsys):
    whl = tmp_path / "scikit_learn-9.9-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(DIGITS_MEMBER, _csv(5))
    digits, _ = read_digits(whl)
    assert [lab for _, lab in digits] == [0, 1, 2, 3, 4] and digits[0][0] == BAR
    info = make_digits_dataset(tmp_path / "w", n=3, n_test=2, source=whl, kinds=("parity",))
    assert list(info["counts"]["train"]) == ["parity"] and sum(info["counts"]["train"]["parity"].values()) == 3
    with pytest.raises(ValueError, match="fit the 5 digits"):
        make_digits_dataset(tmp_path / "x", n=4, n_test=2, source=whl)
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"1,2,3\n"))
    with pytest.raises(ValueError, match=r"bad.csv.gz, line 1: expected 64 pixels and a label"):
        read_digits(bad)
    assert main(["make-data", "digits", "--out", str(tmp_path / "y"), "--source", str(source), "--categories",
                 "digit,colour"]) == 2
    assert "question kinds ['colour'] unknown" in capsys.readouterr().err
    assert main(["make-data", "digits", "--out", str(tmp_path / "y"), "--source", str(tmp_path / "nope.whl")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["make-data", "zoom", "--out", str(tmp_path / "z"), "--source", str(source)]) == 2


def test_rows_load_for_training_and_score_with_the_task(tmp_path, source):
    from vlmrl.data import load_dataset
    from vlmrl.evaluation.tasks import load_task

    out = tmp_path / "d"
    make_digits_dataset(out, n=3, n_test=6, source=source, image_size=56, kinds=KINDS)
    ds = load_dataset(str(out / "train.jsonl"))
    assert len(ds) == 3 and ds[2].choices == ["yes", "no"] and ds[0].images[0].size == (56, 56)
    task = load_task("digits")
    docs = task.load_docs(out)
    truth = {d["doc_id"]: f"<answer>{d['target']}</answer>" for d in docs}
    metrics, _ = task.score(docs, truth)
    assert metrics == {"accuracy": 1.0, "accuracy_number": 1.0, "accuracy_word": 1.0, "accuracy_choice": 1.0}
    wrong = {d["doc_id"]: "<answer>maybe</answer>" for d in docs}
    assert task.score(docs, wrong)[0]["accuracy"] == 0.0


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")
def test_the_installed_scikit_learn_digits(tmp_path):
    digits, _ = read_digits(__import__("vlmrl.data.digits", fromlist=["find_source"]).find_source())
    assert len(digits) == 1797 and {lab for _, lab in digits} == set(range(10))
    assert digit_image(digits[0][0], 112).size == (112, 112)


def test_digits_recipe_loads_with_a_periodic_eval_and_enough_pixels():
    from pathlib import Path

    from vlmrl.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "recipes" / "digits.yaml")
    assert cfg.rollout.mode == "direct" and cfg.train.eval_every > 0 and cfg.data.eval
    assert cfg.rollout.image_max_pixels >= 112 * 112  # the default 112-px images keep their 16 visual tokens


def test_sft_rows_every_digit_row_and_one_in_50_of_the_others(tmp_path):
    """sft.jsonl (the warm start's rows): all "which digit" rows, the 50th, 100th, ... row of each other kind, in
    the train split's order; written beside train.jsonl and counted in info.json. The default kinds are which
    digit and even/odd (greater-than-K only when named)."""
    from vlmrl.data.digits import SFT_OTHER_EVERY, sft_rows

    assert SFT_OTHER_EVERY == 50
    kinds = ["digit", "parity"] * 100 + ["greater"] * 50
    lines = [json.dumps({"id": i, "meta": {"category": k}}) + "\n" for i, k in enumerate(kinds)]
    got = [json.loads(x)["id"] for x in sft_rows(lines)]
    # digit rows 0,2,...,198; parity rows 1,3,...,199 -> the 50th and 100th = 99, 199; greater rows 200-249 -> 249
    assert got == [*range(0, 100, 2), 99, *range(100, 200, 2), 199, 249]
    source = tmp_path / "digits.csv.gz"
    source.write_bytes(_csv(110))
    info = make_digits_dataset(tmp_path / "d", n=100, n_test=4, source=source)
    train = (tmp_path / "d" / "train.jsonl").read_text().splitlines(keepends=True)
    sft = (tmp_path / "d" / "sft.jsonl").read_text().splitlines(keepends=True)
    assert sft == sft_rows(train) and set(sft) <= set(train)
    assert info["kinds"] == ["digit", "parity"] and info["counts"]["sft"] == {"digit": 50, "parity": 1}
