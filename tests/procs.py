"""Test helper: SIGKILL a child process at a chosen moment (the fault tests of checkpoints, eval, training)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Callable

import pytest


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
    """Wait until `ready()`, then SIGKILL `proc` and reap it. Fails the test, with the end of the child's
    output (its stderr, else its stdout, when piped), if the child exits first or `what` takes over `timeout` s."""
    out = proc.stderr or proc.stdout
    try:
        deadline = time.time() + timeout
        while not ready():
            if proc.poll() is not None:
                tail = out.read().decode()[-2000:] if out else ""
                pytest.fail(f"the child exited ({proc.returncode}) before {what}: {tail}")
            if time.time() > deadline:
                pytest.fail(f"the child never reached {what}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
