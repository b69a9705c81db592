"""The step benchmark's worker harness (tools/bench/step.py): each case in its own process, stepped round-robin.

Worker side: `worker_main` (tools/bench/step.py run with `--worker SPEC`) builds one case and answers one JSON line
per command on stdin ("step", "quit") on its stdout. Driver side: `Worker` starts and talks to such a process,
`Local` runs a case in the driver's own process with the same interface (`--in-process`), and `run_cases` starts
every case, warms it up and steps the cases in turn.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import traceback
from pathlib import Path

from step_cases import build_case
from step_measure import rss_mb

HERE = Path(__file__).resolve().parent
STEP_SCRIPT = HERE / "step.py"  # the script a worker process runs (with --worker)
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
MAX_ROUNDS = 200  # timed rounds at most, whatever `min_seconds` asks


# =====================================================================================================================
# Worker side: one case per process, driven over stdin/stdout (one JSON line per command and per reply).
# =====================================================================================================================

def worker_main(spec: dict) -> int:
    """Build the case, say "ready", then answer "step" and "quit" commands, one JSON line each."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever libraries print goes to the worker's log, not into the protocol

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")

    try:
        case = Local(spec)
        send(case.receive())
    except WorkerError as e:  # reported to the driver, which records the case as failed
        send({"error": str(e)})
        return 1
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["do"] == "quit":
            send({"peak_rss_mb": rss_mb()})
            return 0
        try:
            send(case.ask(cmd["do"], cmd.get("path")))
        except WorkerError as e:
            send({"error": str(e)})
            return 1
    return 0


def import_modules(case: str) -> None:
    """Import what a case needs, so that the RSS baseline taken after it holds the libraries and not the case."""
    import accelerate  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl  # noqa: F401 - loaded lazily by from_pretrained

    import vlmrl.data  # noqa: F401
    import vlmrl.rewards.trajectories  # noqa: F401
    import vlmrl.train.trainer  # noqa: F401

    torch.ones(64, 64) @ torch.ones(64, 64)  # torch's first-op initialisation

    if case == "trl_grpo":
        import datasets  # noqa: F401
        import trl  # noqa: F401
        from trl import GRPOTrainer  # noqa: F401


class WorkerError(RuntimeError):
    pass


class Local:
    """A case in this process, with the interface of `Worker` (`receive()` the setup reply, `ask("step")`).
    The worker process runs one; `--in-process` runs all cases in the driver (faster to start, but the peak RSS
    is then the process's peak so far, not the case's own)."""

    def __init__(self, spec: dict, name: str = ""):
        self.name = name or spec["case"]
        import_modules(spec["case"])
        if spec.get("threads"):
            import torch

            torch.set_num_threads(spec["threads"])
        self.baseline = rss_mb(peak=False)
        t0 = time.perf_counter()
        self.case, self.error = None, None
        try:
            self.case = build_case(spec)
        except Exception:  # noqa: BLE001 - the driver records the case as failed
            self.error = traceback.format_exc()
        self.setup_s = time.perf_counter() - t0

    def receive(self) -> dict:
        if self.error:
            raise WorkerError(f"{self.name}: {self.error}")
        return {"ready": True, "setup_s": self.setup_s, "rss_baseline_mb": self.baseline, **self.case.info}

    def ask(self, do: str, path: str | None = None) -> dict:
        """"step": one step; "profile": one step under torch.profiler, its op table written to `path`; "quit"."""
        if do == "quit":
            return {"peak_rss_mb": rss_mb()}
        try:
            if do == "profile":
                return {**profile_step(self.case, path), "peak_rss_mb": rss_mb()}
            return {**self.case.step(), "peak_rss_mb": rss_mb()}
        except Exception:  # noqa: BLE001
            raise WorkerError(f"{self.name}: {traceback.format_exc()}") from None

    def kill(self) -> None:
        pass



