"""Server mode of the vLLM backend: `python -m vlmrl.models.vllm_server` in the vLLM environment, the trainer a
client (`VLLMServerSampler`, which imports no vllm) in this one: generate, weight reload, a hung server and a dead
one (clear errors within the timeout), and a training run whose server dies (the run stops with the error, the
last checkpoint is intact and the run resumes from it).

The server runs with $VLMRL_VLLM_PYTHON, else .venv-vllm/bin/python (bash tools/setup_vllm.sh); skipped when
neither exists. Run from the main .venv this is the intended split: trainer and vLLM in separate environments.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vlmrl.config import RolloutConfig, VLLMConfig, load_config
from vlmrl.models.codec import Seq
from vlmrl.models.sampler import SamplingParams
from vlmrl.models.vllm_sampler import SamplerUnavailable, VLLMServerSampler
from vlmrl.rollout.engine import RolloutEngine

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = os.environ.get("VLMRL_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
BUILT = bool(os.environ.get("VLMRL_VLLM_PYTHON")) or (ROOT / ".venv-vllm" / ".vlmrl-setup-stamp").is_file()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (Path(VLLM_PYTHON).is_file() and BUILT),
    reason=f"no vLLM environment at {VLLM_PYTHON}: bash tools/setup_vllm.sh (or set VLMRL_VLLM_PYTHON)")]
TOL = 0.02  # |log-prob vLLM - log-prob trainer| per token (tests/test_vllm_sampler.py)
CALL = '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [0, 0, 500, 500]}}</tool_call>'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log: Path, timeout: float = 240) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    f = open(log, "w")
    proc = subprocess.Popen([VLLM_PYTHON, "-m", "vlmrl.models.vllm_server", "--model", str(model), "--port", str(port)],
                            stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    deadline = time.time() + timeout
    while "server ready" not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the vLLM server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait(timeout=60)


def user_only(sample, cfg, family):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]


def make_sample(seed=0, size=(448, 336)):
    g = torch.Generator().manual_seed(seed)
    img = Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())
    return SimpleNamespace(id=f"s{seed}", images=[img], question="What colour is the square?", answer="red",
                           answer_type="word", choices=None, meta={})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from vlmrl.models.policy import Policy
    from vlmrl.models.tiny import make_tiny

    root = tmp_path_factory.mktemp("vllm_server")
    path = make_tiny("qwen2_5_vl", root / "model", size="tiny32", seed=0)
    proc, url = start_server(path, root / "server.log")
    pol = Policy.load(path, dtype="float32", device="cpu")
    client = VLLMServerSampler(VLLMConfig(mode="server", server_urls=[url], timeout=60), root / "weights")
    yield SimpleNamespace(proc=proc, url=url, pol=pol, client=client, root=root, path=path)
    stop(proc)


def test_tool_rollout_through_the_server(server):
    """Direct sampling and the crop-tool loop through the server: every sampled token's log-prob is the trainer's
    (this environment's model), the crop's tokens included in the second turn's prompt."""
    pol = server.pol
    cfg = RolloutConfig(mode="tool", max_turns=2, max_new_tokens=16, crop_min_pixels=4 * 28 * 28,
                        crop_max_pixels=224 * 224, first_turn_prefix=CALL)
    eng = RolloutEngine(pol, cfg, messages_fn=user_only, sampler=server.client)
    trajs = eng.rollout([make_sample(0), make_sample(1)], n_per_prompt=2, generator=torch.Generator().manual_seed(0))
    for t in trajs:
        assert [im.kind for im in t.images] == ["input", "crop"] and t.tool_calls[0].valid
        mask = torch.tensor([t.response_mask]) * (torch.tensor([t.turn_ids]) == 1)
        ref = pol.logprobs([Seq(t.ids, t.vision)], mask)[0]
        assert (ref - torch.tensor(t.logprobs))[mask[0].bool()].abs().max().item() < TOL
    # the same seed through the server again: the same tokens
    again = eng.rollout([make_sample(0), make_sample(1)], n_per_prompt=2, generator=torch.Generator().manual_seed(0))
    assert [t.ids for t in again] == [t.ids for t in trajs]


def test_weights_pushed_to_the_server(server):
    pol, client = server.pol, server.client
    prompt, _ = RolloutEngine(pol, RolloutConfig(mode="direct"), messages_fn=user_only,
                              sampler=client).build_prompt(make_sample(0))
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    (before,) = client.generate([prompt], greedy)
    original = copy.deepcopy(pol.core.state_dict())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pol.core.named_parameters():
            if "language_model" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    from vlmrl.models.vllm_sampler import call

    reloads = call(server.url, "/health")["reloads"]
    client.sync_weights(pol.model)
    assert call(server.url, "/health")["reloads"] == reloads + 1
    assert (server.root / "weights" / "model.safetensors").is_file()
    (after,) = client.generate([prompt], greedy)
    assert after.ids != before.ids
    seq = Seq(list(prompt.ids) + after.ids, [pol.codec.vision(im) for im in prompt.images])
    mask = torch.zeros(1, len(seq.ids), dtype=torch.long)
    mask[0, len(prompt.ids):] = 1
    ref = pol.logprobs([seq], mask)[0, len(prompt.ids):]
    assert (ref - torch.tensor(after.logprobs)).abs().max().item() < TOL
    pol.core.load_state_dict(original)
    client.sync_weights(pol.model)
    assert client.generate([prompt], greedy)[0].ids == before.ids


def test_eval_cli_through_a_server(server, tmp_path):
    """`vlmrl eval --backend vllm --vllm-url URL` (trainer-side environment, no vllm import): the same greedy
    responses as `--backend hf` on the zoom task in tool mode."""
    from vlmrl.cli import main
    from vlmrl.data.synthetic import make_zoom_dataset

    make_zoom_dataset(tmp_path / "z", n=2, n_test=6, seed=0)
    out = {}
    for name, extra in (("hf", ["--backend", "hf"]), ("vllm", ["--backend", "vllm", "--vllm-url", server.url])):
        argv = ["eval", "--task", "zoom", "--data", str(tmp_path / "z" / "test.jsonl"), "--model", str(server.path),
                "--out", str(tmp_path / name), "--max-new-tokens", "12", "--tool", "--no-progress", *extra]
        assert main(argv) == 0
        out[name] = [json.loads(x)["turns"] for x in (tmp_path / name / "samples.jsonl").read_text().splitlines()]
    assert len(out["hf"]) == 6 and sum(a == b for a, b in zip(out["hf"], out["vllm"])) >= 5


def test_a_hung_server_is_an_error_within_the_timeout(server):
    prompt, _ = RolloutEngine(server.pol, RolloutConfig(mode="direct"), messages_fn=user_only,
                              sampler=server.client).build_prompt(make_sample(0))
    client = VLLMServerSampler(VLLMConfig(mode="server", server_urls=[server.url], timeout=3), server.root / "w2")
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.time()
        with pytest.raises(SamplerUnavailable, match=r"vLLM server http://127.0.0.1:\d+ did not answer within the "
                                                     r"timeout .*timeout 3 s, request /generate"):
            client.generate([prompt], SamplingParams(max_new_tokens=4, temperature=0))
        assert time.time() - t0 < 10
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert client.generate([prompt], SamplingParams(max_new_tokens=4, temperature=0))  # it answers again


def _png(path: Path, color) -> None:
    Image.new("RGB", (56, 56), color).save(path)


def test_server_dies_mid_run_checkpoint_kept_and_resume(server, tmp_path, monkeypatch):
    """The server is killed right after step 1's checkpoint: step 2's rollout stops the run with
    SamplerUnavailable; checkpoint step-000001 is intact; with a new server the run resumes from it and ends."""
    import vlmrl.train.run as run_mod
    from vlmrl.train.checkpoint import latest_checkpoint
    from vlmrl.train.metrics import read_metrics

    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i, (name, color) in enumerate([("red", (220, 20, 20)), ("blue", (20, 20, 220))] * 3):
        _png(data / f"{i}.png", color)
        rows.append({"id": f"r{i}", "question": "What colour is the image?", "answer": name, "answer_type": "word",
                     "images": [f"{i}.png"]})
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    proc, url = start_server(server.path, tmp_path / "server.log")

    def args(url):
        return [f"model.path={server.path}", f"data.train={data / 'train.jsonl'}", "data.shuffle=false",
                f"train.output_dir={out}", "train.steps=3", "train.save_every=1", "train.prompts_per_step=2",
                "rollout.group_size=2", "rollout.max_new_tokens=6", "model.dtype=float32", "model.device=cpu",
                "train.plot=false", "train.lr=1e-3", "rollout.backend=vllm", "vllm.mode=server",
                f"vllm.server_urls=[{url}]", "vllm.timeout=20"]

    real_save = run_mod.save_checkpoint

    def save_then_kill(out_dir, step, *a, **k):
        real_save(out_dir, step, *a, **k)
        if step == 1:
            proc.kill()
            proc.wait()

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    monkeypatch.setattr(run_mod, "save_checkpoint", save_then_kill)
    with pytest.raises(SamplerUnavailable, match=r"is unreachable"):
        run_mod.run_training(load_config(ROOT / "recipes" / "grpo.yaml", args(url)))
    assert latest_checkpoint(out).name == "step-000001"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1]
    assert rows[0]["mismatch/logp_abs_max"] < TOL  # old log-probs recomputed by the trainer (vllm.old_logp)
    monkeypatch.setattr(run_mod, "save_checkpoint", real_save)
    proc, url = start_server(server.path, tmp_path / "server2.log")
    try:
        run_mod.run_training(load_config(ROOT / "recipes" / "grpo.yaml", args(url)))
    finally:
        stop(proc)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert latest_checkpoint(out).name == "step-000003"


