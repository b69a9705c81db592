"""`vlmrl eval`: end to end on the tiny model (direct and tool mode), scripted scoring, avg@K, resume,
bad input."""

import json

import pytest

from vlmrl.cli import main
from vlmrl.models.hf_sampler import HFSampler
from vlmrl.models.policy import Policy
from vlmrl.models.sampler import Generation

SAMPLE_KEYS = {"doc_id", "input", "target", "resps", "filtered_resps", "scores", "score", "tool_calls",
               "visual_tokens"}
RESULT_KEYS = {"task", "n", "metrics", "visual_tokens_per_sample", "tool_call_rate"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from vlmrl.data.synthetic import make_zoom_dataset
    from vlmrl.evaluation.fixtures import write_sample_benchmark

    root = tmp_path_factory.mktemp("evaldata")
    make_zoom_dataset(root / "z", n=4, n_test=6, seed=0)
    return {"zoom": root / "z" / "test.jsonl", "pope": write_sample_benchmark("pope", root / "pope")}


@pytest.fixture
def model(tiny_dirs, tiny_policies, monkeypatch):
    """The tiny checkpoint's directory; Policy.load returns the session's loaded policy (saves time)."""
    pol = tiny_policies["qwen2_5_vl"]
    monkeypatch.setattr(Policy, "load", classmethod(lambda cls, *a, **k: pol))
    return str(tiny_dirs["qwen2_5_vl"])


def _read(out):
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    result = json.loads((out / "results.json").read_text())
    return lines, result


def _eval(task, data, model, out, *extra):
    argv = ["eval", "--task", task, "--data", str(data[task]), "--model", model, "--out", str(out),
            "--max-new-tokens", "8", "--no-progress", *extra]
    assert main(argv) == 0
    return _read(out)


@pytest.mark.parametrize("task,tool", [("zoom", True), ("pope", False)])
def test_eval_end_to_end(task, tool, data, model, tmp_path):
    out = tmp_path / "out"
    lines, result = _eval(task, data, model, out, "--limit", "3", *(["--tool"] if tool else []))
    n = min(3, {"zoom": 6, "pope": 2}[task])
    assert RESULT_KEYS <= set(result) and result["task"] == task and result["n"] == n
    assert result["metrics"] and all(0.0 <= v <= 1.0 for v in result["metrics"].values())
    assert 0.0 <= result["tool_call_rate"] <= 1.0
    assert result["visual_tokens_per_sample"] > 0
    assert [x["doc_id"] for x in lines] == list(range(n))
    for x in lines:
        assert SAMPLE_KEYS <= set(x)
        assert len(x["resps"]) == len(x["filtered_resps"]) == len(x["tool_calls"]) == len(x["visual_tokens"]) == 1
        assert isinstance(x["input"], str) and x["input"]
        assert all(v > 0 for v in x["visual_tokens"])
    if task == "pope":
        assert lines[0]["input"].endswith("Answer the question using a single word or phrase.")
    traces = (out / "traces.jsonl").read_text().splitlines()
    assert len(traces) == n and {json.loads(t)["mode"] for t in traces} == {"tool" if tool else "direct"}


def _script(monkeypatch, answers, tool=False):
    """HFSampler.generate returns, per turn-0 prompt in doc order, the next doc's answers (one per sample);
    in tool mode a crop call first, then the answer."""
    queue = [list(a) for a in answers]
    pending = []

    def generate(self, prompts, params):
        num_samples = params.n
        tok = self.codec.tokenizer
        end = tok.convert_tokens_to_ids("<|im_end|>")
        out = []
        for p in prompts:
            if "<tool_response>" in tok.decode(p.ids):
                texts = [f"<answer>{pending.pop(0)}</answer>"]
            else:
                doc = queue.pop(0)
                assert len(doc) == num_samples
                if tool:
                    pending.extend(doc)
                    texts = ['<tool_call>{"name": "crop", "arguments": {"bbox_2d": [0, 0, 40, 40]}}</tool_call>'] * num_samples
                else:
                    texts = [f"<think>hm</think><answer>{a}</answer>" for a in doc]
            for t in texts:
                ids = tok.encode(t, add_special_tokens=False) + ([] if t.endswith("</tool_call>") else [end])
                out.append(Generation(ids, [0.0] * len(ids), "stop"))
        return out

    monkeypatch.setattr(HFSampler, "generate", generate)


def test_scripted_scoring_tool_mode(data, model, tmp_path, monkeypatch):
    targets = [json.loads(x)["answer"] for x in data["zoom"].read_text().splitlines()][:4]
    answers = [[targets[0]], [targets[1]], ["wrong"], ["wrong"]]
    _script(monkeypatch, answers, tool=True)
    lines, result = _eval("zoom", data, model, tmp_path / "o", "--limit", "4", "--tool", "--batch-size", "1")
    assert result["metrics"]["accuracy"] == pytest.approx(0.5)
    assert result["tool_call_rate"] == 1.0
    assert [x["filtered_resps"] for x in lines] == answers
    assert [x["scores"] for x in lines] == [[1.0], [1.0], [0.0], [0.0]]
    for x in lines:
        (call,) = x["tool_calls"][0]
        assert set(call) == {"raw", "valid", "box_original", "error"} and call["valid"]
        assert len(call["box_original"]) == 4
        assert x["resps"][0].startswith("<answer>")
    # a crop adds visual tokens to the first view's
    assert result["visual_tokens_per_sample"] > 16


def test_avg_at_k(data, model, tmp_path, monkeypatch):
    _script(monkeypatch, [["yes", "no"], ["no", "no"]])  # pope targets: yes, no
    lines, result = _eval("pope", data, model, tmp_path / "o", "--samples", "2", "--batch-size", "1")
    assert [x["scores"] for x in lines] == [[1.0, 0.0], [1.0, 1.0]]
    assert [x["score"] for x in lines] == [0.5, 1.0]
    assert result["metrics"]["accuracy"] == pytest.approx(0.75)
    assert result["samples"] == 2 and result["temperature"] == 1.0
    assert all(len(x["resps"]) == 2 for x in lines)


def test_resume(data, model, tmp_path, monkeypatch):
    from vlmrl.rollout.engine import RolloutEngine

    fresh_lines, fresh = _eval("zoom", data, model, tmp_path / "fresh", "--limit", "4", "--batch-size", "1")
    out = tmp_path / "resume"
    _eval("zoom", data, model, out, "--limit", "4", "--batch-size", "1")
    path = out / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)

    seen = []
    orig = RolloutEngine.rollout

    def counting(self, samples, *a, **k):
        seen.extend(s.id for s in samples)
        return orig(self, samples, *a, **k)

    monkeypatch.setattr(RolloutEngine, "rollout", counting)
    # the last line deleted
    path.write_text("".join(lines[:-1]))
    resumed_lines, resumed = _eval("zoom", data, model, out, "--limit", "4", "--batch-size", "1")
    assert seen == ["3"]
    assert resumed["metrics"] == fresh["metrics"] and resumed["n"] == 4
    assert [x["doc_id"] for x in resumed_lines] == [0, 1, 2, 3]
    assert resumed_lines == fresh_lines
    assert len((out / "traces.jsonl").read_text().splitlines()) == 4
    # a truncated last line (interrupted mid-write) is redone too
    seen.clear()
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    again_lines, again = _eval("zoom", data, model, out, "--limit", "4", "--batch-size", "1")
    assert seen == ["3"] and again_lines == fresh_lines and again["metrics"] == fresh["metrics"]
    # nothing left to do: no rollouts, same results
    seen.clear()
    _, same = _eval("zoom", data, model, out, "--limit", "4")
    assert seen == [] and same["metrics"] == fresh["metrics"]