def profile_step(case, path: str | None, top: int = 25) -> dict:
    """One step of `case` under torch.profiler (CPU, in the thread the step runs in): the ops by self CPU time, as
    a table written to `path` and as the `top` rows returned (name, calls, self CPU s, share of the step)."""
    from torch.profiler import ProfilerActivity, profile

    if hasattr(case, "profiled_step"):  # TRL's case: the profiler runs in its training thread
        reply, prof = case.profiled_step()
    else:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            reply = case.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    if path:
        Path(path).write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=60))
    rows = [{"op": e.key, "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6,
             "share": e.self_cpu_time_total / total} for e in events[:top]]
    return {**reply, "profile_top": rows, "profile_path": path}


# =====================================================================================================================
# Driver side: start the workers, warm them, step them round-robin, collect.
# =====================================================================================================================

class Worker:
    """One case in a subprocess running tools/bench/step.py with `--worker SPEC`."""

    def __init__(self, name: str, spec: dict, log_dir: Path, timeout: float):
        self.name, self.timeout = name, timeout
        self.log_path = log_dir / f"{spec.get('size', '')}-{name}.log"
        self.log = open(self.log_path, "w")
        env = {**os.environ, **OFFLINE_ENV}
        self.proc = subprocess.Popen([sys.executable, str(STEP_SCRIPT), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)

    def _tail(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()[-3000:]

    def receive(self, timeout: float | None = None) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout or self.timeout)
        if not ready:
            tail = self._tail()
            self.kill()
            raise WorkerError(f"{self.name}: no answer in {timeout or self.timeout:.0f} s; log:\n{tail}")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise WorkerError(f"{self.name}: the worker exited with code {code}; log:\n{self._tail()}")
        msg = json.loads(line)
        if "error" in msg:
            self.kill()
            raise WorkerError(f"{self.name}: {msg['error']}")
        return msg

    def ask(self, do: str, path: str | None = None) -> dict:
        self.proc.stdin.write(json.dumps({"do": do, "path": path}) + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_cases(specs: dict[str, dict], warmup: int, steps: int, log_dir: Path, timeout: float,
              in_process: bool = False, min_seconds: float = 0.0, profile: dict[str, str] | None = None) -> dict:
    """Start every case, then `warmup` + `steps` round-robin rounds, and more rounds (at most `MAX_ROUNDS`) while
    a case's timed steps add up to less than `min_seconds` (short steps need more of them for a steady median);
    then one more, untimed, profiled step of each case named in `profile` (name -> where its op table goes);
    returns name -> raw result (or error)."""
    out: dict[str, dict] = {}
    workers = {name: Local(spec, name) if in_process else Worker(name, spec, log_dir, timeout)
               for name, spec in specs.items()}
    live: dict[str, Worker] = {}
    for name, w in workers.items():
        try:
            out[name] = {"setup": w.receive(), "steps": [], "warmup": []}
            live[name] = w
        except WorkerError as e:
            out[name] = {"error": str(e)}
    r = 0
    while live and (r < warmup + steps or (r < warmup + MAX_ROUNDS and min(
            sum(x.get("time_s", 0.0) for x in out[name]["steps"]) for name in live) < min_seconds)):
        for name, w in list(live.items()):
            try:
                reply = w.ask("step")
            except WorkerError as e:
                out[name] = {"error": str(e)}
                del live[name]
                continue
            out[name]["steps" if r >= warmup else "warmup"].append(reply)
        r += 1
    for name, w in live.items():
        try:
            if profile and name in profile and out[name]["steps"]:
                peak = out[name]["steps"][-1]["peak_rss_mb"]  # the peak over the timed steps, before profiling
                out[name]["profile"] = w.ask("profile", profile[name])
                w.ask("quit")
            else:
                peak = w.ask("quit")["peak_rss_mb"]
            out[name]["peak_rss_mb"] = peak
        except WorkerError as e:
            out[name] = {"error": str(e)}
        w.kill()
    return out
