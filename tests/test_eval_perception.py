"""`vlmrl eval --perception` (vlmrl/evaluation/perception.py): the exact per-token KL and the aggregation against
hand-computed values; end to end on the tiny model and a small digits set: with mask_prob 0 the masked image is the
image (KL 0, no answer changes), with a fully blanked image the KL is positive; the teacher-forced log-probs are the
policy's own; bad flags. The masking (vlmrl/train/papo_views.py) and the clamped k3 estimator (algos.perception_kl)
are the trainer's, checked against PAPO's code (MikeWangWZHL/PAPO) in tests/test_papo_views.py and
tests/test_algos_papo.py."""

import json
import math

import pytest
import torch

from vlmrl.cli import main
from vlmrl.evaluation.perception import perception_by, perception_metrics, token_kl
from vlmrl.models.policy import Policy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_token_kl_hand_values():
    # KL([.5, .5] || [.25, .75]) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln 2 + .5 ln(2/3) = 0.1438410362
    p = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    q = torch.log(torch.tensor([[0.25, 0.75], [0.2, 0.8]]))
    got = token_kl(p, q)
    assert got[0].item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    assert got[1].item() == pytest.approx(0.0, abs=1e-7)
    # a banned token (-inf in both, as Policy.logp_from_logits makes them) counts 0, not NaN
    inf = float("-inf")
    p2 = torch.tensor([[math.log(0.5), math.log(0.5), inf]])
    q2 = torch.tensor([[math.log(0.25), math.log(0.75), inf]])
    assert token_kl(p2, q2)[0].item() == pytest.approx(got[0].item(), abs=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        token_kl(p, q2)


def _rec(kl, k3, changed, masked, score):
    return {"score": score, "perception": {"kl": kl, "kl_k3": k3, "answer_changed": changed, "masked_scores": masked}}


def test_perception_metrics_and_groups_by_hand():
    a = _rec([0.2, 0.4], [0.1, 0.3], [True, False], [1.0, 0.0], 1.0)  # doc means: .3, .2, .5, .5
    b = _rec([1.0, 1.0], [0.5, 0.7], [True, True], [0.0, 0.0], 0.5)  # 1.0, .6, 1.0, 0
    c = {"score": 1.0}  # finished without the probe (a resumed run): left out
    m = perception_metrics([a, b, c])
    assert m == pytest.approx({"perception/kl_mean": 0.65, "perception/kl_k3_mean": 0.4,
                               "perception/answer_changed": 0.75, "perception/accuracy_masked": 0.25,
                               "perception/accuracy": 0.75, "perception/n": 2})
    assert perception_metrics([c]) == {}
    by = perception_by([a, b, c], ["digit", None, "digit"])
    assert list(by) == ["digit"] and by["digit"]["n"] == 2 and by["digit"]["perception/n"] == 1
    assert by["digit"]["perception/kl_mean"] == pytest.approx(0.3)
    assert perception_by([a, b], [None, None]) == {}
    with pytest.raises(ValueError, match="2 records but 1"):
        perception_by([a, b], ["x"])


BAR = [16 if (r == 0 and 2 <= c <= 5) else 0 for r in range(8) for c in range(8)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A small digits set (vlmrl make-data digits from a faked digits.csv.gz, as tests/test_data_digits.py)."""
    import gzip

    from vlmrl.data.digits import make_digits_dataset

    root = tmp_path_factory.mktemp("pdigits")
    src = root / "digits.csv.gz"
    src.write_bytes(gzip.compress("".join(",".join(map(str, BAR)) + f",{i % 10}\n" for i in range(12)).encode()))
    make_digits_dataset(root / "d", n=3, n_test=6, source=src, image_size=56, kinds=("digit", "parity", "greater"))
    return root / "d"


@pytest.fixture
def model(tiny_dirs, tiny_policies, monkeypatch):
    pol = tiny_policies["qwen2_5_vl"]
    monkeypatch.setattr(Policy, "load", classmethod(lambda cls, *a, **k: pol))
    return str(tiny_dirs["qwen2_5_vl"])


def _eval(digits, model, out, *extra):
    argv = ["eval", "--task", "digits", "--data", str(digits), "--model", model, "--out", str(out),
            "--max-new-tokens", "6", "--no-progress", "--batch-size", "3", *extra]
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    return lines, json.loads((out / "results.json").read_text())


def test_perception_end_to_end(digits, model, tmp_path):
    lines, res = _eval(digits, model, tmp_path / "p0", "--perception", "--perception-mask-prob", "0")
    m = res["metrics"]
    keys = ("perception/kl_mean", "perception/kl_k3_mean", "perception/answer_changed", "perception/accuracy_masked")
    assert all(math.isfinite(m[k]) for k in keys) and m["perception/n"] == 6
    # mask_prob 0: the masked image is the image: the same logits, the same greedy answers
    assert m["perception/kl_mean"] == pytest.approx(0.0, abs=1e-6) and m["perception/kl_k3_mean"] < 1e-6
    assert m["perception/answer_changed"] == 0.0
    assert m["perception/accuracy_masked"] == m["perception/accuracy"] == pytest.approx(res["score"])
    assert set(res["by"]["category"]) == {"digit", "parity", "greater"}
    assert sum(v["n"] for v in res["by"]["category"].values()) == 6
    for x in lines:
        p = x["perception"]
        assert p["masked_resps"] == x["resps"] and p["patch_size"] == 14 and p["mask_seed"] == x["doc_id"]
    # a blank image (mask_prob 1): the tiny random model's answers do depend on the pixels
    lines1, res1 = _eval(digits, model, tmp_path / "p1", "--perception", "--perception-mask-prob", "1.0")
    m1 = res1["metrics"]
    assert all(k >= 0 for x in lines1 for k in x["perception"]["kl"])
    assert m1["perception/kl_mean"] > 1e-6 and m1["perception/kl_k3_mean"] > 0
    assert res1["metrics"]["accuracy"] == res["metrics"]["accuracy"]  # the unmasked eval is unchanged by the probe
    traces = [json.loads(t) for t in (tmp_path / "p1" / "traces.jsonl").read_text().splitlines()]
    tk = traces[0]["token_stats"]["perception_kl"]
    assert len(tk) == len(traces[0]["ids"]) and max(tk) > 0
    # the default mask (0.6) sits between, and a second run gives the same numbers (per-doc mask seeds)
    _, a = _eval(digits, model, tmp_path / "a", "--perception", "--limit", "3")
    _, b = _eval(digits, model, tmp_path / "b", "--perception", "--limit", "3", "--batch-size", "1")
    assert a["metrics"]["perception/kl_mean"] == pytest.approx(b["metrics"]["perception/kl_mean"], rel=1e-4)
    assert a["metrics"]["perception/kl_mean"] > 0
    # K = 2 sampled responses per doc, the seen view masked (order resized): one probe entry per response
    lines2, r2 = _eval(digits, model, tmp_path / "k2", "--perception", "--limit", "2", "--samples", "2",
                       "--perception-mask-order", "resized")
    assert all(len(x["perception"][k]) == 2 for x in lines2 for k in ("kl", "kl_k3", "masked_scores", "answer_changed"))
    assert math.isfinite(r2["metrics"]["perception/kl_mean"]) and r2["metrics"]["perception/kl_mean"] > 0


def test_teacher_forced_logp_is_the_policys(tiny_policies, digits):
    """probe_trajectory's log-probs of the response tokens are Policy.logprobs' (no off-by-one in the positions)
    and the sampler's; with the same vision the KL is 0."""
    from vlmrl.config import RolloutConfig
    from vlmrl.data import load_dataset
    from vlmrl.evaluation.perception import probe_trajectory
    from vlmrl.models.codec import Seq
    from vlmrl.rollout.engine import RolloutEngine

    pol = tiny_policies["qwen2_5_vl"]
    engine = RolloutEngine(pol, RolloutConfig(mode="direct", max_new_tokens=5, temperature=0.0))
    t = engine.rollout([load_dataset(str(digits / "test.jsonl"))[0]])[0]
    p = probe_trajectory(pol, t, t.vision)
    mask = torch.tensor([t.response_mask])
    ref = pol.logprobs([Seq(t.ids, t.vision)], mask=mask)[0][mask[0].bool()]
    assert torch.allclose(torch.tensor(p["token_logp"]), ref, atol=1e-4)
    assert torch.allclose(torch.tensor(p["token_logp"]), torch.tensor(t.logprobs)[mask[0].bool()], atol=1e-3)
    assert p["kl"] == pytest.approx(0.0, abs=1e-6)


def test_perception_bad_flags(digits, model, tmp_path, capsys):
    base = ["eval", "--task", "digits", "--data", str(digits), "--model", model, "--out", str(tmp_path / "x"),
            "--no-progress"]
    assert main(base + ["--perception", "--tool"]) != 0
    assert "--perception works in direct mode only" in capsys.readouterr().err
    assert main(base + ["--perception", "--perception-mask-prob", "1.5"]) != 0
    assert "--perception-mask-prob must be in [0, 1]" in capsys.readouterr().err
    assert main(base + ["--perception-mask-prob", "0.3"]) != 0
    assert "--perception-mask-prob needs --perception" in capsys.readouterr().err
    assert not (tmp_path / "x" / "samples.jsonl").exists()


def test_accuracy_per_category_by_hand(digits):
    """results.json's by.category holds the task's metrics per question kind (meta.category), with or without
    --perception: here 6 digits rows (2 per kind), right answers given for the first row of each kind and for
    the second "digit" row, so digit 1.0, parity 0.5, greater 0.5."""
    from vlmrl.evaluation.harness import category_metrics, doc_category
    from vlmrl.evaluation.tasks import load_task

    task = load_task("digits")
    docs = task.load_docs(str(digits), images=False)
    cats = [doc_category(task, d) for d in docs]
    assert cats == ["digit", "parity", "greater"] * 2
    right = [True, True, True, True, False, False]
    records = [{"doc_id": d["doc_id"], "filtered_resps": [d["row"]["answer"] if ok else "nothing"]}
               for d, ok in zip(docs, right)]
    by = category_metrics(task, docs, records, cats, 1)
    assert {k: (v["n"], v["accuracy"]) for k, v in by.items()} == {
        "digit": (2, 1.0), "greater": (2, 0.5), "parity": (2, 0.5)}
    assert by["parity"]["accuracy_word"] == 0.5 and category_metrics(task, docs, records, [None] * 6, 1) == {}