def test_bad_input(data, model, tmp_path, capsys):
    rc = main(["eval", "--task", "nope", "--data", str(data["pope"]), "--model", model, "--out", str(tmp_path)])
    assert rc != 0 and "unknown task 'nope'" in capsys.readouterr().err
    rc = main(["eval", "--task", "pope", "--data", str(data["pope"]), "--model", str(tmp_path / "missing"),
               "--out", str(tmp_path)])
    assert rc != 0 and "model directory" in capsys.readouterr().err
    rc = main(["eval", "--task", "pope", "--data", str(tmp_path / "nodata"), "--model", model, "--out", str(tmp_path)])
    assert rc != 0 and "does not exist" in capsys.readouterr().err
    rc = main(["eval", "--task", "pope", "--data", str(data["pope"]), "--model", model, "--samples", "0",
               "--out", str(tmp_path)])
    assert rc != 0 and "--samples" in capsys.readouterr().err


def test_image_max_pixels_caps_the_direct_view(data, model, tmp_path, capsys):
    """--image-max-pixels downscales the direct-mode image: 112x112 = 12544 px is 16 visual tokens."""
    _, full = _eval("zoom", data, model, tmp_path / "full", "--limit", "2")
    _, capped = _eval("zoom", data, model, tmp_path / "cap", "--limit", "2", "--image-max-pixels", "12544")
    assert capped["visual_tokens_per_sample"] == 16 < full["visual_tokens_per_sample"]
    rc = main(["eval", "--task", "zoom", "--data", str(data["zoom"]), "--model", model, "--out", str(tmp_path / "x"),
               "--image-max-pixels", "100"])
    assert rc != 0 and "--image-max-pixels must be >= 784" in capsys.readouterr().err
    # under the engine's minimum budget (4 patches): refused before any document, naming both budgets
    rc = main(["eval", "--task", "zoom", "--data", str(data["zoom"]), "--model", model, "--out", str(tmp_path / "y"),
               "--image-max-pixels", "1000", "--no-progress"])
    assert rc != 0 and "image_max_pixels (1000) must be >= image_min_pixels (3136)" in capsys.readouterr().err
    assert not (tmp_path / "y" / "samples.jsonl").exists()


