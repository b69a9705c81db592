"""The RL trainer: every recipe runs two steps; config errors; multi-process; kill-and-resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from procs import kill_when
import torch
from safetensors.torch import load_file

from vlmrl.config import ConfigError, load_config
from vlmrl.train.metrics import METRIC_KEYS, read_metrics

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["grpo", "dapo", "gspo", "papo_g", "papo_d", "dtpo", "quickstart"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_dirs):
    from vlmrl.data.synthetic import make_zoom_dataset

    root = tmp_path_factory.mktemp("train_assets")
    make_zoom_dataset(root / "data", n=16, n_test=8, seed=0)
    return {"model": tiny_dirs["qwen2_5_vl"], "data": root / "data"}


def overrides(assets, out, steps=2):
    return ["train.seed=1", f"model.path={assets['model']}", f"data.train={assets['data'] / 'train.jsonl'}",
            f"data.eval={assets['data'] / 'test.jsonl'}", f"train.output_dir={out}", f"train.steps={steps}",
            "train.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8", "train.eval_every=0",
            "train.save_every=0", "model.dtype=float32", "model.device=cpu", "train.plot=false", "train.lr=1e-3"]


def _weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_runs_two_steps(recipe, assets, tmp_path, monkeypatch):
    from vlmrl.train.run import run_training

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    extra = []
    if recipe not in ("dtpo", "quickstart"):
        # an untrained model earns no accuracy reward, so advantages would all be 0: use a user reward
        # (loaded from a file) that varies with the response, so the update has something to follow
        fn = tmp_path / "my_reward.py"
        fn.write_text("def length_reward(response, sample):\n"
                      "    return {'reward': len(response) % 5 / 4.0, 'accuracy': float(len(response) % 2)}\n")
        extra = [f"reward.name={fn}:length_reward"]
        if recipe == "dapo":  # the overlong buffer must fit the test's 8-token cap
            extra.append("algo.overlong_buffer=4")
    elif recipe == "dtpo":
        # an untrained model's DTPO rewards are all equal, so rejection sampling would drop every group (the filter
        # itself is tested in tests/test_train_sampling.py)
        extra = ["algo.dynamic_sampling=false"]
    cfg = load_config(ROOT / "recipes" / f"{recipe}.yaml", overrides(assets, tmp_path / "run") + extra)
    out = run_training(cfg)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in METRIC_KEYS:
        assert all(key in r for r in rows), key
    before, after = _weights(assets["model"]), _weights(out / "model")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no parameter changed after two steps"
    assert (out / "checkpoints" / "step-000002").is_dir()
    traces = sorted((out / "traces").glob("step-*.jsonl"))
    assert len(traces) == 2 and json.loads(traces[0].read_text().splitlines()[0])["rewards"]
    if cfg.algo.papo.enabled:  # the masked pass sees other pixels, so its log-probs differ: KL strictly positive
        assert all(r["perception_kl"] is not None and r["perception_kl"] > 1e-6 for r in rows)
    if cfg.algo.kl_coef > 0:
        assert all(r["ref_kl"] is not None for r in rows)
    if cfg.rollout.mode == "tool":
        assert all(r["visual_tokens_per_sample"] > 0 for r in rows)


def test_unknown_and_mistyped_keys_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'algo.clip_hgh'; did you mean 'clip_high'"):
        load_config(None, ["algo.clip_hgh=0.3"])
    with pytest.raises(ConfigError, match=r"train.steps: expected an integer"):
        load_config(None, ["train.steps=abc"])
    bad = tmp_path / "r.yaml"
    bad.write_text("rollout: {grup_size: 4}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: unknown key 'rollout.grup_size'; did you mean 'group_size'"):
        load_config(bad)
    cfg = load_config(ROOT / "recipes" / "dtpo.yaml", ["algo.alpha=0.25", "rollout.max_turns=3"])
    assert cfg.algo.alpha == 0.25 and cfg.rollout.max_turns == 3 and cfg.algo.name == "dtpo"


def test_train_cli_reports_bad_recipe(tmp_path, capsys):
    from vlmrl.cli import main

    bad = tmp_path / "r.yaml"
    bad.write_text("algo: {nme: grpo}\n")
    assert main(["train", str(bad)]) == 1
    assert "unknown key 'algo.nme'; did you mean 'name'" in capsys.readouterr().err


def test_algorithm_with_the_wrong_reward_or_mode_is_refused_when_the_recipe_loads(tmp_path, capsys):
    """The algorithm table is checked when the recipe loads: DTPO with a non-DTPO reward (it would die at step 1
    with KeyError: 'outcome') or in direct mode is a config error naming both keys; `vlmrl train` exits 1 with
    it, before any model or data is read (the paths here do not exist)."""
    from vlmrl.cli import main

    recipe = ROOT / "recipes" / "quickstart.yaml"
    assert main(["train", str(recipe), "reward.name=accuracy_format", "model.path=/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert "algo.name=dtpo needs reward.name=dtpo, got reward.name=accuracy_format" in err, err
    assert "quickstart.yaml" in err
    with pytest.raises(ConfigError, match=r"algo.name=dtpo needs rollout.mode=tool, got rollout.mode=direct"):
        load_config(recipe, ["rollout.mode=direct"])
    with pytest.raises(ConfigError, match=r"algo.name must be one of grpo, dapo, dr_grpo, gspo, dtpo, got 'ppo'"):
        load_config(None, ["algo.name=ppo"])
    with pytest.raises(ConfigError, match=r"algo.loss_agg must be one of .*got 'mean'"):
        load_config(None, ["algo.loss_agg=mean"])
    # algorithms without a required reward take any (a DTPO reward's total included)
    assert load_config(None, ["algo.name=dr_grpo", "reward.name=dtpo"]).algo.name == "dr_grpo"


def _run_cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "vlmrl.cli", *args], env=env, capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(assets, tmp_path):
    env = dict(os.environ, VLMRL_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    recipe = str(ROOT / "recipes" / "grpo.yaml")
    steps = 4
    full = tmp_path / "full"
    r = _run_cli(["train", recipe, *overrides(assets, full, steps), "train.save_every=1"], env, timeout=600)
    assert r.returncode == 0, r.stderr
    # the same run, killed with SIGKILL once step 2's checkpoint exists, then resumed
    part = tmp_path / "part"
    args = ["train", recipe, *overrides(assets, part, steps), "train.save_every=1"]
    proc = subprocess.Popen([sys.executable, "-m", "vlmrl.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kill_when(proc, (part / "checkpoints" / "step-000002").is_dir, "step 2's checkpoint")
    r = _run_cli(args, env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [x["step"] for x in b] == list(range(1, steps + 1))
    skip = {"time/", "lr"}
    for ra, rb in zip(a[2:], b[2:]):
        for k, v in ra.items():
            if k.startswith("time/") or k in skip:
                continue
            if isinstance(v, float):
                assert rb[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (ra["step"], k)
            else:
                assert rb[k] == v, (ra["step"], k)
    wa, wb = _weights(full / "model"), _weights(part / "model")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(assets, tmp_path):
    script = tmp_path / "ddp.py"
    # compare parameters of both ranks right after training, from inside the processes
    script.write_text(f"""
