"""`keep_freed_memory` (vlmrl/train/memory.py): freed blocks are reused instead of faulted in again, and the
trainer and the SFT warm start turn it on unless `train.keep_freed_memory` is false."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a training-like step whose logits (42 MB) are above glibc's largest automatic mmap threshold (32 MB); after three
# warm-up steps, print the page faults the next five take
PROBE = """
import resource, sys, torch
from vlmrl.train.memory import keep_freed_memory
torch.set_num_threads(1)
if sys.argv[1] == "on":
    assert keep_freed_memory()
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(512, 1536), torch.nn.SiLU(), torch.nn.Linear(1536, 512),
                          torch.nn.Linear(512, 4096))
x = torch.randn(2560, 512)
def step():
    net(x).log_softmax(-1).mean().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    off, on = faults("off"), faults("on")
    assert off >= 5 * (42 << 20) // 4096  # each step faults its logits (at least) in again
    assert on < off / 5, (on, off)


@pytest.mark.parametrize("flag", [True, False])
def test_trainer_and_sft_turn_it_on_unless_switched_off(flag, monkeypatch, tmp_path):
    import vlmrl.train.memory as memory
    from vlmrl.config import load_config
    from vlmrl.train.sft import run_sft
    from vlmrl.train.trainer import Trainer

    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr("vlmrl.train.trainer.keep_freed_memory", memory.keep_freed_memory)
    cfg = load_config(ROOT / "recipes" / "grpo.yaml", [f"model.path={tmp_path / 'missing'}", "model.device=cpu",
                                                      f"train.output_dir={tmp_path}",
                                                      f"train.keep_freed_memory={str(flag).lower()}"])
    for build in (lambda: Trainer(cfg), lambda: run_sft(cfg, verbose=False)):
        with pytest.raises(Exception):  # the model does not exist: both stop when they load it
            build()
    assert len(calls) == (2 if flag else 0)
