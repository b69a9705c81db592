"""Metrics logging for the RL trainer: a JSONL file a person can open, plus optional accelerate trackers.

`RUN_DIR/metrics.jsonl` holds one JSON object per optimizer step, e.g.::

    {"step": 3, "reward/mean": 0.41, "accuracy": 0.375, "loss/total": -0.012, "grad_norm": null,
     "nonfinite": ["grad_norm"], ...}

- Values are python numbers: tensors and numpy scalars become floats (integers stay integers).
- JSON has no NaN/inf: a non-finite value is written as `null` and its key is listed in the record's
  `nonfinite` field (absent when every value is finite).
- Each line is flushed when written, so a killed run keeps every finished step. On resume
  (`resume_step=k`) lines with step > k are dropped (the file is rewritten atomically), so the resumed run
  does not duplicate steps; a half-written last line from a killed run is dropped too.

`METRIC_KEYS` is the set of keys every trainer step writes; `reward/<part>/mean` and `reward/<part>/std`
are added per reward part (their names vary by recipe, see `REWARD_PART_PATTERN`).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import defaultdict
from contextlib import contextmanager
from numbers import Number
from pathlib import Path

METRICS_FILE = "metrics.jsonl"

#: keys the trainer writes at every step (the required set; plots and tests rely on them)
METRIC_KEYS: tuple[str, ...] = (
    "step",
    # rewards and accuracy (per-part rewards follow REWARD_PART_PATTERN)
    "reward/mean", "reward/std", "accuracy",
    # advantages
    "adv/mean", "adv/std", "adv/min", "adv/max",
    # losses (the total and its terms, each already multiplied by its coefficient sign as used)
    "loss/total", "loss/pg", "loss/ref_kl", "loss/entropy", "loss/perception",
    # divergences and entropies
    "ref_kl", "perception_kl", "entropy/policy", "entropy/masked",
    # fraction of policy tokens clipped by each PPO bound
    "clip/low", "clip/high", "clip/dual",
    "grad_norm", "lr",
    # sampling and rollouts
    "zero_std_frac", "sampling/tries", "sampling/short_groups", "tool/call_rate", "tool/failure_rate", "visual_tokens_per_sample", "response_length",
    "truncation_rate", "skipped_samples", "nonfinite_steps",
    # seconds per phase (Timer), max over processes
    "time/rollout", "time/reward", "time/old_logp", "time/masked_logp", "time/ref_logp", "time/update",
    "time/step",
)

#: per-part reward keys, e.g. reward/accuracy/mean, reward/format/std, reward/tool/mean
REWARD_PART_PATTERN = re.compile(r"^reward/[^/]+/(mean|std)$")

#: progress-bar postfix: metric key -> short label
POSTFIX_KEYS = {"reward/mean": "reward", "accuracy": "acc", "ref_kl": "kl", "tool/call_rate": "tool"}


# --------------------------------------------------------------------------- values

def to_number(value, key: str = "?"):
    """A python int/float (or None/str/bool passed through) from a tensor, numpy scalar or number."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if hasattr(value, "numel") and hasattr(value, "item"):  # torch tensor
        if value.numel() != 1:
            raise ValueError(f"metric {key!r}: expected a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.detach().item()
    elif hasattr(value, "item") and getattr(value, "size", 1) == 1:  # numpy scalar / 1-element array
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, Number):
        return float(value)
    raise ValueError(f"metric {key!r}: not a number ({type(value).__name__})")


def _record(step: int, metrics: dict) -> dict:
    rec = {"step": int(step)}
    nonfinite = []
    for key, value in metrics.items():
        if key == "step":
            continue
        v = to_number(value, key)
        if isinstance(v, float) and not math.isfinite(v):
            nonfinite.append(key)
            v = None
        rec[key] = v
    if nonfinite:
        rec["nonfinite"] = nonfinite
    return rec


# --------------------------------------------------------------------------- file

