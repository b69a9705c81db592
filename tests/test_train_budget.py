"""`algo.budget=knapsack` end to end on the tiny model: the rollouts each prompt gets are Knapsack RL's allocation
(vlmrl.algos.knapsack.allocate) on the success rates tracked from earlier steps' accuracy, for a GRPO-family
recipe with dynamic sampling (DAPO, several rollout calls per step) and for DTPO in the tool loop; the success
rates survive a checkpoint, so a resumed run allocates as if never stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmrl.algos.knapsack import allocate
from vlmrl.config import ConfigError, load_config
from vlmrl.train.budget import Budget, SuccessTracker, budget_metrics

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_tracker_counts_windows_and_round_trips():
    """One update per prompt per step (its results pooled), the mean of the last `window` results, no estimate
    before `min_seen` results (RD:129-207, 236-240); the state is plain JSON and restores exactly."""
    import json

    tr = SuccessTracker(window=4, min_seen=3)
    tr.observe(["a", "b", "a"], [1.0, 0.0, 0.0])
    assert tr.estimate("a") is None and tr.estimate("b") is None and tr.estimate("c") is None
    tr.observe(["a", "a", "b"], [1.0, 1.0, 0.0])
    assert tr.estimate("a") == 0.75 and tr.estimate("b") is None  # a: 4 results, mean 3/4
    tr.observe(["a"] * 4, [0.0] * 4)  # a step with >= window results: that step's mean
    assert tr.estimate("a") == 0.0
    tr.observe(["a"], [1.0])
    assert tr.estimate("a") == 0.25  # window: [0, 0, 0, 1]
    back = SuccessTracker(window=4, min_seen=3)
    back.load_state_dict(json.loads(json.dumps(tr.state_dict())))
    assert back.prompts == tr.prompts
    with pytest.raises(ValueError, match=r"sample 'x': accuracy 2.0 is not in \[0, 1\]"):
        tr.observe(["x"], [2.0])


def test_budget_settings_are_checked(tmp_path):
    cfg = load_config(None, ["algo.budget=knapsack", "algo.knapsack.min_seen=0"])
    b = Budget(cfg)

    class S:
        def __init__(self, i):
            self.id = i

    assert b.per_prompt([S("a"), S("b")]) == [4, 4]  # no results yet: the uniform share
    with pytest.raises(ValueError, match="algo.budget must be one of uniform, knapsack, got 'greedy'"):
        Budget(load_config(None, ["algo.budget=greedy"]))
    with pytest.raises(ConfigError, match=r"algo.knapsack.n_up \(1\) must be >= n_low \(2\)"):
        load_config(None, ["algo.knapsack.n_up=1"])
    big = Budget(load_config(None, ["algo.budget=knapsack", "algo.knapsack.n_low=8", "algo.knapsack.n_up=8",
                                    "algo.knapsack.min_seen=0"]))
    big.tracker.observe(["a", "a", "b", "b"], [1.0, 0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"fixed shares need 16 rollouts .* 2 x 4; see algo.knapsack"):
        big.per_prompt([S("a"), S("b")])


def test_budget_metrics_by_hand():
    """Groups 0 (rewards vary, 3 rows), 1 (all equal, 2 rows), 2 (vary, 1 + ... 5 rows): 2 of 3 groups and 8 of 10
    trajectories have a gradient."""
    total = [1, 0, 1, 0.5, 0.5, 1, 1, 1, 0, 1]
    groups = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    m = budget_metrics([3, 2, 5], total, groups)
    assert m["groups/nonzero_std"] == pytest.approx(2 / 3) and m["groups/nonzero_std_samples"] == pytest.approx(0.8)
    assert (m["budget/rollouts_min"], m["budget/rollouts_max"], m["budget/mean"]) == (2, 5, pytest.approx(10 / 3))
    assert m["budget/std"] == pytest.approx(1.5275252, rel=1e-6)


# per sample (in id order): the accuracy of its k-th rollout of a step, so the prompts' success rates are 1, 0,
# about 1/2 and about 1/4 whatever the number of rollouts they get
PATTERNS = [lambda k: 1.0, lambda k: 0.0, lambda k: float(k % 2 == 0), lambda k: float(k % 4 == 0)]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["dapo", "papo_d", "quickstart"])
def test_knapsack_budgets_follow_the_tracked_success_rates(recipe, tiny_dirs, tmp_path, monkeypatch):
    """Three steps over four prompts (4 per step, G = 4, min_seen 4): step 1 is uniform (nothing seen), later steps
    give each rollout call exactly allocate(p, len(call) x 4) with p recomputed here from the accuracies of the
    earlier steps (mean of the last 16); DAPO's and PAPO-D's resampling calls count too (PAPO-D: with the masked
    pass over unequal groups), DTPO's accuracy part feeds the rates."""
    from vlmrl.data.synthetic import make_zoom_dataset
    from vlmrl.train.trainer import Trainer

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    make_zoom_dataset(tmp_path / "data", n=4, n_test=0, seed=0)
    cfg = load_config(ROOT / "recipes" / f"{recipe}.yaml", [
        f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={tmp_path / 'data' / 'train.jsonl'}",
        f"train.output_dir={tmp_path / 'run'}", "train.prompts_per_step=4", "rollout.group_size=4",
        "rollout.max_new_tokens=4", "train.micro_batch_size=16", "model.dtype=float32", "model.device=cpu",
        "algo.budget=knapsack", "algo.knapsack.min_seen=4", "algo.knapsack.n_up=12", "train.eval_every=0",
        *(["algo.overlong_buffer=0"] if recipe == "dapo" else [])])  # the recipe's buffer exceeds 4 tokens
    tr = Trainer(cfg)
    ids = sorted(str(tr.stream.dataset[i].id) for i in range(4))
    calls = []  # per rollout call: [(sample id, n)]
    rollout = tr.engine.rollout

    def spy_rollout(samples, n_per_prompt, **kw):
        calls[-1].append([(str(s.id), n) for s, n in zip(samples, n_per_prompt)])
        return rollout(samples, n_per_prompt, **kw)

    score = tr._score

    def scripted_accuracy(trajs, groups):
        total, parts = score(trajs, groups)
        parts["accuracy"] = [PATTERNS[ids.index(t.sample_id)](t.sample_index) for t in trajs]
        return list(parts["accuracy"]), parts  # DAPO drops the all-solved / all-failed groups and resamples

    tr.engine.rollout, tr._score = spy_rollout, scripted_accuracy
    history: dict[str, list[float]] = {}
    for step in range(3):
        calls.append([])
        seen = {k: list(v) for k, v in history.items()}
        metrics, trajs = tr.step()
        for call in calls[-1]:
            p = [None if len(seen.get(k, [])) < 4 else sum(seen[k][-16:]) / len(seen[k][-16:]) for k, _ in call]
            assert [n for _, n in call] == allocate(p, 4 * len(call), 2, 12, n_default=4), (step, call, p)
        used = [n for call in calls[-1] for _, n in call]
        assert metrics["budget/rollouts_min"] == min(used) and metrics["budget/rollouts_max"] == max(used)
        assert metrics["budget/mean"] == pytest.approx(4.0)  # the uniform total, shared differently
        for t in trajs:
            history.setdefault(t.sample_id, []).append(PATTERNS[ids.index(t.sample_id)](t.sample_index))
        if step == 0:
            assert used == [4] * len(used) and metrics["budget/known_frac"] == 0.0
        else:
            assert metrics["budget/known_frac"] == 1.0
    # by step 3 the all-solved and all-failed prompts are down to n_low = 2 and the others share the rest
    assert any(n != 4 for c in calls[1:] for call in c for _, n in call)
    if recipe != "quickstart":  # groups of the all-solved / all-failed prompts were dropped and more prompts sampled
        assert all(len(c) > 1 for c in calls)
    else:  # by step 3 the all-solved and all-failed prompts are down to n_low = 2, the others share the rest
        last = dict(calls[-1][0])
        assert last[ids[0]] == 2 and last[ids[1]] == 2 and last[ids[2]] + last[ids[3]] == 12
    assert tr.budget.state_dict()["prompts"][ids[3]]["count"] == len(history[ids[3]])


