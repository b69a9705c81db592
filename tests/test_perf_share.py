"""The training log-prob pass runs a group's shared prompt once (`Policy.logprobs(share_prefix=True)`) and gives
the single pass's log-probs, entropies and parameter gradients (no timing here: see tools/bench/step.py).

Cases: direct answers of two prompts (left padding, unequal completion lengths), tool rollouts whose second turn
carries a crop image, groups of size 1 next to larger groups, rows with nothing to score, images that are equal
but not the same object; the fallbacks (nothing shared, a process group of several ranks) run one forward pass.
(The trainer's micro-batches keep a group's rows together: tests/test_train_batch.py.)
"""

import pytest
import torch
from PIL import Image

from vlmrl.models.codec import Seq
from vlmrl.models.hf_sampler import HFSampler
from vlmrl.models.sampler import Prompt, SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def _prompt(pol, size, text, color=(200, 30, 90)):
    tok = pol.tokenizer
    v = pol.codec.encode_image(Image.new("RGB", size, color))
    ids = (tok.encode("<|im_start|>user\n", add_special_tokens=False) + pol.codec.image_placeholder(v)
           + tok.encode(text + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False))
    return Seq(ids, [v])


def _words(pol, n, seed):
    """n ordinary token ids (a sampled completion's stand-in)."""
    g = torch.Generator().manual_seed(seed)
    words = ["the", " red", " box", " is", " left", " 7", " answer", "<think>", " zoom", ".", " no", " yes"]
    ids = []
    while len(ids) < n:
        ids += pol.tokenizer.encode(words[int(torch.randint(len(words), (1,), generator=g))], add_special_tokens=False)
    return ids[:n]


def _observation(pol, crop):
    tok = pol.tokenizer
    return (tok.encode("<|im_end|>\n<|im_start|>user\n<tool_response>", add_special_tokens=False)
            + pol.codec.image_placeholder(crop) + tok.encode("go on<|im_end|>\n<|im_start|>assistant\n",
                                                       add_special_tokens=False))


def _rows(prompt, completions):
    """Seqs of one prompt's group and their masks (1 on the completion tokens), as (Seq, mask list) pairs."""
    return [(Seq(prompt.ids + c, list(prompt.images)), [0] * len(prompt.ids) + [1] * len(c)) for c in completions]


def _tool_rows(pol, prompt, turns):
    """A tool group: `turns` is a list of (first turn length, crop size or None, second turn length)."""
    out = []
    for k, (n1, crop_size, n2) in enumerate(turns):
        ids, mask, images = list(prompt.ids), [0] * len(prompt.ids), list(prompt.images)
        t1 = _words(pol, n1, seed=10 + k)
        ids, mask = ids + t1, mask + [1] * n1
        if crop_size is not None:
            crop = pol.codec.encode_image(Image.new("RGB", crop_size, (20 * k, 200, 40)))
            obs = _observation(pol, crop)
            t2 = _words(pol, n2, seed=20 + k)
            ids, mask, images = ids + obs + t2, mask + [0] * len(obs) + [1] * n2, images + [crop]
        out.append((Seq(ids, images), mask))
    return out


def _batch(rows):
    seqs = [s for s, _ in rows]
    T = max(len(s.ids) for s in seqs)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, (s, m) in enumerate(rows):
        mask[b, T - len(m):] = torch.tensor(m)
    return seqs, mask


def _run(pol, seqs, mask, share):
    """Log-probs, entropies and the parameter gradients of a weighted loss over both, in training mode."""
    weights = torch.linspace(0.5, 1.5, mask.numel()).view(mask.shape)
    pol.model.train()
    pol.model.zero_grad(set_to_none=True)
    try:
        with CountCalls(pol) as n:
            lp, ent = pol.logprobs(seqs, mask, temperature=0.9, with_entropy=True, share_prefix=share)
        assert n.calls == (2 if share else 1)  # sharing ran: the prompts' pass, then the rows' own parts
        ((lp * weights).sum() - 0.1 * (ent * weights).sum()).backward()
        grads = {n: p.grad.clone() for n, p in pol.model.named_parameters() if p.grad is not None}
    finally:
        pol.model.zero_grad(set_to_none=True)
        pol.model.eval()
    return lp.detach(), ent.detach(), grads


