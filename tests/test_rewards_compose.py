"""Composed rewards (vlmrl.rewards.compose): parts and weights, batch / async / slow reward functions with a
timeout and the failure count, DTPO's rewards as parts, and the recipe checks."""

import asyncio
import time
from pathlib import Path

import pytest

from vlmrl.config import ConfigError, RewardConfig, RewardPart, load_config
from vlmrl.rewards.compose import ComposedReward, Part, batch_reward, score_parts
from vlmrl.rewards.trajectories import score_trajectories
from vlmrl.rollout.trajectory import ToolCallRecord, TrajImage, Trajectory

ROOT = Path(__file__).resolve().parents[1]
ANSWER = "<think>look</think><answer>red</answer>"
CALL = '<think>zoom</think><tool_call>{"name": "crop", "arguments": {"bbox_2d": [0, 0, 50, 50]}}</tool_call>'


def traj(turns, group, crop=None, answer="red", gt=None):
    calls = [ToolCallRecord(turn=0, raw="", valid=True, record={"box_original": crop})] if crop else []
    return Trajectory(prompt_index=group, sample_index=0, sample_id=f"s{group}", question="colour?", answer=answer,
                      answer_type="word", ids=[1, 2], response_mask=[0, 1], turn_ids=[-1, 0], logprobs=[0.0, -1.0],
                      prompt_len=1, turns=list(turns), tool_calls=calls, group_id=group,
                      images=[TrajImage(kind="input", seen_size=(100, 100), original_size=(200, 100), visual_tokens=4,
                                        turn=-1)],
                      meta={"gt_boxes": gt} if gt else {})


def batch():
    """Two groups (ids 5 and 2): right/wrong answers, one without the format, crops that cover the box or not."""
    gt = [[10, 10, 40, 40]]
    return [traj([ANSWER], 5), traj(["red"], 5), traj([CALL, ANSWER], 5, crop=[0, 0, 50, 50], gt=gt),
            traj([CALL, "<think>x</think><answer>blue</answer>"], 2, crop=[100, 50, 200, 100], gt=gt),
            traj([CALL, ANSWER], 2, crop=[0, 0, 100, 100], gt=gt), traj([CALL, ANSWER], 2, crop=[5, 5, 45, 45], gt=gt)]


