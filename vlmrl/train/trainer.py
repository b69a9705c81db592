"""The RL trainer: rollouts -> rewards -> advantages -> (PAPO masked pass) -> PPO-style updates.

One step, top to bottom (`Trainer.step`):
1. take B prompts for this process, roll out G samples each (direct or tool mode);
2. score them (vlmrl.rewards.trajectories), drop groups the filters reject (DAPO dynamic sampling,
   PAPO-D's accuracy window), resampling prompts up to `max_sampling_tries`;
3. advantages: GRPO/Dr.GRPO/DAPO/GSPO per sequence, DTPO per token;
4. old log-probs are the ones recorded at sampling time (the consistency test guarantees they equal a
   teacher-forced pass), so no extra pass; a reference pass only when `kl_coef > 0`; a masked-image pass
   only for PAPO;
5. updates: the batch is split into mini-batches (one optimizer step each) and micro-batches (gradient
   accumulation); loss weights are computed per mini-batch so accumulation is exact. A group's rows share a
   micro-batch where its size allows, and the log-prob passes run their common prompt (and its images) once
   (`train.share_prompt`, `Policy.logprobs(share_prefix=True)`).

Groups of G stay on one process, so advantages need no communication; accelerate (DDP) averages grads.
"""

from __future__ import annotations

import math
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from vlmrl import algos
from vlmrl.config import Config, save_config
from vlmrl.models.policy import Policy, Seq
from vlmrl.rewards.trajectories import score_trajectories
from vlmrl.rollout.engine import PromptTooLong, RolloutEngine
from vlmrl.train.memory import keep_freed_memory
from vlmrl.train.metrics import METRIC_KEYS

AGG_DEFAULT = {"grpo": "token-mean", "dapo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm",
               "gspo": "seq-mean-token-mean", "dtpo": "dtpo"}


def left_pad(rows: list[list[float]], value: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    """Lists of per-token values -> [N, T] tensor, left padded (the layout of Policy.collate)."""
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), value, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, T - len(r):] = torch.as_tensor(r, dtype=dtype)
    return out