def _assert_same_as_single_pass(pol, rows):
    seqs, mask = _batch(rows)
    lp1, ent1, g1 = _run(pol, seqs, mask, share=False)
    lp2, ent2, g2 = _run(pol, seqs, mask, share=True)
    assert torch.allclose(lp2, lp1, atol=1e-5), (lp2 - lp1).abs().max()
    assert torch.allclose(ent2, ent1, atol=1e-5), (ent2 - ent1).abs().max()
    assert (lp2[mask == 0] == 0).all() and (ent2[mask == 0] == 0).all()
    assert g1.keys() == g2.keys() and any("visual" in n for n in g1)  # the vision tower gets gradients too
    for n in g1:
        scale = g1[n].abs().max()
        assert (g2[n] - g1[n]).abs().max() <= 1e-4 * scale + 1e-9, (n, (g2[n] - g1[n]).abs().max(), scale)


class CountCalls:
    """Counts forward calls of the model and the rows of patches its vision tower encodes."""

    def __init__(self, pol):
        self.calls, self.patches = 0, 0
        self.handles = [pol.model.register_forward_pre_hook(self._call),
                        pol.core.model.visual.register_forward_hook(self._visual)]

    def _call(self, module, args):
        self.calls += 1

    def _visual(self, module, args, out):
        self.patches += args[0].shape[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------- equality with the single pass

@pytest.mark.parametrize("family", FAMILIES)
def test_direct_groups_with_unequal_completions_match_the_single_pass(family, tiny_policies):
    pol = tiny_policies[family]
    f = pol.factor
    a, b = _prompt(pol, (2 * f, 2 * f), "What?"), _prompt(pol, (4 * f, 2 * f), "What is in the top left corner?")
    rows = (_rows(a, [_words(pol, n, seed=n) for n in (5, 9, 2)])
            + _rows(b, [_words(pol, n, seed=30 + n) for n in (7, 3)]))
    _assert_same_as_single_pass(pol, rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_tool_groups_with_a_crop_turn_match_the_single_pass(family, tiny_policies):
    pol = tiny_policies[family]
    f = pol.factor
    a, b = _prompt(pol, (4 * f, 4 * f), "Where?"), _prompt(pol, (2 * f, 4 * f), "Which?")
    rows = (_tool_rows(pol, a, [(6, (2 * f, 4 * f), 5), (4, None, 0), (8, (2 * f, 2 * f), 2)])
            + _tool_rows(pol, b, [(3, (4 * f, 2 * f), 7), (5, (2 * f, 2 * f), 1)]))
    _assert_same_as_single_pass(pol, rows)


def test_groups_of_one_next_to_larger_groups_and_unscored_rows(tiny_policies):
    pol = tiny_policies["qwen2_5_vl"]
    f = pol.factor
    a, b, c = (_prompt(pol, (2 * f, 2 * f), q) for q in ("A?", "Is it B?", "C"))
    dead = _rows(c, [_words(pol, 4, seed=3)])
    dead = [(dead[0][0], [0] * len(dead[0][1]))]  # e.g. a filtered group or an unfinished row: nothing to score
    rows = _rows(a, [_words(pol, n, seed=n) for n in (4, 6, 3)]) + _rows(b, [_words(pol, 5, seed=7)]) + dead
    _assert_same_as_single_pass(pol, rows)
    seqs, mask = _batch(rows)
    with CountCalls(pol) as n, torch.no_grad():
        pol.logprobs(seqs, mask, share_prefix=True)
    assert n.calls == 2  # the prompts' pass and the completions' pass
    assert n.patches == sum(v.pixel_values.shape[0] for p in (a, b) for v in p.images)  # each image once


def test_equal_images_that_are_different_objects_are_shared(tiny_policies):
    pol = tiny_policies["qwen2_5_vl"]
    f = pol.factor
    p = _prompt(pol, (2 * f, 2 * f), "Q")
    rows = [(Seq(p.ids + c, [pol.codec.encode_image(Image.new("RGB", (2 * f, 2 * f), (200, 30, 90)))]),
             [0] * len(p.ids) + [1] * len(c)) for c in (_words(pol, 3, seed=1), _words(pol, 6, seed=2))]
    assert rows[0][0].images[0] is not rows[1][0].images[0]
    seqs, mask = _batch(rows)
    with CountCalls(pol) as n, torch.no_grad():
        lp = pol.logprobs(seqs, mask, share_prefix=True)
    assert n.patches == p.images[0].pixel_values.shape[0]
    with torch.no_grad():
        assert torch.allclose(lp, pol.logprobs(seqs, mask), atol=1e-5)


def test_different_images_behind_the_same_ids_are_not_shared(tiny_policies):
    pol = tiny_policies["qwen2_5_vl"]
    f = pol.factor
    p, q = _prompt(pol, (2 * f, 2 * f), "Q"), _prompt(pol, (2 * f, 2 * f), "Q", color=(0, 0, 255))
    assert p.ids == q.ids
    rows = _rows(p, [_words(pol, 3, seed=1), _words(pol, 4, seed=2)]) + _rows(q, [_words(pol, 5, seed=3)])
    _assert_same_as_single_pass(pol, rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_scoring_that_starts_right_after_an_image(family, tiny_policies):
    """The prompt then ends inside the image's placeholder: shared when the cut keeps the image tokens whole (the
    rows' own parts start with vision_end), the single pass when it would split them."""
    pol = tiny_policies[family]
    f = pol.factor
    p = _prompt(pol, (2 * f, 2 * f), "Q")
    end = pol.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    at = p.ids.index(end)
    for first, calls in ((at + 1, 2), (at, 1)):  # first scored token: after vision_end; vision_end itself
        rows = [(Seq(p.ids + c, list(p.images)), [0] * first + [1] * (len(p.ids) + len(c) - first))
                for c in (_words(pol, 3, seed=1), _words(pol, 5, seed=2))]
        seqs, mask = _batch(rows)
        with CountCalls(pol) as n, torch.no_grad():
            lp = pol.logprobs(seqs, mask, share_prefix=True)
        assert n.calls == calls
        with torch.no_grad():
            assert torch.allclose(lp, pol.logprobs(seqs, mask), atol=1e-5)


# --------------------------------------------------------------------------- fallbacks

def test_nothing_shared_runs_the_single_pass(tiny_policies):
    pol = tiny_policies["qwen2_5_vl"]
    f = pol.factor
    rows = [r for k, q in enumerate(("A?", "B?", "C?")) for r in _rows(_prompt(pol, (2 * f, 2 * f), q),
                                                                         [_words(pol, 3 + k, seed=k)])]
    seqs, mask = _batch(rows)
    with CountCalls(pol) as n, torch.no_grad():
        pol.logprobs(seqs, mask, share_prefix=True)
    assert n.calls == 1


def test_several_ranks_fall_back_to_the_single_pass(tiny_policies, monkeypatch):
    """Under DDP the model runs once per backward pass: a process group of several ranks turns sharing off."""
    pol = tiny_policies["qwen2_5_vl"]
    f = pol.factor
    seqs, mask = _batch(_rows(_prompt(pol, (2 * f, 2 * f), "Q"), [_words(pol, n, seed=n) for n in (3, 5)]))
    assert pol._can_share_prefix()
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    assert not pol._can_share_prefix()
    with CountCalls(pol) as n, torch.no_grad():
        lp = pol.logprobs(seqs, mask, share_prefix=True)
    assert n.calls == 1
    monkeypatch.undo()
    with torch.no_grad():
        assert torch.allclose(lp, pol.logprobs(seqs, mask, share_prefix=True), atol=1e-5)


def test_gradient_checkpointing_falls_back_to_the_single_pass(tiny_dirs):
    from vlmrl.models.policy import Policy

    pol = Policy.load(tiny_dirs["qwen2_5_vl"], dtype="float32", device="cpu", gradient_checkpointing=True)
    assert not pol._can_share_prefix()
    f = pol.factor
    seqs, mask = _batch(_rows(_prompt(pol, (2 * f, 2 * f), "Q"), [_words(pol, n, seed=n) for n in (3, 5)]))
    pol.model.train()
    with CountCalls(pol) as n:
        pol.logprobs(seqs, mask, share_prefix=True).sum().backward()
    assert n.calls == 1


# --------------------------------------------------------------------------- the trainer, end to end

CALL = '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [0, 0, 40, 40]}}</tool_call>'


@pytest.fixture(scope="module")
def zoom_data(tmp_path_factory):
    from vlmrl.data.synthetic import make_zoom_dataset

    root = tmp_path_factory.mktemp("share_data")
    make_zoom_dataset(root, n=4, n_test=1, seed=0)
    return root / "train.jsonl"


def _trainer_step(tiny_dirs, zoom_data, out, share, extra):
    from dataclasses import replace

    from vlmrl.config import load_config
    from vlmrl.train.trainer import Trainer

    cfg = load_config(None, [f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={zoom_data}", "model.dtype=float32",
                             "model.device=cpu", f"train.output_dir={out}", "train.seed=3", "train.prompts_per_step=2",
                             "rollout.group_size=3", "rollout.max_new_tokens=6", "train.micro_batch_size=4",
                             "train.lr=1e-3", f"train.share_prompt={str(share).lower()}"] + extra)
    tr = Trainer(cfg)
    if cfg.rollout.mode == "tool":  # every row calls the crop tool, so its second turn carries a crop image
        tr.engine.cfg = replace(tr.engine.cfg, first_turn_prefix=CALL)
    metrics, trajs = tr.step()
    return metrics, trajs


@pytest.mark.parametrize("extra", [
    ["rollout.mode=tool", "rollout.max_turns=2", "algo.name=dtpo", "reward.name=dtpo", "algo.entropy_coef=0.01",
     "algo.papo.enabled=true", "algo.papo.masked_grad=true"],
    ["algo.name=grpo", "algo.kl_coef=0.05", "algo.papo.enabled=true", "algo.entropy_coef=0.01"],
], ids=["dtpo_tool_papo_masked_grad", "grpo_ref_kl_papo"])
def test_trainer_step_with_and_without_sharing_agree(extra, tiny_dirs, zoom_data, tmp_path, monkeypatch):
    from vlmrl.models.policy import Policy

    shared = []
    real = Policy._shared_prefix_logits

    def spy(self, seqs, mask, keep):
        out = real(self, seqs, mask, keep)
        shared.append(out is not None and torch.is_grad_enabled())
        return out

    monkeypatch.setattr(Policy, "_shared_prefix_logits", spy)
    a, trajs = _trainer_step(tiny_dirs, zoom_data, tmp_path / "a", True, extra)
    assert any(shared)  # the gradient pass shared its prompts
    n = len(shared)
    b, _ = _trainer_step(tiny_dirs, zoom_data, tmp_path / "b", False, extra)
    assert len(shared) == n  # train.share_prompt=false never tries
    if "rollout.mode=tool" in extra:
        assert all(len(t.vision) == 2 for t in trajs)  # the prompt's image and a crop
    keys = [k for k in a if k.startswith(("loss/", "entropy/", "perception_kl", "ref_kl", "grad_norm"))
            and a[k] is not None]
    assert {"loss/total", "grad_norm", "perception_kl"} <= set(keys) and a["grad_norm"] > 0
    for k in keys:
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("share", [False, True])
def test_lm_head_runs_only_at_scored_positions(share, tiny_policies, monkeypatch):
    """The LM head sees exactly one position per masked token (none for a tool observation between two
    turns), and the log-probs, entropies and gradients equal those of the column-range path transformers
    without boolean `logits_to_keep` take."""
    pol = tiny_policies["qwen2_5_vl"]
    f = pol.factor
    a = _prompt(pol, (4 * f, 4 * f), "Where?")
    seqs, mask = _batch(_tool_rows(pol, a, [(6, (2 * f, 4 * f), 5), (4, None, 0), (8, (2 * f, 2 * f), 2)]))
    assert pol._bool_logits_to_keep()  # the installed transformers takes a boolean mask
    seen = []
    handle = pol.core.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[:-1].numel()))
    try:
        lp1, ent1, g1 = _run(pol, seqs, mask, share=share)
    finally:
        handle.remove()
    assert seen[-1] == int(mask.sum())
    monkeypatch.setattr(pol, "_bool_keep", False)
    lp2, ent2, g2 = _run(pol, seqs, mask, share=share)
    assert torch.allclose(lp1, lp2, atol=1e-5) and torch.allclose(ent1, ent2, atol=1e-5)
    for n in g1:
        assert (g1[n] - g2[n]).abs().max() <= 1e-4 * g2[n].abs().max() + 1e-9, n


# --------------------------------------------------------------------------- the last layer's MLP where read

class MlpRows:
    """Counts the positions the last decoder layer's MLP runs at, per forward pass (its down projection's rows)."""

    def __init__(self, pol):
        self.rows = []
        mlp = pol.core.model.language_model.layers[-1].mlp
        self.handle = mlp.down_proj.register_forward_hook(lambda m, i, o: self.rows.append(i[0].shape[:-1].numel()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_last_mlp_runs_only_where_the_lm_head_reads(family, share, tiny_policies, monkeypatch):
    """Log-probs, entropies and gradients equal the full pass's, with the last layer's MLP run at one position
    per scored token (the prompt pass of the shared path at its last column only); tool rows with crops."""
    pol = tiny_policies[family]
    f = pol.factor
    a = _prompt(pol, (4 * f, 4 * f), "Where?")
    seqs, mask = _batch(_tool_rows(pol, a, [(6, (2 * f, 4 * f), 5), (4, None, 0), (8, (2 * f, 2 * f), 2)]))
    with MlpRows(pol) as seen:
        lp1, ent1, g1 = _run(pol, seqs, mask, share=share)
    scored = int(mask.sum())
    assert seen.rows == ([1, scored] if share else [scored])
    monkeypatch.setattr(pol, "last_mlp_only", False)
    with MlpRows(pol) as full:
        lp2, ent2, g2 = _run(pol, seqs, mask, share=share)
    assert full.rows[-1] > 3 * scored  # the full pass runs it at every position
    assert torch.allclose(lp1, lp2, atol=1e-5) and torch.allclose(ent1, ent2, atol=1e-5)
    assert g1.keys() == g2.keys()
    for n in g1:
        assert (g1[n] - g2[n]).abs().max() <= 1e-4 * g2[n].abs().max() + 1e-9, n


def test_prefills_run_the_last_mlp_at_the_last_token_only(tiny_policies, monkeypatch):
    """Sampling (a prompt prefill, then a continued prefill of a crop turn) gives the same tokens and log-probs
    with the last layer's MLP run at each row's last position only."""
    pol = tiny_policies["qwen2_5_vl"]
    f = pol.factor
    images = [Image.new("RGB", (4 * f, 2 * f), (200, 30, 90)), Image.new("RGB", (2 * f, 2 * f), (200, 30, 90))]
    prompts = [Prompt(_prompt(pol, im.size, text).ids, [im]) for im, text in zip(images, ("Which colour?", "Where?"))]
    crop = Image.new("RGB", (2 * f, 2 * f), (10, 90, 200))

    def sample():
        sampler = HFSampler(pol)
        first = sampler.generate(prompts, SamplingParams(max_new_tokens=4, n=2, seed=0))
        later = [Prompt(p.ids + g.ids + _observation(pol, pol.codec.vision(crop)), p.images + [crop])
                 for p, g in zip([p for p in prompts for _ in range(2)], first)]
        second = sampler.generate(later, SamplingParams(max_new_tokens=3, seed=1))
        assert sampler.continued
        return [(g.ids, g.logprobs) for g in first + second]

    with MlpRows(pol) as seen:
        skipped = sample()
    assert seen.rows[0] == 2 and 4 in seen.rows  # the prompt prefill's last tokens; the crop turn's 4 rows
    monkeypatch.setattr(pol, "last_mlp_only", False)
    full = sample()
    for (ids1, lp1), (ids2, lp2) in zip(skipped, full):
        assert ids1 == ids2 and lp1 == pytest.approx(lp2, abs=1e-5)


def test_last_mlp_runs_everywhere_under_gradient_checkpointing(tiny_dirs):
    """A checkpointed layer is recomputed in the backward pass, outside the forward's block: no skipping."""
    from vlmrl.models.last_mlp import applies, kept_positions
    from vlmrl.models.policy import Policy

    pol = Policy.load(tiny_dirs["qwen2_5_vl"], dtype="float32", device="cpu", gradient_checkpointing=True)
    assert not applies(pol.core)
    f = pol.factor
    seqs, mask = _batch(_rows(_prompt(pol, (2 * f, 2 * f), "Q"), [_words(pol, n, seed=n) for n in (3, 5)]))
    pol.model.train()
    with MlpRows(pol) as seen:
        pol.logprobs(seqs, mask).sum().backward()
    assert seen.rows == [mask.numel()]
    # logits_to_keep as the positions read: the last k columns, a boolean mask as it is, all of them as None
    assert kept_positions(1, (2, 3), "cpu").tolist() == [[False, False, True], [False, False, True]]
    assert kept_positions(0, (2, 3), "cpu") is None and kept_positions(3, (2, 3), "cpu") is None
    keep = torch.tensor([[True, False, True]])
    assert torch.equal(kept_positions(keep, (1, 3), "cpu"), keep) and kept_positions(keep, (2, 3), "cpu") is None