def test_accuracy_format_is_its_two_parts():
    trajs = batch()
    total, parts = score_trajectories(trajs, [t.group_id for t in trajs], "accuracy_format", 0.5)
    assert parts["accuracy"] == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]  # "red" untagged has no answer
    assert parts["format"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert total == [a + 0.5 * f for a, f in zip(parts["accuracy"], parts["format"])]
    assert parts["reward_errors"] == [0.0] * 6 and "answer_found" in parts
    composed = RewardConfig(parts=[RewardPart("accuracy", 1.0), RewardPart("format", 0.5)])
    total2, parts2 = ComposedReward.from_config(composed).score(trajs, [t.group_id for t in trajs])
    assert total2 == total and {k: parts2[k] for k in parts} == parts


def test_dtpo_as_parts_equals_reward_name_dtpo():
    """recipes/dtpo.yaml's parts give the same totals and the same outcome / tool rewards, float for float, as
    `reward.name: dtpo` (what DTPO's advantages read), and every part the latter logs."""
    trajs = batch()
    trajs[4].tool_calls[0].record["area_raw"] = 0.25  # AdaptVision's raw-box area (reward.area_from: raw)
    trajs[5].tool_calls[0].record["area_raw"] = 0.05
    groups = [t.group_id for t in trajs]
    for area_from in ("raw", "crop"):  # the recipe's (raw) and vlmrl's default
        legacy = ComposedReward.from_config(load_config(ROOT / "recipes" / "dtpo.yaml", [
            "reward.parts=[]", "reward.name=dtpo", "reward.format_style=official", f"reward.area_from={area_from}"]
        ).reward, "dtpo")
        parts_cfg = load_config(ROOT / "recipes" / "dtpo.yaml", [f"reward.area_from={area_from}"])
        assert parts_cfg.reward.parts and parts_cfg.reward.kind == "parts"
        composed = ComposedReward.from_config(parts_cfg.reward, "dtpo")
        t1, p1 = legacy.score(trajs, groups)
        t2, p2 = composed.score(trajs, groups)
        assert t1 == t2
        for key in p1:
            assert p2[key] == p1[key], key
        if area_from == "raw":  # areas .25 and .05 as written, mean .15: the larger one is penalised
            assert p1["tool"][4] == pytest.approx(0.1 - 0.2 * (0.25 / 0.15 - 1))
    # group 2's correct crops cover the box; areas .5 and .08 of the image, mean .29: the larger one is penalised
    assert p1["tool"][4] == pytest.approx(0.1 - 0.2 * (0.5 / 0.29 - 1)) and p1["tool"][5] == pytest.approx(0.1)
    assert p2["dtpo_accuracy"] == p1["acc_adjusted"] and p2["dtpo_tool"] == p1["tool"]
    # settings reach the DTPO parts: reward.w_crop, and a part's own args over it
    doubled = load_config(ROOT / "recipes" / "dtpo.yaml", ["reward.w_crop=0.2"]).reward
    assert ComposedReward.from_config(doubled, "dtpo").score(trajs, groups)[1]["tool"][5] == pytest.approx(0.2)
    assert [p.args for p in ComposedReward.from_config(doubled, "dtpo").parts] == [
        {"theta": 0.2}, {}, {"w_crop": 0.2, "w_area": 0.2, "area_from": "raw"}]


def test_batch_fn_sees_the_batch_with_group_ids_and_logs_its_extras():
    seen = {}

    @batch_reward
    def judge(responses, samples, bonus=0.0):
        seen["calls"] = seen.get("calls", 0) + 1
        seen["groups"] = [s["group_id"] for s in samples]
        seen["crops"] = [s["crops"] for s in samples]
        return [{"reward": float("blue" in r) + bonus, "judged": 1.0} for r in responses]

    trajs = batch()
    total, parts = score_parts(trajs, [t.group_id for t in trajs],
                               [Part("judge", judge, 2.0, "batch", args={"bonus": 0.5}), Part("format", _format, 1.0)])
    assert seen["calls"] == 1 and seen["groups"] == [1, 1, 1, 0, 0, 0]  # group index, in id order (2 -> 0, 5 -> 1)
    assert seen["crops"][2] == [[0, 0, 50, 50]] and seen["crops"][0] == []
    assert parts["judge"] == [0.5, 0.5, 0.5, 1.5, 0.5, 0.5] and parts["judged"] == [1.0] * 6
    assert total == [2 * j + f for j, f in zip(parts["judge"], parts["format"])]
    assert "accuracy" in parts  # always logged


def _format(response, sample):
    from vlmrl.rewards.format import format_reward

    return format_reward(response, sample)


def test_slow_batch_judge_times_out_and_is_counted(capsys):
    """A judge that takes 3 s with timeout_s 0.3: its trajectories get 0, counted in reward_errors and
    reward_timeouts, a message names the part; the other parts are scored and the step does not wait for it.

    Reliability[faults]: a slow reward part (a batch judge, a per-sample or async fn) past its reward.parts timeout_s | its trajectories get reward 0, counted in reward_errors and reward_timeouts, a message names the part; the other parts are scored and training goes on
    """
    def slow(responses, samples):
        time.sleep(3)
        return [1.0] * len(responses)

    trajs = batch()
    t0 = time.perf_counter()
    total, parts = score_parts(trajs, 3, [Part("judge", slow, 1.0, "batch", timeout_s=0.3, spec="my.py:slow"),
                                          Part("format", _format, 0.5)])
    assert time.perf_counter() - t0 < 2.0
    assert parts["judge"] == [0.0] * 6 and parts["reward_errors"] == [1.0] * 6 and parts["reward_timeouts"] == [1.0] * 6
    assert total == [0.5 * f for f in parts["format"]] and sum(parts["format"]) == 5
    err = capsys.readouterr().err
    assert "reward part 'judge' (my.py:slow): timed out after 0.3 s on a batch of 6 trajectories" in err


def test_slow_per_sample_and_async_calls_time_out_one_by_one(capsys):
    def sometimes_slow(response, sample):
        if "blue" in response:
            time.sleep(2)
        return 1.0

    async def judge(response, sample):
        await asyncio.sleep(2.0 if "blue" in response else 0.2)  # concurrent: ~0.2 s for the five quick ones
        return {"reward": 1.0, "latency": 0.2}

    trajs = batch()
    for part in (Part("slow", sometimes_slow, 1.0, timeout_s=0.5), Part("judge", judge, 1.0, timeout_s=0.5)):
        t0 = time.perf_counter()
        total, parts = score_parts(trajs, 3, [part])
        assert time.perf_counter() - t0 < 1.8, part.label
        assert parts[part.label] == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
        assert parts["reward_errors"] == parts["reward_timeouts"] == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
        assert f"reward part {part.label!r}" in capsys.readouterr().err
    assert parts["latency"] == [0.2, 0.2, 0.2, 0.0, 0.2, 0.2]


def test_failing_batch_fns_are_counted_not_fatal(capsys):
    """Reliability[faults]: a batch reward fn that raises, returns the wrong number of values, or bad values (NaN, a string, a dict without "reward") | reward 0 for the rows concerned, counted in reward_errors; a message for a failed call"""
    trajs = batch()

    def boom(responses, samples):
        raise RuntimeError("judge down")

    def short(responses, samples):
        return [1.0]

    def mixed(responses, samples):
        return [1.0, float("nan"), "x", {"score": 1}, {"reward": 2.0}, 0.5]

    for fn, errors in ((boom, [1.0] * 6), (short, [1.0] * 6), (mixed, [0, 1, 1, 1, 0, 0])):
        total, parts = score_parts(trajs, 3, [Part("p", fn, 1.0, "batch")])
        assert parts["reward_errors"] == [float(e) for e in errors], fn.__name__
    assert parts["p"] == [1.0, 0.0, 0.0, 0.0, 2.0, 0.5]
    err = capsys.readouterr().err
    assert "RuntimeError('judge down')" in err and "one value per trajectory (6), got 1 values" in err


def test_recipe_checks(tmp_path):
    user = tmp_path / "r.py"
    user.write_text("def f(response, sample):\n    return 1.0\n")
    ok = load_config(None, [f"reward.parts=[{{name: accuracy}}, {{name: '{user}:f', weight: 0.1, label: mine}}]",
                            "reward.aggregation=normalize_then_sum"])
    assert [p.label for p in ComposedReward.from_config(ok.reward).parts] == ["accuracy", "mine"]
    bad = [
        ("reward.aggregation=mean", "reward.aggregation must be one of sum_then_normalize, normalize_then_sum"),
        ("reward.parts=[{name: nope}]", r"reward.parts\[0\].name: unknown reward 'nope'"),
        (f"reward.parts=[{{name: '{tmp_path}/missing.py:f'}}]", r"reward.parts\[0\].name: .*file not found"),
        ("reward.parts=[{name: accuracy}, {name: accuracy}]", r"label 'accuracy' is also reward.parts\[0\]'s"),
        ("reward.parts=[{name: accuracy, label: tool}]", "label 'tool' is reserved"),
        ("reward.parts=[{name: accuracy, label: a/b}]", "without '/'"),
        ("reward.parts=[{name: accuracy, kind: stream}]", r"reward.parts\[0\].kind must be one of per_sample, batch"),
        ("reward.parts=[{name: accuracy, role: judge}]", "role must be one of outcome, tool"),
        ("reward.parts=[{name: accuracy, timeout_s: -1}]", "timeout_s must be >= 0"),
        ("reward.parts=[{name: accuracy, args: 3}]", "args must be a mapping"),
        ("reward.parts=[{weight: 1}]", r"reward.parts\[0\].name is missing"),
        ("reward.parts=[{name: accuracy, wieght: 1}]", r"unknown key 'reward.parts\[0\].wieght'; did you mean 'weight'"),
    ]
    for override, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="reward.name=dtpo and reward.parts are both set"):
        load_config(ROOT / "recipes" / "dtpo.yaml", ["reward.name=dtpo"])
    with pytest.raises(ConfigError, match="reward.format_weight is not used with reward.parts"):
        load_config(ROOT / "recipes" / "dtpo.yaml", ["reward.format_weight=0.3"])
    # DTPO takes reward.parts (its two rewards by role); the one-name check is unchanged
    assert load_config(ROOT / "recipes" / "dtpo.yaml").algo.name == "dtpo"
    with pytest.raises(ConfigError, match="algo.name=dtpo needs reward.name=dtpo, got reward.name=accuracy_format"):
        load_config(ROOT / "recipes" / "dtpo.yaml", ["reward.parts=[]"])


