"""The perception probe of ``vlmrl eval --perception``: how much a model's answers depend on the image.

PAPO (vlmrl/algos/papo.py, DESIGN.md "PAPO") trains a policy to raise KL(pi(.|q, I) || pi(.|q, I_masked)), I_masked
the image with random patch_size tiles blacked out with probability mask_prob. This probe measures that quantity
after training, per evaluated doc (direct mode), after the normal answer:

1. the masked view of each prompt image, made as the PAPO trainer makes it (vlmrl/train/papo_views.py: the same
   mask orders and tile sizes; defaults mask_prob 0.6, the family's patch, order raw, as recipes/papo_g.yaml), from
   a generator seeded with ``seed + doc_id`` (the eval's --seed), so a doc's mask does not depend on the batch,
   --limit or the model, and two runs compare doc by doc;
2. the response tokens teacher-forced twice (the real and the masked image, the same token ids): per token the
   exact KL over the full vocabulary, ``sum_v p(v) (log p(v) - log q(v))`` (vision special tokens excluded, as in
   sampling), averaged over the response's tokens (``kl``); and PAPO's own estimator on the answer's tokens,
   ``algos.perception_kl`` (clamped k3, what the training loss reads; ``kl_k3``);
3. the answer again with the masked image (greedy, or sampled with the same generator seed for K > 1), scored by the
   task's scorer (``masked_scores``); ``answer_changed`` compares the extracted answers (the strings given to the
   scorer, stripped).

Aggregates (results.json ``metrics``; the same per category under ``by.category`` when the docs carry one):
``perception/kl_mean`` (mean over responses of their token-mean KL), ``perception/kl_k3_mean``,
``perception/answer_changed`` (share of responses), ``perception/accuracy_masked`` (mean masked score, computed as
``score`` is), ``perception/accuracy`` (the unmasked ``score`` over the same docs, for the difference) and
``perception/n`` (docs with a probe; a resumed run's docs finished without --perception have none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmrl.algos.papo import perception_kl

PREFIX = "perception/"


@dataclass
class PerceptionSettings:
    """How the probe masks: PAPO's knobs (``algo.papo.*`` in a recipe), defaults as recipes/papo_g.yaml."""

    mask_prob: float = 0.6
    patch_size: int = 0  # tile side in pixels; 0 = the family's vision patch (14 Qwen2/2.5-VL, 16 Qwen3-VL)
    mask_order: str = "raw"  # raw: mask the source image, then resize (PAPO's code); resized: mask the seen view

    def check(self, mode: str = "direct") -> None:
        """Clear errors for bad knobs, and for a rollout ``mode`` other than direct (the probe masks the prompt
        images of one direct answer; a tool loop's crops would need masking too)."""
        if mode != "direct":
            raise ValueError("--perception works in direct mode only (drop --tool, or use a recipe with "
                             "rollout.mode: direct)")
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ValueError(f"--perception-mask-prob must be in [0, 1], got {self.mask_prob}")
        if self.patch_size < 0:
            raise ValueError(f"--perception-patch-size must be >= 0 (0 = the family's patch), got {self.patch_size}")
        if self.mask_order not in ("raw", "resized"):
            raise ValueError(f"--perception-mask-order must be 'raw' or 'resized', got {self.mask_order!r}")


# ------------------------------------------------------------------------------------ pure functions


