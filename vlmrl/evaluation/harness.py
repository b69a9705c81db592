"""Run a policy on a benchmark task through the rollout engine and score it (``vlmrl eval``).

Outputs, in the output folder:

``samples.jsonl``  one lmms-eval-shaped line per doc, appended (and flushed) as soon as its batch is
                   done: doc_id, input (the user prompt text), target, resps (the K raw responses),
                   filtered_resps (the answer strings given to the scorer: the extracted
                   <answer>/\\boxed{} answer, else the raw final text), scores (per response), score
                   (their mean), parsed (per response, as the scorer parsed it), tool_calls (per
                   response: [{raw, valid, box_original, error}]), visual_tokens (per response),
                   finish_reason (per response); with ``--perception`` a ``perception`` entry
                   (vlmrl/evaluation/perception.py).
``traces.jsonl``   the trajectories (``vlmrl view`` renders them); ``prompt_index`` is the doc_id.
``results.json``   ``{"task", "n", "metrics", "score", "visual_tokens_per_sample", "tool_call_rate",
                   "by": the same per value of each boolean field (e.g. needs_zoom), and "category": the
                   metrics per question category (the task's category field, else the rows' meta.category;
                   with ``--perception`` the perception metrics too), ...,
                   "skipped_docs", "skipped"}``: docs whose image cannot be decoded are left out of the
                   metrics, counted and listed (with the file and row), and tried again on resume.

Resume: existing lines of ``samples.jsonl`` are kept (a truncated last line is dropped), their
doc_ids are skipped, and the final metrics are computed over every line. With K > 1 responses per
doc (avg@K), each metric is computed over the k-th responses of all docs and averaged over k, so an
accuracy is each doc's score averaged over its K responses, then over docs.

Settings: :class:`EvalSettings` holds the rollout settings in the recipe's schema
(:class:`vlmrl.config.RolloutConfig`; ``vlmrl eval --recipe`` starts from a recipe's ``rollout:`` section)
plus K, the batch size and the seed. Periodic evaluation during training (:func:`evaluate_samples`, called
by ``vlmrl/train/run.py``) goes through the same engine construction, batching and seeding, and scores
with the training reward's accuracy instead of a task's scorer.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from vlmrl.config import RolloutConfig

SAMPLES_FILE = "samples.jsonl"
TRACES_FILE = "traces.jsonl"
RESULTS_FILE = "results.json"


@dataclass
class EvalSettings:
    """How an evaluation runs: the rollout settings (the recipe's schema; ``vlmrl eval`` defaults to direct
    mode) and K responses per doc, docs per rollout batch, the seed."""

    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    samples: int = 1  # K responses per doc (K > 1: sampled at temperature 1.0, avg@K)
    batch_size: int = 8
    seed: int = 0  # batch b's generator is seeded with seed + the index of its first doc

    @property
    def mode(self) -> str:
        return self.rollout.mode

    @property
    def temperature(self) -> float:
        return 0.0 if self.samples == 1 else 1.0

    def engine_config(self) -> RolloutConfig:
        """The rollout settings the engine runs with: greedy for one response, temperature 1.0 for K > 1."""
        return replace(self.rollout, temperature=self.temperature)

    def check(self) -> None:
        for name, value in (("samples", self.samples), ("batch_size", self.batch_size),
                            ("max_new_tokens", self.rollout.max_new_tokens)):
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def make_engine(policy, settings: EvalSettings, messages_fn: Callable | None = None, sampler=None):
    """The rollout engine an evaluation runs (``messages_fn`` None: vlmrl's training prompts; ``sampler`` None: a
    new ``HFSampler(policy)``)."""
    from vlmrl.rollout.engine import RolloutEngine

    return RolloutEngine(policy, settings.engine_config(), messages_fn=messages_fn, sampler=sampler)


def batch_generator(settings: EvalSettings, first_index: int):
    """The sampling generator of the batch whose first doc (or sample) has index ``first_index``."""
    import torch

    return torch.Generator().manual_seed(settings.seed + first_index)


# ------------------------------------------------------------------------------------ prompts


def is_native(task) -> bool:
    """The synthetic zoom task uses vlmrl's own training prompts (answer format instruction included)."""
    return task.scorer == "zoom"