def micro_batches(idx: list[int], lengths: list[int], size: int, group_size: int = 0) -> list[list[int]]:
    """Split the trajectories `idx` into batches of at most `size`, as positions in `idx` (row `idx[k]` has
    `lengths[idx[k]]` tokens). Sorted by length, so a batch pads little; with `group_size` (rows are groups of
    that many consecutive trajectories, as rollouts return them), sorted by group first, so a group's rows share a
    batch and its prompt runs once (Policy.logprobs share_prefix) where the batch size allows."""
    order = sorted(range(len(idx)), key=lambda k: (idx[k] // group_size if group_size > 0 else 0, lengths[idx[k]]))
    return [order[s:s + size] for s in range(0, len(order), size)]


class PromptStream:
    """Deterministic, resumable prompt order: a seeded permutation per epoch, sharded across processes.
    Rows whose images fail to decode are skipped and counted (never a crash mid-training)."""

    def __init__(self, dataset, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        if len(dataset) == 0:
            raise ValueError(f"the training dataset is empty: {dataset!r}")
        self.dataset, self.seed, self.rank, self.world, self.shuffle = dataset, seed, rank, world, shuffle
        self.position = 0  # prompts consumed by this process
        self.skipped: list[str] = []

    def _index(self, k: int) -> int:
        g = k * self.world + self.rank
        n = len(self.dataset)
        epoch, off = divmod(g, n)
        if not self.shuffle:
            return off
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        return int(perm[off])

    def next(self, count: int) -> list:
        out = []
        tries = 0
        while len(out) < count:
            i = self._index(self.position)
            self.position += 1
            try:
                out.append(self.dataset[i])
            except (ValueError, OSError) as e:  # DataError is a ValueError: bad image or row
                self.skipped.append(str(e))
                print(f"skipped a training row: {e}", file=sys.stderr)
                tries += 1
                if tries > 10 * count + len(self.dataset):
                    raise ValueError(f"no usable rows: the last error was: {e}") from None
        return out


class Trainer:
    def __init__(self, cfg: Config, accelerator=None, policy: Policy | None = None, dataset=None):
        from accelerate import Accelerator

        self.cfg = cfg
        t = cfg.train
        if t.prompts_per_step < 1 or cfg.rollout.group_size < 1:
            raise ValueError("train.prompts_per_step and rollout.group_size must be >= 1")
        if cfg.algo.name not in AGG_DEFAULT:
            raise ValueError(f"algo.name must be one of {', '.join(AGG_DEFAULT)}, got {cfg.algo.name!r}")
        if cfg.algo.name == "dtpo" and cfg.rollout.mode != "tool":
            raise ValueError("algo.name=dtpo needs rollout.mode=tool (DTPO decouples tool-call and answer turns)")
        win = cfg.algo.acc_window
        if win is not None and (len(win) != 2 or not 0 <= win[0] < win[1] <= 1):
            raise ValueError(f"algo.acc_window must be [low, high] with 0 <= low < high <= 1, got {win!r}")
        if t.keep_freed_memory:
            keep_freed_memory()
        cpu = cfg.model.device == "cpu" or not torch.cuda.is_available()
        self.acc = accelerator or Accelerator(cpu=cpu, log_with=t.log_with or None, project_dir=t.output_dir)
        self.out = Path(t.output_dir)
        self.is_main = self.acc.is_main_process
        seed = t.seed + 1000 * self.acc.process_index
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(t.seed)  # same initial weights / LoRA init on every rank
        lora = {"r": cfg.model.lora_r, "alpha": cfg.model.lora_alpha} if cfg.model.lora_r > 0 else None
        self.policy = policy or Policy.load(cfg.model.path, dtype=cfg.model.dtype,
                                            device=str(self.acc.device) if cfg.model.device == "auto" else cfg.model.device,
                                            gradient_checkpointing=cfg.model.gradient_checkpointing, lora=lora)
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, t.lr_schedule, t.warmup_steps, t.steps)
        self.policy.model, self.optimizer = self.acc.prepare(self.policy.model, self.optimizer)
        self.ref = None
        if cfg.algo.kl_coef > 0:  # the reference model exists only when its KL is used
            self.ref = Policy.load(cfg.model.path, dtype=cfg.model.dtype, device=str(self.acc.device))
            self.ref.model.requires_grad_(False).eval()
        if dataset is None:
            from vlmrl.data import load_dataset

            dataset = load_dataset(cfg.data.train, format=cfg.data.format, max_image_pixels=cfg.data.max_image_pixels)
        self.stream = PromptStream(dataset, t.seed, self.acc.process_index, self.acc.num_processes, cfg.data.shuffle)
        self.engine = RolloutEngine(self.policy, cfg.rollout)
        self.gen = torch.Generator().manual_seed(t.seed * 7919 + self.acc.process_index)
        self.mask_gen = torch.Generator().manual_seed(t.seed * 104729 + self.acc.process_index)
        self.step_idx = 0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.too_long = 0

    # ------------------------------------------------------------------ rollout + rewards

    def _rollout(self, n_prompts: int) -> list:
        """Roll out n prompts; prompts too long for the length cap are skipped and counted."""
        ok, prompts = [], []
        for s in self.stream.next(n_prompts):
            try:
                prompts.append(self.engine.build_prompt(s))
                ok.append(s)
            except PromptTooLong:
                self.too_long += 1
        if not ok:
            return []
        return self.engine.rollout(ok, self.cfg.rollout.group_size, generator=self.gen, prompts=prompts)

    def _score(self, trajs):
        r = self.cfg.reward
        extra = {"theta": r.theta, "w_crop": r.w_crop, "w_area": r.w_area} if r.name == "dtpo" else {}
        return score_trajectories(trajs, self.cfg.rollout.group_size, r.name, r.format_weight, **extra)

    def _keep_groups(self, total, parts) -> list[bool]:
        a, G = self.cfg.algo, self.cfg.rollout.group_size
        keep = torch.ones(len(total) // G, dtype=torch.bool)
        if a.dynamic_sampling:
            keep &= algos.dynamic_sampling_keep(torch.tensor(total), G)
        if a.acc_window:
            acc = torch.tensor(parts.get("accuracy", total))
            keep &= algos.accuracy_window_keep(acc, G, a.acc_window[0], a.acc_window[1])
        return keep.tolist()

    def collect(self):
        """Rollouts for one step, with group filtering and bounded resampling."""
        a, B, G = self.cfg.algo, self.cfg.train.prompts_per_step, self.cfg.rollout.group_size
        trajs, total, parts, kept = [], [], {}, []
        filtering = a.dynamic_sampling or bool(a.acc_window)
        tries, zero_std, n_groups = 0, 0, 0
        while True:
            need = B - sum(kept) if filtering else B - len(kept)
            new = self._rollout(need)
            tries += 1
            if new:
                t_new, p_new = self._score(new)
                k_new = self._keep_groups(t_new, p_new) if filtering else [True] * (len(new) // G)
                zero_std += int((algos.group_std(torch.tensor(t_new), G) < 1e-4).sum())
                n_groups += len(new) // G
                trajs += new
                total += t_new
                for key, v in p_new.items():
                    parts.setdefault(key, []).extend(v)
                kept += k_new
            if sum(kept) >= B or not filtering or tries >= max(1, a.max_sampling_tries):
                break
        return trajs, total, parts, kept, zero_std / max(1, n_groups)

    # ------------------------------------------------------------------ advantages

    def advantages(self, trajs, total, parts) -> list[list[float]]:
        """Per-token advantage lists aligned with each trajectory's ids."""
        a, G = self.cfg.algo, self.cfg.rollout.group_size
        if a.name == "dtpo":
            turn_ids = left_pad([t.turn_ids for t in trajs], -1, torch.long)
            mask = left_pad([t.response_mask for t in trajs], 0, torch.long)
            max_turns = max(1, int(turn_ids.max()) + 1)
            tool_turns = torch.zeros(len(trajs), max_turns, dtype=torch.bool)
            for i, t in enumerate(trajs):
                for c in t.tool_calls:
                    tool_turns[i, c.turn] = True
            adv = algos.dtpo_advantages(torch.tensor(parts["outcome"]), torch.tensor(parts["tool"]), turn_ids, mask,
                                        G, tool_weight=a.tool_weight, tool_call_turns=tool_turns)
            return [adv[i, adv.shape[1] - len(t.ids):].tolist() for i, t in enumerate(trajs)]
        scale = "none" if a.name == "dr_grpo" else "group"
        seq_adv = algos.grpo_advantages(torch.tensor(total), G, scale=scale).tolist()
        return [[seq_adv[i] * m for m in t.response_mask] for i, t in enumerate(trajs)]

    # ------------------------------------------------------------------ updates

    def _masked_vision(self, trajs):
        """PAPO: one randomly patch-masked copy of every image, shared by the G samples of a prompt."""
        p, pol, G = self.cfg.algo.papo, self.policy, self.cfg.rollout.group_size
        cache = {}
        out = []
        for i, t in enumerate(trajs):  # consecutive groups of G (t.prompt_index restarts per resampling try)
            vis = []
            for j, im in enumerate(t.images):
                key = (i // G, j) if im.kind == "input" else (id(t), j)
                if key not in cache:
                    masked = algos.random_patch_mask(im.image, p.patch_size, p.mask_prob, generator=self.mask_gen)
                    cache[key] = pol.encode_image(masked)
                vis.append(cache[key])
            out.append(vis)
        return out

    def _loss_weights(self, trajs, masks, idx) -> list[list[float]]:
        a = self.cfg.algo
        agg = a.loss_agg or AGG_DEFAULT[a.name]
        mask = left_pad([masks[i] for i in idx])
        final = None
        if agg == "dtpo":
            turn_ids = left_pad([trajs[i].turn_ids for i in idx], -1, torch.long)
            final = algos.final_turn_mask(turn_ids, mask.long())
        norm = self.cfg.rollout.max_new_tokens * (self.cfg.rollout.max_turns if self.cfg.rollout.mode == "tool" else 1)
        w = algos.loss_weights(mask, agg, norm_len=norm, final_mask=final, alpha=a.alpha)
        return [w[k, w.shape[1] - len(trajs[i].ids):].tolist() for k, i in enumerate(idx)]

    def update(self, trajs, advs, masks, extras) -> dict:
        """PPO epochs over mini-batches of micro-batches; returns averaged loss metrics."""
        cfg, a, pol = self.cfg, self.cfg.algo, self.policy
        n = len(trajs)
        mini = cfg.train.mini_batch_size or n
        micro = max(1, cfg.train.micro_batch_size)
        temp = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
        level = "sequence" if a.name == "gspo" else "token"
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def add(k, v):
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1

        pol.model.train()
        perm_gen = torch.Generator().manual_seed(cfg.train.seed + self.step_idx)
        for _epoch in range(cfg.train.ppo_epochs):
            order = torch.randperm(n, generator=perm_gen).tolist() if cfg.train.ppo_epochs > 1 or mini < n else list(range(n))
            for start in range(0, n, mini):
                idx = order[start:start + mini]
                if not any(sum(masks[i]) for i in idx):
                    continue
                weights = self._loss_weights(trajs, masks, idx)
                n_tok = sum(sum(masks[i]) for i in idx)
                chunks = micro_batches(idx, [len(t.ids) for t in trajs], micro, self._share_groups())
                for c, chunk in enumerate(chunks):
                    rows = [idx[k] for k in chunk]
                    sync = c == len(chunks) - 1
                    ctx = self.acc.no_sync(pol.model) if not sync and self.acc.num_processes > 1 else _nullctx()
                    with ctx:
                        loss, m = self._micro_loss(trajs, advs, masks, extras, rows, [weights[k] for k in chunk],
                                                   n_tok, temp, level)
                        self.acc.backward(loss)
                    for k, v in m.items():
                        add(k, v)
                grad_norm = self.acc.clip_grad_norm_(pol.model.parameters(), cfg.train.max_grad_norm)
                grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
                add("grad_norm", grad_norm)
                if not math.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    self.nonfinite_in_row += 1
                    self.nonfinite_total += 1
                    sums["skipped_update"] = 1.0
                    continue
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return {k: sums[k] / counts[k] for k in sums if k in counts} | {"_skipped": sums.get("skipped_update", 0.0)}

    def _micro_loss(self, trajs, advs, masks, extras, rows, weights, n_tok, temp, level):
        a, pol = self.cfg.algo, self.policy
        seqs = [Seq(trajs[i].ids, trajs[i].vision) for i in rows]
        mask = left_pad([masks[i] for i in rows], 0, torch.long)
        dev = pol.device
        share = self.cfg.train.share_prompt  # each group's prompt runs once (see Policy.logprobs)
        logp, ent = pol.logprobs(seqs, mask.to(dev), temperature=temp, with_entropy=True, share_prefix=share)
        old = left_pad([trajs[i].logprobs for i in rows]).to(dev)
        adv = left_pad([advs[i] for i in rows]).to(dev)
        w = left_pad(weights).to(dev)
        maskd = mask.to(dev)
        per_tok, m = algos.token_policy_loss(logp, old, adv, maskd, a.clip_low, a.clip_high, a.dual_clip, level)
        pg = (per_tok * w).sum()
        loss = pg
        frac = float(maskd.sum()) / max(1, n_tok)  # token-mean terms: exact over micro-batches
        out = {"loss/pg": pg.item(), "clip/low": float(m["clip_frac_low"]), "clip/high": float(m["clip_frac_high"]),
               "clip/dual": float(m["dual_clip_frac"]), "entropy/policy": float(algos.masked_mean(ent.detach(), maskd))}
        if a.kl_coef > 0:
            ref = left_pad([extras["ref"][i] for i in rows]).to(dev)
            kl = (algos.kl_estimate(logp, ref, a.kl_kind) * w).sum()
            loss = loss + a.kl_coef * kl
            out["ref_kl"], out["loss/ref_kl"] = kl.item(), (a.kl_coef * kl).item()
        if a.entropy_coef > 0:
            e = (ent * w).sum()
            loss = loss - a.entropy_coef * e
            out["loss/entropy"] = (-a.entropy_coef * e).item()
        if a.papo.enabled:
            p = a.papo
            mseqs = [Seq(trajs[i].ids, extras["masked_vision"][i]) for i in rows]
            if p.masked_grad:
                mlogp = pol.logprobs(mseqs, maskd, temperature=temp, share_prefix=share)
            else:
                mlogp = left_pad([extras["masked"][i] for i in rows]).to(dev)
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

    # ------------------------------------------------------------------ one step

    def step(self) -> tuple[dict, list]:
        cfg, a, pol = self.cfg, self.cfg.algo, self.policy
        times = {}
        t0 = time.perf_counter()
        pol.model.eval()
        trajs, total, parts, kept, zero_std = self.collect()
        times["time/rollout"] = time.perf_counter() - t0
        G = cfg.rollout.group_size
        metrics = {"zero_std_frac": zero_std}
        if not trajs:
            return metrics | {"skipped_samples": len(self.stream.skipped), "prompts_too_long": self.too_long}, []
        t1 = time.perf_counter()
        advs = self.advantages(trajs, total, parts)
        times["time/reward"] = time.perf_counter() - t1
        masks = []
        for i, t in enumerate(trajs):
            use = kept[i // G] and not (a.mask_unfinished and t.finish_reason in ("max_turns", "length"))
            masks.append(list(t.response_mask) if use else [0] * len(t.ids))
        extras = {}
        seqs = [Seq(t.ids, t.vision) for t in trajs]
        temp = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
        times["time/old_logp"] = 0.0  # the sampling-time log-probs are the old log-probs
        if self.ref is not None:
            t2 = time.perf_counter()
            extras["ref"] = self._no_grad_logprobs(self.ref, seqs, trajs, temp)
            times["time/ref_logp"] = time.perf_counter() - t2
        if a.papo.enabled:
            t3 = time.perf_counter()
            extras["masked_vision"] = self._masked_vision(trajs)
            if not a.papo.masked_grad:
                mseqs = [Seq(t.ids, v) for t, v in zip(trajs, extras["masked_vision"])]
                extras["masked"] = self._no_grad_logprobs(pol, mseqs, trajs, temp)
            times["time/masked_logp"] = time.perf_counter() - t3
        t4 = time.perf_counter()
        upd = self.update(trajs, advs, masks, extras)
        times["time/update"] = time.perf_counter() - t4
        if upd.pop("_skipped", 0.0) == 0.0:
            self.nonfinite_in_row = 0
        elif self.nonfinite_in_row >= cfg.train.max_nonfinite_steps:
            raise FloatingPointError(
                f"{self.nonfinite_in_row} steps in a row had a NaN/inf loss or gradient norm "
                f"(limit train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); stopping. Lower the "
                "learning rate, check the reward function, or raise the limit.")
        with warnings.catch_warnings():  # a step whose update was skipped still advances the schedule
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        metrics.update(upd)
        metrics.update(self._rollout_metrics(trajs, total, parts, advs, kept))
        metrics.update(times)
        metrics["time/step"] = time.perf_counter() - t0
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["nonfinite_steps"] = self.nonfinite_total
        metrics["skipped_samples"] = len(self.stream.skipped)
        metrics["prompts_too_long"] = self.too_long
        for key in METRIC_KEYS:  # terms this recipe does not compute are logged as null, never dropped
            metrics.setdefault(key, None)
        for i, t in enumerate(trajs):
            t.rewards = {"total": total[i]} | {k: v[i] for k, v in parts.items()}
            t.token_stats = {"advantage": advs[i]}
        self.step_idx += 1
        return metrics, trajs

    def _share_groups(self) -> int:
        """The group size whose rows share a prompt in the log-prob passes (train.share_prompt), else 0."""
        return self.cfg.rollout.group_size if self.cfg.train.share_prompt else 0

    def _no_grad_logprobs(self, policy, seqs, trajs, temp, chunk: int = 16) -> list[list[float]]:
        """Teacher-forced log-probs per trajectory, in chunks of similar lengths (little padding); with
        train.share_prompt, a group's rows stay together and share their prompt's pass (see `micro_batches`)."""
        group_size = self._share_groups()
        out: list = [None] * len(seqs)
        with torch.no_grad():
            for rows in micro_batches(list(range(len(seqs))), [len(s.ids) for s in seqs], chunk, group_size):
                mask = left_pad([trajs[i].response_mask for i in rows], 0, torch.long)
                lp = policy.logprobs([seqs[i] for i in rows], mask.to(policy.device), temperature=temp,
                                     share_prefix=group_size > 0).cpu()
                for k, i in enumerate(rows):
                    out[i] = lp[k, lp.shape[1] - len(seqs[i].ids):].tolist()
        return out

    def _rollout_metrics(self, trajs, total, parts, advs, kept) -> dict:
        tt = torch.tensor(total)
        m = {"reward/mean": tt.mean().item(), "reward/std": tt.std().item() if len(tt) > 1 else 0.0,
             "accuracy": float(np.mean(parts.get("accuracy", [0.0])))}
        for k, v in parts.items():
            v = torch.tensor(v, dtype=torch.float32)
            m[f"reward/{k}/mean"] = v.mean().item()
            m[f"reward/{k}/std"] = v.std().item() if len(v) > 1 else 0.0
        flat = torch.tensor([x for adv, t in zip(advs, trajs) for x, mk in zip(adv, t.response_mask) if mk] or [0.0])
        m.update({"adv/mean": flat.mean().item(), "adv/std": flat.std().item() if len(flat) > 1 else 0.0,
                  "adv/min": flat.min().item(), "adv/max": flat.max().item()})
        calls = [t for t in trajs if t.tool_calls]
        m["tool/call_rate"] = len(calls) / len(trajs)
        n_calls = sum(len(t.tool_calls) for t in trajs)
        m["tool/failure_rate"] = sum(not c.valid for t in trajs for c in t.tool_calls) / max(1, n_calls)
        m["visual_tokens_per_sample"] = float(np.mean([t.visual_tokens for t in trajs]))
        m["response_length"] = float(np.mean([t.num_response_tokens for t in trajs]))
        m["truncation_rate"] = float(np.mean([t.finish_reason in ("length", "max_turns") for t in trajs]))
        m["kept_group_frac"] = sum(kept) / max(1, len(kept))
        m["num_trajectories"] = len(trajs)
        if "needs_zoom" in (trajs[0].meta or {}):
            for flag, name in ((True, "zoom"), (False, "no_zoom")):
                sub = [t for t in trajs if bool(t.meta.get("needs_zoom")) == flag]
                if sub:
                    m[f"tool/call_rate_{name}"] = sum(bool(t.tool_calls) for t in sub) / len(sub)
        return m


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


LR_SCHEDULES = ("constant", "linear", "cosine")


def check_schedule(kind: str, warmup: int, section: str = "train") -> None:
    """Raise, naming `section`'s keys (train.* or sft.*), unless `kind` is a known schedule and warmup >= 0."""
    if kind not in LR_SCHEDULES or warmup < 0:
        raise ValueError(f"{section}.lr_schedule must be one of {', '.join(LR_SCHEDULES)} and {section}.warmup_steps "
                         f">= 0, got {kind!r} and {warmup}")


def make_scheduler(optimizer, kind: str, warmup: int, total: int, section: str = "train"):
    """Linear warm-up over `warmup` steps, then `kind` (constant, or linear / cosine decay to 0 at `total`)."""
    check_schedule(kind, warmup, section)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - frac
        return 0.5 * (1 + math.cos(math.pi * frac))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_run_config(cfg: Config, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
