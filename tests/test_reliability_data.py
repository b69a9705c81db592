"""Bad rows, files and recipes: a clear error naming the file, row and field (or key), exit code 1 from the CLI.

Complements tests/test_data_loaders.py (missing fields, wrong types, placeholder counts, escaping paths)
and tests/test_train.py (unknown and mistyped recipe keys), which docs/reliability.md also lists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmrl.cli import main
from vlmrl.config import ConfigError, load_config
from vlmrl.data import DataError, load_dataset

ROOT = Path(__file__).resolve().parents[1]


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("boxes, field, reason", [
    ([[0, 0, 10]], "meta.gt_boxes[0]", "4 finite numbers"),
    ([[0, 0, "10", 10]], "meta.gt_boxes[0]", "4 finite numbers"),
    ([[0, 0, 10, 10], [5, 5, 5, 9]], "meta.gt_boxes[1]", "is empty"),
    ([[10, 0, 0, 10]], "meta.gt_boxes[0]", "is empty"),
    ([0, 0, 10, 10], "meta.gt_boxes[0]", "4 finite numbers"),
    ("0,0,10,10", "meta.gt_boxes", "must be a list"),
])
def test_bad_ground_truth_boxes_are_refused_at_load(tmp_path, boxes, field, reason):
    """Reliability[rows]: meta.gt_boxes of the wrong shape or type, or an empty box (x2 <= x1) | DataError naming file, row and field 'meta.gt_boxes[k]' at load (the DTPO crop judge would otherwise fail mid-training)"""
    path = write_rows(tmp_path / "d.jsonl", [{"question": "q", "images": [], "answer": "a"},
                                             {"question": "q", "images": [], "answer": "a", "meta": {"gt_boxes": boxes}}])
    with pytest.raises(DataError) as e:
        load_dataset(path)
    msg = str(e.value)
    assert str(path) in msg and "row 1 (line 2)" in msg and f"field '{field}'" in msg and reason in msg, msg
    ok = load_dataset(path, on_error="skip")  # skipping is counted, never silent
    assert len(ok) == 1 and len(ok.skipped) == 1


def _train_argv(tmp_path, tiny_dirs, data, *extra):
    return ["train", str(ROOT / "recipes" / "grpo.yaml"), f"model.path={tiny_dirs['qwen2_5_vl']}",
            f"data.train={data}", "data.eval=", f"train.output_dir={tmp_path / 'run'}", "train.steps=1",
            "train.prompts_per_step=1", "rollout.group_size=2", "rollout.max_new_tokens=4", "model.dtype=float32",
            "model.device=cpu", "train.plot=false", *extra]


def test_empty_dataset_is_an_error_naming_the_file(tmp_path, tiny_dirs, capsys, monkeypatch):
    """Reliability[rows]: an empty dataset file (no rows, or only blank lines) | vlmrl train exits 1: "the training dataset is empty" with the file"""
    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    data = tmp_path / "empty.jsonl"
    data.write_text("\n\n")
    assert len(load_dataset(data)) == 0
    assert main(_train_argv(tmp_path, tiny_dirs, data)) == 1
    err = capsys.readouterr().err
    assert "the training dataset is empty" in err and str(data) in err, err


def test_a_bad_row_stops_training_before_it_starts(tmp_path, tiny_dirs, capsys, monkeypatch):
    """Reliability[rows]: a row with a missing field in a training file | vlmrl train exits 1 before any step, naming file, row, line and field"""
    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    data = write_rows(tmp_path / "d.jsonl", [{"question": "q", "images": [], "answer": "a"},
                                             {"question": "q", "images": []}])
    assert main(_train_argv(tmp_path, tiny_dirs, data)) == 1
    err = capsys.readouterr().err
    assert f"{data}, row 1 (line 2), field 'answer': missing field" in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("override, message", [
    ("train.lr=.nan", "train.lr: expected a finite number, got nan"),
    ("algo.clip_low=inf", "algo.clip_low: expected a finite number, got 'inf'"),
    ("rollout.temperature=-.inf", "rollout.temperature: expected a finite number"),
    ("trian.steps=3", "unknown key 'trian'; did you mean 'train'"),
    ("train.steps=2.5", "train.steps: expected an integer, got 2.5"),
    ("train=3", "train: expected a mapping of TrainConfig fields"),
    ("train.steps", "must look like section.key=value"),
])
def test_bad_recipe_values_are_config_errors(tmp_path, override, message, capsys):
    """Reliability[recipes]: a recipe value that is NaN/inf, a misspelt section, a fractional integer, a value where a section belongs, an override without '=' | ConfigError naming the key (with a suggestion for a misspelt one); vlmrl train exits 1"""
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "recipes" / "grpo.yaml", [override])
    assert message in str(e.value)
    assert main(["train", str(ROOT / "recipes" / "grpo.yaml"), override]) == 1
    assert message in capsys.readouterr().err


def test_recipe_file_problems(tmp_path, capsys):
    """Reliability[recipes]: a recipe file that is missing, not YAML, or not a mapping | FileNotFoundError / ConfigError naming the file; vlmrl train exits 1"""
    cases = {"missing.yaml": None, "bad.yaml": "algo: {name: grpo\n", "list.yaml": "- 1\n- 2\n"}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        assert main(["train", str(path)]) == 1
        err = capsys.readouterr().err
        assert str(path) in err, err
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="must be a mapping of sections, got list"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