def test_composed_reward_metrics_shares_and_group_std():
    """Per-part metrics from the parts dict: shares sum to 1; DTPO's tool parts count with tool_weight."""
    import torch

    rc = RewardConfig(parts=[RewardPart("accuracy", 1.0), RewardPart("format", 0.5)], aggregation="normalize_then_sum")
    cr = ComposedReward.from_config(rc)
    parts = {"accuracy": [1.0, 0.0, 1.0, 1.0], "format": [1.0, 1.0, 0.0, 1.0], "reward_errors": [0.0] * 4}
    m = cr.metrics(parts, torch.tensor([0, 0, 1, 1]))
    assert m["adv_share/accuracy"] + m["adv_share/format"] == pytest.approx(1.0)
    assert m["reward_group_std/accuracy"] == pytest.approx((0.7071 + 0.0) / 2, abs=1e-4)  # groups [1, 0], [1, 1]
    dt = ComposedReward.from_config(RewardConfig(name="dtpo"), "dtpo")
    dparts = {"outcome": [1.5, 0.0, 1.5, 1.5], "tool": [0.0, 0.0, 0.1, -0.1], "reward_errors": [0.0] * 4}
    m = dt.metrics(dparts, torch.tensor([0, 0, 1, 1]), tool_weight=0.3)
    # A = z(outcome) + 0.3 z(tool) = [.707, -.707, 0.3 * .707, -0.3 * .707]: Var shares 1 / 1.09 and .09 / 1.09
    assert m["adv_share/outcome"] == pytest.approx(1 / 1.09, abs=1e-4)
    assert m["adv_share/tool"] == pytest.approx(0.09 / 1.09, abs=1e-4)
    assert cr.metrics({"accuracy": [1.0, 1.0], "format": [0.0, 0.0], "reward_errors": [0.0, 0.0]},
                      torch.tensor([0, 0]))["adv_share/accuracy"] is None  # no advantage: no share