def token_kl(logp: torch.Tensor, masked_logp: torch.Tensor) -> torch.Tensor:
    """Per row, KL(p || q) = sum_v p(v) (log p(v) - log q(v)) of full log-distributions [N, V] -> [N]. Entries where
    p is 0 (e.g. banned tokens, -inf in both) count 0."""
    if logp.shape != masked_logp.shape:
        raise ValueError(f"log-prob shapes differ: {tuple(logp.shape)} vs {tuple(masked_logp.shape)}")
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - masked_logp), torch.zeros_like(p))
    return terms.sum(-1)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def perception_metrics(records: list[dict]) -> dict:
    """The ``perception/*`` metrics over samples.jsonl lines that carry a ``perception`` entry (others are left
    out): per-response values averaged within a doc, then over docs (as ``score`` is)."""
    probed = [r for r in records if r.get("perception")]
    if not probed:
        return {}
    per_doc = {"kl_mean": [], "kl_k3_mean": [], "answer_changed": [], "accuracy_masked": [], "accuracy": []}
    for r in probed:
        p = r["perception"]
        per_doc["kl_mean"].append(_mean([float(x) for x in p["kl"]]))
        per_doc["kl_k3_mean"].append(_mean([float(x) for x in p["kl_k3"]]))
        per_doc["answer_changed"].append(_mean([float(bool(x)) for x in p["answer_changed"]]))
        per_doc["accuracy_masked"].append(_mean([float(x) for x in p["masked_scores"]]))
        per_doc["accuracy"].append(float(r["score"]))
    out = {PREFIX + k: _mean(v) for k, v in per_doc.items()}
    out[PREFIX + "n"] = len(probed)
    return out


def perception_by(records: list[dict], groups: list) -> dict:
    """``perception_metrics`` per group value (records[i] is in group groups[i]; None: in no group), as
    ``{str(value): {"n": docs, **metrics}}`` sorted by value; {} when no record has a group."""
    if len(records) != len(groups):
        raise ValueError(f"{len(records)} records but {len(groups)} group values")
    values = sorted({str(g) for g in groups if g is not None})
    out = {}
    for v in values:
        part = [r for r, g in zip(records, groups) if g is not None and str(g) == v]
        out[v] = {"n": len(part), **perception_metrics(part)}
    return out


# ------------------------------------------------------------------------------------ model passes


@torch.no_grad()
def response_log_dists(policy, seq, response_mask: list[int]) -> torch.Tensor:
    """[n response tokens, V]: the policy's full log-distribution (temperature 1, vision special tokens excluded,
    ``Policy.logp_from_logits``) at each position that predicts a response token of ``seq`` (teacher forced)."""
    mask = torch.tensor(response_mask, dtype=torch.bool)
    if len(mask) != len(seq.ids):
        raise ValueError(f"response mask has {len(mask)} entries for {len(seq.ids)} tokens")
    if not mask.any():
        return torch.zeros(0, len(policy.tokenizer))
    if mask[0]:
        raise ValueError("the first position has no context: it cannot be scored")
    first = int(torch.nonzero(mask)[0])
    T = len(seq.ids)
    tokens = policy.codec.token_batch([seq])
    batch = policy.collate([seq], tokens)
    logits = policy.forward(batch, T - first + 1, use_cache=False).logits[0, :-1]  # predicts tokens first..T-1
    logp = policy.logp_from_logits(logits, 1.0)
    return logp[mask[first:].to(logp.device)].float().cpu()


def probe_trajectory(policy, traj, masked_vision: list) -> dict:
    """For one trajectory: ``kl`` (token-mean exact KL real || masked), ``kl_k3`` (PAPO's clamped estimator on the
    response tokens) and ``token_kl`` (per token of ``traj.ids``, 0 outside the response)."""
    from vlmrl.models.codec import Seq

    real = response_log_dists(policy, Seq(traj.ids, traj.vision), traj.response_mask)
    masked = response_log_dists(policy, Seq(traj.ids, masked_vision), traj.response_mask)
    per_token = token_kl(real, masked)
    pos = [i for i, m in enumerate(traj.response_mask) if m]
    targets = torch.tensor([traj.ids[i] for i in pos], dtype=torch.long)
    lp = real.gather(-1, targets[:, None]).squeeze(-1)
    mlp = masked.gather(-1, targets[:, None]).squeeze(-1)
    full = [0.0] * len(traj.ids)
    for i, v in zip(pos, per_token.tolist()):
        full[i] = v
    return {"kl": float(per_token.mean()) if pos else float("nan"),
            "kl_k3": float(perception_kl(lp, mlp, torch.ones_like(lp))) if pos else float("nan"),
            "token_kl": full, "token_logp": lp.tolist()}


