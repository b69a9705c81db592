"""`vlmrl eval` under bad input and faults: bad images are counted and reported, never a crash; a run killed
with SIGKILL resumes without redoing or losing finished docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from procs import kill_when

from vlmrl.cli import main
from vlmrl.models.policy import Policy


@pytest.fixture(scope="module")
def zoom(tmp_path_factory):
    """The synthetic zoom task's test split (6 docs), and a copy whose images 1 and 4 are broken."""
    from vlmrl.data.synthetic import make_zoom_dataset

    root = tmp_path_factory.mktemp("eval_reliability")
    make_zoom_dataset(root / "z", n=2, n_test=6, seed=0)
    good = root / "z" / "test.jsonl"
    bad_dir = root / "bad"
    bad_dir.mkdir()
    rows = [json.loads(x) for x in good.read_text().splitlines()]
    for i, row in enumerate(rows):
        src = root / "z" / row["images"][0]
        dst = bad_dir / f"{i}.png"
        data = src.read_bytes()
        dst.write_bytes({1: data[: len(data) // 3], 4: b"<html>not an image</html>"}.get(i, data))
        row["images"] = [dst.name]
    (bad_dir / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"good": good, "bad": bad_dir / "test.jsonl"}


@pytest.fixture
def model(tiny_dirs, tiny_policies, monkeypatch):
    pol = tiny_policies["qwen2_5_vl"]
    monkeypatch.setattr(Policy, "load", classmethod(lambda cls, *a, **k: pol))
    return str(tiny_dirs["qwen2_5_vl"])


def _argv(data, model, out, *extra):
    return ["eval", "--task", "zoom", "--data", str(data), "--model", model, "--out", str(out), "--max-new-tokens", "6",
            "--batch-size", "2", "--no-progress", *extra]


def _lines(out):
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_bad_images_are_counted_and_reported(zoom, model, tmp_path, capsys, monkeypatch):
    """Reliability[eval]: benchmark docs whose image is truncated or not an image, in vlmrl eval | those docs are left out of the metrics, counted in results.json (skipped_docs) and listed with file and row (skipped, and on stderr); the other docs are scored; a rerun retries only them"""
    from vlmrl.rollout.engine import RolloutEngine

    out = tmp_path / "out"
    assert main(_argv(zoom["bad"], model, out)) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["n"] == 4 and result["n_docs"] == 6 and result["skipped_docs"] == 2
    assert [x["doc_id"] for x in _lines(out)] == [0, 2, 3, 5]
    for doc_id, text in ((1, "image file is truncated"), (4, "is not a decodable image")):
        (msg,) = [m for m in result["skipped"] if m.startswith(f"doc {doc_id}: ")]
        assert f"test.jsonl row {doc_id}" in msg and text in msg, msg
    assert "eval zoom: skipped doc 1" in capsys.readouterr().err
    seen = []
    orig = RolloutEngine.rollout
    monkeypatch.setattr(RolloutEngine, "rollout", lambda self, s, *a, **k: seen.extend(x.id for x in s) or orig(self, s, *a, **k))
    assert main(_argv(zoom["bad"], model, out)) == 0  # resume: the bad docs are tried again, nothing else redone
    assert seen == [] and json.loads((out / "results.json").read_text())["metrics"] == result["metrics"]


def test_only_bad_images_is_an_error(zoom, model, tmp_path, capsys):
    """Reliability[eval]: a benchmark in which no image decodes | vlmrl eval exits 1: "no document could be evaluated", with the first error"""
    assert main(_argv(zoom["bad"], model, tmp_path / "o", "--limit", "2")) == 0  # doc 0 is fine
    bad_only = zoom["bad"].with_name("only_bad.jsonl")
    rows = zoom["bad"].read_text().splitlines()
    bad_only.write_text(rows[1] + "\n" + rows[4] + "\n")
    assert main(_argv(bad_only, model, tmp_path / "o2")) == 1
    err = capsys.readouterr().err
    assert "no document could be evaluated (2 skipped)" in err and "only_bad.jsonl row 0" in err, err


_KILL_MID_EVAL = textwrap.dedent("""
    import sys, time
    from vlmrl.rollout.engine import RolloutEngine
    marker = sys.argv[1]
    orig, calls = RolloutEngine.rollout, [0]
    def rollout(self, samples, *a, **k):
        calls[0] += 1
        if calls[0] == 3:  # two docs are done and flushed; hang in the third
            open(marker, "w").write("x")
            time.sleep(300)
        return orig(self, samples, *a, **k)
    RolloutEngine.rollout = rollout
    from vlmrl.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_sigkill_mid_eval_resumes_without_redoing_or_losing_docs(zoom, model, tmp_path, monkeypatch):
    """Reliability[faults]: SIGKILL in the middle of vlmrl eval | the rerun keeps every finished doc, rolls out only the unfinished ones, and ends with the same samples.jsonl, traces and results as an uninterrupted run"""
    from vlmrl.rollout.engine import RolloutEngine

    fresh = tmp_path / "fresh"
    assert main(_argv(zoom["good"], model, fresh, "--batch-size", "1", "--limit", "5")) == 0
    out, marker = tmp_path / "killed", tmp_path / "marker"
    argv = _argv(zoom["good"], model, out, "--batch-size", "1", "--limit", "5")
    env = dict(os.environ, VLMRL_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILL_MID_EVAL, str(marker), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_when(proc, marker.exists, "the third doc of the eval")
    assert [x["doc_id"] for x in _lines(out)] == [0, 1] and not (out / "results.json").exists()
    seen = []
    orig = RolloutEngine.rollout
    monkeypatch.setattr(RolloutEngine, "rollout", lambda self, s, *a, **k: seen.extend(x.id for x in s) or orig(self, s, *a, **k))
    assert main(argv) == 0
    assert seen == ["2", "3", "4"]
    assert _lines(out) == _lines(fresh)
    assert json.loads((out / "results.json").read_text()) == json.loads((fresh / "results.json").read_text())
    assert len((out / "traces.jsonl").read_text().splitlines()) == 5
