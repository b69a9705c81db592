"""Degenerate-run checks: signs that an RL run is going wrong, each warned about once on stderr and
flagged in metrics.jsonl at every step (``health/<check>`` = 1 while it holds, 0 otherwise).

=========================  ===================================================================
flag                       holds when (thresholds: ``train.health.*``, defaults in brackets)
=========================  ===================================================================
health/reward_up_eval_down over the last ``eval_window`` [3] periodic evals (train.eval_every) the
                           held-out ``eval/accuracy`` fell by >= ``min_eval_drop`` [0.05] while the
                           training reward (the mean of ``reward/mean`` over the steps since the
                           previous eval) rose by >= ``min_reward_rise`` [0.02]: the policy is
                           learning the reward, not the task (reward hacking, format share,
                           overfitting the training prompts)
health/zero_std            ``zero_std_frac`` >= ``zero_std_frac`` [0.9] for ``zero_std_steps`` [5]
                           steps in a row: almost every group has one reward, so there is almost no
                           gradient (too easy or too hard a task, too small a group)
health/entropy_collapse    the mean ``entropy/policy`` of the last ``entropy_steps`` [3] steps is
                           below ``entropy_ratio`` [0.2] x its mean over the first ``entropy_steps``:
                           the policy collapsed onto a few answers
health/answer_collapse     at the last periodic eval, for some question kind (``meta.category``,
                           else the answer type) with >= ``answer_collapse_min_n`` [10] eval
                           rows, one answer takes >= ``answer_collapse_share`` [0.9] of the
                           greedy predictions while the targets' most common answer has a
                           smaller share: the model answers the same whatever the image (e.g.
                           always "no"; the split's majority answer)
health/start_collapse      the same at the eval before the first step (``train.eval_at_start``; logged
                           at step 0): the starting model already answers one answer for a kind, and
                           GRPO learns it slowly if at all (almost every group of that kind is all
                           right or all wrong: zero advantages). Measured on the digits task: a warm
                           start at 100% "even" stayed there for 125 steps, then rose to 88% by 200
=========================  ===================================================================

The checks are pure functions of the metric history (:func:`reward_up_eval_down`,
:func:`zero_std_streak`, :func:`entropy_collapsed`) and of the eval's answers (:func:`answer_rows`,
:func:`collapsed_answers`); :class:`HealthMonitor` keeps that history across steps, and in checkpoints (a resumed run goes on with it).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, field

FLAGS = ("health/reward_up_eval_down", "health/zero_std", "health/entropy_collapse", "health/answer_collapse")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def reward_up_eval_down(evals: list[tuple[float, float]], window: int, min_eval_drop: float,
                        min_reward_rise: float) -> bool:
    """``evals``: (training reward, held-out accuracy) at each periodic eval, oldest first. True when the
    last ``window`` of them show the held-out accuracy down by >= min_eval_drop and the reward up by
    >= min_reward_rise (last minus first of the window)."""
    if window < 2 or len(evals) < window:
        return False
    (r0, a0), (r1, a1) = evals[-window], evals[-1]
    return (a0 - a1) >= min_eval_drop and (r1 - r0) >= min_reward_rise


def zero_std_streak(values: list[float], threshold: float) -> int:
    """How many of the last values in a row are >= threshold."""
    n = 0
    for v in reversed(values):
        if not (_finite(v) and v >= threshold):
            break
        n += 1
    return n


def entropy_collapsed(values: list[float], steps: int, ratio: float) -> bool:
    """True when the mean of the last ``steps`` entropies is below ``ratio`` x the mean of the first ``steps``
    (needs 2 x steps values, and a positive start)."""
    vals = [v for v in values if _finite(v)]
    if steps < 1 or len(vals) < 2 * steps:
        return False
    start = sum(vals[:steps]) / steps
    now = sum(vals[-steps:]) / steps
    return start > 0 and now < ratio * start


def canonical_answer(text, answer_type: str = "word", choices=None) -> str | None:
    """One answer as a value to count: an option letter for "choice", the number ("7", "0.5", "12%") for
    "number", the normalised words for "word" (and any other type), the stripped text for "math"; None when
    there is none (no option letter, no single number, nothing left)."""
    from vlmrl.rewards.accuracy import ANSWER_TYPES, normalize_text, parse_choice, parse_number

    if text is None:
        return None
    kind = ANSWER_TYPES.get(str(answer_type).lower(), "word")
    if kind == "choice":
        return parse_choice(text, choices)
    if kind == "number":
        num = parse_number(text)
        return None if num is None else f"{num[0]:g}" + ("%" if num[1] else "")
    value = str(text).strip() if kind == "math" else normalize_text(str(text))
    return value or None


def answer_rows(trajs) -> list[tuple[str, str | None, str | None]]:
    """(question kind, predicted answer, target answer) per trajectory, both as :func:`canonical_answer`
    values; the kind is the row's ``meta.category`` where it has one, else its answer type. The prediction
    is the response's extracted answer (the last <answer>...</answer> or \\boxed{})."""
    from vlmrl.rewards.extract import extract_answer

    out = []
    for t in trajs:
        target = t.answer[0] if isinstance(t.answer, (list, tuple)) and t.answer else t.answer
        kind = (t.meta or {}).get("category") or t.answer_type or "word"
        out.append((str(kind), canonical_answer(extract_answer(t.final_text), t.answer_type, t.choices),
                    canonical_answer(target, t.answer_type, t.choices)))
    return out


