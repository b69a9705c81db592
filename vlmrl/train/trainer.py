"""The RL trainer: rollouts -> rewards -> advantages -> (PAPO masked pass) -> PPO-style updates.

One step, top to bottom (`Trainer.step`):
1. take B prompts for this process, roll out `samples_per_prompt` samples each (rollout.group_size, or Knapsack
   RL's per-prompt share of B x group_size with algo.budget=knapsack: vlmrl/train/budget.py; direct or tool
   mode) through the sampler (`vlmrl.models.sampler.Sampler`, `HFSampler` by default, or vLLM with
   `rollout.backend: vllm`; its `sync_weights` runs after the update's last optimizer step); each prompt
   occurrence is one group, with its own group id;
2. score them (vlmrl.rewards.trajectories), drop groups the filters reject (DAPO dynamic sampling,
   PAPO-D's accuracy window), resampling prompts up to `max_sampling_tries`;
3. pad the step's trajectories once into a `RolloutBatch` (vlmrl/train/batch.py); advantages per group id,
   as the algorithm table (vlmrl.algos.table) says: GRPO/Dr.GRPO/DAPO/GSPO per sequence, DTPO per token;
4. old log-probs are the ones recorded at sampling time (the consistency test guarantees they equal a
   teacher-forced pass), so no extra pass (vLLM backend with `vllm.old_logp: trainer`: one no-grad pass
   recomputes them, the gap to vLLM's is logged and `vllm.tis_cap` weights the loss; docs/vllm.md); a reference pass only when `kl_coef > 0`; a masked-image pass
   only for PAPO;
5. updates: the batch is split into mini-batches (one optimizer step each) and micro-batches (gradient
   accumulation, row slices of the batch; their loss terms: vlmrl/train/loss.py); loss weights are computed
   per mini-batch so accumulation is exact.
   A group's rows share a micro-batch where its size allows, and the log-prob passes run their common prompt
   (and its images) once (`train.share_prompt`, `Policy.logprobs(share_prefix=True)`).

A group stays on one process, so advantages need no communication; accelerate (DDP or FSDP2) averages grads.
With several processes the loss divides by the global token count of each mini-batch (an all-gather of the counts,
`vlmrl/train/distributed.py`), so 2 processes give the gradient 1 process gives on the same rows, and every rank
runs the same number of mini- and micro-batches (padding with passes that add zero), as sharded weights need.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from vlmrl import algos
from vlmrl.algos.table import check_algorithm
from vlmrl.config import Config, save_config
from vlmrl.data.images import resample_filter
from vlmrl.models.codec import Seq
from vlmrl.models.policy import Policy
from vlmrl.models.sampler import Sampler
from vlmrl.rewards.compose import ComposedReward
from vlmrl.rollout.engine import PromptTooLong, RolloutEngine
from vlmrl.train.batch import RolloutBatch, micro_batches
from vlmrl.train.budget import Budget, budget_metrics
from vlmrl.train.distributed import Dist, VisionKeepAlive, make_accelerator, set_wrap_classes
from vlmrl.train.loss import micro_batch_loss
from vlmrl.train.memory import keep_freed_memory
from vlmrl.train.metrics import METRIC_KEYS
from vlmrl.train.papo_views import masked_views, tile_size
from vlmrl.train.rollout_metrics import rollout_metrics
from vlmrl.train.schedule import make_scheduler
from vlmrl.train.stream import PromptStream


class Trainer:
    """`sampler`: the generation backend rollouts use (default: `HFSampler(policy)`); it must sample from `policy`'s
    weights once `sync_weights(policy.model)` has been called after an update's optimizer steps."""

    def __init__(self, cfg: Config, accelerator=None, policy: Policy | None = None, dataset=None,
                 sampler: Sampler | None = None):
        self.cfg = cfg
        t = cfg.train
        if t.prompts_per_step < 1 or cfg.rollout.group_size < 1:
            raise ValueError("train.prompts_per_step and rollout.group_size must be >= 1")
        self.algorithm = check_algorithm(cfg.algo.name, cfg.reward.kind, cfg.rollout.mode, cfg.algo.loss_agg)
        self.rewards = ComposedReward.from_config(cfg.reward, cfg.algo.name)  # the recipe's reward (parts, aggregation)
        win = cfg.algo.acc_window
        if win is not None and (len(win) != 2 or not 0 <= win[0] < win[1] <= 1):
            raise ValueError(f"algo.acc_window must be [low, high] with 0 <= low < high <= 1, got {win!r}")
        self.budget = Budget(cfg)  # rollouts per prompt: algo.budget (vlmrl/train/budget.py)
        self._budgets: list[int] = []  # this step's rollouts per prompt, as samples_per_prompt gave them
        if t.keep_freed_memory:
            keep_freed_memory()
        cpu = cfg.model.device == "cpu" or not torch.cuda.is_available()
        self.acc = accelerator or make_accelerator(cpu, log_with=t.log_with or None, project_dir=t.output_dir)
        self.dist = Dist(self.acc)
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
        if self.dist.sharded and sampler is None and cfg.rollout.backend == "vllm":
            raise ValueError("rollout.backend=vllm under FSDP is not supported yet (the weight push needs a gathered "
                             "state dict): train with DDP (recipes/accelerate/ddp.yaml) or the HF sampler under FSDP")
        if self.dist.sharded and sampler is None:  # sampling reads a full copy, taken before sharding
            from vlmrl.models.gathered_sampler import GatheredSampler

            sampler = GatheredSampler(self.policy, cfg.hf_sampler, copy_of=self.policy.model, device=self.acc.device)
        if self.dist.world > 1:  # every forward runs the vision tower (FSDP collectives, DDP gradients)
            self.keepalive = VisionKeepAlive(self.policy.core)
        set_wrap_classes(self.acc, self.policy.family)
        self.policy.model, self.optimizer = self.acc.prepare(self.policy.model, self.optimizer)
        if self.dist.sharded and type(sampler).__name__ == "GatheredSampler":
            sampler.sync_weights(self.policy.model)  # fills the copy (a collective, on every rank)
        self.ref = None
        if cfg.algo.kl_coef > 0:  # the reference model exists only when its KL is used
            self.ref = Policy.load(cfg.model.path, dtype=cfg.model.dtype, device=str(self.acc.device))
            self.ref.model.requires_grad_(False).eval()
        if dataset is None:
            from vlmrl.data import load_dataset

            dataset = load_dataset(cfg.data.train, format=cfg.data.format, max_image_pixels=cfg.data.max_image_pixels)
        self.stream = PromptStream(dataset, t.seed, self.acc.process_index, self.acc.num_processes, cfg.data.shuffle)
        if sampler is None:  # rollout.backend: hf (HFSampler) or vllm (colocated or server; the `vllm:` section)
            from vlmrl.models.samplers import make_sampler

            sampler = make_sampler(self.policy, cfg.rollout.backend, cfg.hf_sampler, cfg.vllm, cfg.rollout,
                                   model_dir=cfg.model.path,
                                   weights_dir=cfg.vllm.weights_dir or str(self.out / "vllm_weights"),
                                   is_main=self.is_main, training=True)
        self.sampler = sampler
        self.engine = RolloutEngine(self.policy, cfg.rollout, sampler=self.sampler)
        self.gen = torch.Generator().manual_seed(t.seed * 7919 + self.acc.process_index)
        self.mask_gen = torch.Generator().manual_seed(t.seed * 104729 + self.acc.process_index)
        self.step_idx = 0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.too_long = 0
        self.sampling_stats = {}
        self._group_images = {}

    # ------------------------------------------------------------------ rollout + rewards

    def samples_per_prompt(self, samples: list) -> list[int]:
        """How many trajectories to sample for each prompt: rollout.group_size for every prompt (algo.budget=uniform)
        or Knapsack RL's share of len(samples) x group_size by each prompt's success rate (algo.budget=knapsack).
        The seam for per-prompt budgets (a subclass may give prompts other counts)."""
        return self.budget.per_prompt(samples)

    def _rollout(self, n_prompts: int, first_group_id: int) -> list:
        """Roll out n prompts as groups first_group_id, first_group_id + 1, ...; prompts too long for the
        length cap are skipped and counted."""
        ok, prompts = [], []
        for s in self.stream.next(n_prompts):
            try:
                prompts.append(self.engine.build_prompt(s))
                ok.append(s)
            except PromptTooLong:
                self.too_long += 1
        if not ok:
            return []
        self._group_images.update({first_group_id + i: list(s.images) for i, s in enumerate(ok)})
        n = self.samples_per_prompt(ok)
        self._budgets += list(n)
        return self.engine.rollout(ok, n, generator=self.gen, prompts=prompts, first_group_id=first_group_id)

    def _score(self, trajs, groups: torch.Tensor):
        a, ro = self.cfg.algo, self.cfg.rollout
        total, parts = self.rewards.score(trajs, groups)
        if a.overlong_buffer > 0:  # DAPO's soft overlong punishment, on the total (and DTPO's outcome reward)
            max_len = ro.max_new_tokens * (ro.max_turns if ro.mode == "tool" else 1)
            pen = algos.overlong_penalty(torch.tensor([t.num_response_tokens for t in trajs]), max_len,
                                         a.overlong_buffer, a.overlong_penalty).tolist()
            total = [x + p for x, p in zip(total, pen)]
            if "outcome" in parts:
                parts["outcome"] = [x + p for x, p in zip(parts["outcome"], pen)]
            parts["overlong"] = pen
        return total, parts

    def _keep_groups(self, total, parts, groups: torch.Tensor) -> list[bool]:
        """One flag per group (in group-id order): whether the filters keep it."""
        a = self.cfg.algo
        keep = torch.ones(len(torch.unique(groups)), dtype=torch.bool)
        if a.dynamic_sampling:
            if a.filter_metric == "total":  # the total's spread, or any part's (normalize_then_sum)
                keep &= self.rewards.signal_std(total, parts, groups) >= 1e-4
            elif a.filter_metric not in parts:
                raise ValueError(f"algo.filter_metric={a.filter_metric!r} is not a reward part of this recipe "
                                 f"(parts: total, {', '.join(sorted(parts))})")
            else:
                keep &= algos.dynamic_sampling_keep(torch.tensor(parts[a.filter_metric], dtype=torch.float32), groups)
        if a.acc_window:
            acc = torch.tensor(parts.get("accuracy", total))
            keep &= algos.accuracy_window_keep(acc, groups, a.acc_window[0], a.acc_window[1])
        return keep.tolist()

    def collect(self):
        """Rollouts for one step, with group filtering and bounded resampling. Group ids run 0, 1, ... over the
        step's groups, resampling tries included, so `kept[g]` is group g's filter verdict."""
        a, B = self.cfg.algo, self.cfg.train.prompts_per_step
        trajs, total, parts, kept = [], [], {}, []
        self._group_images = {}  # group id -> its sample's source images (PAPO's raw-order masking)
        filtering = a.dynamic_sampling or bool(a.acc_window)
        tries, zero_std, n_groups = 0, 0, 0
        while True:
            need = B - sum(kept) if filtering else B - len(kept)
            new = self._rollout(need, first_group_id=len(kept))
            tries += 1
            if new:
                groups = torch.tensor([t.group_id for t in new])
                t_new, p_new = self._score(new, groups)
                k_new = self._keep_groups(t_new, p_new, groups) if filtering else [True] * len(torch.unique(groups))
                zero_std += int((self.rewards.signal_std(t_new, p_new, groups) < 1e-4).sum())
                n_groups += len(k_new)
                trajs += new
                total += t_new
                for key, v in p_new.items():
                    parts.setdefault(key, []).extend(v)
                kept += k_new
            if sum(kept) >= B or not filtering or tries >= max(1, a.max_sampling_tries):
                break
        short = max(0, B - sum(kept)) if filtering else 0
        self.sampling_stats = {"sampling/tries": tries, "sampling/short_groups": short}
        if short:
            warnings.warn(f"step {self.step_idx + 1}: only {sum(kept)} of {B} groups passed the group filters after "
                          f"{tries} rollout rounds (algo.max_sampling_tries={a.max_sampling_tries}); training on a "
                          f"short batch (logged as sampling/short_groups)", RuntimeWarning, stacklevel=2)
        return trajs, total, parts, kept, zero_std / max(1, n_groups)

    # ------------------------------------------------------------------ advantages

    def advantages(self, batch: RolloutBatch, trajs, total, parts) -> torch.Tensor:
        """Per-token advantages [N, T] in the batch's layout (0 on non-policy tokens)."""
        a = self.cfg.algo
        if self.algorithm.advantage == "dtpo":
            max_turns = max(1, int(batch.turn_ids.max()) + 1)
            tool_turns = torch.zeros(len(trajs), max_turns, dtype=torch.bool)
            for i, t in enumerate(trajs):
                for c in t.tool_calls:
                    tool_turns[i, c.turn] = True
            if self.rewards.aggregation == "normalize_then_sum":  # A_oc, A_tool from their role's parts
                a_oc, a_tool = (self.rewards.advantages(parts, batch.group_ids, rows=self._train_rows(batch), role=r)
                                for r in ("outcome", "tool"))
                return algos.dtpo_mix(a_oc, a_tool, batch.turn_ids, batch.response_mask, a.tool_weight, tool_turns)
            return algos.dtpo_advantages(torch.tensor(parts["outcome"]), torch.tensor(parts["tool"]), batch.turn_ids,
                                         batch.response_mask, batch.group_ids, tool_weight=a.tool_weight,
                                         tool_call_turns=tool_turns)
        scale = "none" if self.algorithm.advantage == "centered" else "group"
        if self.rewards.aggregation == "normalize_then_sum":
            seq_adv = self.rewards.advantages(parts, batch.group_ids, scale, rows=self._train_rows(batch))
        else:
            seq_adv = algos.grpo_advantages(torch.tensor(total), batch.group_ids, scale=scale)
        return seq_adv.unsqueeze(1) * batch.response_mask

    @staticmethod
    def _train_rows(batch: RolloutBatch) -> torch.Tensor:
        """[N] bool: the rows that count in the loss (their advantages' batch statistics, the variance shares)."""
        return batch.loss_mask.bool().any(dim=1)

    def _reward_metrics(self, batch: RolloutBatch, parts) -> dict:
        """Per reward part: its within-group std and its share of the advantage variance (vlmrl.rewards.compose)."""
        dtpo = self.algorithm.advantage == "dtpo"
        scale = "none" if self.algorithm.advantage == "centered" else "group"
        return self.rewards.metrics(parts, batch.group_ids, scale, self._train_rows(batch),
                                    self.cfg.algo.tool_weight if dtpo else None)

    # ------------------------------------------------------------------ updates

    def _masked_vision(self, trajs):
        """PAPO: one randomly patch-masked copy of every image, shared by the samples of a group (by group id), in
        the recipe's mask order (vlmrl/train/papo_views.py), encoded for the vision tower."""
        p, pol = self.cfg.algo.papo, self.policy
        views = masked_views(trajs, self._group_images, p.mask_order, tile_size(p.patch_size, pol.family), p.mask_prob,
                             self.mask_gen, self.engine.view, resample_filter(self.cfg.rollout.resample))
        encoded = {}  # a group's shared views are encoded once
        for row in views:
            for v in row:
                if id(v) not in encoded:
                    encoded[id(v)] = pol.codec.encode_image(v)
        return [[encoded[id(v)] for v in row] for row in views]

    def _agg(self, batch: RolloutBatch, idx: list[int]):
        """(aggregation, loss mask, final-turn mask or None) of a mini-batch's rows."""
        agg = self.cfg.algo.loss_agg or self.algorithm.loss_agg
        mask = batch.take(batch.loss_mask, idx)
        final = algos.final_turn_mask(batch.take(batch.turn_ids, idx), mask) if agg == "dtpo" else None
        return agg, mask, final

    def _loss_weights(self, batch: RolloutBatch, idx: list[int], totals: torch.Tensor | None = None) -> torch.Tensor:
        """The loss weights of a mini-batch's rows, [N, T] (0 outside `idx`): they sum its aggregated loss.
        `totals`: the denominators summed over all processes (`algos.loss_totals`); None: this process's own."""
        a = self.cfg.algo
        agg, mask, final = self._agg(batch, idx)
        norm = self.cfg.rollout.max_new_tokens * (self.cfg.rollout.max_turns if self.cfg.rollout.mode == "tool" else 1)
        out = torch.zeros(batch.loss_mask.shape, dtype=torch.float32)
        batch.put(out, idx, algos.loss_weights(mask, agg, norm_len=norm, final_mask=final, alpha=a.alpha,
                                               totals=totals))
        return out

    def update(self, batch: RolloutBatch) -> dict:
        """PPO epochs over mini-batches of micro-batches; returns averaged loss metrics."""
        cfg, pol = self.cfg, self.policy
        n = len(batch)
        mini = cfg.train.mini_batch_size or n
        micro = max(1, cfg.train.micro_batch_size)
        temp = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def add(k, v):
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1

        pol.model.train()
        perm_gen = torch.Generator().manual_seed(cfg.train.seed + self.step_idx)
        stepped = False
        W = self.dist.world
        n_mini = math.ceil(n / mini)
        if W > 1:  # every rank runs as many mini-batches as the rank with the most
            n_mini = int(self.dist.gather([n_mini]).max())
        # rows without a loss token (groups the filters dropped, unfinished rows masked out) add nothing to the
        # loss or its gradient: they are left out of the passes (they still count where an aggregation counts rows)
        has_tok = (batch.loss_mask.sum(1) > 0).tolist()
        pad_row = next((i for i in range(n) if has_tok[i]), 0)  # the row a padding pass runs (weight 0)
        for _epoch in range(cfg.train.ppo_epochs):
            order = torch.randperm(n, generator=perm_gen).tolist() if cfg.train.ppo_epochs > 1 or mini < n else list(range(n))
            for start in range(0, n_mini * mini, mini):
                idx = order[start:start + mini]
                live = [i for i in idx if has_tok[i]]
                chunks = micro_batches(live, batch.lengths, micro, self._share_groups(batch)) if live else []
                n_tok = int(batch.take(batch.loss_mask, idx).sum()) if idx else 0
                totals, n_chunks = None, len(chunks)
                if W > 1:  # the global counts: tokens, the aggregation's denominators, and micro-batches
                    agg, mask, final = self._agg(batch, idx or [0])
                    local = algos.loss_totals(mask, agg, final) if idx else torch.zeros(2, dtype=torch.float64)
                    everyone = self.dist.gather([n_tok, *local.tolist(), n_chunks])
                    n_tok, totals, n_chunks = int(everyone[:, 0].sum()), everyone[:, 1:3].sum(0), int(everyone[:, 3].max())
                if not n_tok:
                    continue
                # DDP and FSDP average the ranks' gradients: the weights (global denominators) are scaled by W so
                # that the average is the global loss's gradient; with one process, exactly today's weights
                weights = self._loss_weights(batch, idx, totals) * W if idx else None
                for c in range(n_chunks):
                    real = c < len(chunks)
                    rows = [live[k] for k in chunks[c]] if real else [pad_row]  # a padding pass: a real row, weight 0
                    sync = c == n_chunks - 1
                    ctx = self.acc.no_sync(pol.model) if not sync and self.acc.num_processes > 1 else nullcontext()
                    with ctx:
                        if real:
                            loss, m = self._micro_loss(batch, rows, batch.take(weights, rows), n_tok / W, temp)
                        else:
                            loss, m = self._micro_loss(batch, rows, torch.zeros_like(batch.take(batch.old_logp, rows)),
                                                       math.inf, temp)
                            loss = loss * 0.0
                        self.acc.backward(loss)
                    if real:
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
                stepped = True
        if stepped:  # once per update, after its last optimizer step: no generation runs in between (under FSDP
            self.sampler.sync_weights(pol.model)  # the gathered sampler all-gathers the weights here, once per rollout)
        return {k: sums[k] / counts[k] for k in sums if k in counts} | {"_skipped": sums.get("skipped_update", 0.0)}

    def _micro_loss(self, batch: RolloutBatch, rows: list[int], w: torch.Tensor, n_tok: int, temp: float):
        return micro_batch_loss(self.policy, self.cfg.algo, self.algorithm.level, batch, rows, w, n_tok, temp,
                                self.cfg.train.share_prompt, reg_token_mean=self.algorithm.reg_agg == "token-mean")

    # ------------------------------------------------------------------ one step

    def step(self) -> tuple[dict, list]:
        cfg, a, pol = self.cfg, self.cfg.algo, self.policy
        times = {}
        t0 = time.perf_counter()
        pol.model.eval()
        self._budgets = []
        trajs, total, parts, kept, zero_std = self.collect()
        times["time/rollout"] = time.perf_counter() - t0
        self.budget.observe(trajs, parts, self.acc)  # the success rates the next steps' budgets use
        metrics = {"zero_std_frac": zero_std, **self.sampling_stats} | self.budget.pop_step()
        metrics.update(budget_metrics(self._budgets, total, [t.group_id for t in trajs]))
        if not trajs:
            if self.dist.world > 1:  # the other ranks are about to train: skipping here would hang their collectives
                raise RuntimeError(
                    f"process {self.dist.rank}: no trajectory to train on this step (prompts too long for the length "
                    f"cap: {self.too_long}, unusable rows: {len(self.stream.skipped)}); with several processes every "
                    "process must train every step. Raise rollout.max_total_tokens, fix the data, or use one process")
            return metrics | {"skipped_samples": len(self.stream.skipped), "prompts_too_long": self.too_long}, []
        unfinished = ("max_turns", "length") if a.mask_unfinished else ()
        batch = RolloutBatch.from_trajectories(
            trajs, [kept[t.group_id] and t.finish_reason not in unfinished for t in trajs])
        t1 = time.perf_counter()
        batch.advantages = self.advantages(batch, trajs, total, parts)
        times["time/reward"] = time.perf_counter() - t1
        temp = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
        times["time/old_logp"] = 0.0  # the sampling-time log-probs are the old log-probs (HF sampler)
        if cfg.rollout.backend == "vllm" and cfg.vllm.old_logp == "trainer":
            t2 = time.perf_counter()
            metrics.update(self._recompute_old_logp(batch, temp))
            times["time/old_logp"] = time.perf_counter() - t2
        if self.ref is not None:
            t2 = time.perf_counter()
            batch.ref_logp = self._no_grad_logprobs(self.ref, batch.seqs, batch, temp)
            times["time/ref_logp"] = time.perf_counter() - t2
        if a.papo.enabled:
            t3 = time.perf_counter()
            batch.masked_vision = self._masked_vision(trajs)
            if not a.papo.masked_grad:
                mseqs = [Seq(s.ids, v) for s, v in zip(batch.seqs, batch.masked_vision)]
                batch.masked_logp = self._no_grad_logprobs(pol, mseqs, batch, temp)
            times["time/masked_logp"] = time.perf_counter() - t3
        t4 = time.perf_counter()
        upd = self.update(batch)
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
        metrics.update(rollout_metrics(trajs, total, parts, batch, kept))
        metrics.update(self._reward_metrics(batch, parts))
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
            t.token_stats = {"advantage": batch.row(batch.advantages, i)}
        self.step_idx += 1
        return metrics, trajs

    def _recompute_old_logp(self, batch: RolloutBatch, temp: float) -> dict:
        """vLLM backend, `vllm.old_logp: trainer`: the old log-probs become the trainer's (one no-grad pass); the
        sampler's are compared with them (mismatch/*) and, with `vllm.tis_cap`, give the TIS weights."""
        sampler_logp = batch.old_logp
        trainer_logp = self._no_grad_logprobs(self.policy, batch.seqs, batch, temp)
        gap = algos.logp_mismatch(sampler_logp, trainer_logp, batch.loss_mask)
        out = {"mismatch/logp_abs_mean": gap["mean"], "mismatch/logp_abs_max": gap["max"]}
        cap = self.cfg.vllm.tis_cap
        if cap > 0:
            batch.tis_weight = algos.tis_weights(trainer_logp, sampler_logp, batch.loss_mask, cap)
            m = batch.loss_mask.bool()
            out["mismatch/tis_weight_mean"] = float(batch.tis_weight[m].mean()) if m.any() else 1.0
            out["mismatch/tis_capped_frac"] = float((batch.tis_weight[m] >= cap).float().mean()) if m.any() else 0.0
        batch.old_logp = trainer_logp
        return out

    def _share_groups(self, batch: RolloutBatch) -> list[int] | None:
        """Each row's group id when a group's rows share their prompt in the log-prob passes (train.share_prompt)."""
        return batch.group_ids.tolist() if self.cfg.train.share_prompt else None

    def _no_grad_logprobs(self, policy, seqs, batch: RolloutBatch, temp, chunk: int = 16) -> torch.Tensor:
        """Teacher-forced log-probs [N, T] of `seqs` (the batch's rows, or the same tokens with other images), in
        chunks of similar lengths (little padding); with train.share_prompt, a group's rows stay together and
        share their prompt's pass (see `micro_batches`)."""
        groups = self._share_groups(batch)
        out = torch.zeros(batch.old_logp.shape, dtype=torch.float32)
        chunks = micro_batches(list(range(len(seqs))), batch.lengths, chunk, groups)
        n_chunks = len(chunks)
        if self.dist.sharded and policy is self.policy:  # sharded weights: every rank runs as many passes
            n_chunks = int(self.dist.gather([n_chunks]).max())
        with torch.no_grad():
            for c in range(n_chunks):
                rows = chunks[c] if c < len(chunks) else [0]
                mask = batch.take(batch.response_mask, rows)
                lp = policy.logprobs([seqs[i] for i in rows], mask.to(policy.device), temperature=temp,
                                     share_prefix=groups is not None).cpu()
                if c < len(chunks):
                    batch.put(out, rows, lp)
        return out


def save_run_config(cfg: Config, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
