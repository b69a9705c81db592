"""The training loss of one micro-batch: the policy term and the terms a recipe adds (reference KL, entropy
bonus, PAPO's perception KL and double entropy), from row slices of the step's `RolloutBatch`."""

from __future__ import annotations

import torch

from vlmrl import algos
from vlmrl.config import AlgoConfig
from vlmrl.models.policy import Policy, Seq
from vlmrl.train.batch import RolloutBatch


def micro_batch_loss(policy: Policy, a: AlgoConfig, level: str, batch: RolloutBatch, rows: list[int],
                     w: torch.Tensor, n_tok: float, temp: float, share: bool,
                     reg_token_mean: bool = False) -> tuple[torch.Tensor, dict]:
    """(loss to backpropagate, logged terms) of batch rows `rows`. `w` are their loss weights (computed over the
    whole mini-batch, so sums over micro-batches are exact); `n_tok` the mini-batch's loss tokens (with several
    processes: the global count over the number of processes, as the gradients are averaged), which scales the
    token-mean PAPO terms the same way; `level` the PPO ratio's level (token, or sequence for GSPO); `share` runs
    a group's common prompt once in the log-prob passes. The reference-KL and entropy terms use `w` too, or, with
    `reg_token_mean` (DTPO, as AdaptVision), a plain token mean over the mini-batch."""
    dev = policy.device
    seqs = [batch.seqs[i] for i in rows]
    maskd = batch.take(batch.loss_mask, rows).to(dev)
    logp, ent = policy.logprobs(seqs, maskd, temperature=temp, with_entropy=True, share_prefix=share)
    old = batch.take(batch.old_logp, rows).to(dev)
    adv = batch.take(batch.advantages, rows).to(dev)
    w = w.to(dev)
    per_tok, m = algos.token_policy_loss(logp, old, adv, maskd, a.clip_low, a.clip_high, a.dual_clip, level)
    if batch.tis_weight is not None:  # sampler/trainer mismatch correction (vlmrl/algos/mismatch.py)
        per_tok = per_tok * batch.take(batch.tis_weight, rows).to(dev)
    pg = algos.weighted_sum(per_tok, w)
    loss = pg
    frac = float(maskd.sum()) / n_tok if n_tok else 0.0  # token-mean terms: exact over micro-batches (and ranks)
    out = {"loss/pg": pg.item(), "clip/low": float(m["clip_frac_low"]), "clip/high": float(m["clip_frac_high"]),
           "clip/dual": float(m["dual_clip_frac"]), "entropy/policy": float(algos.masked_mean(ent.detach(), maskd))}
    reg_w = (maskd.to(w.dtype) / n_tok if n_tok else maskd.to(w.dtype) * 0.0) if reg_token_mean else w
    if a.kl_coef > 0:
        ref = batch.take(batch.ref_logp, rows).to(dev)
        kl = algos.weighted_sum(algos.kl_estimate(logp, ref, a.kl_kind), reg_w)
        loss = loss + a.kl_coef * kl
        out["ref_kl"], out["loss/ref_kl"] = kl.item(), (a.kl_coef * kl).item()
    if a.entropy_coef > 0:
        e = algos.weighted_sum(ent, reg_w)
        loss = loss - a.entropy_coef * e
        out["loss/entropy"] = (-a.entropy_coef * e).item()
    if a.papo.enabled:
        p = a.papo
        if p.masked_grad:
            mseqs = [Seq(batch.seqs[i].ids, batch.masked_vision[i]) for i in rows]
            mlogp = policy.logprobs(mseqs, maskd, temperature=temp, share_prefix=share)
        else:
            mlogp = batch.take(batch.masked_logp, rows).to(dev)
        pkl = algos.perception_kl(logp, mlogp, maskd) * frac
        loss = loss - p.gamma * pkl
        out["perception_kl"], out["loss/perception"] = pkl.item() / max(frac, 1e-8), -(p.gamma * pkl).item()
        out["entropy/masked"] = float(-algos.masked_mean(mlogp.detach(), maskd))
        if p.eta1 or p.eta2:
            de = algos.double_entropy(logp, mlogp, maskd, p.eta1, p.eta2) * frac
            loss = loss + de
            out["loss/double_entropy"] = de.item()
    out["loss/total"] = loss.item()
    return loss, out
