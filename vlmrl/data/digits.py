"""Real images offline: scikit-learn's bundled handwritten digits as VQA (``vlmrl make-data digits``).

The source is the 1797 8x8 grey scans (values 0-16) of the UCI "optdigits" test set that scikit-learn ships
as ``sklearn/datasets/data/digits.csv.gz`` (64 pixel values and the label per line). Nothing is downloaded at
run time: the file is read from the installed scikit-learn (found without importing it), from a scikit-learn
wheel (``pip download scikit-learn --no-deps`` gives one; the wheel is read as a zip, nothing installed), or
from the csv.gz itself (``--source``).

Each image is drawn as dark ink on white, upscaled (bicubic) to ``image_size`` pixels per side (default 112:
16 visual tokens for Qwen2/2.5-VL; an 8x8 image would be 1) and asked one question of one of these kinds
(assigned in turn; by default ``digit`` and ``parity``: :data:`DEFAULT_KINDS`):

==========  ====================================================  ===========  =================
kind        question                                              answer_type  answer
==========  ====================================================  ===========  =================
digit       Which digit (0-9) is written in the image?            number       "7"
parity      Is the digit written in the image even or odd?        word         "odd"
greater     Is the digit written in the image greater than K?     choice       "A" (yes) | "B" (no)
==========  ====================================================  ===========  =================

``greater`` is asked only when named (``--categories digit,parity,greater``): with the quickstart's small model
RL lowered it on every seed and warm start tried (the answers collapse onto one option, or the yes/no boundary
moves from one set of digits to another: README "Real images"), which hid the gain on the other kinds.

The answers are balanced within each split (:func:`plan_split`, deterministic from the seed): "greater" picks
each row's target answer so that yes and no stay as equal as the labels allow (a 0 is never greater and a 9
always is; K is then drawn from 0-8 to give that answer), and "parity" takes, where the image in turn has the
parity already in excess, the next image of the other parity in its place (images move within their split
only). The test split is the first ``n_test`` images of a seeded shuffle and the
train split the next ``n``, so train and test never share an image, and a larger ``n`` keeps the same test
set. Rows are vlmrl's JSONL (``{"id", "images", "question", "answer", "answer_type", "choices"?, "meta"}``
with ``meta`` = ``{"category", "label", "source_index", "needs_zoom": false}``); ``eval/digits.yaml`` scores
them with the generic ``exact_match`` scorer.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import random
import zipfile
from pathlib import Path

from PIL import Image

from vlmrl.data.synthetic import dataset_dir

DIGITS_MEMBER = "sklearn/datasets/data/digits.csv.gz"
KINDS = ("digit", "parity", "greater")
DEFAULT_KINDS = ("digit", "parity")  # greater-than-K: see the module docstring
_QUESTIONS = {
    "digit": "Which digit (0-9) is written in the image?",
    "parity": "Is the digit written in the image even or odd?",
    "greater": "Is the digit written in the image greater than {k}?",
}
_ANSWER_TYPES = {"digit": "number", "parity": "word", "greater": "choice"}
K_MAX = 8  # "greater than K" asks K in 0-K_MAX


def find_source(source: str | Path | None = None) -> Path:
    """The digits file to read: ``source`` (a digits.csv.gz or a scikit-learn wheel), else the installed
    scikit-learn's copy. A clear FileNotFoundError says what to do when there is none."""
    if source is not None:
        p = Path(source).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"--source {p}: no such file (give digits.csv.gz or a scikit_learn-*.whl)")
        return p
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it (no scipy needed)
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "datasets" / "data" / "digits.csv.gz"
            if p.is_file():
                return p
    raise FileNotFoundError(
        "the digits need scikit-learn's bundled digits.csv.gz: `pip install scikit-learn`, or "
        "`pip download scikit-learn --no-deps -d DIR` and pass --source DIR/scikit_learn-*.whl (read as a zip, "
        "nothing installed), or pass --source path/to/digits.csv.gz")