def make_sample(task, doc: dict):
    """A rollout Sample for a doc (images decoded now)."""
    from vlmrl.data.sample import Sample

    row = doc.get("row") or {}
    images = [im() for im in doc.get("images") or []]
    if is_native(task):
        choices = row.get("choices") if isinstance(row.get("choices"), list) else None
        return Sample(images=images, question=doc["question"], answer=str(doc["target"]),
                      answer_type=str(row.get("answer_type") or "word"), choices=choices,
                      meta=dict(row.get("meta") or {}), id=str(doc["doc_id"]), source=doc.get("source"))
    return Sample(images=images, question=doc["prompt"], answer=str(doc["target"]), answer_type="word",
                  choices=None, meta={"doc_id": doc["doc_id"], "task": task.name}, id=str(doc["doc_id"]),
                  source=doc.get("source"))


def benchmark_messages(sample, cfg, family: str) -> list[dict]:
    """The task's prompt text as the user turn (images first); in tool mode the crop tool declared in
    the system turn, as the rollout engine's default does."""
    from vlmrl.data.prompts import _user_turn, direct_system_turn, tool_system_prompt
    from vlmrl.rollout.tools import default_convention, make_tool

    user = _user_turn(sample.question, len(sample.images), None, False)
    if cfg.mode == "tool":
        convention = cfg.coord_convention or default_convention(family)
        tool = make_tool(cfg.tool, cfg.tool_name)
        system = tool_system_prompt(tool.name, convention, cfg.prompt_style,
                                    schema=tool.schema(convention, cfg.prompt_style), line=tool.short_prompt(convention))
        return [{"role": "system", "content": system}, user]
    # the system turn of training's direct prompts for the same prompt_style (a recipe's "bare" model was trained
    # with an empty one: a default system prompt here would show it a view it never saw)
    return [*direct_system_turn(cfg.prompt_style), user]


def messages_fn_for(task) -> Callable | None:
    """None (the engine's default, vlmrl's training prompts) for the zoom task, else benchmark prompts."""
    return None if is_native(task) else benchmark_messages


def user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m["role"] == "user":
            content = m["content"]
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def filtered_response(text: str) -> str:
    """The answer string given to the scorer: the extracted answer, else the raw final text."""
    from vlmrl.rewards.extract import extract_answer

    found = extract_answer(text)
    return found.strip() if found is not None else text


# ------------------------------------------------------------------------------------ resume


def read_samples(path: Path, docs_by_id: dict[int, dict]) -> dict[int, dict]:
    """Finished docs' lines of an earlier run, by doc_id. A malformed last line (an interrupted write)
    is dropped and cut from the file; a malformed earlier line, an unknown doc_id or a target that
    differs from the benchmark's is an error (the folder holds another run's output)."""
    done: dict[int, dict] = {}
    if not path.is_file():
        return done
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    keep_bytes = 0
    for i, line in enumerate(lines):
        last = i == len(lines) - 1 or all(not x.strip() for x in lines[i + 1:])
        if not line.strip():
            keep_bytes += len(line) + 1
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("doc_id"), int):
                raise ValueError("not a sample record")
        except (ValueError, UnicodeDecodeError):
            if last:
                break  # truncated by an interruption: redo that doc
            raise ValueError(f"{path}: line {i + 1} is not a valid sample record; delete the file to start over")
        doc = docs_by_id.get(rec["doc_id"])
        if doc is None:
            raise ValueError(f"{path}: line {i + 1}: doc_id {rec['doc_id']} is not in the benchmark "
                             f"(another run's output? use another --out or delete the file)")
        if _jsonable(doc["target"]) != rec.get("target"):
            raise ValueError(f"{path}: line {i + 1}: doc_id {rec['doc_id']} has target {rec.get('target')!r}, "
                             f"the benchmark says {doc['target']!r} (another task's output? use another --out)")
        done[rec["doc_id"]] = rec
        keep_bytes += len(line) + 1
    keep_bytes = min(keep_bytes, len(raw))
    if keep_bytes < len(raw):
        with open(path, "r+b") as f:
            f.truncate(keep_bytes)
        if keep_bytes and not raw[:keep_bytes].endswith(b"\n"):
            with open(path, "ab") as f:
                f.write(b"\n")
    return done