def test_two_trainer_processes_share_a_server(server, tmp_path):
    """`accelerate launch --num_processes 2` (gloo on CPU) with one server: each process samples its own groups
    through it, the main process pushes the weights after each optimizer step and the other waits at a barrier
    (the server reloads once at the start and once per step), and the run ends."""
    import socket
    import sys

    from vlmrl.data.synthetic import make_zoom_dataset
    from vlmrl.models.vllm_sampler import call
    from vlmrl.train.metrics import read_metrics

    make_zoom_dataset(tmp_path / "z", n=8, n_test=2, seed=0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reloads = call(server.url, "/health")["reloads"]
    env = dict(os.environ, VLMRL_NO_PROGRESS="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(port), "-m", "vlmrl.cli", "train", str(ROOT / "recipes" / "grpo.yaml"),
                        f"model.path={server.path}", f"data.train={tmp_path / 'z' / 'train.jsonl'}",
                        f"train.output_dir={tmp_path / 'run'}", "train.steps=2", "train.prompts_per_step=2",
                        "rollout.group_size=2", "rollout.max_new_tokens=6", "model.dtype=float32", "model.device=cpu",
                        "train.plot=false", "rollout.backend=vllm", "vllm.mode=server",
                        f"vllm.server_urls=[{server.url}]", "vllm.timeout=60"],
                       env=env, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [x["step"] for x in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert call(server.url, "/health")["reloads"] == reloads + 3


def test_a_dead_server_is_an_error(server):
    prompt, _ = RolloutEngine(server.pol, RolloutConfig(mode="direct"), messages_fn=user_only,
                              sampler=server.client).build_prompt(make_sample(0))
    stop(server.proc)
    with pytest.raises(SamplerUnavailable, match=r"is unreachable .*is it running\?"):
        server.client.generate([prompt], SamplingParams(max_new_tokens=4, temperature=0))
    with pytest.raises(SamplerUnavailable, match="is unreachable"):
        VLLMServerSampler(VLLMConfig(mode="server", server_urls=[server.url]))