@pytest.mark.slow
def test_knapsack_success_rates_survive_resume(tiny_dirs, tmp_path, monkeypatch):
    """A 3-step run against a 2-step run resumed for its third step (its prompts were seen in step 1): the
    checkpoint holds the success rates, and step 3 allocates, samples and logs the same. Rows 0 and 1 (steps 1
    and 3) are all-solved and all-failed: step 3 gives the all-solved one n_low = 2 and the rest, 6, to the other
    (EU:113-127); with the success rates lost it would be 4 and 4."""
    import json

    from vlmrl.data.synthetic import make_zoom_dataset
    from vlmrl.train.metrics import read_metrics
    from vlmrl.train.run import run_training

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    make_zoom_dataset(tmp_path / "data", n=4, n_test=0, seed=0)
    reward = tmp_path / "r.py"
    reward.write_text("def by_length(response, sample):\n    a = float(sample['answer'] == '2')\n"
                      "    return {'reward': a + 0.01 * len(response), 'accuracy': a}\n")

    def args(out, steps):
        return [f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={tmp_path / 'data' / 'train.jsonl'}",
                "data.eval=", "data.shuffle=false", f"train.output_dir={out}", f"train.steps={steps}",
                "train.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=6", "train.plot=false",
                "train.eval_every=0", "model.dtype=float32", "model.device=cpu", f"reward.name={reward}:by_length",
                "algo.budget=knapsack", "algo.knapsack.min_seen=4", "algo.knapsack.n_up=6", "train.lr=1e-3"]

    full, part = tmp_path / "full", tmp_path / "part"
    run_training(load_config(ROOT / "recipes" / "grpo.yaml", args(full, 3)))
    run_training(load_config(ROOT / "recipes" / "grpo.yaml", args(part, 2)))
    run_training(load_config(ROOT / "recipes" / "grpo.yaml", args(part, 3)))
    a, b = read_metrics(full), read_metrics(part)
    assert [r["step"] for r in b] == [1, 2, 3] and b[2]["budget/known_frac"] == 1.0
    assert (b[2]["budget/rollouts_min"], b[2]["budget/rollouts_max"]) == (2, 6)
    for k, v in a[2].items():
        if not k.startswith("time/"):
            assert b[2][k] == (pytest.approx(v, rel=1e-4, abs=1e-6) if isinstance(v, float) else v), k
    state = [json.loads((d / "checkpoints" / "step-000003" / "trainer_state.json").read_text())["budget"]
             for d in (full, part)]
    assert state[0] == state[1] and len(state[0]["prompts"]) == 4