def _metrics_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics JSONL file (or of RUN_DIR/metrics.jsonl). A half-written last line (a run
    killed mid-write) is skipped; a corrupt line elsewhere is an error naming the file and line."""
    path = _metrics_path(path)
    lines = path.read_text().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # last line without a newline: interrupted write
                break
            raise ValueError(f"{path}, line {i + 1}: not valid JSON ({e})") from None
    return records


def _step_of(line: str, path: Path, index: int) -> int:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}, record {index + 1}: not a metrics record with a step ({e})") from None


def _atomic_write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLogger:
    """Append one JSON record per step to RUN_DIR/metrics.jsonl, and to accelerate's trackers if given.

    resume_step: None appends to an existing file as is; k keeps only records with step <= k (use the
    step of the checkpoint resumed from; -1 to start the file afresh, as 0 keeps a step-0 eval). Non-main processes write nothing.
    """

    def __init__(self, run_dir: str | os.PathLike, is_main: bool = True, accelerator=None,
                 resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.is_main = is_main
        self.accelerator = accelerator
        self._file = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            raw = self.path.read_text()
            keep = [ln + "\n" for ln in raw.split("\n")[:-1] if ln.strip()]  # [:-1]: text after the last newline is partial
            if resume_step is not None:
                keep = [ln for i, ln in enumerate(keep) if _step_of(ln, self.path, i) <= resume_step]
            if "".join(keep) != raw:
                _atomic_write_lines(self.path, keep)
        self._file = open(self.path, "a")

    def log(self, step: int, metrics: dict) -> dict:
        """Write one record (see module doc) and return it."""
        rec = _record(step, metrics)
        if not self.is_main:
            return rec
        if self._file is None:
            raise ValueError(f"MetricsLogger for {self.path} is closed")
        self._file.write(json.dumps(rec, allow_nan=False) + "\n")
        self._file.flush()
        if self.accelerator is not None:
            finite = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(finite, step=int(step))
        return rec

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- reduction across processes

SUMMED = ("skipped_samples", "prompts_too_long")  # counts of each process's own rows


def reduce_op(key: str) -> str:
    """How a key is reduced across processes: "sum" for the per-process counts in SUMMED, "max" for *_max and
    time/*, "min" for *_min, else "mean"."""
    if key in SUMMED:
        return "sum"
    if key.endswith("_max") or key.startswith("time/"):
        return "max"
    if key.endswith("_min"):
        return "min"
    return "mean"


def reduce_metrics(metrics: dict, accelerator=None) -> dict:
    """Numbers of `metrics` combined over processes. The identity, as python numbers, with a single
    process. Keys are the union over processes; a process that lacks a key (or logged None) does not
    count towards it (NaN-aware mean/max/min/sum). The mean is a plain mean of the per-process values."""
    values = {k: to_number(v, k) for k, v in metrics.items()}
    if accelerator is None or getattr(accelerator, "num_processes", 1) <= 1:
        return values
    import torch
    from accelerate.utils import gather_object

    gather_object = getattr(accelerator, "gather_object", gather_object)  # overridable in tests
    mine = sorted(k for k, v in values.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
    keys = sorted(set().union(*gather_object([mine])))
    row = torch.tensor([[float(values[k]) if values.get(k) is not None else float("nan") for k in keys]],
                       dtype=torch.float64, device=accelerator.device)
    table = accelerator.gather(row).to("cpu")  # [num_processes, len(keys)]
    out = dict(values)
    for j, k in enumerate(keys):
        col, op = table[:, j], reduce_op(k)
        col = col[~torch.isnan(col)]
        if col.numel() == 0:
            out[k] = None
            continue
        out[k] = float({"max": col.max, "min": col.min, "sum": col.sum}.get(op, col.mean)())
    return out


# --------------------------------------------------------------------------- timing

class Timer:
    """Phase durations: `with timer("rollout"): ...` adds the seconds to `timer.times["time/rollout"]`.

    `cuda_sync=True` synchronises CUDA at both ends so GPU work is counted in its phase.
    """

    def __init__(self, prefix: str = "time/", cuda_sync: bool = False):
        self.prefix = prefix
        self.cuda_sync = cuda_sync
        self.times: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.cuda_sync:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()

    @contextmanager
    def __call__(self, phase: str):
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.times[self.prefix + phase] += time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        """The collected times (a plain dict), and start afresh."""
        out = dict(self.times)
        self.times = defaultdict(float)
        return out


# --------------------------------------------------------------------------- progress bar

def format_postfix(metrics: dict) -> dict[str, str]:
    """Compact figures for the progress bar: reward, acc, kl, tool (those present)."""
    out = {}
    for key, label in POSTFIX_KEYS.items():
        v = metrics.get(key)
        if v is None:
            continue
        try:
            v = to_number(v, key)
        except ValueError:
            continue
        if isinstance(v, (int, float)):
            out[label] = f"{v:.3g}"
    return out


class ProgressBar:
    """A thin tqdm wrapper; disabled on non-main processes and when VLMRL_NO_PROGRESS=1."""

    def __init__(self, total: int, desc: str = "train", is_main: bool = True, initial: int = 0, **tqdm_kwargs):
        from tqdm.auto import tqdm

        disable = (not is_main) or os.environ.get("VLMRL_NO_PROGRESS", "") not in ("", "0")
        self.bar = tqdm(total=total, desc=desc, initial=initial, disable=disable, dynamic_ncols=True, **tqdm_kwargs)

    @property
    def disabled(self) -> bool:
        return bool(self.bar.disable)

    def update(self, n: int = 1, metrics: dict | None = None) -> None:
        if metrics:
            self.set_postfix(metrics)
        self.bar.update(n)

    def set_postfix(self, metrics: dict) -> None:
        self.bar.set_postfix(format_postfix(metrics), refresh=False)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int, desc: str = "train", is_main: bool = True, initial: int = 0) -> ProgressBar:
    """`ProgressBar(total, desc, is_main, initial)`; pass initial=resumed step to continue the count."""
    return ProgressBar(total, desc=desc, is_main=is_main, initial=initial)