def test_readme_composed_reward_example_is_a_valid_recipe(tmp_path, monkeypatch):
    """The README's composed-reward snippet loads (with a judge file where it names my_judge.py) and scores."""
    import re

    import yaml

    text = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "reward:" in b and "parts:" in b]
    (tmp_path / "my_judge.py").write_text("async def judge(responses, samples):\n    return [0.5] * len(responses)\n")
    monkeypatch.chdir(ROOT)
    reward = yaml.safe_load(block.replace("my_judge.py", str(tmp_path / "my_judge.py")))["reward"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"reward": reward}))
    cfg = load_config(recipe)
    assert cfg.reward.aggregation == "normalize_then_sum" and len(cfg.reward.parts) == 4
    trajs = batch()
    total, parts = ComposedReward.from_config(cfg.reward).score(trajs, 3)
    assert parts["judge"] == [0.5] * 6 and parts["reward_errors"] == [0.0] * 6
    assert total == pytest.approx([a + 0.5 * f + 0.2 * p + 0.25 for a, f, p in
                                   zip(parts["accuracy"], parts["format"], parts["length_penalty"])])


def test_async_parts_work_inside_a_running_event_loop():
    """A trainer stepped from a notebook runs inside an event loop: async parts get their own loop in a thread."""
    async def judge(response, sample):
        await asyncio.sleep(0)
        return 1.0

    async def batch_judge(responses, samples):
        return [0.5] * len(responses)

    async def inside():
        return score_parts(batch(), 3, [Part("j", judge), Part("b", batch_judge, kind="batch")])

    total, parts = asyncio.run(inside())
    assert parts["j"] == [1.0] * 6 and parts["b"] == [0.5] * 6 and parts["reward_errors"] == [0.0] * 6
    assert total == [1.5] * 6


def test_reward_name_can_be_a_batch_fn(tmp_path):
    """`reward.name: file.py:fn` naming a function marked with batch_reward is called once with the batch."""
    user = tmp_path / "judge.py"
    user.write_text("from vlmrl.rewards import batch_reward\n"
                    "calls = []\n"
                    "@batch_reward\n"
                    "def judge(responses, samples):\n"
                    "    calls.append(len(responses))\n"
                    "    return [float(s['group_id']) for s in samples]\n")
    trajs = batch()
    total, parts = score_trajectories(trajs, [t.group_id for t in trajs], f"{user}:judge")
    assert total == parts["judge"] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert ComposedReward.from_config(RewardConfig(name=f"{user}:judge")).score(trajs, 3)[0] == [0.0] * 3 + [1.0] * 3


def test_overlong_punishment_needs_the_summed_reward():
    """DAPO's overlong punishment is added to the total; normalize_then_sum builds advantages from the parts alone,
    so the pair is refused when the recipe loads instead of silently dropping the penalty."""
    with pytest.raises(ConfigError, match="overlong_buffer .*normalize_then_sum"):
        load_config(None, ["algo.overlong_buffer=16", "reward.aggregation=normalize_then_sum",
                           "reward.parts=[{name: accuracy}, {name: format, weight: 0.5}]"])
    assert load_config(None, ["algo.overlong_buffer=16"]).algo.overlong_buffer == 16