@pytest.mark.slow
def test_two_processes_share_one_success_rate_history(tiny_dirs, tmp_path):
    """DDP: each process allocates among its own prompts, and every process adds all processes' results, so the
    histories (and the checkpoint's) are identical and cover the prompts both ranks saw."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from vlmrl.data.synthetic import make_zoom_dataset

    make_zoom_dataset(tmp_path / "data", n=4, n_test=0, seed=0)
    reward = tmp_path / "r.py"
    reward.write_text("def by_answer(response, sample):\n    a = float(sample['answer'] == '2')\n"
                      "    return {'reward': a + 0.01 * len(response), 'accuracy': a}\n")
    args = [f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={tmp_path / 'data' / 'train.jsonl'}", "data.eval=",
            f"train.output_dir={tmp_path / 'run'}", "train.steps=3", "train.prompts_per_step=1",
            "rollout.group_size=4", "rollout.max_new_tokens=4", "train.plot=false", "train.eval_every=0",
            "model.dtype=float32", "model.device=cpu", f"reward.name={reward}:by_answer", "algo.budget=knapsack",
            "algo.knapsack.min_seen=4", "algo.knapsack.n_up=6", "train.lr=1e-3"]
    script = tmp_path / "ddp.py"
    script.write_text(f"""
import gc, json, os
import torch.distributed as dist
from accelerate import Accelerator
from vlmrl.config import load_config
from vlmrl.train import run as run_mod
from vlmrl.train.trainer import Trainer
acc = Accelerator(cpu=True)
captured = {{}}
orig = Trainer.__init__
def init(self, *a, **k):
    orig(self, *a, **k)
    captured['t'] = self
Trainer.__init__ = init
run_mod.run_training(load_config({str(ROOT / 'recipes' / 'grpo.yaml')!r}, {args!r}), acc)
# each rank writes its own file: two ranks printing to one pipe may interleave their lines
open({str(tmp_path)!r} + f"/state-{{acc.process_index}}.json", "w").write(
    json.dumps(captured['t'].budget.state_dict(), sort_keys=True))
dist.barrier()
del captured
gc.collect()
dist.destroy_process_group()
os._exit(0)
""")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, VLMRL_NO_PROGRESS="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(port), str(script)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    states = {p.stem.split("-")[1]: p.read_text() for p in tmp_path.glob("state-*.json")}
    assert set(states) == {"0", "1"} and states["0"] == states["1"], r.stdout[-2000:] + r.stderr[-2000:]
    prompts = json.loads(states["0"])["prompts"]
    # 3 steps x 2 processes x 1 prompt: the 4 rows once each, then 2 again (the second epoch), 4 rollouts or
    # Knapsack's share each time
    assert len(prompts) == 4 and sum(p["count"] for p in prompts.values()) == 24
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert json.dumps(saved["budget"], sort_keys=True) == states["0"]


@pytest.mark.slow
def test_budget_bench_runs_end_to_end(tiny_dirs, tmp_path, capsys):
    """tools/bench/budget.py at its smallest: both budgets, one seed, the steps after the first pass summarised."""
    import importlib.util
    import json

    from vlmrl.data.synthetic import make_zoom_dataset

    spec = importlib.util.spec_from_file_location("bench_budget", ROOT / "tools" / "bench" / "budget.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    make_zoom_dataset(tmp_path / "data", n=4, n_test=0, seed=0)
    assert bench.main(["--out", str(tmp_path / "out"), "--model", str(tiny_dirs["qwen2_5_vl"]), "--data",
                       str(tmp_path / "data" / "train.jsonl"), "--steps", "2", "--seeds", "0",
                       "train.prompts_per_step=4", "rollout.group_size=2", "rollout.max_new_tokens=4",
                       "algo.knapsack.min_seen=2"]) == 0
    res = json.loads((tmp_path / "out" / "budget.json").read_text())
    assert set(res["runs"]) == {"uniform-0", "knapsack-0"} and res["settings"]["first_pass_steps"] == 1
    steps = res["runs"]["knapsack-0"]["steps"]
    assert len(steps) == 2 and steps[0]["rollouts_max"] == 2  # step 1: nothing seen yet, uniform
    assert all(0.0 <= res["mean"]["knapsack"][k] <= 1.0 for k in bench.KEYS)
    assert "uniform -> knapsack" in capsys.readouterr().out