def collapsed_answers(rows, share: float, min_n: int) -> list[dict]:
    """``rows``: (kind, predicted answer or None, target answer) per eval row. For each kind with >= min_n
    rows where one predicted answer (not None) makes >= ``share`` of the predictions while the most common
    target is below ``share``: ``{"kind", "answer", "share", "target_share", "n"}``, sorted by kind."""
    by_kind: dict[str, list] = {}
    for kind, pred, target in rows:
        by_kind.setdefault(kind, []).append((pred, target))
    out = []
    for kind in sorted(by_kind):
        pairs = by_kind[kind]
        n = len(pairs)
        preds = Counter(p for p, _ in pairs if p is not None)
        if n < min_n or not preds:
            continue
        answer, count = preds.most_common(1)[0]
        target_share = Counter(t for _, t in pairs).most_common(1)[0][1] / n
        if count / n >= share and target_share < share:
            out.append({"kind": kind, "answer": answer, "share": count / n, "target_share": target_share, "n": n})
    return out


def _collapse_parts(collapsed: list[dict]) -> str:
    return "; ".join(f'question kind "{x["kind"]}": {x["share"]:.0%} of {x["n"]} eval answers are "{x["answer"]}" '
                     f'(the most common target answer is {x["target_share"]:.0%})' for x in collapsed)


