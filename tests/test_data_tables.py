"""The table-reading layer shared by training data and benchmark tasks (vlmrl/data/tables.py)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlmrl.data.sample import DataError
from vlmrl.data.tables import ParquetCells, file_type, read_json, read_jsonl, read_parquet


def test_jsonl_rows_and_locations(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"x": 1}\n\n{"x": 2}\n[3]\n{bad\n')
    skipped = []
    recs = read_jsonl(p, skipped)
    assert [(r.data, r.row, r.line) for r in recs] == [({"x": 1}, 0, 1), ({"x": 2}, 1, 3)]
    assert skipped[0].startswith(f"{p}, row 2 (line 4): a row must be a JSON object, got list")
    assert "row 2 (line 5): invalid JSON" in skipped[1]  # a skipped line does not take a row index
    with pytest.raises(DataError, match=r"a\.jsonl, row 2 \(line 4\)"):
        read_jsonl(p)


def test_json_list_keys(tmp_path):
    p = tmp_path / "a.json"
    for obj in ([{"x": 1}], {"data": [{"x": 1}], "meta": []}, {"questions": [{"x": 1}], "other": []},
                {"only": [{"x": 1}], "n": 1}):
        p.write_text(json.dumps(obj))
        assert [r.data for r in read_json(p)] == [{"x": 1}]
    p.write_text(json.dumps({"a": [], "b": []}))
    with pytest.raises(DataError, match="has 2 list fields"):
        read_json(p)
    p.write_text(json.dumps([{"x": 1}, 2]))
    with pytest.raises(DataError, match=r"row 1: a row must be a JSON object, got int"):
        read_json(p)
    assert file_type(p) == "json" and file_type(tmp_path / "a.TSV") == "tsv" and file_type(tmp_path / "a.txt") is None


def test_parquet_cells_are_read_by_row_group(tmp_path):
    p = tmp_path / "t.parquet"
    table = pa.table({"q": ["a", "b", "c"], "image": [b"1", None, b"3"], "images": [[b"x", b"y"], [], None]})
    pq.write_table(table, p, row_group_size=2)
    recs, lazy = read_parquet(p, ("image", "images", "absent"))
    assert [r.data for r in recs] == [{"q": "a"}, {"q": "b"}, {"q": "c"}]
    single, several = lazy["image"], lazy["images"]
    assert set(lazy) == {"image", "images"} and not single.is_list and several.is_list
    assert single.lengths() == [1, 0, 1] and several.lengths() == [2, 0, 0]
    assert single.cell(2) == b"3" and several.cell(0) == [b"x", b"y"] and single.cell(1) is None
    with pytest.raises(IndexError):
        ParquetCells(p, "image").cell(3)