def masked_prompt_views(engine, samples: list, by_doc: list[list], doc_ids: list[int], ps: PerceptionSettings,
                        seed: int) -> list[list]:
    """Per doc, the masked copy of each prompt image's view (PAPO's masked_views; the doc's K trajectories share
    it), from a generator seeded with ``seed + doc_id``."""
    from vlmrl.data.images import resample_filter
    from vlmrl.train.papo_views import masked_views, tile_size

    tile = tile_size(ps.patch_size, engine.policy.family)
    out = []
    for s, ts, doc_id in zip(samples, by_doc, doc_ids):
        gen = torch.Generator().manual_seed(seed + doc_id)
        views = masked_views(ts[:1], {ts[0].group_id: list(s.images)}, ps.mask_order, tile, ps.mask_prob, gen,
                             engine.view, resample_filter(engine.cfg.resample))
        out.append(views[0])
    return out


def run_probe(task, engine, policy, batch: list[dict], samples: list, by_doc: list[list], filtered: dict,
              ps: PerceptionSettings, seed: int, generator, n_per_prompt: int) -> dict[int, dict]:
    """The probe of one eval batch (direct mode; `evaluate` checks it): per doc_id its ``perception`` entry for
    samples.jsonl. Sets each trajectory's ``token_stats["perception_kl"]`` (the trace viewer shows it per token)."""
    from vlmrl.models.sampler import Prompt
    from vlmrl.rollout.trajectory import TrajImage
    from vlmrl.train.papo_views import tile_size

    from .harness import filtered_response, score_k

    doc_ids = [d["doc_id"] for d in batch]
    tile = tile_size(ps.patch_size, policy.family)
    views = masked_prompt_views(engine, samples, by_doc, doc_ids, ps, seed)
    prompts = []  # each doc's prompt (its first trajectory's prompt tokens) with the masked views
    for ts, v in zip(by_doc, views):
        t = ts[0]
        imgs = [im for im in t.images if im.kind == "input"]
        if [im.seen_size for im in imgs] != [im.size for im in v]:
            raise ValueError(f"sample {t.sample_id!r}: masked views {[im.size for im in v]} differ in size from the "
                             f"prompt's {[im.seen_size for im in imgs]}")
        prompts.append((Prompt(list(t.ids[:t.prompt_len]), list(v)),
                        [TrajImage(**{**im.__dict__, "image": mv}) for im, mv in zip(imgs, v)]))
    masked_trajs = engine.rollout(samples, n_per_prompt=n_per_prompt, generator=generator, prompts=prompts)
    m_by_doc = [[t for t in masked_trajs if t.group_id == i] for i in range(len(batch))]
    m_filtered = {d["doc_id"]: [filtered_response(t.final_text) for t in ts] for d, ts in zip(batch, m_by_doc)}
    _, recs = score_k(task, batch, m_filtered, n_per_prompt)
    out = {}
    for d, ts, mts, v in zip(batch, by_doc, m_by_doc, views):
        vision = [policy.codec.vision(im) for im in v]
        probes = [probe_trajectory(policy, t, vision) for t in ts]
        for t, p in zip(ts, probes):
            t.token_stats = {**t.token_stats, "perception_kl": p["token_kl"]}
        i = d["doc_id"]
        out[i] = {
            "kl": [p["kl"] for p in probes],
            "kl_k3": [p["kl_k3"] for p in probes],
            "masked_resps": [t.final_text for t in mts],
            "masked_filtered_resps": m_filtered[i],
            "masked_scores": [r["score"] for r in recs[i]],
            "answer_changed": [a.strip() != b.strip() for a, b in zip(filtered[i], m_filtered[i])],
            "mask_prob": ps.mask_prob, "patch_size": tile, "mask_order": ps.mask_order, "mask_seed": seed + i,
        }
    return out
