"""Benchmark scorers: per-document scoring plus the benchmark's aggregation, by name.

A task YAML names its scorer (``scorer: anls``); :func:`score_docs` scores a task's docs against
responses keyed by doc_id and returns ``(metrics, per_doc)``: the metrics dict (every value a fraction
in [0, 1], keys in the task's ``metrics`` order) and one record per doc, in doc order,
``{"doc_id", "score", "parsed", ...}`` where ``score`` is that doc's own value in [0, 1] and
``parsed`` what was read from the response (a letter, a number, "yes"/"no", ...). A task's ``metrics``
may list any subset of the names its scorer produces (the table's last column); a name the scorer
does not produce is an error when the task loads.

=================  ==========================================================================
scorer             rule (official source)                               metrics
=================  ==========================================================================
anls               DocVQA/InfoVQA ANLS (rrc script; raw-length quirk)   anls
relaxed_accuracy   ChartQA relaxed accuracy (Qwen-VL / lmms-eval)        relaxed_overall,
                                                                         relaxed_human_split,
                                                                         relaxed_augmented_split
vqa_accuracy       TextVQA: EvalAI normalisation, leave-one-out min(1,m/3) vqa_accuracy
pope               POPE evaluate.py (first sentence, no/not/No)          accuracy, precision,
                                                                         recall, f1, yes_ratio
mc_accuracy        VLMEvalKit option matching (or MME-RealWorld regex)   accuracy
vstar              same matching; per category                          overall + categories
mmstar             same matching; micro and macro over categories        accuracy, macro
mmbench_circular   same matching; CircularEval over index % 1e6          circular_accuracy
hrbench            same matching; mean over cycles, single/cross         single, cross, average
mathvista          MathVista extraction + normalisation + exact match    accuracy
zoom               vlmrl synthetic zoom: choice / number / word          accuracy, accuracy_zoom,
                                                                         accuracy_no_zoom
exact_match        your own task: choice letter / number (tolerance) /   accuracy, accuracy_choice,
                   normalised words, by the row's answer_type            accuracy_number, accuracy_word
=================  ==========================================================================
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

from vlmrl.rewards.accuracy import parse_choice, parse_number

from .choice import extract_choice, mme_realworld_extract, normalize_letter
from .mathvista import mathvista_correct
from .vqa import anls_score, normalize_vqa_answer, pope_metrics, pope_parse, relaxed_correctness, vqa_accuracy

__all__ = ["SCORERS", "Scorer", "format_ids", "get_scorer", "score_docs", "check_metrics"]


@dataclass(frozen=True)
class Scorer:
    name: str
    score_doc: Callable[[Any, dict, str], dict]  # (task, doc, response) -> {"score", "parsed", ...}
    aggregate: Callable[[Any, list, list], dict]  # (task, docs, records) -> metrics
    required_fields: tuple[str, ...] = ()  # roles (see Task.fields) every row must have
    check: Callable[[Any, dict], None] | None = None  # (task, doc): raise ValueError on a bad row
    description: str = ""
    # every metric name the scorer can produce (a tuple, or a function of the task for scorers whose
    # names depend on scorer_args); a task's ``metrics`` list may name any subset of it
    produces: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()

    def metric_names(self, task) -> tuple[str, ...]:
        return tuple(self.produces(task)) if callable(self.produces) else tuple(self.produces)


SCORERS: dict[str, Scorer] = {}


def _register(scorer: Scorer) -> Scorer:
    SCORERS[scorer.name] = scorer
    return scorer


def get_scorer(name: str, where: str = "task") -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"{where}: unknown scorer {name!r}; known: {', '.join(sorted(SCORERS))}") from None


def check_metrics(task, where: str = "task") -> None:
    """Raise ValueError when ``task.metrics`` names a metric its scorer never produces."""
    scorer = get_scorer(task.scorer, where)
    names = scorer.metric_names(task)
    unknown = [m for m in task.metrics if m not in names]
    if unknown:
        raise ValueError(f"{where}: metrics {unknown} are not produced by scorer {scorer.name!r}; "
                         f"it produces: {', '.join(names)} (list any subset of them)")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _answers(target) -> list[str]:
    if isinstance(target, (list, tuple)):
        return [str(t) for t in target]
    if target is None or (isinstance(target, float) and math.isnan(target)):
        return []
    return [str(target)]


def score_docs(task, docs: list[dict], responses: dict[int, str]) -> tuple[dict[str, float], list[dict]]:
    """Score ``responses`` ({doc_id: response text}) for ``docs`` with the task's scorer.

    Every doc needs a response and every response a doc (else ValueError naming the doc_ids).
    Returns ``(metrics, per_doc)`` as the module doc describes.
    """
    if not docs:
        raise ValueError(f"task {task.name}: no documents to score")
    scorer = get_scorer(task.scorer)
    ids = [d["doc_id"] for d in docs]
    known = set(ids)
    missing = [i for i in ids if i not in responses]
    unknown = sorted(k for k in responses if k not in known)
    problems = []
    if unknown:
        problems.append(f"responses for unknown doc_ids: {format_ids(unknown)}")
    if missing:
        problems.append(f"no response for doc_ids: {format_ids(missing)}")
    if problems:
        raise ValueError(f"task {task.name}: " + "; ".join(problems))
    records = []
    for doc in docs:
        response = responses[doc["doc_id"]]
        if not isinstance(response, str):
            raise ValueError(f"task {task.name}: doc_id {doc['doc_id']}: response must be a string, got {type(response).__name__}")
        rec = {"doc_id": doc["doc_id"], **scorer.score_doc(task, doc, response)}
        rec["score"] = float(rec["score"])
        records.append(rec)
    produced = scorer.aggregate(task, docs, records)
    extra = set(produced) - set(scorer.metric_names(task))
    if extra:  # a scorer bug: its ``produces`` list is out of date
        raise AssertionError(f"scorer {scorer.name} produced metrics it does not declare: {sorted(extra)}")
    # the task's list may be a subset of what the scorer produces; a listed metric with no rows
    # behind it (e.g. a split absent from the data) is left out
    metrics = {name: float(produced[name]) for name in task.metrics if name in produced}
    for name, v in metrics.items():
        if not (0.0 <= v <= 1.0) or math.isnan(v):
            raise AssertionError(f"task {task.name}: metric {name}={v} is outside [0, 1]")
    return metrics, records


def format_ids(ids, limit: int = 20) -> str:
    ids = list(ids)
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


# ------------------------------------------------------------------------------------ open answers


def _anls_doc(task, doc, response):
    threshold = float(task.scorer_args.get("threshold", 0.5))
    return {"score": anls_score(response, _answers(doc["target"]), threshold), "parsed": response}


_register(Scorer("anls", _anls_doc, lambda t, d, r: {"anls": _mean(x["score"] for x in r)},
                 description="ANLS (DocVQA / InfoVQA)", produces=("anls",)))


def _chartqa_doc(task, doc, response):
    targets = _answers(doc["target"])
    ok = any(relaxed_correctness(response, t) for t in targets)
    split = str(task.field_value(doc, "split"))
    return {"score": 1.0 if ok else 0.0, "parsed": response.strip(), "split": split}


def _chartqa_agg(task, docs, records):
    human_value = str(task.scorer_args.get("human_split", "human_test"))
    aug_value = str(task.scorer_args.get("augmented_split", "augmented_test"))
    human, aug = [], []
    for doc, rec in zip(docs, records):
        if rec["split"] == human_value:
            human.append(rec["score"])
        elif rec["split"] == aug_value:
            aug.append(rec["score"])
        else:
            raise ValueError(
                f"{doc['source']}: split field {task.field_name('split')!r} is {rec['split']!r}, "
                f"expected {human_value!r} or {aug_value!r}"
            )
    out = {"relaxed_overall": _mean(r["score"] for r in records)}
    if human:
        out["relaxed_human_split"] = _mean(human)
    if aug:
        out["relaxed_augmented_split"] = _mean(aug)
    return out


_register(Scorer("relaxed_accuracy", _chartqa_doc, _chartqa_agg, required_fields=("split",),
                 description="ChartQA relaxed accuracy, human / augmented splits",
                 produces=("relaxed_overall", "relaxed_human_split", "relaxed_augmented_split")))


def _textvqa_doc(task, doc, response):
    return {"score": vqa_accuracy(response, _answers(doc["target"])), "parsed": normalize_vqa_answer(response)}


_register(Scorer("vqa_accuracy", _textvqa_doc, lambda t, d, r: {"vqa_accuracy": _mean(x["score"] for x in r)},
                 description="VQA accuracy with EvalAI answer normalisation (TextVQA)", produces=("vqa_accuracy",)))


def _pope_label(doc) -> str:
    return str(doc["target"]).strip().lower()


def _pope_check(task, doc):
    if _pope_label(doc) not in ("yes", "no"):
        raise ValueError(f"{doc['source']}: POPE target must be 'yes' or 'no', got {doc['target']!r}")


def _pope_doc(task, doc, response):
    parsed = pope_parse(response)
    return {"score": 1.0 if parsed == _pope_label(doc) else 0.0, "parsed": parsed}


def _pope_agg(task, docs, records):
    return pope_metrics([r["parsed"] for r in records], [_pope_label(d) for d in docs])


_register(Scorer("pope", _pope_doc, _pope_agg, check=_pope_check, description="POPE yes/no",
                 produces=("accuracy", "precision", "recall", "f1", "yes_ratio")))


# ------------------------------------------------------------------------------- multiple choice


def _doc_choices(task, doc) -> dict[str, str]:
    if doc.get("choices"):
        return dict(doc["choices"])
    letters = task.scorer_args.get("letters", "ABCD")
    return {c: "" for c in letters}


def _mc_target(task, doc) -> str:
    return normalize_letter(doc["target"])


def _mc_check(task, doc):
    if task.scorer_args.get("allow_open"):
        return
    t = _mc_target(task, doc)
    choices = _doc_choices(task, doc)
    if t not in choices:
        raise ValueError(f"{doc['source']}: target {doc['target']!r} is not one of the options {sorted(choices)}")


def _open_norm(s: str) -> str:
    numbers = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
    s = s.strip().lower().rstrip(".").strip()
    return numbers.get(s, s)


def _mc_doc(task, doc, response):
    choices = _doc_choices(task, doc)
    target = _mc_target(task, doc)
    if task.scorer_args.get("allow_open") and target not in choices:
        # An open-ended row (RealWorldQA mixes them in): normalised exact match.
        parsed = _open_norm(response)
        return {"score": 1.0 if parsed == _open_norm(str(doc["target"])) else 0.0, "parsed": parsed}
    if task.scorer_args.get("extractor", "vlmevalkit") == "mme_realworld":
        parsed = mme_realworld_extract(response) or None
    else:
        parsed = extract_choice(response, choices)
    return {"score": 1.0 if parsed is not None and parsed == target else 0.0, "parsed": parsed}


def _mc_scorer(name, aggregate, required=(), description="", produces=()):
    return _register(Scorer(name, _mc_doc, aggregate, required_fields=required, check=_mc_check, description=description,
                            produces=produces))


_mc_scorer("mc_accuracy", lambda t, d, r: {"accuracy": _mean(x["score"] for x in r)},
           description="multiple choice accuracy", produces=("accuracy",))


def _vstar_agg(task, docs, records):
    out = {"overall": _mean(r["score"] for r in records)}
    by_cat = defaultdict(list)
    for doc, rec in zip(docs, records):
        by_cat[str(task.field_value(doc, "category"))].append(rec["score"])
    for cat in task.scorer_args.get("categories", ["direct_attributes", "relative_position"]):
        if by_cat.get(cat):
            out[cat] = _mean(by_cat[cat])
    return out


_mc_scorer("vstar", _vstar_agg, required=("category",), description="V* Bench: overall and per category",
           produces=lambda t: ("overall", *t.scorer_args.get("categories", ["direct_attributes", "relative_position"])))


def _mmstar_agg(task, docs, records):
    by_cat = defaultdict(list)
    for doc, rec in zip(docs, records):
        by_cat[str(task.field_value(doc, "category"))].append(rec["score"])
    return {
        "accuracy": _mean(r["score"] for r in records),
        "macro": _mean(_mean(v) for v in by_cat.values()),
    }


_mc_scorer("mmstar", _mmstar_agg, required=("category",), description="MMStar: micro and macro over categories",
           produces=("accuracy", "macro"))


def _index_of(task, doc) -> int:
    v = task.field_value(doc, "index")
    try:
        return int(float(v)) if isinstance(v, str) and "." in v else int(v)
    except (TypeError, ValueError):
        raise ValueError(f"{doc['source']}: field {task.field_name('index', 'index')!r} is not an integer: {v!r}") from None


def _circular_agg(task, docs, records):
    base = int(task.scorer_args.get("circular_base", 1_000_000))
    groups = defaultdict(list)
    for doc, rec in zip(docs, records):
        groups[_index_of(task, doc) % base].append(rec["score"])
    return {"circular_accuracy": _mean(1.0 if all(s == 1.0 for s in g) else 0.0 for g in groups.values())}


_mc_scorer("mmbench_circular", _circular_agg, required=("index",),
           description="MMBench CircularEval: a question counts when all its rotations are right",
           produces=("circular_accuracy",))


def _hrbench_agg(task, docs, records):
    per = {}
    for cat in ("single", "cross"):
        value = str(task.scorer_args.get(f"{cat}_value", cat))
        cycles = defaultdict(list)
        for doc, rec in zip(docs, records):
            if str(task.field_value(doc, "category")) == value:
                cycles[str(task.field_value(doc, "cycle"))].append(rec["score"])
        if cycles:
            per[cat] = _mean(_mean(v) for v in cycles.values())
    if per:
        per["average"] = _mean(per.values())
    return per


_mc_scorer("hrbench", _hrbench_agg, required=("category", "cycle"),
           description="HR-Bench: accuracy per cycle averaged over cycles; single, cross, their mean",
           produces=("single", "cross", "average"))


# ---------------------------------------------------------------------------------------- MathVista

_MV_ROLES = ("question_type", "answer_type", "choices", "precision")


def _mathvista_fields(task, doc) -> dict:
    f = {role: task.field_value(doc, role, None) for role in _MV_ROLES}
    f["answer"] = doc["target"]
    return f


def _mathvista_check(task, doc):
    f = _mathvista_fields(task, doc)
    if f["question_type"] not in ("multi_choice", "free_form"):
        raise ValueError(f"{doc['source']}: question_type must be multi_choice or free_form, got {f['question_type']!r}")
    if f["question_type"] == "multi_choice" and not f["choices"]:
        raise ValueError(f"{doc['source']}: a multi_choice question without choices")


def _mathvista_doc(task, doc, response):
    ok, extraction, pred = mathvista_correct(response.strip(), _mathvista_fields(task, doc))
    return {"score": 1.0 if ok else 0.0, "parsed": pred, "extraction": extraction}


_register(Scorer("mathvista", _mathvista_doc, lambda t, d, r: {"accuracy": _mean(x["score"] for x in r)},
                 required_fields=("question_type", "answer_type"), check=_mathvista_check,
                 description="MathVista: rule extraction, normalisation by type and precision, exact match",
                 produces=("accuracy",)))


# --------------------------------------------------------------------------------------------- zoom

_PUNCT_EDGES = " \t\n\r.,;:!?\"'`()[]{}"


def _final_answer(task, response: str) -> str:
    """With ``answer_tag`` (default), the answer the training reward reads (the last
    <answer>...</answer>, else the last \\boxed{}); else, or when there is none, the whole response."""
    if task.scorer_args.get("answer_tag", True):
        from vlmrl.rewards.extract import extract_answer

        found = extract_answer(response)
        if found is not None:
            return found.strip()
    return response.strip()


def _number(text: str) -> float | None:
    """The last number in text (the training reward's number grammar; a percent sign is ignored)."""
    found = parse_number(text, when_several="last")
    return None if found is None else found[0]


def normalize_word(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(_PUNCT_EDGES)


def _zoom_target_letter(doc) -> str | None:
    choices = doc.get("choices") or {}
    t = str(doc["target"]).strip()
    letter = normalize_letter(t)
    if letter in choices and (len(t) <= 3):
        return letter
    for k, v in choices.items():
        if normalize_word(v) == normalize_word(t):
            return k
    return None


def _zoom_check(task, doc):
    at = task.field_value(doc, "answer_type")
    if at not in ("choice", "number", "word"):
        raise ValueError(f"{doc['source']}: answer_type must be choice, number or word, got {at!r}")
    if at == "choice":
        if not doc.get("choices"):
            raise ValueError(f"{doc['source']}: answer_type is choice but the row has no choices")
        if _zoom_target_letter(doc) is None:
            raise ValueError(f"{doc['source']}: answer {doc['target']!r} is neither an option letter nor an option text")
    if at == "number" and _number(str(doc["target"])) is None:
        raise ValueError(f"{doc['source']}: answer_type is number but the answer {doc['target']!r} is not a number")


def _zoom_doc(task, doc, response):
    at = task.field_value(doc, "answer_type")
    ans = _final_answer(task, response)
    needs_zoom = bool(task.field_value(doc, "needs_zoom"))
    if at == "choice":
        parsed = extract_choice(ans, doc["choices"])
        ok = parsed is not None and parsed == _zoom_target_letter(doc)
    elif at == "number":
        parsed = _number(ans)
        target = _number(str(doc["target"]))
        ok = parsed is not None and math.isclose(parsed, target, rel_tol=1e-9, abs_tol=1e-9)
    else:
        parsed = normalize_word(ans)
        ok = parsed == normalize_word(doc["target"])
    return {"score": 1.0 if ok else 0.0, "parsed": parsed, "needs_zoom": needs_zoom}


def _zoom_agg(task, docs, records):
    out = {"accuracy": _mean(r["score"] for r in records)}
    zoom = [r["score"] for r in records if r["needs_zoom"]]
    no_zoom = [r["score"] for r in records if not r["needs_zoom"]]
    if zoom:
        out["accuracy_zoom"] = _mean(zoom)
    if no_zoom:
        out["accuracy_no_zoom"] = _mean(no_zoom)
    return out


_register(Scorer("zoom", _zoom_doc, _zoom_agg, required_fields=("answer_type", "needs_zoom"), check=_zoom_check,
                 description="vlmrl synthetic zoom task: choice letter, numeric equality, normalised word",
                 produces=("accuracy", "accuracy_zoom", "accuracy_no_zoom")))



# -------------------------------------------------------------------------------------- exact match
# A generic scorer for a user's own task: the answer (the last <answer>...</answer> or \boxed{} when
# present, else the whole response) against the target, by the row's answer type:
#   choice  the option letter read as for multiple choice (a target may be a letter or an option's text)
#   number  the last number in the answer equals the target within rel_tol / abs_tol (scorer_args);
#           a number word ("seven") counts as its number
#   word    normalised words: lower case, articles (a, an, the) and punctuation dropped, spaces collapsed
# The type comes from the row's answer_type field (``fields: {answer_type: COLUMN}``) when the row has
# one, else it is inferred: choice when the row has options, number when the target parses as one,
# else word. A target may be a list of acceptable answers (any one counts).

_ANSWER_TYPES = ("choice", "number", "word")
_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {w: float(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}


def normalize_words(text: str) -> str:
    """Lower case, punctuation removed (a decimal point or sign inside a number is kept), articles
    dropped, whitespace collapsed."""
    t = str(text).lower()
    t = re.sub(r"(?<!\d)[.,](?!\d)|[;:!?\"'`()\[\]{}]", " ", t)
    return " ".join(w for w in t.split() if w not in _ARTICLES)


def _number_or_word(text: str) -> float | None:
    n = _number(text)
    if n is not None:
        return n
    words = normalize_words(text).split()
    return _NUMBER_WORDS.get(words[-1]) if words else None


def _is_number_text(text: str) -> bool:
    """The whole target is one number ("7", "-2.5", "1,000")."""
    try:
        float(str(text).strip().replace(",", ""))
    except ValueError:
        return False
    return True


def _em_type(task, doc) -> str:
    at = task.field_value(doc, "answer_type", None)
    if at is not None and at != "":
        if at not in _ANSWER_TYPES:
            raise ValueError(f"{doc['source']}: answer_type must be one of {_ANSWER_TYPES}, got {at!r}")
        return at
    if doc.get("choices"):
        return "choice"
    targets = _answers(doc["target"])
    if targets and all(_is_number_text(t) for t in targets):
        return "number"
    return "word"


def _em_check(task, doc):
    at = _em_type(task, doc)
    targets = _answers(doc["target"])
    if not targets:
        raise ValueError(f"{doc['source']}: no target answer")
    if at == "choice":
        if not doc.get("choices"):
            raise ValueError(f"{doc['source']}: answer_type is choice but the row has no options")
        if _zoom_target_letter({**doc, "target": targets[0]}) is None:
            raise ValueError(f"{doc['source']}: answer {doc['target']!r} is neither an option letter nor an option text")
    if at == "number" and any(_number(t) is None for t in targets):
        raise ValueError(f"{doc['source']}: answer_type is number but the answer {doc['target']!r} is not a number")


def _em_doc(task, doc, response):
    at = _em_type(task, doc)
    ans = _final_answer(task, response)
    targets = _answers(doc["target"])
    if at == "choice":  # the training reward's rule (a letter alone, "Answer: B", "B) ...", or one option's text)
        letters = list(doc["choices"])
        picked = parse_choice(ans, [doc["choices"][k] for k in letters])
        parsed = letters[ord(picked) - ord("A")] if picked is not None else None
        ok = parsed is not None and any(parsed == _zoom_target_letter({**doc, "target": t}) for t in targets)
    elif at == "number":
        parsed = _number_or_word(ans)
        rel = float(task.scorer_args.get("rel_tol", 1e-6))
        abs_ = float(task.scorer_args.get("abs_tol", 1e-6))
        ok = parsed is not None and any(math.isclose(parsed, _number(t), rel_tol=rel, abs_tol=abs_) for t in targets)
    else:
        parsed = normalize_words(ans)
        ok = any(parsed == normalize_words(t) for t in targets)
    return {"score": 1.0 if ok else 0.0, "parsed": parsed, "answer_type": at}


def _em_agg(task, docs, records):
    out = {"accuracy": _mean(r["score"] for r in records)}
    for at in _ANSWER_TYPES:
        scores = [r["score"] for r in records if r["answer_type"] == at]
        if scores:
            out[f"accuracy_{at}"] = _mean(scores)
    return out


_register(Scorer("exact_match", _em_doc, _em_agg, check=_em_check,
                 description="generic exact match for your own task: choice letter, number with tolerance, normalised words",
                 produces=("accuracy", *(f"accuracy_{t}" for t in _ANSWER_TYPES))))