def _prune_traces(path: Path, keep_ids: set[str]) -> None:
    """Drop trace lines of docs without a finished sample line (written before an interruption)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if str(json.loads(line).get("sample_id")) in keep_ids:
                kept.append(line + "\n")
        except (ValueError, AttributeError):
            continue
    path.write_text("".join(kept), encoding="utf-8")


# ------------------------------------------------------------------------------------ scoring


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def score_k(task, docs: list[dict], filtered: dict[int, list[str]], k_total: int) -> tuple[dict, dict[int, list[dict]]]:
    """Metrics averaged over the K response slots, and per doc its K scorer records."""
    per_doc: dict[int, list[dict]] = {d["doc_id"]: [] for d in docs}
    sums: dict[str, float] = {}
    for k in range(k_total):
        metrics, records = task.score(docs, {d["doc_id"]: filtered[d["doc_id"]][k] for d in docs})
        for name, v in metrics.items():
            sums[name] = sums.get(name, 0.0) + v
        for rec in records:
            per_doc[rec["doc_id"]].append(rec)
    return {name: sums[name] / k_total for name in sums}, per_doc


def summarize(task, docs: list[dict], records: list[dict], settings: EvalSettings) -> dict:
    """results.json over every finished line."""
    by_id = {d["doc_id"]: d for d in docs}
    done_docs = [by_id[r["doc_id"]] for r in records]
    k_total = min(len(r["filtered_resps"]) for r in records)
    metrics, _ = score_k(task, done_docs, {r["doc_id"]: r["filtered_resps"] for r in records}, k_total)
    by = breakdown(task, done_docs, records)
    groups = [doc_category(task, d) for d in done_docs]
    if cats := category_metrics(task, done_docs, records, groups, k_total):
        by["category"] = cats
    if any(r.get("perception") for r in records):  # `vlmrl eval --perception` (vlmrl/evaluation/perception.py)
        from .perception import perception_by, perception_metrics

        metrics.update(perception_metrics(records))
        for value, extra in perception_by(records, groups).items():
            by.setdefault("category", {}).setdefault(value, {}).update(extra)
    return {
        "task": task.name,
        "n": len(records),
        "metrics": metrics,
        **usage(records),
        "by": by,
        "samples": k_total,
        "mode": settings.mode,
        "temperature": settings.temperature,
        "n_docs": len(docs),
    }


def usage(records: list[dict]) -> dict:
    """Mean score, tool-call rate and visual tokens per response over `records` (samples.jsonl lines)."""
    vt = [v for r in records for v in r["visual_tokens"]]
    calls = [c for r in records for c in r["tool_calls"]]
    return {"score": sum(r["score"] for r in records) / len(records) if records else 0.0,
            "visual_tokens_per_sample": sum(vt) / len(vt) if vt else 0.0,
            "tool_call_rate": sum(1 for c in calls if c) / len(calls) if calls else 0.0}


def doc_category(task, doc: dict):
    """A doc's group for the per-category breakdown: the task's ``category`` field when it declares one, else the
    row's ``meta.category`` (vlmrl native rows, e.g. digits); None without."""
    if "category" in task.fields:
        return task.field_value(doc, "category", None)
    meta = (doc.get("row") or {}).get("meta")
    return meta.get("category") if isinstance(meta, dict) else None


def category_metrics(task, docs: list[dict], records: list[dict], groups: list, k_total: int) -> dict:
    """The task's metrics per category (``groups[i]``: doc i's category, None for none), as
    ``{str(value): {"n": docs, **metrics}}`` sorted by value; {} when no doc has one."""
    out = {}
    for v in sorted({str(g) for g in groups if g is not None}):
        part = [(d, r) for d, r, g in zip(docs, records, groups) if g is not None and str(g) == v]
        resps = {r["doc_id"]: r["filtered_resps"] for _, r in part}
        out[v] = {"n": len(part), **score_k(task, [d for d, _ in part], resps, k_total)[0]}
    return out


