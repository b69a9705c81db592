"""Sharded training on CPU: FSDP2 (torch fully_shard) through `accelerate launch` with 2 gloo processes.

The slow tests launch `vlmrl train` (or tests/fsdp_grad_script.py) with recipes/accelerate/fsdp2_cpu.yaml and
recipes/accelerate/ddp.yaml, as a user would.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ACC = ROOT / "recipes" / "accelerate"


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_dirs):
    from vlmrl.data.synthetic import make_zoom_dataset

    root = tmp_path_factory.mktemp("fsdp_assets")
    make_zoom_dataset(root / "data", n=16, n_test=4, seed=0)
    return {"model": tiny_dirs["qwen2_5_vl"], "data": root / "data"}


def _env():
    return dict(os.environ, VLMRL_NO_PROGRESS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(config: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACC / config),
            "--main_process_port", str(_port()), *args]


def _train_args(assets, out, steps=3, extra=()):
    return ["-m", "vlmrl.cli", "train", str(ROOT / "recipes" / "quickstart.yaml"), "train.seed=1",
            f"model.path={assets['model']}", f"data.train={assets['data'] / 'train.jsonl'}",
            f"train.output_dir={out}", f"train.steps={steps}", "train.prompts_per_step=2", "rollout.group_size=2",
            "rollout.max_new_tokens=8", "train.eval_every=0", "train.save_every=1", "model.dtype=float32",
            "model.device=cpu", "train.plot=false", "train.lr=1e-3", "train.micro_batch_size=2",
            "train.trace_samples=0", *extra]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it, by id (torchrun starts its workers in new sessions)."""
    import psutil

    try:
        procs = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(procs, timeout=30)


