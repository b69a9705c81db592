"""Model directories that are not (complete) Qwen-VL checkpoints: a clear error naming the path and what is
wrong, and exit code 1 from `vlmrl eval`, `vlmrl train` and `vlmrl rollout`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vlmrl.cli import main
from vlmrl.models.checks import check_model_dir
from vlmrl.models.policy import Policy

ROOT = Path(__file__).resolve().parents[1]


def _config(model_type: str) -> str:
    return json.dumps({"model_type": model_type, "architectures": ["X"], "hidden_size": 8})


# name -> (how to break a copy of the tiny checkpoint, exception type, text the message must hold)
BROKEN = {
    "empty_dir": (lambda d: [p.unlink() for p in d.iterdir()], ValueError, "no config.json"),
    "llama_config": (lambda d: (d / "config.json").write_text(_config("llama")), ValueError,
                     "model_type 'llama' is not a Qwen-VL model"),
    "gpt2_config": (lambda d: (d / "config.json").write_text(_config("gpt2")), ValueError,
                    "model_type 'gpt2' is not a Qwen-VL model"),
    "config_not_json": (lambda d: (d / "config.json").write_text("{model_type: qwen2_vl"), ValueError, "not valid JSON"),
    "config_a_list": (lambda d: (d / "config.json").write_text("[]"), ValueError, "must be a JSON object, got list"),
    "no_weights": (lambda d: (d / "model.safetensors").unlink(), FileNotFoundError, "has no model weights"),
    "truncated_weights": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
                          ValueError, "not a valid safetensors file"),
    "missing_shard": (lambda d: ((d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors"),
                                 (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
                                     "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))),
                      FileNotFoundError, "model-00002-of-00002.safetensors"),
    "no_tokenizer": (lambda d: (d / "tokenizer.json").unlink(), FileNotFoundError, "has no tokenizer"),
    "no_processor_config": (lambda d: (d / "processor_config.json").unlink(), FileNotFoundError,
                            "has no image processor config"),
}


@pytest.fixture
def broken(tiny_dirs, tmp_path, request):
    """A copy of the tiny Qwen2.5-VL checkpoint, broken as ``request.param`` says."""
    d = tmp_path / "model"
    shutil.copytree(tiny_dirs["qwen2_5_vl"], d)
    BROKEN[request.param][0](d)
    return d, *BROKEN[request.param][1:]


@pytest.mark.parametrize("broken", sorted(BROKEN), indirect=True)
def test_broken_model_dirs_get_a_clear_error(broken):
    """Reliability[models]: a model directory that is empty, has a text-only (llama, gpt2) or unreadable config.json, no or truncated weights, a missing weight shard, no tokenizer or no image processor config | Policy.load raises ValueError / FileNotFoundError naming the path and what is missing, before transformers runs"""
    d, exc, text = broken
    for fn in (check_model_dir, lambda p: Policy.load(p, dtype="float32", device="cpu")):
        with pytest.raises(exc) as e:
            fn(d)
        assert str(d) in str(e.value) and text in str(e.value), str(e.value)


def test_a_complete_checkpoint_passes(tiny_dirs):
    """Reliability[models]: a complete Qwen-VL checkpoint (what vlmrl make-tiny writes) | passes the checks; its family is returned"""
    assert check_model_dir(tiny_dirs["qwen2_5_vl"]) == "qwen2_5_vl"


@pytest.mark.parametrize("broken", ["llama_config", "no_tokenizer"], indirect=True)
def test_cli_commands_exit_1_on_a_broken_model_dir(broken, tmp_path, tiny_dirs, capsys, monkeypatch):
    """Reliability[models]: a broken model directory given to vlmrl eval, train or rollout | exit code 1 and the path and reason on stderr, no traceback"""
    from vlmrl.evaluation.fixtures import write_sample_benchmark

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    d, _, text = broken
    data = write_sample_benchmark("pope", tmp_path / "pope")
    image = tmp_path / "a.png"
    Image.new("RGB", (56, 56), "red").save(image)
    train_data = tmp_path / "t.jsonl"
    train_data.write_text(json.dumps({"question": "q", "images": ["a.png"], "answer": "a"}) + "\n")
    commands = [
        ["eval", "--task", "pope", "--data", str(data), "--model", str(d), "--out", str(tmp_path / "e"), "--no-progress"],
        ["train", str(ROOT / "recipes" / "grpo.yaml"), f"model.path={d}", f"data.train={train_data}",
         f"train.output_dir={tmp_path / 'run'}", "model.device=cpu"],
        ["rollout", "--model", str(d), "--image", str(image), "--question", "q"],
    ]
    for argv in commands:
        assert main(argv) == 1, argv[0]
        err = capsys.readouterr().err
        assert f"vlmrl {argv[0]}: error:" in err and str(d) in err and text in err, err