def read_digits(source: str | Path) -> tuple[list[tuple[list[int], int]], str]:
    """[(64 pixel values 0-16, label 0-9)] in file order, and the sha256 of the csv.gz bytes. Bad lines are
    errors naming the file and line."""
    p = Path(source)
    if p.suffix == ".whl":
        try:
            with zipfile.ZipFile(p) as z:
                raw = z.read(DIGITS_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise ValueError(f"{p}: not a scikit-learn wheel holding {DIGITS_MEMBER} ({e})") from None
        where = f"{p}!{DIGITS_MEMBER}"
    else:
        raw = p.read_bytes()
        where = str(p)
    try:
        text = gzip.decompress(raw).decode("ascii") if raw[:2] == b"\x1f\x8b" else raw.decode("ascii")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"{where}: cannot read as (gzipped) CSV text ({e})") from None
    out = []
    for i, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        cells = line.strip().split(",")
        try:
            values = [int(float(c)) for c in cells]
        except ValueError:
            raise ValueError(f"{where}, line {i}: not numbers: {line.strip()[:60]!r}") from None
        if len(values) != 65:
            raise ValueError(f"{where}, line {i}: expected 64 pixels and a label (65 values), got {len(values)}")
        pixels, label = values[:64], values[64]
        if not 0 <= label <= 9 or any(not 0 <= v <= 16 for v in pixels):
            raise ValueError(f"{where}, line {i}: label must be 0-9 and pixels 0-16")
        out.append((pixels, label))
    if not out:
        raise ValueError(f"{where}: no digits")
    return out, hashlib.sha256(raw).hexdigest()


def digit_image(pixels: list[int], size: int) -> Image.Image:
    """An 8x8 scan as an RGB image of ``size`` x ``size``: dark ink (16) on white (0), bicubic upscaling."""
    small = Image.new("L", (8, 8))
    small.putdata([255 - round(v * 255 / 16) for v in pixels])
    return small.resize((size, size), Image.BICUBIC).convert("RGB")


def digit_row(kind: str, label: int, k: int | None = None) -> dict:
    """question, answer, answer_type (and choices) of one row of ``kind`` about a digit ``label`` (``k``: the K
    of a "greater" question, 0-8)."""
    if kind == "digit":
        return {"question": _QUESTIONS[kind], "answer": str(label), "answer_type": "number"}
    if kind == "parity":
        return {"question": _QUESTIONS[kind], "answer": "even" if label % 2 == 0 else "odd", "answer_type": "word"}
    if kind == "greater":
        if k is None or not 0 <= k <= K_MAX:
            raise ValueError(f"a greater-than question needs K in 0-{K_MAX}, got {k!r}")
        return {"question": _QUESTIONS[kind].format(k=k), "answer": "A" if label > k else "B",
                "answer_type": "choice", "choices": ["yes", "no"]}
    raise ValueError(f"unknown question kind {kind!r}; kinds: {', '.join(KINDS)}")


def _balance_parity(items: list[tuple[int, int]], slots: list[str]) -> list[tuple[int, int]]:
    """``items`` ((source index, label) in split order) reordered so that the "parity" slots hold evens and odds
    as equally as the split's images allow: at a parity slot whose image has the parity already in excess, the
    next image of the other parity swaps places with it (else the nearest earlier one on a slot of another kind;
    else, none being left, it stays)."""
    items = list(items)
    excess = 0  # evens minus odds asked so far
    for i, kind in enumerate(slots):
        if kind != "parity":
            continue
        if excess:
            want_even = excess < 0
            if (items[i][1] % 2 == 0) != want_even:
                later = (j for j in range(i + 1, len(items)) if (items[j][1] % 2 == 0) == want_even)
                earlier = (j for j in range(i - 1, -1, -1)
                           if slots[j] != "parity" and (items[j][1] % 2 == 0) == want_even)
                j = next(later, None)
                j = next(earlier, None) if j is None else j
                if j is not None:
                    items[i], items[j] = items[j], items[i]
        excess += 1 if items[i][1] % 2 == 0 else -1
    return items


def _greater_ks(labels: list[int], rng: random.Random) -> list[int]:
    """A K (0-8) per "greater" question about ``labels`` (in order) so that yes and no are as equal as the labels
    allow. A free row (label 1-8) answers whichever of yes/no the split is projected to lack (the answers so far
    plus the forced ones still to come: a 9 is always yes, a 0 always no), so a prefix is off balance by at most
    the forced rows' imbalance still to come; on a tie K is drawn uniformly and the answer follows. K is uniform
    over the values giving the answer."""
    forced = [1 if lab > K_MAX else -1 if lab == 0 else 0 for lab in labels]
    ahead = sum(forced)  # yes minus no of the forced rows not yet placed
    excess, ks = 0, []  # yes minus no so far
    for lab, f in zip(labels, forced):
        ahead -= f
        projected = excess + ahead
        if f:
            yes = f > 0
        elif projected:
            yes = projected < 0
        else:
            yes = lab > rng.randint(0, K_MAX)
        k = rng.randint(0, lab - 1) if yes else rng.randint(lab, K_MAX)
        ks.append(k)
        excess += 1 if yes else -1
    return ks