def _wait_for(proc, ready, what, timeout=300):
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before {what}")
        if time.time() > deadline:
            _kill_tree(proc)
            pytest.fail(f"the run never reached {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- fast

def test_loss_totals_make_split_batches_exact():
    """Each aggregation, split into parts (processes, micro-batches) whose weights use the summed `loss_totals`,
    gives the whole batch's loss; with each part's own totals (what a per-process mean does) it does not."""
    from vlmrl.algos import final_turn_mask, loss_totals, loss_weights, weighted_sum

    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    turns = torch.tensor([[-1, 0, 0, 1, -1], [0, 1, -1, -1, -1], [-1, -1, -1, 0, 0], [0, 0, 1, 1, 1], [-1] * 5])
    final = final_turn_mask(turns, mask)
    loss = torch.randn(mask.shape, generator=g)
    parts = [[0, 4], [1, 2], [3]]  # uneven: tokens 3/4/5, one empty row
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "dtpo"):
        kw = {"final_mask": final} if agg == "dtpo" else {}
        whole = weighted_sum(loss, loss_weights(mask, agg, norm_len=5, alpha=0.5, **kw))
        tot = sum(loss_totals(mask[p], agg, final[p] if agg == "dtpo" else None) for p in parts)
        split = sum(weighted_sum(loss[p], loss_weights(mask[p], agg, norm_len=5, alpha=0.5, totals=tot,
                                                       **({"final_mask": final[p]} if agg == "dtpo" else {})))
                    for p in parts)
        assert torch.allclose(split, whole, atol=1e-6), agg
        naive = sum(weighted_sum(loss[p], loss_weights(mask[p], agg, norm_len=5, alpha=0.5,
                                                       **({"final_mask": final[p]} if agg == "dtpo" else {})))
                    for p in parts) / len(parts)
        if agg != "seq-mean-token-sum-norm":  # Dr.GRPO's constant norm is per row: exact either way up to B
            assert not torch.allclose(naive, whole, atol=1e-4), agg
    # hand-computed: token-mean totals are token counts; DTPO's are [non-final, final] tokens
    assert loss_totals(mask, "token-mean").tolist() == [12.0, 0.0]
    assert loss_totals(mask, "seq-mean-token-mean").tolist() == [4.0, 0.0]
    assert loss_totals(mask, "seq-mean-token-sum-norm").tolist() == [5.0, 0.0]
    assert loss_totals(mask, "dtpo", final).tolist() == [5.0, 7.0]
    w = loss_weights(mask[[3]], "dtpo", final_mask=final[[3]], alpha=0.5, totals=torch.tensor([5.0, 7.0]))
    assert torch.allclose(w, torch.tensor([[0.5 / 5, 0.5 / 5, 1 / 7, 1 / 7, 1 / 7]]))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_family_wrap_classes_are_the_models_decoder_layers_and_vision_blocks(family, tiny_policies):
    from vlmrl.family import get_family
    from vlmrl.train.distributed import transformer_blocks

    core = tiny_policies[family].core
    layer, block = get_family(family).fsdp_wrap
    assert len(transformer_blocks(core, [layer])) == core.config.get_text_config().num_hidden_layers
    assert len(transformer_blocks(core, [block])) == len(core.model.visual.blocks)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_vision_keepalive_runs_the_tower_without_changing_a_text_only_pass(family, tiny_dirs):
    """A forward with no image: same logits with the keep-alive hooks, the vision tower runs (once), and its
    weights get gradients that are exactly zero (so FSDP reduce-scatters them and DDP finds them all)."""
    from vlmrl.models.policy import Policy
    from vlmrl.train.distributed import VisionKeepAlive

    pol = Policy.load(tiny_dirs[family], dtype="float32", device="cpu")
    core = pol.core
    ids = torch.randint(10, 200, (2, 7), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": torch.zeros_like(ids)}
    plain = core(**inputs).logits
    calls = []
    h = core.model.visual.register_forward_hook(lambda *a: calls.append(1))
    keep = VisionKeepAlive(core)
    out = core(**inputs).logits
    assert torch.equal(out, plain) and len(calls) == 1
    out.sum().backward()
    vis = [p.grad for p in core.model.visual.parameters()]
    assert all(g is not None and not g.any() for g in vis)
    assert any(p.grad is not None and p.grad.any() for p in core.model.language_model.parameters())
    keep.remove()
    h.remove()


def test_gathered_sampler_samples_from_a_copy_refreshed_by_sync_weights(tiny_dirs):
    from vlmrl.models.gathered_sampler import GatheredSampler
    from vlmrl.models.policy import Policy
    from vlmrl.models.sampler import Prompt, SamplingParams

    pol = Policy.load(tiny_dirs["qwen2_5_vl"], dtype="float32", device="cpu")
    s = GatheredSampler(pol)
    prompt = [Prompt(ids=pol.tokenizer.encode("what colour is the square?"), images=[])]
    params = SamplingParams(n=1, max_new_tokens=6, temperature=0.0)
    with pytest.raises(RuntimeError, match="before the first sync_weights"):
        s.generate(prompt, params)
    s.sync_weights(pol.model)
    before = s.generate(prompt, params)[0]
    with torch.no_grad():
        pol.core.lm_head.weight.mul_(3.0)  # the policy changes; the copy does not until the next sync
    again = s.generate(prompt, params)[0]
    assert (again.ids, again.logprobs) == (before.ids, before.logprobs)
    s.sync_weights(pol.model)
    after = s.generate(prompt, params)[0]
    assert after.logprobs != before.logprobs
    assert s.gathers == 2 and s.replica.model is not pol.model


# --------------------------------------------------------------------------- 2 processes (slow)

@pytest.mark.slow
def test_two_processes_give_the_one_process_gradient(assets, tmp_path):
    """One update's gradient on the same 8 trajectories: one process holding all of them vs 2 processes (DDP, and
    FSDP2) holding 2 and 6 rows, with micro-batches of 1 (so the ranks run 2 and 6 micro-batches: padding passes),
    for DTPO (both turn terms) and GRPO's token-mean. Global token normalisation makes them equal up to float
    rounding (without it, the relative error is ~1-2). Under FSDP2 the rollout makes no all-gather."""
    script = ROOT / "tests" / "fsdp_grad_script.py"
    args = [str(script), str(assets["model"]), str(assets["data"]), str(tmp_path)]
    r = subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for config in ("ddp.yaml", "fsdp2_cpu.yaml"):
        r = subprocess.run(_launch(config, args), env=_env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    for recipe in ("quickstart", "grpo"):
        one = torch.load(tmp_path / f"grad-{recipe}-one.pt")
        assert one["rows"] == 8
        for tag in ("ddp", "fsdp2"):
            two = torch.load(tmp_path / f"grad-{recipe}-{tag}.pt")
            assert two["rows"] == 2  # rank 0's share
            a, b = one["grads"], two["grads"]
            assert set(a) == set(b) and len(a) > 10
            for k in a:
                assert a[k].abs().max() > 0 or k.startswith("model.visual"), (recipe, tag, k)
                assert torch.allclose(b[k], a[k], rtol=1e-4, atol=1e-5 * float(a[k].abs().max()) + 1e-10), \
                    (recipe, tag, k, float((a[k] - b[k]).abs().max()))
            if tag == "fsdp2":
                assert two["gathers_in_rollout"] == 0


@pytest.mark.slow
def test_fsdp2_kill_and_resume_is_bit_identical(assets, tmp_path):
    """2-process FSDP2, 3 steps of the quickstart recipe (DTPO, tool mode), sharded checkpoints every step: killed
    (every process) once step 2's checkpoint exists, resumed, it ends with the same bits as an uninterrupted run.
    The export is a plain HF checkpoint that `Policy.load` reads."""
    full, part = tmp_path / "full", tmp_path / "part"
    r = subprocess.run(_launch("fsdp2_cpu.yaml", _train_args(assets, full)), env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = full / "checkpoints" / "step-000003"
    assert (ck / "sharded" / ".metadata").is_file() and (ck / "rng-001.pt").is_file()
    assert json.loads((ck / "trainer_state.json").read_text())["num_processes"] == 2
    proc = subprocess.Popen(_launch("fsdp2_cpu.yaml", _train_args(assets, part)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(proc, (part / "checkpoints" / "step-000002").is_dir, "step 2's checkpoint")
    finally:
        _kill_tree(proc)
    assert not (part / "checkpoints" / "step-000003").exists() and not (part / "model").exists()
    r = subprocess.run(_launch("fsdp2_cpu.yaml", _train_args(assets, part)), env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "step-000002" in r.stdout
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(part / "model" / "model.safetensors"))
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    before = load_file(str(Path(assets["model"]) / "model.safetensors"))
    assert any(not torch.equal(before[k], a[k]) for k in before if k in a)
    from vlmrl.models.policy import Policy

    Policy.load(full / "model", dtype="float32", device="cpu")


@pytest.mark.slow
def test_fsdp2_rank_killed_mid_step_ends_the_run_and_the_last_checkpoint_resumes(assets, tmp_path):
    """Rank 1 SIGKILLed during step 2 (after step 1's checkpoint): the launcher ends rank 0 within a timeout and
    exits non-zero naming the failed rank and its signal; the run then resumes from step 1's checkpoint."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_launch("fsdp2_cpu.yaml", _train_args(assets, out, steps=2)), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import psutil

    try:
        _wait_for(proc, (out / "checkpoints" / "step-000001").is_dir, "step 1's checkpoint")
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "vlmrl.cli" in " ".join(p.cmdline())]
        rank1 = [p for p in workers if p.environ().get("RANK") == "1"]
        assert rank1, [p.cmdline() for p in workers]
        os.kill(rank1[0].pid, signal.SIGKILL)
        t0 = time.time()
        _, err = proc.communicate(timeout=120)
        took = time.time() - t0
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    Path(os.environ.get("VLMRL_FAULT_LOG", os.devnull)).write_text(err)
    assert proc.returncode != 0 and took < 120
    assert "rank      : 1" in err and "SIGKILL" in err, err[-2000:]
    assert not (out / "model").exists()
    r = subprocess.run(_launch("fsdp2_cpu.yaml", _train_args(assets, out, steps=2)), env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "step-000001" in r.stdout
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("launch", [
    ["fsdp2_cpu.yaml", "--mixed_precision", "bf16", "--fsdp_activation_checkpointing", "true",
     "--fsdp_cpu_ram_efficient_loading", "true", "--fsdp_sync_module_states", "true"],
    ["ddp.yaml"],
], ids=["fsdp2-lora-bf16-actckpt-ramload", "ddp-lora"])
def test_lora_trains_under_fsdp2_and_ddp(launch, assets, tmp_path):
    """LoRA (peft) for 2 steps: under FSDP2 with bf16 mixed precision, accelerate's activation checkpointing and
    cpu-ram-efficient loading all on, and under DDP. The run saves its adapter, and the adapter moved from its
    initialisation (B starts at 0)."""
    out = tmp_path / "run"
    cmd = _launch(launch[0], [*launch[1:], *_train_args(assets, out, steps=2, extra=["model.lora_r=4"])])
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    adapter = load_file(str(out / "model" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)


@pytest.mark.slow
def test_ddp_resume_restores_every_ranks_rng(assets, tmp_path):
    """DDP, 2 processes, 2 steps with a checkpoint each step; the same run resumed from step 1's checkpoint ends
    with the same bits: each rank restores its own RNG streams and data position (rng-00R.pt), not rank 0's."""
    import shutil

    full = tmp_path / "full"
    r = subprocess.run(_launch("ddp.yaml", _train_args(assets, full, steps=2)), env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (full / "checkpoints" / "step-000001" / "rng-001.pt").is_file()
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-000002")
    shutil.rmtree(part / "model")
    r = subprocess.run(_launch("ddp.yaml", _train_args(assets, part, steps=2)), env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step-000001" in r.stdout
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(part / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sampler_syncs_once_per_update_however_many_optimizer_steps(assets, tiny_dirs):
    """4 trajectories in mini-batches of 1: 4 optimizer steps, one `sync_weights` (under FSDP the gathered sampler
    all-gathers there, so once per rollout)."""
    from vlmrl.config import load_config
    from vlmrl.models.hf_sampler import HFSampler
    from vlmrl.train.trainer import Trainer

    cfg = load_config(ROOT / "recipes" / "grpo.yaml", [
        f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={assets['data'] / 'train.jsonl'}",
        "train.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6", "model.dtype=float32",
        "model.device=cpu", "train.mini_batch_size=1", "train.output_dir=/nonexistent-unused"])

    class Counting(HFSampler):
        syncs = 0

        def sync_weights(self, model):
            Counting.syncs += 1
            super().sync_weights(model)

    t = Trainer(cfg)
    t.sampler = t.engine.sampler = Counting(t.policy)
    steps = []
    real = t.optimizer.step
    t.optimizer.step = lambda *a, **k: (steps.append(1), real(*a, **k))
    trajs, total, parts, kept, _ = t.collect()
    from vlmrl.train.batch import RolloutBatch

    batch = RolloutBatch.from_trajectories(trajs, [True] * len(trajs))
    batch.advantages = torch.randn(batch.loss_mask.shape, generator=torch.Generator().manual_seed(0)) * batch.response_mask
    t.update(batch)
    assert len(steps) == 4 and Counting.syncs == 1