import gc, os
import torch, torch.distributed as dist
from accelerate import Accelerator
from vlmrl.config import load_config
from vlmrl.train import run as run_mod
from vlmrl.train.trainer import Trainer
acc = Accelerator(cpu=True)
cfg = load_config({str(ROOT / 'recipes' / 'grpo.yaml')!r}, {overrides(assets, tmp_path / 'run')!r})
captured = {{}}
orig = Trainer.__init__
def init(self, *a, **k):
    orig(self, *a, **k)
    captured['t'] = self
Trainer.__init__ = init
run_mod.run_training(cfg, acc)
model = acc.unwrap_model(captured['t'].policy.model)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(acc.num_processes)]
dist.all_gather(gathered, flat)
if acc.is_main_process:
    same = all(torch.equal(gathered[0], g) for g in gathered[1:])
    print("RANKS_IDENTICAL", same, acc.num_processes, flush=True)
dist.barrier()
# The DDP wrapper holds the process group; freed during interpreter teardown while gloo's threads still run,
# it can abort the rank ("terminate called without an active exception"). Free it first, then leave at once.
del captured, model, gathered
gc.collect()
dist.destroy_process_group()
os._exit(0)
""")
    env = dict(os.environ, VLMRL_NO_PROGRESS="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # On a CPU-only machine `--multi_gpu` starts torchrun workers that accelerate runs as MULTI_CPU (gloo);
    # accelerate 1.x's `--cpu --num_processes 2` launches a single process.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(port), str(script)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RANKS_IDENTICAL True 2" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [x["step"] for x in rows] == [1, 2]
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["skipped_by_process"] == [[], []]  # one list of skipped rows per process


def test_nonfinite_loss_skips_steps_then_stops(assets, tmp_path, monkeypatch):
    """A NaN loss skips the update (parameters unchanged, counted); N in a row stop with a clear error."""
    from vlmrl.models.policy import Policy
    from vlmrl.train.run import run_training

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    real = Policy.logprobs

    def nan_logprobs(self, *a, **k):
        out = real(self, *a, **k)
        if isinstance(out, tuple):
            return (out[0] * float("nan"),) + tuple(out[1:])
        return out * float("nan")

    monkeypatch.setattr(Policy, "logprobs", nan_logprobs)
    fn = tmp_path / "r.py"
    fn.write_text("def f(response, sample):\n    return len(response) % 3\n")
    cfg = load_config(ROOT / "recipes" / "grpo.yaml",
                      overrides(assets, tmp_path / "run", steps=5) + [f"reward.name={fn}:f", "train.max_nonfinite_steps=2"])
    with pytest.raises(FloatingPointError, match="2 steps in a row had a NaN/inf"):
        run_training(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["nonfinite_steps"] for r in rows] == [1]  # step 1 logged as skipped; step 2 stops the run


@pytest.mark.parametrize("window", ["[0.5]", "[0.9,0.1]", "[0.0,1.5]"])
def test_bad_acc_window_is_refused_before_training(window):
    """Reliability[train]: a recipe's algo.acc_window of the wrong length or order ([0.5], [0.9, 0.1], [0, 1.5]) | refused when the trainer is built, naming the key, before any model is loaded"""
    from vlmrl.config import load_config
    from vlmrl.train.trainer import Trainer

    cfg = load_config(ROOT / "recipes" / "papo_d.yaml", [f"algo.acc_window={window}"])
    with pytest.raises(ValueError, match=r"algo\.acc_window must be \[low, high\]"):
        Trainer(cfg)