def plan_split(items: list[tuple[int, int]], kinds: tuple[str, ...], rng: random.Random
               ) -> list[tuple[int, int, str, int | None]]:
    """The rows of one split: ``items`` ((source index, label) in split order) -> [(source index, label, kind,
    K or None)]. Kinds are asked in turn; the parity and greater-than answers are balanced (module docstring)."""
    slots = [kinds[i % len(kinds)] for i in range(len(items))]
    items = _balance_parity(items, slots)
    ks = iter(_greater_ks([lab for (_, lab), kind in zip(items, slots) if kind == "greater"], rng))
    return [(idx, lab, kind, next(ks) if kind == "greater" else None) for (idx, lab), kind in zip(items, slots)]


SFT_OTHER_EVERY = 50  # sft.jsonl: every "digit" row, and one in this many rows of each other kind


def sft_rows(lines: list[str]) -> list[str]:
    """The warm start's rows (``sft.jsonl``), a subset of the train split's JSONL lines: every "which digit" row
    (reading the digit is the skill a short warm start can teach) and every SFT_OTHER_EVERY-th row of each other
    kind (enough to learn how their answers look, not enough to answer them well). RL then trains on the whole
    split, where the even/odd questions ask the model to reason about the digit it reads. (One in five gave warm
    starts already at 84-94% even/odd, leaving RL little to raise; one in 25, 79% on seed 0: +3.0 after RL.)"""
    seen: dict[str, int] = {}
    out = []
    for line in lines:
        kind = json.loads(line)["meta"]["category"]
        seen[kind] = seen.get(kind, 0) + 1
        if kind == "digit" or seen[kind] % SFT_OTHER_EVERY == 0:
            out.append(line)
    return out


def make_digits_dataset(out_dir: str | Path, n: int = 600, n_test: int = 200, seed: int = 0,
                        kinds: tuple[str, ...] = DEFAULT_KINDS, image_size: int = 112, source: str | Path | None = None,
                        *, overwrite: bool = False) -> dict:
    """Write ``train.jsonl``, ``test.jsonl``, ``sft.jsonl`` (:func:`sft_rows` of the train split), ``images/``
    and ``info.json`` under ``out_dir``; returns the info dict (source, sha256, arguments, per-split counts by
    kind and answer, and the sft rows per kind)."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"question kinds {bad or '(none)'} unknown; choose from {', '.join(KINDS)}")
    if image_size < 8:
        raise ValueError(f"--image-size must be >= 8 (the scans are 8x8), got {image_size}")
    src = find_source(source)
    digits, sha = read_digits(src)
    if n < 0 or n_test < 0 or n + n_test > len(digits):
        raise ValueError(f"n={n} train + n_test={n_test} test images must be >= 0 and fit the {len(digits)} digits")
    out = dataset_dir(out_dir, overwrite)
    order = list(range(len(digits)))
    random.Random(seed).shuffle(order)
    splits = {"test": order[:n_test], "train": order[n_test:n_test + n]}
    counts = {}
    for split in ("train", "test"):
        rng = random.Random(f"{seed}-{split}")
        lines, by_kind = [], {k: {} for k in kinds}
        plan = plan_split([(idx, digits[idx][1]) for idx in splits[split]], kinds, rng)
        for i, (idx, label, kind, k) in enumerate(plan):
            rel = f"images/digit-{idx:04d}.png"
            if not (out / rel).exists() or overwrite:
                digit_image(digits[idx][0], image_size).save(out / rel, format="PNG")
            row = {"id": f"digits-{split}-{i:05d}", "images": [rel], **digit_row(kind, label, k),
                   "meta": {"category": kind, "label": label, "source_index": idx, "needs_zoom": False}}
            lines.append(json.dumps(row) + "\n")
            by_kind[kind][row["answer"]] = by_kind[kind].get(row["answer"], 0) + 1
        (out / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
        counts[split] = {k: dict(sorted(v.items())) for k, v in by_kind.items()}
        if split == "train":
            sft = sft_rows(lines)
            (out / "sft.jsonl").write_text("".join(sft), encoding="utf-8")
            counts["sft"] = {k: sum(json.loads(x)["meta"]["category"] == k for x in sft) for k in kinds}
    info = {"task": "digits", "source": str(src), "source_sha256": sha, "seed": seed, "n": n, "n_test": n_test,
            "image_size": [image_size, image_size], "kinds": list(kinds), "counts": counts}
    (out / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return info