def test_rollout_settings_from_flags_and_recipe(tmp_path):
    """--recipe takes a training recipe's rollout section; flags given override single fields; without a
    recipe: direct mode, the task's max_new_tokens and RolloutConfig's defaults (what vlmrl eval always used)."""
    import argparse
    from pathlib import Path

    from vlmrl.config import RolloutConfig
    from vlmrl.evaluation.cli import add_args, rollout_settings
    from vlmrl.evaluation.harness import EvalSettings
    from vlmrl.evaluation.tasks import load_task

    parser = argparse.ArgumentParser()
    add_args(parser)
    task = load_task("zoom")

    def settings(*argv):
        return rollout_settings(parser.parse_args(["--task", "zoom", "--model", "m", *argv]), task)

    assert settings() == RolloutConfig(mode="direct", max_new_tokens=task.generation["max_new_tokens"])
    assert settings("--tool", "--max-turns", "3").mode == "tool" and settings("--max-turns", "3").max_turns == 3
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    r = settings("--recipe", str(recipe))
    assert (r.mode, r.max_new_tokens, r.crop_min_pixels, r.crop_max_pixels, r.prompt_style) == (
        "tool", 64, 12544, 50176, "bare")
    r = settings("--recipe", str(recipe), "--direct", "--max-new-tokens", "8", "--prefix", "<think>")
    assert (r.mode, r.max_new_tokens, r.first_turn_prefix, r.prompt_style) == ("direct", 8, "<think>", "bare")
    # the temperature is the evaluation's, never the recipe's (1.0 for training)
    assert EvalSettings(rollout=r).engine_config().temperature == 0.0
    assert EvalSettings(rollout=r, samples=4).engine_config().temperature == 1.0
    with pytest.raises(ValueError, match="--crop-max-pixels must be >= 784"):
        settings("--crop-max-pixels", "100")
    with pytest.raises(SystemExit):  # --tool and --direct exclude each other
        settings("--tool", "--direct")
