"""Dataset loaders: file types, image storage kinds, directories and splits, row-level errors and skipping
(the row formats themselves: test_data_formats.py)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmrl.data import DataError, Sample, VQADataset, load_dataset
from vlmrl.data.loaders import find_data_files

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def png(color, size=(6, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def b64(color) -> str:
    return base64.b64encode(png(color)).decode()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def jsonable(rows):
    """Rows with struct bytes turned into base64 text (for JSON files)."""
    out = []
    for r in rows:
        r = dict(r)
        r["images"] = [dict(i, bytes=base64.b64encode(i["bytes"]).decode()) if isinstance(i, dict) else i
                       for i in r["images"]]
        out.append(r)
    return out


@pytest.fixture
def root(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "blue.png").write_bytes(png(BLUE))
    return tmp_path


def native_rows():
    return [
        {"id": "s0", "images": [{"bytes": png(RED), "path": "red.png"}], "question": "What color?", "answer": "red",
         "answer_type": "word", "meta": {"gt_boxes": [[0, 0, 2, 2]], "category": "color"}},
        {"id": "s1", "images": [b64(GREEN)], "question": "How many?", "answer": 3},
        {"id": "s2", "images": ["img/blue.png"], "question": "Which one?", "answer": "B", "choices": ["x", "y"]},
    ]


def check_native(ds: VQADataset):
    assert len(ds) == 3
    s0, s1, s2 = list(ds)
    assert isinstance(s0, Sample)
    assert s0.images[0].getpixel((0, 0)) == RED and s0.images[0].mode == "RGB"
    assert s1.images[0].getpixel((0, 0)) == GREEN
    assert s2.images[0].getpixel((0, 0)) == BLUE
    assert (s0.answer, s0.answer_type, s0.meta["gt_boxes"], s0.gt_boxes) == ("red", "word", [[0, 0, 2, 2]], [[0, 0, 2, 2]])
    assert (s1.answer, s1.answer_type) == ("3", "number")
    assert (s2.answer, s2.answer_type, s2.choices) == ("B", "choice", ["x", "y"])
    assert s2.id == "s2" and s2.row == 2 and s2.source.endswith(ds.files[0].name)


def test_jsonl_all_storage_kinds(root):
    check_native(load_dataset(write_jsonl(root / "data.jsonl", jsonable(native_rows()))))


def test_json_list_and_data_key(root):
    (root / "a.json").write_text(json.dumps(jsonable(native_rows())))
    check_native(load_dataset(root / "a.json"))
    (root / "b.json").write_text(json.dumps({"data": jsonable(native_rows())}))
    check_native(load_dataset(root / "b.json"))


def test_parquet_hf_image_struct_lazy(root):
    rows = native_rows()
    img_type = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    images = [[r["images"][0]] if isinstance(r["images"][0], dict) else
              [{"bytes": base64.b64decode(r["images"][0]), "path": None}] if r["id"] == "s1" else
              [{"bytes": None, "path": r["images"][0]}] for r in rows]
    table = pa.table({
        "id": [r["id"] for r in rows],
        "images": pa.array(images, type=img_type),
        "question": [r["question"] for r in rows],
        "answer": [str(r["answer"]) for r in rows],
        "choices": [r.get("choices") for r in rows],
        "answer_type": [r.get("answer_type") for r in rows],
        "meta": [json.dumps(r["meta"]) if "meta" in r else None for r in rows],  # meta as JSON text
    })
    pq.write_table(table, root / "train.parquet")
    ds = load_dataset(root)  # a directory: data.* then train.*
    assert ds.files == [root / "train.parquet"]
    check_native(ds)
    raw = ds.get(0, decode=False)
    assert raw.images[0]["path"] == "red.png"


def test_parquet_written_by_hf_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = datasets.Dataset.from_dict({"prompt": ["What is shown?"], "image": [Image.new("RGB", (5, 5), GREEN)],
                                    "solution": ["green"]})
    d = d.cast_column("image", datasets.Image())
    d.to_parquet(str(tmp_path / "test.parquet"))
    ds = load_dataset(tmp_path, split="test")
    assert ds.format == "trl"
    s = ds[0]
    assert s.images[0].getpixel((2, 2)) == GREEN and s.question == "What is shown?" and s.answer == "green"


def test_tsv_base64_path_and_option_columns(root):
    with open(root / "bench.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "image", "question", "A", "B", "C", "answer", "meta"])
        w.writerow([7, b64(RED), "Which color?", "red", "green", "", "A", '{"category": "c"}'])
        w.writerow([8, "img/blue.png", "How many?", "", "", "", "2", ""])
        w.writerow([9, json.dumps(["img/blue.png", b64(GREEN)]), "Compare <image> and <image>", "", "", "", "yes", ""])
    a, b, c = load_dataset(root / "bench.tsv")
    assert a.id == "7" and a.images[0].getpixel((0, 0)) == RED
    assert (a.choices, a.answer, a.answer_type, a.meta["category"]) == (["red", "green"], "A", "choice", "c")
    assert (b.images[0].getpixel((0, 0)), b.answer_type, b.choices) == (BLUE, "number", None)
    assert len(c.images) == 2 and c.question == "Compare and"


# --------------------------------------------------------------------------------------------- adapters


def test_directory_and_split_resolution(root):
    write_jsonl(root / "train.jsonl", [{"question": "t", "images": [], "answer": "a"}])
    write_jsonl(root / "test.jsonl", [{"question": "v", "images": [], "answer": "b"}])
    assert load_dataset(root)[0].question == "t"
    assert load_dataset(root, split="test")[0].question == "v"
    with pytest.raises(FileNotFoundError, match="validation.jsonl"):
        load_dataset(root, split="validation")
    with pytest.raises(FileNotFoundError):
        load_dataset(root / "nope")
    (root / "data").mkdir()
    pq.write_table(pa.table({"question": ["s"], "answer": ["c"], "images": pa.array([[]], pa.list_(pa.string()))}),
                   root / "data" / "val-00000-of-00001.parquet")
    assert find_data_files(root, "val") == [root / "data" / "val-00000-of-00001.parquet"]
    assert load_dataset(root, split="val")[0].question == "s"


# --------------------------------------------------------------------------------------------- errors


def _error(tmp_path, rows, exc=DataError, **kw):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "fine", "images": [], "answer": "a"}] + rows)
    with pytest.raises(exc) as e:
        load_dataset(path, **kw)
    msg = str(e.value)
    assert str(path) in msg and "row 1 (line 2)" in msg, msg
    return msg


def test_path_escapes_are_rejected_at_load(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(png(RED))
    os.symlink(tmp_path / "secret.png", root / "link.png")
    for ref, reason in (("../secret.png", "escapes the dataset root"), (str(tmp_path / "secret.png"), "absolute"),
                        ("link.png", "outside the dataset root")):
        path = write_jsonl(root / "data.jsonl", [{"question": "fine", "images": [], "answer": "a"},
                                                  {"question": "q", "images": [ref], "answer": "a"}])
        with pytest.raises(DataError) as e:
            load_dataset(path)
        msg = str(e.value)
        assert str(path) in msg and "row 1" in msg and "field 'images[0]'" in msg and reason in msg, msg


def test_missing_image_file_is_file_not_found(tmp_path):
    msg = _error(tmp_path, [{"question": "q", "images": ["img/none.png"], "answer": "a"}], exc=FileNotFoundError)
    assert "field 'images[0]'" in msg and "none.png" in msg


def test_invalid_json_line_and_non_object(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"question": "q", "images": [], "answer": "a"}\n\n{"question": \n')
    with pytest.raises(DataError, match=r"a\.jsonl, row 1 \(line 3\): invalid JSON"):
        load_dataset(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match="row 0 .*must be a JSON object"):
        load_dataset(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(DataError, match="cannot tell the row format"):
        load_dataset(tmp_path / "c.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_dataset(tmp_path / "d.csv")


def test_on_error_skip_counts_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "images": [], "answer": "a"}, {"question": "q"},
                                               {"question": "q2", "images": [], "answer": "b"}])
    ds = load_dataset(path, on_error="skip")
    assert len(ds) == 2 and len(ds.skipped) == 1 and "row 1" in ds.skipped[0]
    assert [s.row for s in ds] == [0, 2]


def test_on_error_skip_counts_lines_that_are_not_json_objects(tmp_path):
    """Reliability[rows]: a JSONL file with a line that is not JSON, or not a JSON object, loaded with on_error="skip" | that line is skipped and its message (file, line) kept in dataset.skipped; the other rows load; on_error="raise" names the file and line"""
    path = tmp_path / "d.jsonl"
    good = json.dumps({"question": "q", "images": [], "answer": "a"})
    path.write_text("\n".join([good, '{"question": "q", "images": [', "[1, 2]", good]) + "\n")
    ds = load_dataset(path, on_error="skip")
    assert len(ds) == 2 and len(ds.skipped) == 2
    assert "invalid JSON" in ds.skipped[0] and "line 2" in ds.skipped[0] and "d.jsonl" in ds.skipped[0]
    assert "must be a JSON object" in ds.skipped[1] and "line 3" in ds.skipped[1]
    with pytest.raises(DataError, match=r"line 2.*invalid JSON|invalid JSON.*line 2"):
        load_dataset(path)


def test_cli_style_errors_are_value_or_file_errors(tmp_path):
    assert issubclass(DataError, ValueError)
