"""The synthetic zoom task: determinism, the CLI, the row schema, and a measured check that the tag
symbol is lost at half resolution while the large shapes stay readable."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vlmrl.cli import main
from vlmrl.data import load_dataset
from vlmrl.data.synthetic import (
    CATEGORIES,
    DEFAULT_CATEGORIES,
    COLORS,
    DIGITS,
    EMBOSS_AMPLITUDE,
    EMBOSS_KERNEL,
    GLYPHS,
    LETTERS,
    SHAPES,
    TAG_MARGIN,
    Shape,
    ZoomConfig,
    ZoomScene,
    half_view,
    make_zoom_dataset,
    make_zoom_sample,
    render_scene,
)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_bytes_different_seed_differs(tmp_path):
    make_zoom_dataset(tmp_path / "a", n=16, n_test=6, seed=3)
    make_zoom_dataset(tmp_path / "b", n=16, n_test=6, seed=3)
    make_zoom_dataset(tmp_path / "c", n=16, n_test=6, seed=4)
    a, b, c = (tree_digest(tmp_path / x) for x in "abc")
    assert len(a) == 16 + 6 + 3  # PNGs + train.jsonl + test.jsonl + info.json
    assert a == b
    assert a["train.jsonl"] != c["train.jsonl"]
    assert a["images/train-000000.png"] != c["images/train-000000.png"]
    # train and test are different draws
    assert a["images/train-000000.png"] != a["images/test-000000.png"]


def test_cli_make_data(tmp_path, capsys):
    out = tmp_path / "zoom"
    assert main(["make-data", "zoom", "--out", str(out), "--n", "8", "--n-test", "3", "--seed", "1",
                 "--image-size", "224"]) == 0
    assert (out / "train.jsonl").is_file() and (out / "test.jsonl").is_file()
    assert len(list((out / "images").glob("*.png"))) == 11
    info = json.loads((out / "info.json").read_text())
    assert info["seed"] == 1 and sum(info["counts"]["train"].values()) == 8
    assert main(["make-data", "zoom", "--out", str(out)]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["make-data", "zoom", "--out", str(out), "--n", "2", "--n-test", "0", "--overwrite"]) == 0
    assert main(["make-data", "pets", "--out", str(tmp_path / "x")]) == 2
    assert "unknown task kind 'pets'; available: zoom" in capsys.readouterr().err
    assert main(["make-data", "zoom", "--out", str(tmp_path / "y"), "--image-size", "225"]) == 2
    assert "even" in capsys.readouterr().err
    assert main(["make-data", "zoom", "--out", str(tmp_path / "y"), "--categories", "big_color,nope"]) == 2


def test_rows_schema_and_loader(tmp_path):
    make_zoom_dataset(tmp_path, n=60, n_test=10, seed=0)
    ds = load_dataset(tmp_path)
    assert len(ds) == 60 and ds.format == "vlmrl" and len(load_dataset(tmp_path, split="test")) == 10
    seen = set()
    for s in ds:
        m = s.meta
        seen.add(m["category"])
        needs_zoom, answer_type, question = CATEGORIES[m["category"]]
        assert (m["needs_zoom"], s.answer_type, s.question) == (needs_zoom, answer_type, question)
        assert s.images[0].size == (224, 224)
        assert m["gt_boxes"] and all(len(b) == 4 and 0 <= b[0] < b[2] <= 224 and 0 <= b[1] < b[3] <= 224
                                     for b in m["gt_boxes"])
        if needs_zoom:
            assert m["gt_boxes"] == [m["tag_box"]]
        if answer_type == "choice":
            assert len(s.choices) == 4 and s.answer in "ABCD"
        elif answer_type == "number":
            assert s.answer.isdigit()
    assert seen == set(DEFAULT_CATEGORIES)
    with pytest.raises(ValueError, match="even"):
        ZoomConfig(image_size=(223, 224))


# --------------------------------------------------------------------------------------------- measured check


def _crop(image, box, scale=1):
    x1, y1, x2, y2 = box
    m = 2  # a little context around the box
    return np.asarray(image.crop((x1 // scale - m, y1 // scale - m, -(-x2 // scale) + m, -(-y2 // scale) + m)),
                      dtype=np.float64)


def template_reader(image, scene: ZoomScene, candidates, *, half: bool, rng: random.Random) -> str:
    """Nearest template with full knowledge of the scene: the templates are the same scene rendered with
    each candidate symbol (at the resolution being read), compared on the tag region. Ties are broken at
    random."""
    view = (lambda im: half_view(im)) if half else (lambda im: im)
    scale = 2 if half else 1
    probe = _crop(view(image), scene.tag_box, scale)
    dists = [float(((probe - _crop(view(render_scene(replace(scene, symbol=c))), scene.tag_box, scale)) ** 2).sum())
             for c in candidates]
    best = min(dists)
    return rng.choice([c for c, d in zip(candidates, dists) if d == best])


def blind_reader(image, scene: ZoomScene) -> str | None:
    """Reads the 3x5 bitmap from the full-resolution tag crop without templates (demodulates the emboss
    pattern, or thresholds a solid glyph)."""
    crop = np.asarray(image.crop(scene.tag_box), dtype=np.int64)[..., 0]
    bits = []
    for r in range(5):
        row = ""
        for q in range(3):
            if scene.style == "emboss":
                seg = crop[TAG_MARGIN + 2 * r, TAG_MARGIN + 4 * q: TAG_MARGIN + 4 * q + 4] - 128
                row += "1" if seg @ np.asarray(EMBOSS_KERNEL) > 10 * EMBOSS_AMPLITUDE else "0"
            else:
                row += "1" if crop[TAG_MARGIN + r, TAG_MARGIN + q] < 128 else "0"
        bits.append(row)
    return next((k for k, g in GLYPHS.items() if list(g) == bits), None)


def _tag_accuracies(style: str, n: int = 120):
    cfg = ZoomConfig(detail_style=style, zoom_fraction=1.0)
    rng = random.Random(0)
    hits = {"full": 0, "blind": 0, "half": 0}
    identical_half = 0
    for i in range(n):
        image, row = make_zoom_sample(7, i, "check", cfg)
        scene = ZoomScene.from_dict(row["meta"]["scene"])
        cands = LETTERS if row["meta"]["category"] == "tag_letter" else DIGITS
        truth = scene.symbol
        hits["full"] += template_reader(image, scene, cands, half=False, rng=rng) == truth
        hits["blind"] += blind_reader(image, scene) == truth
        hits["half"] += template_reader(image, scene, cands, half=True, rng=rng) == truth
        halves = {half_view(render_scene(replace(scene, symbol=c))).tobytes() for c in cands}
        identical_half += len(halves) == 1
    return {k: v / n for k, v in hits.items()}, identical_half / n


def test_tag_symbol_is_lost_at_half_resolution():
    acc, identical = _tag_accuracies("emboss")
    # Full resolution: both readers are perfect.
    assert acc["full"] == 1.0 and acc["blind"] == 1.0
    # Half resolution: the renderings with every candidate symbol are byte-identical, so even a reader
    # that knows the whole scene is at chance (1/10 digits, 1/8 letters).
    assert identical == 1.0
    assert acc["half"] <= 0.25, acc


def test_solid_glyph_control_is_only_blurred():
    # Control: the same half-resolution reader does read a plain 3x5 glyph, so the erasure above comes
    # from the emboss design, not from a weak reader.
    acc, identical = _tag_accuracies("solid", n=60)
    assert acc["full"] == 1.0 and acc["blind"] == 1.0
    assert identical == 0.0 and acc["half"] >= 0.9, acc


def test_large_objects_readable_at_half_resolution():
    cfg = ZoomConfig(zoom_fraction=0.0)
    rng = random.Random(0)
    hits, total = {"big_color": 0, "big_shape": 0, "big_count": 0}, {"big_color": 0, "big_shape": 0, "big_count": 0}
    palette = {name: np.asarray(rgb, dtype=np.float64) for name, rgb in COLORS.items()}
    for i in range(90):
        image, row = make_zoom_sample(11, i, "check", cfg)
        scene = ZoomScene.from_dict(row["meta"]["scene"])
        cat = row["meta"]["category"]
        total[cat] += 1
        half = half_view(image)
        if cat == "big_color":  # nearest palette colour at the centre of the half-resolution box
            x1, y1, x2, y2 = (v // 2 for v in scene.shapes[0].box)
            c = np.median(np.asarray(half, dtype=np.float64)[(y1 + y2) // 2 - 1:(y1 + y2) // 2 + 2,
                                                          (x1 + x2) // 2 - 1:(x1 + x2) // 2 + 2].reshape(-1, 3), 0)
            pred = min(palette, key=lambda k: ((palette[k] - c) ** 2).sum())
            hits[cat] += pred == row["answer"]
        elif cat == "big_shape":  # the same nearest-template reader as for the tag, on the shape's box
            s0 = scene.shapes[0]
            probe = _crop(half, s0.box, 2)
            d = {k: ((probe - _crop(half_view(render_scene(replace(scene, shapes=(Shape(k, s0.color, s0.box),)))),
                                    s0.box, 2)) ** 2).sum() for k in SHAPES}
            pred = "ABCD"[row["choices"].index(min(d, key=d.get))]
            hits[cat] += pred == row["answer"]
        else:  # count saturated blobs in the half-resolution view
            a = np.asarray(half, dtype=np.int64)
            mask = (a.max(-1) - a.min(-1)) > 80
            seen = np.zeros_like(mask)
            blobs = 0
            for y, x in zip(*np.nonzero(mask)):
                if seen[y, x]:
                    continue
                stack, size = [(y, x)], 0
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    size += 1
                    for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                        if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
                blobs += size >= 20
            hits[cat] += str(blobs) == row["answer"]
    for cat in hits:
        assert total[cat] >= 15, total
        assert hits[cat] / total[cat] == 1.0, (cat, hits, total)