@dataclass
class HealthMonitor:
    """Feed it every step's metrics (after the periodic eval joined them); it returns the flags to log."""

    cfg: object  # vlmrl.config.HealthConfig
    warn: bool = True  # print the warnings (the main process)
    rewards: list = field(default_factory=list)  # reward/mean since the last eval
    evals: list = field(default_factory=list)  # (mean reward since the previous eval, eval/accuracy)
    zero_std: list = field(default_factory=list)
    entropy: list = field(default_factory=list)
    warned: set = field(default_factory=set)
    collapsed: list = field(default_factory=list)  # collapsed_answers() of the last eval

    def update(self, step: int, metrics: dict, answers: list | None = None) -> dict:
        """``answers``: the :func:`answer_rows` of this step's periodic eval (None: no eval this step; the
        answer-collapse flag keeps the last eval's value)."""
        c = self.cfg
        if not c.enabled:
            return {}
        if answers is not None:
            self.collapsed = collapsed_answers(answers, c.answer_collapse_share, c.answer_collapse_min_n)
        if _finite(metrics.get("reward/mean")):
            self.rewards.append(float(metrics["reward/mean"]))
        if _finite(metrics.get("eval/accuracy")) and self.rewards:
            self.evals.append((sum(self.rewards) / len(self.rewards), float(metrics["eval/accuracy"])))
            self.rewards = []
        self.zero_std.append(metrics.get("zero_std_frac"))
        self.entropy.append(metrics.get("entropy/policy"))
        flags = {
            "health/reward_up_eval_down": reward_up_eval_down(self.evals, c.eval_window, c.min_eval_drop,
                                                              c.min_reward_rise),
            "health/zero_std": zero_std_streak(self.zero_std, c.zero_std_frac) >= c.zero_std_steps,
            "health/entropy_collapse": entropy_collapsed(self.entropy, c.entropy_steps, c.entropy_ratio),
            "health/answer_collapse": bool(self.collapsed),
        }
        for name, on in flags.items():
            if on:
                self._warn_once(name, step, self._message)
        return {k: int(v) for k, v in flags.items()}

    def _warn_once(self, name: str, step: int, message) -> None:
        """Print check ``name``'s warning (``message(name)``) the first time it holds, never again."""
        if name not in self.warned:
            self.warned.add(name)
            if self.warn:
                print(f"warning: step {step}: {message(name)}", file=sys.stderr, flush=True)

    def check_start(self, answers: list) -> dict:
        """The eval before the first step (train.eval_at_start): a question kind the starting model already
        answers with one answer whatever the image. GRPO learns such a kind slowly if at all: almost every group
        of its questions is all right or all wrong (one answer, sampled over and over), so its advantages are 0,
        and only the rare sampled other answer teaches.
        Warns once; returns the flag to log at step 0."""
        c = self.cfg
        if not c.enabled:
            return {}
        start = collapsed_answers(answers, c.answer_collapse_share, c.answer_collapse_min_n)
        if start:
            self._warn_once("health/start_collapse", 0, lambda _: (
                f"the starting model gives one answer whatever the image: {_collapse_parts(start)}. GRPO learns such a"
                " kind slowly if at all (almost every group of it is all right or all wrong: zero advantages; only a "
                "rare sampled other answer teaches): train the warm start on more rows of that kind, or plan for many "
                "more steps [train.health.answer_collapse_share, answer_collapse_min_n]"))
        return {"health/start_collapse": int(bool(start))}

    def state_dict(self) -> dict:
        """The histories and the warnings already given, for a checkpoint (JSON-able)."""
        return {"rewards": list(self.rewards), "evals": [list(e) for e in self.evals], "zero_std": list(self.zero_std),
                "entropy": list(self.entropy), "warned": sorted(self.warned), "collapsed": list(self.collapsed)}

    def load_state_dict(self, state: dict | None) -> None:
        """Continue from a checkpoint's state_dict() (None, from a checkpoint older than this: start afresh)."""
        if not state:
            return
        self.rewards = list(state["rewards"])
        self.evals = [tuple(e) for e in state["evals"]]
        self.zero_std, self.entropy = list(state["zero_std"]), list(state["entropy"])
        self.warned, self.collapsed = set(state["warned"]), list(state["collapsed"])

    def _message(self, name: str) -> str:
        c = self.cfg
        if name == "health/reward_up_eval_down":
            (r0, a0), (r1, a1) = self.evals[-c.eval_window], self.evals[-1]
            return (f"the training reward rose ({r0:.3f} -> {r1:.3f}) while held-out eval/accuracy fell "
                    f"({a0:.3f} -> {a1:.3f}) over the last {c.eval_window} evals: the policy is learning the reward, "
                    "not the task (check the format reward's share, the learning rate, the eval view vs the training "
                    "view) [train.health.eval_window, min_eval_drop, min_reward_rise]")
        if name == "health/zero_std":
            return (f"zero_std_frac >= {c.zero_std_frac} for {c.zero_std_steps} steps in a row: almost every group "
                    "has a single reward value, so almost nothing is learned (task too easy or too hard for the model, "
                    "or too few samples per prompt) [train.health.zero_std_frac, zero_std_steps]")
        if name == "health/answer_collapse":
            return (f"answer collapse: {_collapse_parts(self.collapsed)}: the model gives one answer whatever the image (often the training "
                    "split's majority answer); balance the training answers, lower the learning rate, or add a KL "
                    "term [train.health.answer_collapse_share, answer_collapse_min_n]")
        vals = [v for v in self.entropy if _finite(v)]
        s = sum(vals[:c.entropy_steps]) / c.entropy_steps
        n = sum(vals[-c.entropy_steps:]) / c.entropy_steps
        return (f"policy entropy collapsed ({s:.3f} at the start -> {n:.3f}, below {c.entropy_ratio} x): the policy "
                "puts its mass on a few answers; consider a lower learning rate, a KL or entropy term "
                "[train.health.entropy_ratio, entropy_steps]")
