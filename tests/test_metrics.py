"""Metrics logging: JSONL records, non-finite values, resume truncation, reduction, timing, progress."""

import json
import time

import numpy as np
import pytest
import torch

from vlmrl.train.metrics import (METRIC_KEYS, REWARD_PART_PATTERN, MetricsLogger, ProgressBar, Timer,
                                 format_postfix, progress, read_metrics, reduce_metrics)


def test_log_writes_python_numbers_and_flushes(tmp_path):
    logger = MetricsLogger(tmp_path)
    rec = logger.log(1, {"reward/mean": torch.tensor(0.25), "accuracy": np.float32(0.5), "skipped_samples": 3,
                         "response_length": torch.tensor([12.0]), "lr": 1e-5})
    assert rec == {"step": 1, "reward/mean": 0.25, "accuracy": 0.5, "skipped_samples": 3,
                   "response_length": 12.0, "lr": 1e-5}
    # flushed: readable while the logger is still open
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == rec and line.endswith("\n")
    assert type(json.loads(line)["skipped_samples"]) is int
    logger.log(2, {"reward/mean": 0.5})
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert read_metrics(tmp_path / "metrics.jsonl") == read_metrics(tmp_path)
    with pytest.raises(ValueError, match="'adv/mean'.*shape"):
        MetricsLogger(tmp_path / "x").log(1, {"adv/mean": torch.zeros(3)})


class FakeTracker:
    def __init__(self):
        self.logged = []

    def log(self, values, step=None):
        self.logged.append((step, values))


def test_nonfinite_values_become_null_and_are_listed(tmp_path):
    tracker = FakeTracker()
    with MetricsLogger(tmp_path, accelerator=tracker) as logger:
        logger.log(5, {"loss/total": torch.tensor(float("nan")), "grad_norm": float("inf"), "accuracy": 1.0})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    rec = json.loads(line)
    assert rec["loss/total"] is None and rec["grad_norm"] is None and rec["accuracy"] == 1.0
    assert rec["nonfinite"] == ["loss/total", "grad_norm"]
    assert tracker.logged == [(5, {"accuracy": 1.0})]  # trackers get only finite numbers


def test_resume_drops_later_steps_and_partial_line(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        for step in range(1, 6):
            logger.log(step, {"reward/mean": step / 10})
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 6, "rew')  # a run killed mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]

    with MetricsLogger(tmp_path, resume_step=3) as logger:
        assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
        logger.log(4, {"reward/mean": 0.99})
    recs = read_metrics(path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[-1]["reward/mean"] == 0.99
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left

    with MetricsLogger(tmp_path) as logger:  # resume_step=None appends as is
        logger.log(5, {})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    MetricsLogger(tmp_path, resume_step=-1).close()
    assert read_metrics(path) == []


def test_non_main_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "run", is_main=False)
    assert logger.log(1, {"accuracy": torch.tensor(1.0)}) == {"step": 1, "accuracy": 1.0}
    assert not (tmp_path / "run").exists()


def test_read_metrics_names_corrupt_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2"):
        read_metrics(path)


def test_reduce_metrics_single_process_is_identity():
    m = {"reward/mean": torch.tensor(0.5), "adv_max": 2.0, "time/rollout": np.float64(1.5), "skipped_samples": 2}
    assert reduce_metrics(m) == {"reward/mean": 0.5, "adv_max": 2.0, "time/rollout": 1.5, "skipped_samples": 2}

    class One:
        num_processes = 1

    assert reduce_metrics(m, One()) == reduce_metrics(m)


class TwoRanks:
    """A fake 2-process accelerator: gather returns this rank's row and the peer's row."""

    num_processes = 2
    device = torch.device("cpu")

    def __init__(self, peer_row=None, peer_keys=None):
        self.peer_row, self.row, self.peer_keys, self.keys = peer_row, None, peer_keys, None

    def gather_object(self, obj):
        self.keys = obj[0]
        return [obj[0], self.peer_keys if self.peer_keys is not None else obj[0]]

    def gather(self, t):
        self.row = t
        return torch.cat([t, self.peer_row if self.peer_row is not None else t])


def test_reduce_metrics_across_processes():
    rank1 = TwoRanks()
    m1 = {"reward/mean": 1.0, "adv_max": 3.0, "adv_min": -1.0, "time/rollout": 2.0, "loss/total": 0.0,
          "skipped_samples": 2, "prompts_too_long": 0}
    reduce_metrics(m1, rank1)
    m0 = {"reward/mean": 0.0, "adv_max": 1.0, "adv_min": -3.0, "time/rollout": 5.0, "loss/total": 1.0,
          "skipped_samples": 1, "prompts_too_long": 3}
    out = reduce_metrics(m0, TwoRanks(peer_row=rank1.row))
    # each process's skipped rows and too-long prompts are its own: summed, not averaged
    assert out == {"reward/mean": 0.5, "adv_max": 3.0, "adv_min": -3.0, "time/rollout": 5.0, "loss/total": 0.5,
                   "skipped_samples": 3.0, "prompts_too_long": 3.0}
    # processes with different keys: the union is reduced; a missing value does not count
    peer = {"reward/mean": 1.0, "accuracy": 1.0, "adv_max": 0.0, "adv_min": 0.0, "time/rollout": 0.0, "loss/total": None}
    rank_b = TwoRanks(peer_keys=sorted(m0))
    reduce_metrics(peer, rank_b)
    out = reduce_metrics(m0, TwoRanks(peer_row=rank_b.row, peer_keys=rank_b.keys))
    assert out["accuracy"] == 1.0 and out["loss/total"] == 1.0 and out["reward/mean"] == 0.5
    assert out["skipped_samples"] == 1.0  # the peer logged none: only this process's count


def test_timer_accumulates_phases():
    timer = Timer()
    for _ in range(2):
        with timer("rollout"):
            time.sleep(0.01)
    with pytest.raises(RuntimeError):
        with timer("update"):
            raise RuntimeError("boom")
    times = timer.pop()
    assert set(times) == {"time/rollout", "time/update"}
    assert times["time/rollout"] >= 0.02 and times["time/update"] >= 0.0
    assert timer.pop() == {}


def test_progress_bar(monkeypatch):
    assert format_postfix({"reward/mean": torch.tensor(0.123456), "accuracy": 0.5, "ref_kl": 1e-4,
                           "tool/call_rate": 1, "loss/total": 3.0}) == {
        "reward": "0.123", "acc": "0.5", "kl": "0.0001", "tool": "1"}
    assert progress(10, is_main=False).disabled
    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    with ProgressBar(10) as bar:
        assert bar.disabled
        bar.update(1, {"reward/mean": 0.5})
    monkeypatch.setenv("VLMRL_NO_PROGRESS", "0")
    with progress(10, initial=3) as bar:
        assert not bar.disabled
        bar.update(2, {"accuracy": 1.0})
        assert bar.bar.n == 5


def test_metric_keys_constant():
    assert len(set(METRIC_KEYS)) == len(METRIC_KEYS)
    for key in ("step", "reward/mean", "accuracy", "loss/perception", "perception_kl", "clip/dual",
                "tool/call_rate", "visual_tokens_per_sample", "time/step", "nonfinite_steps", "lr"):
        assert key in METRIC_KEYS
    assert REWARD_PART_PATTERN.match("reward/format/mean") and not REWARD_PART_PATTERN.match("reward/mean")
    assert all(isinstance(k, str) and k == k.strip() for k in METRIC_KEYS)