def breakdown(task, docs: list[dict], records: list[dict]) -> dict:
    """`usage` per value of every boolean field the task declares (e.g. the zoom task's needs_zoom):
    {field: {"true": {...,"n"}, "false": {...,"n"}}}."""
    out = {}
    for role in task.fields:
        values = [task.field_value(d, role, None) for d in docs]
        if not values or not all(isinstance(v, bool) for v in values):
            continue
        out[role] = {str(flag).lower(): {"n": sum(v == flag for v in values),
                                         **usage([r for r, v in zip(records, values) if v == flag])}
                     for flag in (True, False)}
    return out


# ------------------------------------------------------------------------------------ the loop


def _decodable(task, batch: list[dict], skipped: list[str]) -> tuple[list[dict], list]:
    """The docs of a batch whose images decode, with their Samples; the others are reported on stderr
    and their messages appended to ``skipped`` (never a crash for one bad image)."""
    from vlmrl.data.images import DECODE_ERRORS, check_aspect_ratio

    ok, samples = [], []
    for d in batch:
        try:
            sample = make_sample(task, d)
            for im in sample.images:
                check_aspect_ratio(im.size, d.get("source"))
            samples.append(sample)
            ok.append(d)
        except DECODE_ERRORS as e:  # ValueError / OSError (FileNotFoundError) and PIL's other errors
            skipped.append(f"doc {d['doc_id']}: {e}")  # the message names the file and row
            print(f"eval {task.name}: skipped {skipped[-1]}", file=sys.stderr)
    return ok, samples


def evaluate(task, docs: list[dict], policy, out_dir: str | Path, settings: EvalSettings,
             progress: bool = True, sampler=None, perception=None) -> dict:
    """Roll out and score every doc not already in ``out_dir/samples.jsonl``; write results.json (``sampler``: the
    generation backend, default a new ``HFSampler(policy)``; ``perception``: a
    :class:`vlmrl.evaluation.perception.PerceptionSettings` to run the perception probe on every doc)."""
    from tqdm import tqdm

    from vlmrl.rollout.trajectory import save_traces

    settings.check()
    if not docs:
        raise ValueError(f"task {task.name}: no documents to evaluate")
    if perception is not None:
        perception.check(settings.mode)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples_path, traces_path = out / SAMPLES_FILE, out / TRACES_FILE
    by_id = {d["doc_id"]: d for d in docs}
    done = read_samples(samples_path, by_id)
    if done:
        _prune_traces(traces_path, {str(i) for i in done})
    elif traces_path.exists():
        traces_path.unlink()
    todo = [d for d in docs if d["doc_id"] not in done]

    engine = make_engine(policy, settings, messages_fn_for(task), sampler=sampler)
    cfg = engine.cfg
    K = settings.samples
    bar = tqdm(total=len(docs), initial=len(done), desc=f"eval {task.name}", unit="doc", disable=not progress,
               file=sys.stderr)
    skipped: list[str] = []  # docs whose images cannot be decoded: reported in results.json, retried on resume
    with open(samples_path, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), settings.batch_size):
            part = todo[start:start + settings.batch_size]
            batch, samples = _decodable(task, part, skipped)
            bar.update(len(part) - len(batch))
            if not batch:
                continue
            gen = batch_generator(settings, batch[0]["doc_id"])
            trajs = engine.rollout(samples, n_per_prompt=K, generator=gen)
            by_doc = [[t for t in trajs if t.group_id == i] for i in range(len(batch))]  # group i = batch[i]
            filtered = {d["doc_id"]: [filtered_response(t.final_text) for t in ts] for d, ts in zip(batch, by_doc)}
            _, recs = score_k(task, batch, filtered, K)
            probe = {}
            if perception is not None:  # vlmrl/evaluation/perception.py
                from .perception import run_probe

                probe = run_probe(task, engine, policy, batch, samples, by_doc, filtered, perception, settings.seed,
                                  batch_generator(settings, batch[0]["doc_id"]), K)
            for t in trajs:
                t.prompt_index = batch[t.prompt_index]["doc_id"]
            save_traces(traces_path, trajs, append=True)
            for d, s, ts in zip(batch, samples, by_doc):
                messages = engine.messages_fn(s, cfg, policy.family)
                scores = [r["score"] for r in recs[d["doc_id"]]]
                line = {
                    "doc_id": d["doc_id"],
                    "input": user_text(messages),
                    "target": d["target"],
                    "resps": [t.final_text for t in ts],
                    "filtered_resps": filtered[d["doc_id"]],
                    "scores": scores,
                    "score": sum(scores) / len(scores),
                    "parsed": [r.get("parsed") for r in recs[d["doc_id"]]],
                    "tool_calls": [[{"raw": c.raw, "valid": c.valid, "box_original": c.box_original,
                                     "error": c.error} for c in t.tool_calls] for t in ts],
                    "visual_tokens": [t.visual_tokens for t in ts],
                    "finish_reason": [t.finish_reason for t in ts],
                    "turns": [t.turns for t in ts],
                }
                if probe:
                    line["perception"] = probe[d["doc_id"]]
                f.write(json.dumps(_jsonable(line), ensure_ascii=False) + "\n")
                done[d["doc_id"]] = json.loads(json.dumps(_jsonable(line)))
            f.flush()
            bar.update(len(batch))
    bar.close()
    records = [done[d["doc_id"]] for d in docs if d["doc_id"] in done]
    if not records:
        raise ValueError(f"task {task.name}: no document could be evaluated ({len(skipped)} skipped); the first: "
                         f"{skipped[0] if skipped else '-'}")
    result = summarize(task, docs, records, settings) | {"skipped_docs": len(skipped), "skipped": skipped}
    (out / RESULTS_FILE).write_text(json.dumps(_jsonable(result), indent=2) + "\n", encoding="utf-8")
    return result


