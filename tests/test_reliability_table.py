"""docs/reliability.md is generated from the tests' `Reliability[...]` tags (tools/reliability_table.py):
these tests fail when the table and the tests drift apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("reliability_table", ROOT / "tools" / "reliability_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_docs_reliability_md_is_up_to_date(capsys):
    tool = _tool()
    rc = tool.main(["--check"])
    assert rc == 0, capsys.readouterr().err
    rows, problems = tool.collect()
    assert not problems and len(rows) >= 60


def test_check_fails_when_the_table_or_a_tag_drifts(tmp_path, capsys):
    tool = _tool()
    stale = tmp_path / "reliability.md"
    stale.write_text(tool.DOC.read_text().replace("a 1x1 image", "a 2x2 image"))
    assert tool.main(["--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    fake = tmp_path / "repo"
    (fake / "tests").mkdir(parents=True)
    (fake / "tests" / "test_reliability_x.py").write_text(
        'def test_untagged():\n    """No tag here."""\n\n\n'
        'def test_bad_tag():\n    """Reliability[nope]: x | y"""\n\n\n'
        'def test_good():\n    """Reliability[images]: an input | what happens"""\n')
    rows, problems = tool.collect(fake)
    assert ("images", "an input", "what happens", "tests/test_reliability_x.py::test_good") in rows
    text = "\n".join(problems)
    assert "test_untagged: has no 'Reliability[category]" in text
    assert "test_bad_tag: malformed tag" in text
    assert "ELSEWHERE lists tests/test_data_images.py::test_truncated_png_named, which does not exist" in text
