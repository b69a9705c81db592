"""Checkpoints: exact round trip, Hugging Face loadability, pruning, atomicity under SIGKILL and a full disk."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from procs import kill_when
import torch

from vlmrl.train.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                    resolve_resume, save_checkpoint)


def _policy(path):
    from vlmrl.models.policy import Policy

    return Policy.load(path, dtype="float32", device="cpu")


def _train_one_step(model, seed=0):
    """AdamW + LambdaLR after one step with deterministic fake gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    sched.step()
    return opt, sched


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def other_seed_dirs(tmp_path_factory):
    from vlmrl.models.tiny import make_tiny

    built = {}

    def get(family):
        if family not in built:
            built[family] = make_tiny(family, tmp_path_factory.mktemp(f"seed1_{family}"), size="tiny", seed=1)
        return built[family]

    return get


# qwen2_vl: transformers renames keys on save (load goes through from_pretrained); qwen3_vl: keys match directly
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_round_trip_weights_optimizer_scheduler_rng(family, tiny_dirs, other_seed_dirs, tmp_path):
    pol = _policy(tiny_dirs[family])
    opt, sched = _train_one_step(pol.model)
    data_gen = torch.Generator().manual_seed(7)
    torch.randn(3, generator=data_gen)  # a generator mid-stream, like a sampler's
    torch.manual_seed(11)
    random.seed(12)
    np.random.seed(13)

    ckpt = save_checkpoint(tmp_path, 4, pol.model, pol.processor, opt, sched,
                           trainer_state={"data_position": 17, "epoch": 0}, generators={"data": data_gen})
    assert ckpt == tmp_path / "checkpoints" / "step-000004"
    expected = (torch.rand(5), random.random(), np.random.rand(), torch.rand(2, generator=data_gen))

    # scramble every RNG, then restore into a model built with another seed
    torch.manual_seed(999)
    random.seed(999)
    np.random.seed(999)
    gen2 = torch.Generator().manual_seed(999)
    fresh = _policy(other_seed_dirs(family))
    assert not _same_state(fresh.model.state_dict(), pol.model.state_dict())
    opt2 = torch.optim.AdamW([p for p in fresh.model.parameters() if p.requires_grad], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    state = load_checkpoint(ckpt, fresh.model, opt2, sched2, generators={"data": gen2})

    assert state == {"step": 4, "data_position": 17, "epoch": 0}
    assert _same_state(fresh.model.state_dict(), pol.model.state_dict())
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1["state"].keys() == s2["state"].keys()
    for k in s1["state"]:
        assert _same_state(s1["state"][k], s2["state"][k])
    assert sched2.state_dict() == sched.state_dict()
    got = (torch.rand(5), random.random(), np.random.rand(), torch.rand(2, generator=gen2))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and got[2] == expected[2]
    assert torch.equal(got[3], expected[3])


def test_checkpoint_is_a_hugging_face_model_dir(tiny_dirs, tmp_path):
    import vlmrl.models.processor  # noqa: F401  (registers the image-only processor)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    pol = _policy(tiny_dirs["qwen2_5_vl"])
    _train_one_step(pol.model)
    ckpt = save_checkpoint(tmp_path, 1, pol.model, pol.processor)
    hf = AutoModelForImageTextToText.from_pretrained(ckpt)
    assert _same_state(hf.state_dict(), pol.model.state_dict())
    proc = AutoProcessor.from_pretrained(ckpt)
    assert hasattr(proc, "image_processor") and hasattr(proc, "tokenizer")
    assert proc.tokenizer.get_vocab() == pol.tokenizer.get_vocab()
    assert _same_state(_policy(ckpt).model.state_dict(), pol.model.state_dict())


def test_keep_last_prunes_oldest(tiny_dirs, tmp_path):
    pol = _policy(tiny_dirs["qwen2_vl"])
    for step in (2, 4, 6, 8, 10):
        save_checkpoint(tmp_path, step, pol.model, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000008", "step-000010"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-000008", "step-000010"]
    save_checkpoint(tmp_path, 12, pol.model, keep_last=None)
    assert len(list_checkpoints(tmp_path)) == 3


def test_latest_ignores_tmp_and_incomplete_dirs(tiny_dirs, tmp_path):
    pol = _policy(tiny_dirs["qwen2_vl"])
    good = save_checkpoint(tmp_path, 1, pol.model, pol.processor)
    root = tmp_path / "checkpoints"
    shutil.copytree(good, root / ".tmp-step-000005-deadbeef")  # a save killed before its rename
    no_weights = shutil.copytree(good, root / "step-000007")
    (no_weights / "model.safetensors").unlink()
    no_state = shutil.copytree(good, root / "step-000008")
    (no_state / "trainer_state.json").unlink()
    bad_state = shutil.copytree(good, root / "step-000009")
    (bad_state / "trainer_state.json").write_text('{"step": 9')  # truncated JSON

    assert latest_checkpoint(tmp_path) == good
    assert resolve_resume(tmp_path, "auto") == good
    assert resolve_resume(tmp_path, str(good)) == good
    assert resolve_resume(tmp_path, tmp_path) == good  # a run directory means its newest checkpoint
    assert resolve_resume(tmp_path, "none") is None and resolve_resume(tmp_path, "") is None
    assert resolve_resume(tmp_path / "elsewhere", "auto") is None
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(no_weights))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_resume(tmp_path, str(root / "step-000099"))
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(no_state, pol.model)

    save_checkpoint(tmp_path, 2, pol.model, keep_last=None)  # the next save removes the leftover
    assert not (root / ".tmp-step-000005-deadbeef").exists()


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["torch.save", "save_pretrained"])
def test_full_disk_fails_loudly_and_keeps_previous(where, tiny_dirs, tmp_path, monkeypatch):
    pol = _policy(tiny_dirs["qwen2_vl"])
    opt, sched = _train_one_step(pol.model)
    prev = save_checkpoint(tmp_path, 10, pol.model, pol.processor, opt, sched, trainer_state={"data_position": 3})
    if where == "torch.save":
        monkeypatch.setattr(torch, "save", _enospc)
    else:
        monkeypatch.setattr(type(pol.model), "save_pretrained", _enospc)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(tmp_path, 12, pol.model, pol.processor, opt, sched)
    msg = str(info.value)
    assert "step 12" in msg and "No space left on device" in msg and "step-000010 is intact" in msg
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert os.listdir(tmp_path / "checkpoints") == ["step-000010"]
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == prev
    assert load_checkpoint(prev, pol.model, opt, sched)["data_position"] == 3


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from vlmrl.models.policy import Policy
    from vlmrl.train.checkpoint import save_checkpoint
    model_dir, run_dir, marker = sys.argv[1:4]
    pol = Policy.load(model_dir, dtype="float32", device="cpu")
    opt = torch.optim.AdamW(pol.model.parameters(), lr=1e-3)
    save_checkpoint(run_dir, 1, pol.model, pol.processor, opt, trainer_state={"data_position": 1})
    real_save = torch.save
    def slow_save(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            real_save(obj, f, *a, **k)
            open(marker, "w").write("saving")
            time.sleep(120)
        real_save(obj, f, *a, **k)
    torch.save = slow_save
    save_checkpoint(run_dir, 2, pol.model, pol.processor, opt, trainer_state={"data_position": 2})
""")


def test_sigkill_mid_save_leaves_previous_checkpoint(tiny_dirs, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "saving-step-2"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(tiny_dirs["qwen2_vl"]), str(run_dir), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kill_when(proc, marker.exists, "the step-2 save", timeout=60)
    assert proc.returncode == -signal.SIGKILL
    root = run_dir / "checkpoints"
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".tmp-step-000002-")]
    assert len(leftovers) == 1 and (root / leftovers[0] / "model.safetensors").exists()  # killed mid-save
    assert not (root / "step-000002").exists()
    latest = latest_checkpoint(run_dir)
    assert latest == root / "step-000001" == resolve_resume(run_dir, "auto")
    pol = _policy(tiny_dirs["qwen2_vl"])
    opt = torch.optim.AdamW(pol.model.parameters(), lr=1e-3)
    assert load_checkpoint(latest, pol.model, opt) == {"step": 1, "data_position": 1}
    save_checkpoint(run_dir, 2, pol.model, pol.processor, opt)  # resumed run saves again; leftover removed
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000002"]


def test_resave_same_step_replaces_it(tiny_dirs, tmp_path):
    pol = _policy(tiny_dirs["qwen2_vl"])
    save_checkpoint(tmp_path, 3, pol.model, trainer_state={"data_position": 1})
    ckpt = save_checkpoint(tmp_path, 3, pol.model, trainer_state={"data_position": 2})
    assert json.loads((ckpt / "trainer_state.json").read_text())["data_position"] == 2
    assert os.listdir(tmp_path / "checkpoints") == ["step-000003"]


def test_non_main_writes_nothing_and_bad_state_fails_early(tiny_dirs, tmp_path):
    pol = _policy(tiny_dirs["qwen2_vl"])
    assert save_checkpoint(tmp_path, 1, pol.model, is_main=False) is None
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path, 1, pol.model, trainer_state={"x": object()})
    with pytest.raises(CheckpointError, match="no RNG state saved for generator 'data'"):
        ckpt = save_checkpoint(tmp_path, 2, pol.model)
        load_checkpoint(ckpt, generators={"data": torch.Generator()})


def test_lora_adapter_round_trip(tiny_dirs, tmp_path):
    pytest.importorskip("peft")
    from vlmrl.models.policy import Policy

    pol = Policy.load(tiny_dirs["qwen2_vl"], dtype="float32", device="cpu", lora={"r": 4, "alpha": 8})
    opt, _ = _train_one_step(pol.model)
    ckpt = save_checkpoint(tmp_path, 1, pol.model, pol.processor, opt)
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    other = Policy.load(tiny_dirs["qwen2_vl"], dtype="float32", device="cpu", lora={"r": 4, "alpha": 8})
    opt2 = torch.optim.AdamW([p for p in other.model.parameters() if p.requires_grad], lr=1.0)
    load_checkpoint(ckpt, other.model, opt2)
    assert _same_state(other.model.state_dict(), pol.model.state_dict())
