"""tools/bench/rollout.py: the rollout benchmark runs end to end on the tiny model (no timing assertions)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_rollout", ROOT / "tools" / "bench" / "rollout.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(120)
def test_rollout_bench_tiny(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "out"
    assert bench.main(["--size", "tiny", "--group-size", "2", "--prompts", "1", "--new-tokens", "4",
                       "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads((out / "rollout_bench.json").read_text())
    assert (out / "rollout_bench.md").read_text().startswith("# Rollout benchmark")
    assert "engine_direct" in capsys.readouterr().out
    assert report["config"]["group_size"] == 2 and report["machine"]["cpu_count"] >= 1
    res = report["results"]
    assert set(res) == {"engine_direct", "hf_generate", "hf_generate_shared_prefill", "tool_one_turn", "tool_two_turn"}
    for name, r in res.items():
        for key in ("median_s", "tok_per_s", "s_per_token", "peak_rss_mb"):
            assert r[key] > 0, (name, key)
        assert r["rows"] == 2
    # every path samples exactly N tokens per row: equal lengths make tok/s comparable
    assert all(r["tokens"] == 2 * 4 for r in res.values())
    assert res["tool_two_turn"]["turns"] == 2 and res["tool_one_turn"]["turns"] == 1
    assert res["tool_two_turn"]["policy_tokens"] == 2 * (4 + res["tool_two_turn"]["forced_call_tokens"])
    for key in ("engine_over_generate_tok_per_s", "engine_over_shared_prefill_generate_tok_per_s",
                "shared_prefill_over_generate_tok_per_s", "two_turn_over_one_turn_cost_per_sampled_token",
                "two_turn_over_one_turn_cost_per_policy_token"):
        assert report["ratios"][key] > 0
