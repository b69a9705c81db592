"""Composed rewards: several reward functions ("parts") with weights, as a recipe's ``reward.parts`` names them.

    reward:
      aggregation: normalize_then_sum        # or sum_then_normalize (the default: GRPO as always)
      parts:
        - {name: accuracy, weight: 1.0}
        - {name: format, weight: 0.5}
        - {name: recipes/rewards/length_penalty.py:length_penalty, weight: 0.2, args: {max_words: 40}}
        - {name: my_judges:judge, kind: batch, timeout_s: 30, label: judge}

A part's ``name`` is a registered reward (accuracy, format, dtpo_accuracy, dtpo_tool, or one registered with
`register_reward`), ``module:fn`` or ``path/to/file.py:fn``. Its ``kind``:

- ``per_sample``: ``fn(response: str, sample: dict, **args) -> float | dict`` (the contract of
  vlmrl.rewards.registry), called once per trajectory;
- ``batch``: ``fn(responses: list[str], samples: list[dict], **args) -> list[float | dict]``, called once per
  scoring round with the whole rollout batch (a judge that batches its requests); ``samples[i]["group_id"]``
  says which rows share a prompt. A function marked with `batch_reward` is a batch part by default.

Either may be ``async def``: a per-sample coroutine is awaited for all trajectories at once (concurrently).
``timeout_s`` (> 0) bounds each call (a batch part: the one call) in a worker thread: a call that does not
finish in time gives its trajectories reward 0, counted in ``reward_errors`` (and ``reward_timeouts``) like any
failing reward fn (one that raises, returns NaN/inf or a wrong value), and a message on stderr says which part
timed out; training goes on. A timed-out call keeps running in its (daemon) thread until it returns.

The total reward is ``sum_k weight_k * part_k`` (what is logged as ``reward/mean``); how the parts become
advantages is ``reward.aggregation`` (vlmrl.algos.compose). Each part's raw values are logged as
``reward/<label>/mean|std``, their within-group std as ``reward_group_std/<label>`` and their share of the
advantage variance as ``adv_share/<label>``.

DTPO: a part's ``role`` (outcome | tool) says which of DTPO's two rewards it adds to: R_oc is the weighted sum
of the outcome parts, R_tool of the tool parts. Under sum_then_normalize, A_oc = z(R_oc) and A_tool = z(R_tool)
exactly as DTPO defines them; under normalize_then_sum, A_oc is the outcome parts' normalize_then_sum advantage
and A_tool the tool parts' (each part z-scored in its group, weighted, summed, batch-normalised per role); the
turns then mix them with algo.tool_weight as always. Other algorithms ignore roles and use all parts together.
In a multi-process run the batch statistics of normalize_then_sum are each process's own rows.

``reward.name`` alone is the one-part case (`ComposedReward.from_config`): ``accuracy_format`` is the parts
accuracy (weight 1) + format (weight ``reward.format_weight``), a user function is one part of weight 1, and
``dtpo`` is DTPO's scoring (vlmrl.rewards.dtpo) with its outcome and tool rewards as the two parts.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from vlmrl.algos.compose import AGGREGATIONS, part_contributions, part_group_std, signal_group_std, variance_shares
from vlmrl.algos.groups import group_members
from vlmrl.rewards.accuracy import accuracy_reward
from vlmrl.rewards.dtpo import dtpo_group_rewards
from vlmrl.rewards.format import format_fn, format_reward
from vlmrl.rewards.registry import get_reward, register_reward, reward_value

KINDS = ("per_sample", "batch")
ROLES = ("outcome", "tool")
#: keys of the parts dict that are not reward parts (counts, DTPO's two rewards, the trace's total)
RESERVED = ("reward_errors", "reward_timeouts", "outcome", "tool", "total")


def batch_reward(fn: Callable) -> Callable:
    """Mark `fn(responses, samples) -> list` as a batch reward: a part naming it is ``kind: batch`` by default."""
    fn.reward_kind = "batch"
    return fn


def reward_sample(t: Any) -> dict:
    """The dict a reward fn receives for a trajectory (see vlmrl.rewards.registry for the contract), plus
    ``crops`` (the valid crop boxes, original pixels), ``image_size`` (W, H of the first image's original, or
    None), ``crop_area_raw`` (the valid calls' boxes as written over the seen image, summed: AdaptVision's area
    term) and ``group_id`` (the trajectory's group)."""
    valid = [c for c in t.tool_calls if c.valid]
    crops = [c.box_original for c in valid if c.box_original is not None]
    return {"answer": t.answer, "answer_type": t.answer_type, "choices": t.choices, "meta": t.meta,
            "turns": list(t.turns), "tool_calls": len(t.tool_calls), "question": t.question, "crops": crops,
            "image_size": tuple(t.images[0].original_size) if t.images else None,
            "crop_area_raw": sum(float((c.record or {}).get("area_raw", 0.0)) for c in valid),
            "group_id": getattr(t, "group_id", -1)}


# --------------------------------------------------------------------------- one part

@dataclass
class Part:
    """A reward part ready to call: what `ComposedReward` scores with."""

    label: str  # its name in the parts dict and in metrics
    fn: Callable
    weight: float = 1.0
    kind: str = "per_sample"  # per_sample | batch
    timeout_s: float = 0.0  # 0 = no limit
    role: str = "outcome"  # DTPO: outcome | tool
    args: dict = field(default_factory=dict)  # keyword arguments for fn
    spec: str = ""  # the recipe's name for it (messages)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"reward part {self.label!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.role not in ROLES:
            raise ValueError(f"reward part {self.label!r}: role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not (self.timeout_s >= 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"reward part {self.label!r}: timeout_s must be >= 0 (0 = no limit), got {self.timeout_s}")
        self.spec = self.spec or self.label


class RewardTimeout(Exception):
    pass


def _in_thread(thunk: Callable[[], Any], timeout: float, what: str) -> Any:
    """thunk() in a daemon worker thread, waiting at most `timeout` seconds (0: as long as it takes), else
    RewardTimeout; its exception, if any, is raised here."""
    box: dict = {}

    def target():
        try:
            box["value"] = thunk()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    th = threading.Thread(target=target, name=f"vlmrl-reward-{what}", daemon=True)
    th.start()
    th.join(timeout if timeout > 0 else None)
    if th.is_alive():
        raise RewardTimeout(f"timed out after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _finish(out: Any, name: str) -> tuple[float, dict, bool]:
    try:
        r, extra = reward_value(out, name)
    except TypeError:
        return 0.0, {}, False
    if not math.isfinite(r):
        return 0.0, extra, False
    return r, extra, True


def _say(part: Part, text: str) -> None:
    print(f"reward part {part.label!r} ({part.spec}): {text}", file=sys.stderr, flush=True)


def run_part(part: Part, responses: Sequence[str], samples: Sequence[dict]) -> list[tuple[float, dict, bool, bool]]:
    """Per trajectory: (reward, extra logged values, ok, timed out). A failing call gives (0.0, {}, False, ...)."""
    n = len(responses)
    name = getattr(part.fn, "__qualname__", part.spec)
    is_async = inspect.iscoroutinefunction(part.fn)
    fail = (0.0, {}, False, False)
    if part.kind == "batch":
        def call():
            out = part.fn(list(responses), list(samples), **part.args)
            return asyncio.run(out) if inspect.isawaitable(out) else out
        try:  # an async fn runs its own event loop in a worker thread (the caller may be inside one, e.g. Jupyter)
            out = _in_thread(call, part.timeout_s, part.label) if part.timeout_s > 0 or is_async else call()
        except RewardTimeout as e:
            _say(part, f"{e} on a batch of {n} trajectories; their reward is 0, counted in reward_errors")
            return [(0.0, {}, False, True)] * n
        except Exception as e:  # noqa: BLE001 - a user reward fn may fail in any way; counted, not fatal
            _say(part, f"the batch call raised {e!r}; the {n} trajectories get reward 0, counted in reward_errors")
            return [fail] * n
        if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__len__") or len(out) != n:
            got = f"{len(out)} values" if hasattr(out, "__len__") and not isinstance(out, (str, bytes, dict)) \
                else type(out).__name__
            _say(part, f"a batch reward fn must return a list with one value per trajectory ({n}), got {got}; "
                       "their reward is 0, counted in reward_errors")
            return [fail] * n
        return [(*_finish(v, name), False) for v in list(out)]
    if is_async:  # all trajectories' coroutines at once, each with its own timeout
        async def one(response, sample):
            coro = part.fn(response, sample, **part.args)
            try:
                value = await (asyncio.wait_for(coro, part.timeout_s) if part.timeout_s > 0 else coro)
            except asyncio.TimeoutError:
                return (0.0, {}, False, True)
            except Exception:  # noqa: BLE001
                return fail
            return (*_finish(value, name), False)

        async def every():
            return await asyncio.gather(*(one(r, s) for r, s in zip(responses, samples)))

        try:
            res = _in_thread(lambda: asyncio.run(every()), part.timeout_s + 1.0 if part.timeout_s > 0 else 0,
                             part.label)
        except RewardTimeout:  # a coroutine that blocks its event loop: wait_for cannot stop it
            res = [(0.0, {}, False, True)] * n
        except Exception as e:  # noqa: BLE001
            _say(part, f"the async calls failed with {e!r}; the {n} trajectories get reward 0, counted in reward_errors")
            return [fail] * n
        late = sum(r[3] for r in res)
        if late:
            _say(part, f"{late} of {n} calls timed out after {part.timeout_s:g} s; their reward is 0, counted in "
                       "reward_errors")
        return list(res)
    res = []
    late = 0
    for response, sample in zip(responses, samples):
        try:
            if part.timeout_s > 0:
                out = _in_thread(lambda r=response, s=sample: part.fn(r, s, **part.args), part.timeout_s, part.label)
            else:
                out = part.fn(response, sample, **part.args)
        except RewardTimeout:
            late += 1
            res.append((0.0, {}, False, True))
            continue
        except Exception:  # noqa: BLE001 - a user reward fn may fail in any way; counted, not fatal
            res.append(fail)
            continue
        res.append((*_finish(out, name), False))
    if late:
        _say(part, f"{late} of {n} calls timed out after {part.timeout_s:g} s each; their reward is 0, counted in "
                   "reward_errors")
    return res


# --------------------------------------------------------------------------- a batch of trajectories

def score_parts(trajs: list, groups, parts: Sequence[Part], channels: bool = False) -> tuple[list[float], dict[str, list[float]]]:
    """Totals (sum_k weight_k * part_k per trajectory) and the parts dict: each part's raw values under its label,
    ``reward_errors`` (failed calls per trajectory), ``reward_timeouts`` (when a part has a timeout), the values a
    part returns beside "reward" (a dict return; a key that is a part's label or reserved is not overwritten),
    ``accuracy`` (always), and with `channels` DTPO's ``outcome`` and ``tool`` (the weighted sums by role)."""
    n = len(trajs)
    gid = [0] * n
    for g, m in enumerate(group_members(groups, n)):
        for i in m.tolist():
            gid[i] = g
    samples = [reward_sample(t) | {"group_id": gid[i]} for i, t in enumerate(trajs)]
    responses = [t.final_text for t in trajs]
    labels = {p.label for p in parts}
    total = [0.0] * n
    out: dict[str, list[float]] = {p.label: [0.0] * n for p in parts}
    out["reward_errors"] = [0.0] * n
    timed = any(p.timeout_s > 0 for p in parts)
    if timed:
        out["reward_timeouts"] = [0.0] * n
    chan = {"outcome": [0.0] * n, "tool": [0.0] * n}
    for p in parts:
        for i, (r, extra, ok, late) in enumerate(run_part(p, responses, samples)):
            out[p.label][i] = r
            for k, v in extra.items():
                if k not in labels and k not in RESERVED:
                    out.setdefault(k, [0.0] * n)[i] = v
            out["reward_errors"][i] += 0.0 if ok else 1.0
            if timed:
                out["reward_timeouts"][i] += float(late)
            total[i] += p.weight * r
            chan[p.role][i] += p.weight * r
    if channels:
        out.update(chan)
    if "accuracy" not in out:  # always log accuracy, whatever the training reward
        out["accuracy"] = [_finish(_call(accuracy_reward, t.final_text, s), "accuracy")[0]
                           for t, s in zip(trajs, samples)]
    return total, out


def _call(fn, response, sample):
    try:
        return fn(response, sample)
    except Exception:  # noqa: BLE001
        return 0.0


# --------------------------------------------------------------------------- DTPO's rewards as parts

def dtpo_items(responses, samples, area_from: str = "crop") -> list[dict]:
    """`dtpo_group_rewards`' items from reward samples (`reward_sample`): the valid crops and the image size, and with
    `area_from` "raw" AdaptVision's area term (the boxes as written over the seen image) instead of the crops'."""
    if area_from not in ("crop", "raw"):
        raise ValueError(f"reward.area_from must be 'crop' or 'raw', got {area_from!r}")
    return [{"response": r, "sample": s, "crops": s.get("crops") or [], "image_size": s.get("image_size")}
            | ({"area": float(s.get("crop_area_raw") or 0.0)} if area_from == "raw" else {})
            for r, s in zip(responses, samples)]


def _dtpo(responses, samples, area_from: str = "crop", **kw) -> dict[str, list[float]]:
    return dtpo_group_rewards(dtpo_items(responses, samples, area_from), [int(s["group_id"]) for s in samples], **kw)


@batch_reward
def dtpo_accuracy(responses: list[str], samples: list[dict], theta: float = 0.2, tool_discount: float = 0.9) -> list[dict]:
    """DTPO's adjusted accuracy acc' per trajectory (vlmrl.rewards.dtpo: 0.9 * acc after a tool call, and for a
    correct direct answer when 0 < correct-direct / correct < theta in its group); the outcome reward R_oc is
    this part plus w_fmt * the format part."""
    o = _dtpo(responses, samples, theta=theta, tool_discount=tool_discount)
    return [{"reward": o["acc_adjusted"][i], "acc_adjusted": o["acc_adjusted"][i], "accuracy": o["accuracy"][i],
             "balance_applied": o["balance_applied"][i], "direct_ratio": o["direct_ratio"][i]}
            for i in range(len(responses))]


@batch_reward
def dtpo_tool(responses: list[str], samples: list[dict], w_crop: float = 0.1, w_area: float = 0.2,
              area_from: str = "crop") -> list[dict]:
    """DTPO's tool reward R_tool per trajectory (vlmrl.rewards.dtpo): w_crop * crop_ok - w_area * the area
    penalty for tool-calling trajectories, 0 for the others. `area_from` ("crop" | "raw", reward.area_from):
    the area term from the cut region or from the box as written (AdaptVision)."""
    o = _dtpo(responses, samples, area_from=area_from, w_crop=w_crop, w_area=w_area)
    keys = ("tool_called", "crop_ok", "area", "area_penalty", "unjudged")
    return [{"reward": o["tool"][i], **{k: o[k][i] for k in keys}} for i in range(len(responses))]


dtpo_accuracy.config_args = ("theta",)  # filled from reward.<key> unless the part's args give them
dtpo_tool.config_args = ("w_crop", "w_area", "area_from")
register_reward("dtpo_accuracy")(dtpo_accuracy)
register_reward("dtpo_tool")(dtpo_tool)


# --------------------------------------------------------------------------- the recipe's reward

def part_label(spec: str) -> str:
    """The default label of a part: a registered name as is, ``module:fn`` / ``file.py:fn`` -> ``fn``."""
    return spec.rsplit(":", 1)[-1]


def check_label(label: str, where: str) -> None:
    if not label or "/" in label or label.strip() != label:
        raise ValueError(f"{where}: a part label must be a non-empty name without '/' or surrounding spaces, got {label!r}")
    if label in RESERVED:
        raise ValueError(f"{where}: the label {label!r} is reserved ({', '.join(RESERVED)}); give the part another "
                         "label")


def build_parts(rc) -> list[Part]:
    """`Part`s from a RewardConfig's ``parts`` (loading user functions); ValueError naming ``reward.parts[i]``."""
    out, seen = [], {}
    for i, p in enumerate(rc.parts):
        where = f"reward.parts[{i}]"
        try:
            fn = get_reward(p.name)
        except (KeyError, ValueError, ImportError, AttributeError, TypeError, FileNotFoundError) as e:
            raise ValueError(f"{where}.name: {e.args[0] if e.args else e}") from None
        label = p.label or part_label(p.name)
        check_label(label, f"{where}.label")
        if label in seen:
            raise ValueError(f"{where}: the label {label!r} is also reward.parts[{seen[label]}]'s; give one of them "
                             "another `label`")
        seen[label] = i
        args = {k: getattr(rc, k) for k in getattr(fn, "config_args", ())} | dict(p.args or {})
        kind = p.kind or getattr(fn, "reward_kind", "per_sample")
        try:
            out.append(Part(label, fn, p.weight, kind, p.timeout_s, p.role, args, p.name))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return out


def check_reward_config(rc) -> None:
    """ValueError for a RewardConfig that cannot work: unknown aggregation, a bad or unloadable part, duplicate
    labels, reward.name or reward.format_weight set beside reward.parts."""
    if rc.aggregation not in AGGREGATIONS:
        raise ValueError(f"reward.aggregation must be one of {', '.join(AGGREGATIONS)}, got {rc.aggregation!r}")
    if not rc.parts:
        return
    for i, p in enumerate(rc.parts):
        if not p.name:
            raise ValueError(f"reward.parts[{i}].name is missing (a registered reward, module:fn or file.py:fn)")
        if not isinstance(p.args, dict):
            raise ValueError(f"reward.parts[{i}].args must be a mapping of keyword arguments, got {p.args!r}")
        if p.kind and p.kind not in KINDS:
            raise ValueError(f"reward.parts[{i}].kind must be one of {', '.join(KINDS)} (or empty), got {p.kind!r}")
    if rc.name != "accuracy_format":
        raise ValueError(f"reward.name={rc.name} and reward.parts are both set; reward.parts replaces reward.name: "
                         f"make it a part ({{name: {rc.name}, weight: 1.0}}) and drop reward.name")
    if rc.format_weight != 0.5:
        raise ValueError("reward.format_weight is not used with reward.parts: give the format part that weight "
                         "({name: format, weight: ...})")
    if rc.format_style != "strict":
        raise ValueError("reward.format_style is not used with reward.parts: name the format part you want "
                         "({name: format} strict, {name: format_official} AdaptVision's)")
    build_parts(rc)


@dataclass
class ComposedReward:
    """The recipe's reward: how trajectories are scored, which columns of the parts dict are the parts (label,
    weight, role), how they aggregate, and the per-part metrics. `dtpo_channels`: the parts dict carries DTPO's
    ``outcome`` / ``tool`` sums (the legacy ``reward.name: dtpo`` scoring always does)."""

    parts: list[Part]
    aggregation: str = "sum_then_normalize"
    legacy: str = ""  # "dtpo" when scored by reward.name: dtpo
    legacy_kwargs: dict = field(default_factory=dict)
    dtpo_channels: bool = False

    @classmethod
    def from_config(cls, rc, algo: str = "") -> "ComposedReward":
        check_reward_config(rc)
        agg = rc.aggregation
        if rc.parts:
            return cls(build_parts(rc), agg, dtpo_channels=algo == "dtpo")
        kw = {"format_weight": rc.format_weight, "format_style": rc.format_style, "area_from": rc.area_from}
        if rc.name == "dtpo":
            kw.update(theta=rc.theta, w_crop=rc.w_crop, w_area=rc.w_area)
        return cls(legacy_columns(rc.name, rc.format_weight), agg, legacy=rc.name, legacy_kwargs=kw,
                   dtpo_channels=rc.name == "dtpo")

    def score(self, trajs: list, groups) -> tuple[list[float], dict[str, list[float]]]:
        """(totals, parts dict) of a rollout batch; `groups` is a group size or one group id per trajectory."""
        if self.legacy:  # reward.name alone: scored as it always was (a user file is loaded afresh each time)
            from vlmrl.rewards.trajectories import score_trajectories

            kw = dict(self.legacy_kwargs)
            return score_trajectories(trajs, groups, self.legacy, kw.pop("format_weight"), **kw)
        return score_parts(trajs, groups, self.parts, channels=self.dtpo_channels)

    def columns(self, parts: dict[str, list[float]], role: str | None = None) -> tuple[torch.Tensor, list[float], list[str]]:
        """([B, K] raw part values, weights, labels) of the parts (of one DTPO role, if given)."""
        sel = [p for p in self.parts if role is None or p.role == role]
        n = len(next(iter(parts.values()))) if parts else 0
        mat = torch.tensor([parts[p.label] for p in sel], dtype=torch.float32).T if sel else torch.zeros(n, 0)
        return mat.reshape(n, len(sel)), [p.weight for p in sel], [p.label for p in sel]

    def signal_std(self, total: list[float], parts: dict[str, list[float]], groups: torch.Tensor) -> torch.Tensor:
        """[num_groups]: the spread the group filters compare with their threshold (vlmrl.algos.compose)."""
        if self.aggregation == "sum_then_normalize":
            from vlmrl.algos.filters import group_std

            return group_std(torch.tensor(total), groups)
        stds = [signal_group_std(*self.columns(parts, role)[:2], groups, self.aggregation)
                for role in (ROLES if self.dtpo_channels else (None,))]
        return torch.stack(stds, dim=1).amax(dim=1)

    def advantages(self, parts: dict[str, list[float]], groups: torch.Tensor, scale: str = "group",
                   rows: torch.Tensor | None = None, role: str | None = None) -> torch.Tensor:
        """Per-sequence advantages [B] from the parts (of one DTPO role) under the aggregation."""
        mat, w, _ = self.columns(parts, role)
        return part_contributions(mat, w, groups, self.aggregation, scale, rows=rows).sum(dim=1)

    def metrics(self, parts: dict[str, list[float]], groups: torch.Tensor, scale: str = "group",
                rows: torch.Tensor | None = None, tool_weight: float | None = None) -> dict[str, float | None]:
        """``reward_group_std/<label>`` and ``adv_share/<label>`` per part. `tool_weight` (DTPO): the sequence
        advantage is A_oc + tool_weight * A_tool, each from its role's parts."""
        out: dict[str, float | None] = {}
        if any(p.label not in parts for p in self.parts):  # a caller's own parts dict (e.g. a test's scorer)
            return out
        cols, labels = [], []
        for role in (ROLES if tool_weight is not None else (None,)):
            mat, w, lab = self.columns(parts, role)
            if not lab:
                continue
            c = part_contributions(mat, w, groups, self.aggregation, scale, rows=rows)
            cols.append(c * (tool_weight if role == "tool" else 1.0))
            labels += lab
            for name, s in zip(lab, part_group_std(mat, groups).tolist()):
                out[f"reward_group_std/{name}"] = s
        if labels:
            shares = variance_shares(torch.cat(cols, dim=1), rows).tolist()
            for name, s in zip(labels, shares):
                out[f"adv_share/{name}"] = s if math.isfinite(s) else None
        return out


def legacy_parts(name: str, format_weight: float = 0.5, format_style: str = "strict") -> list[Part]:
    """The parts of a one-name reward: accuracy_format (its format part in `format_style`), or one registered /
    user function of weight 1."""
    if name == "accuracy_format":
        return [Part("accuracy", accuracy_reward, 1.0), Part("format", format_fn(format_style), format_weight)]
    fn = get_reward(name)
    return [Part(part_label(name), fn, 1.0, getattr(fn, "reward_kind", "per_sample"), spec=name)]


def _unused(*_a, **_k):
    raise RuntimeError("a column of a one-name reward is not called")


def legacy_columns(name: str, format_weight: float = 0.5) -> list[Part]:
    """The parts-dict columns of a one-name reward (no function is loaded): accuracy + format, DTPO's outcome +
    tool, or the user function's label."""
    if name == "accuracy_format":
        return [Part("accuracy", accuracy_reward, 1.0), Part("format", format_reward, format_weight)]
    if name == "dtpo":
        return [Part("outcome", _unused, 1.0), Part("tool", _unused, 1.0, role="tool")]
    return [Part(part_label(name), _unused, 1.0, spec=name)]