def test_skipped_rows_are_restored_per_process():
    """Reliability[train]: a multi-process run resumed from a checkpoint after skipping bad rows | each process gets back its own skipped rows (another process count: the main process takes them all), so skipped_samples, summed across processes, stays right"""
    from types import SimpleNamespace

    from vlmrl.train.run import _my_skipped

    acc = lambda i, n: SimpleNamespace(process_index=i, num_processes=n, is_main_process=i == 0)  # noqa: E731
    state = {"skipped_samples": ["a"], "skipped_by_process": [["a"], ["b", "c"]]}
    assert _my_skipped(state, acc(0, 2)) == ["a"] and _my_skipped(state, acc(1, 2)) == ["b", "c"]
    assert _my_skipped(state, acc(0, 1)) == ["a", "b", "c"]
    assert _my_skipped(state, acc(0, 3)) == ["a", "b", "c"] and _my_skipped(state, acc(2, 3)) == []
    assert _my_skipped({"skipped_samples": ["a"]}, acc(0, 1)) == ["a"]
    assert _my_skipped({}, acc(0, 1)) == []


def test_papo_masked_image_is_shared_within_a_group_not_across_resampling_tries(assets, tmp_path):
    """PAPO masks each prompt image once per group (by group id). prompt_index restarts with each resampling
    try, so two groups with prompt_index 0 (different images, group ids 0 and 1) must each get a masked copy of
    their own image, and a crop gets one per trajectory (mask_order resized; the raw order, where a group's crops
    share its source's mask, is tested in tests/test_papo_views.py)."""
    from PIL import Image

    from vlmrl.rollout.trajectory import TrajImage, Trajectory
    from vlmrl.train.trainer import Trainer

    cfg = load_config(None, overrides(assets, tmp_path) + ["algo.papo.enabled=true", "algo.papo.mask_prob=0.5",
                                                           "algo.papo.patch_size=14", "algo.papo.mask_order=resized"])
    tr = Trainer(cfg)
    G = cfg.rollout.group_size
    size = (56, 56)
    pictures = [Image.new("RGB", size, (200, 30, 30)), Image.new("RGB", size, (30, 30, 200))]
    crop = Image.new("RGB", size, (30, 200, 30))

    def traj(picture, with_crop, group_id):
        images = [TrajImage("input", size, size, 4, -1, image=picture)]
        if with_crop:
            images.append(TrajImage("crop", size, size, 4, 0, image=crop))
        return Trajectory(prompt_index=0, sample_index=0, sample_id="s", question="q", answer="a",
                          answer_type="text", ids=[], response_mask=[], turn_ids=[], logprobs=[], prompt_len=0,
                          images=images, group_id=group_id)

    trajs = [traj(pictures[i // G], with_crop=(i != 1), group_id=i // G) for i in range(2 * G)]  # prompt_index 0
    vis = tr._masked_vision(trajs)
    first = [v[0] for v in vis]
    assert all(first[i] is first[0] for i in range(G)) and all(first[i] is first[G] for i in range(G, 2 * G))
    assert first[0] is not first[G]
    # each group's masked copy is of its own picture: its unmasked pixels carry that picture's colour
    for g in range(2):
        plain = tr.policy.codec.encode_image(pictures[g]).pixel_values
        other = tr.policy.codec.encode_image(pictures[1 - g]).pixel_values
        masked = first[g * G].pixel_values
        kept = (masked - plain).abs().amax(-1) < 1e-5
        assert kept.any() and not ((masked - other).abs().amax(-1) < 1e-5)[kept].any()
    crops = [v[1] for v in vis if len(v) > 1]
    assert len(crops) == 2 * G - 1 and len({id(c) for c in crops}) == len(crops)  # one per trajectory


def test_periodic_eval_runs_with_the_trainers_sampler(tiny_policies):
    """train/run.py's periodic eval goes through the eval harness with the sampler it is given (the trainer's, so
    no second HF sampler packs its own copy of the decode weights): a scripted sampler's answers are what it
    scores, 2 of 3 right."""
    from types import SimpleNamespace

    from PIL import Image

    from vlmrl.config import load_config
    from vlmrl.rollout.scripted import ScriptedSampler
    from vlmrl.train.run import evaluate

    pol = tiny_policies["qwen2_5_vl"]
    samples = [SimpleNamespace(id=str(i), images=[Image.new("RGB", (112, 112), (40 * i, 90, 200))],
                               question="What digit?", answer=a, answer_type="number", choices=None, meta={})
               for i, a in enumerate(["7", "7", "3"])]
    scripted = ScriptedSampler(pol.tokenizer, lambda row, turn: "<think>ok</think><answer>7</answer>")
    scripted.start(len(samples))
    cfg = load_config(None, ["rollout.max_new_tokens=16"])
    answers = []  # what the answer-collapse health check counts: (kind = answer type here, predicted, target)
    out = evaluate(pol, samples, cfg, limit=3, sampler=scripted, answers=answers)
    assert out["eval/accuracy"] == pytest.approx(2 / 3) and out["eval/skipped_samples"] == 0
    assert answers == [("number", "7", "7"), ("number", "7", "7"), ("number", "7", "3")]


def test_dropped_groups_filling_a_micro_batch_are_not_run(assets, tmp_path, monkeypatch):
    """Dynamic sampling keeps the dropped groups' rows in the step's batch with their loss mask zeroed. When a
    whole micro-batch is such rows (here group 0, zero reward std, first in the batch, micro-batch = one group)
    its loss had no gradient and backward raised "element 0 of tensors does not require grad" (found on the
    digits recipe with algo.dynamic_sampling=true). Rows without a loss token are now left out of the passes:
    the step trains, every pass sees only rows with loss tokens, and every kept row is run once."""
    from vlmrl.train.trainer import Trainer

    cfg = load_config(None, overrides(assets, tmp_path, steps=1) + [
        "algo.dynamic_sampling=true", "algo.max_sampling_tries=3", "train.micro_batch_size=2"])

    def score(self, trajs, groups):  # group 0: equal rewards (dropped); later groups: one of two right
        total = [float(t.group_id > 0 and i % 2) for i, t in enumerate(trajs)]
        return total, {"accuracy": total}

    monkeypatch.setattr(Trainer, "_score", score)
    tr = Trainer(cfg)
    seen, real = [], Trainer._micro_loss

    def micro_loss(self, batch, rows, w, n_tok, temp):
        seen.append((rows, [float(batch.loss_mask[i].sum()) for i in rows]))
        return real(self, batch, rows, w, n_tok, temp)

    monkeypatch.setattr(Trainer, "_micro_loss", micro_loss)
    before = {k: v.detach().clone() for k, v in tr.policy.model.named_parameters()}
    metrics, trajs = tr.step()
    assert [t.group_id for t in trajs][:2] == [0, 0] and metrics["zero_std_frac"] > 0
    assert seen and all(all(tok > 0 for tok in toks) for _, toks in seen)
    ran = sorted(i for rows, _ in seen for i in rows)
    assert ran == [i for i, t in enumerate(trajs) if t.group_id > 0]  # every kept row once, group 0's never
    assert any(not torch.equal(before[k], v) for k, v in tr.policy.model.named_parameters())