# ------------------------------------------------------------------------------------ periodic eval


def evaluate_samples(samples: list, policy, settings: EvalSettings, score: Callable[[list], list[float]],
                     sampler=None) -> dict:
    """Periodic evaluation during training: roll out already-decoded Samples (vlmrl's training prompts) with
    the harness's engine, batching and seeding, score every trajectory with ``score(trajectories) -> [float]``
    and summarise like results.json: ``{"accuracy", "tool_call_rate", "visual_tokens_per_sample"}``, and when
    the samples carry ``meta.needs_zoom`` ``{"by": {"needs_zoom": {"true": {...}, "false": {...}}}}``."""
    settings.check()
    engine = make_engine(policy, settings, sampler=sampler)
    K = settings.samples
    records = []
    for start in range(0, len(samples), settings.batch_size):
        part = samples[start:start + settings.batch_size]
        trajs = engine.rollout(part, n_per_prompt=K, generator=batch_generator(settings, start))
        scores = score(trajs)
        for i in range(len(part)):  # group i = part[i]
            ts = [t for t in trajs if t.group_id == i]
            sc = [s for t, s in zip(trajs, scores) if t.group_id == i]
            records.append({"score": sum(sc) / len(sc), "tool_calls": [t.tool_calls for t in ts],
                            "visual_tokens": [t.visual_tokens for t in ts], "meta": ts[0].meta or {}})
    u = usage(records)
    out = {"accuracy": u["score"], "tool_call_rate": u["tool_call_rate"],
           "visual_tokens_per_sample": u["visual_tokens_per_sample"]}
    if records and "needs_zoom" in records[0]["meta"]:
        flags = [bool(r["meta"].get("needs_zoom")) for r in records]
        out["by"] = {"needs_zoom": {str(flag).lower(): usage([r for r, f in zip(records, flags) if f == flag])
                                    | {"n": flags.count(flag)} for flag in (True, False)}}
    return out
