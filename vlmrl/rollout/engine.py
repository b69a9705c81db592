"""The multi-turn rollout engine: B prompts x G samples through the AdaptVision crop-tool loop.

Tool mode: the model first sees a low-resolution view; each turn generates for the trajectories still
active, stops at `</tool_call>` or the end of the turn, parses the call, crops the original image and
appends the observation turn (`<tool_response>` + crop + instruction), until an answer, the turn cap or
the length cap. Direct mode: one turn on the full-resolution image.

Token bookkeeping is append-only: a turn's tokens are never re-rendered, so a teacher-forced pass over
`traj.ids` reproduces the sampling-time log-probs (tests/test_rollout.py checks it).

KV reuse (`reuse_kv`, on by default): a later turn hands each continuing trajectory's cache from the turn
before back to `Policy.generate` (`Seq.kv`), which then prefills only the observation (tool response text and
crop image tokens) instead of the whole history; tests/test_perf_kv.py checks it matches a full re-prefill.
"""

from __future__ import annotations

from typing import Callable

import torch

from vlmrl.config import RolloutConfig
from vlmrl.models.policy import Generation, Policy, Seq
from vlmrl.rollout import tool as crop_tool
from vlmrl.rollout.trajectory import ToolCallRecord, TrajImage, Trajectory


class PromptTooLong(ValueError):
    """A prompt (with its image tokens) does not fit the length cap; prompts with images are never cut."""


def _default_messages(sample, cfg: RolloutConfig, family: str) -> list[dict]:
    from vlmrl.data.prompts import build_messages

    if cfg.mode == "direct":
        return build_messages(sample, mode="direct", style=cfg.prompt_style)
    coords = cfg.coord_convention or crop_tool.default_convention(family)
    return build_messages(sample, mode="tool", style=cfg.prompt_style, tool_name=cfg.tool_name, coords=coords)


class RolloutEngine:
    """Runs rollouts of a Policy. `messages_fn(sample, cfg, family)` builds the chat messages of a sample."""

    def __init__(self, policy: Policy, cfg: RolloutConfig | None = None,
                 messages_fn: Callable | None = None):
        self.policy = policy
        self.cfg = cfg or RolloutConfig()
        self.messages_fn = messages_fn or _default_messages
        tok = policy.tokenizer
        self._im_end = tok.convert_tokens_to_ids("<|im_end|>")
        self._encode = lambda s: tok.encode(s, add_special_tokens=False)
        self.convention = self.cfg.coord_convention or crop_tool.default_convention(policy.family)

    # ------------------------------------------------------------------ prompts

    def _view(self, image):
        cfg, f = self.cfg, self.policy.factor
        if cfg.mode == "tool":
            return crop_tool.first_view(image, cfg.first_view_scale, f, cfg.first_view_min_pixels,
                                        cfg.first_view_max_pixels)
        return crop_tool.first_view(image, 1.0, f, cfg.image_min_pixels, cfg.image_max_pixels)

    def build_prompt(self, sample, index: int = 0) -> tuple[Seq, list[TrajImage]]:
        """Token ids and images of a sample's prompt (first views in tool mode)."""
        pol = self.policy
        where = f"sample {getattr(sample, 'id', index)!r}"
        messages = self.messages_fn(sample, self.cfg, pol.family)
        text = pol.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        raw_ids = self._encode(text)
        n_slots = raw_ids.count(pol.image_token_id)
        if n_slots != len(sample.images):
            raise ValueError(f"{where}: the prompt has {n_slots} image placeholder(s) but the sample has "
                             f"{len(sample.images)} image(s)")
        ids, vision, images = [], [], []
        for t in raw_ids:
            if t != pol.image_token_id:
                ids.append(t)
                continue
            src = sample.images[len(vision)]
            view = self._view(src)
            v = pol.encode_image(view)
            vision.append(v)
            images.append(TrajImage("input", view.size, src.size, v.num_tokens(pol.merge), -1, image=view))
            ids.extend([pol.image_token_id] * v.num_tokens(pol.merge))
        if len(ids) >= self.cfg.max_total_tokens:
            raise PromptTooLong(f"{where}: the prompt is {len(ids)} tokens (images included), which does not "
                                f"fit max_total_tokens={self.cfg.max_total_tokens}")
        return Seq(ids, vision), images

    # ------------------------------------------------------------------ rollouts

    @torch.no_grad()
    def rollout(self, samples: list, group_size: int = 1, generator: torch.Generator | None = None,
                prompts: list | None = None) -> list[Trajectory]:
        """G trajectories per sample, prompt-major (sample 0's G, then sample 1's, ...).
        `prompts`: the samples' `build_prompt` results when the caller already built them."""
        cfg = self.cfg
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        if prompts is None:
            prompts = [self.build_prompt(s, i) for i, s in enumerate(samples)]
        trajs: list[Trajectory] = []
        for i, (s, (seq, imgs)) in enumerate(zip(samples, prompts)):
            for g in range(group_size):
                trajs.append(Trajectory(
                    prompt_index=i, sample_index=g, sample_id=str(getattr(s, "id", i)), question=s.question,
                    answer=str(s.answer), answer_type=s.answer_type, ids=list(seq.ids),
                    response_mask=[0] * len(seq.ids), turn_ids=[-1] * len(seq.ids), logprobs=[0.0] * len(seq.ids),
                    prompt_len=len(seq.ids), images=[TrajImage(**{**im.__dict__}) for im in imgs],
                    mode=cfg.mode, choices=getattr(s, "choices", None), meta=dict(getattr(s, "meta", {}) or {}),
                    vision=list(seq.images)))
        stops = ("</tool_call>",) if cfg.mode == "tool" else ()
        active, kv = list(range(len(trajs))), {}
        for turn in range(cfg.max_turns if cfg.mode == "tool" else 1):
            if not active:
                break
            if turn == 0:
                gens = self._first_turn([p[0] for p in prompts], group_size, stops, generator,
                                         [s.question for s in samples])
            else:
                # each row's cache from the turn before goes with its history (None: full prefill)
                seqs = [Seq(list(trajs[i].ids), trajs[i].vision, kv=kv.pop(i, None)) for i in active]
                gens = self._generate_each(seqs, active, stops, generator)
            still = []
            for i, gen in zip(active, gens):
                if self._absorb(trajs[i], samples[trajs[i].prompt_index], gen, turn):
                    still.append(i)
                    kv[i] = gen.kv if cfg.reuse_kv else None
            active = still
        for t in trajs:
            t.visual_tokens = sum(im.visual_tokens for im in t.images)
        return trajs

    def _first_turn(self, seqs: list[Seq], group_size: int, stops, generator, questions: list[str]):
        """G samples per prompt, each starting with `first_turn_prefix` when one is set (its `{question}`, if
        any, replaced by the sample's question): the forced tokens are part of the turn (log-prob 0.0), so its
        text, and a tool call in it, is what gets parsed; the cache covers them too. A prefix that already
        holds a stop string (a whole `<tool_call>...</tool_call>`) is the turn."""
        cfg, pol = self.cfg, self.policy
        texts = [cfg.first_turn_prefix.replace("{question}", (q or "").strip()) for q in questions]
        cuts = [min((p.index(s) + len(s) for s in stops if s in p), default=None) for p in texts]
        whole_turn = all(c is not None for c in cuts)
        if whole_turn:
            texts = [p[:c] for p, c in zip(texts, cuts)]
        encoded = {p: self._encode(p) if p else [] for p in set(texts)}  # one prefix text: encoded once
        forced = [encoded[p] for p in texts]
        if whole_turn:
            return [Generation(list(f), [0.0] * len(f), "stop") for f in forced for _ in range(group_size)]
        seqs = [Seq(list(s.ids) + f, s.images) for s, f in zip(seqs, forced)]
        budget = [max(1, min(cfg.max_new_tokens - len(f), cfg.max_total_tokens - len(s.ids))) for s, f in zip(seqs, forced)]
        gens = pol.generate(seqs, max_new_tokens=budget, temperature=cfg.temperature, top_p=cfg.top_p,
                            stop_strings=stops, num_samples=group_size, generator=generator)
        return [Generation(forced[i // group_size] + g.ids, [0.0] * len(forced[i // group_size]) + g.logprobs,
                           g.finish, kv=g.kv) if forced[i // group_size] else g for i, g in enumerate(gens)]

    def _generate_each(self, seqs, active, stops, generator):
        """Later turns: each trajectory has its own history; cap new tokens by its remaining length."""
        cfg, pol = self.cfg, self.policy
        budget = [max(1, min(cfg.max_new_tokens, cfg.max_total_tokens - len(s.ids))) for s in seqs]
        return pol.generate(seqs, max_new_tokens=budget, temperature=cfg.temperature, top_p=cfg.top_p,
                            stop_strings=stops, num_samples=1, generator=generator)

    def _append(self, t: Trajectory, ids: list[int], turn: int, policy: bool, logprobs: list[float] | None = None):
        t.ids.extend(ids)
        t.response_mask.extend([1 if policy else 0] * len(ids))
        t.turn_ids.extend([turn] * len(ids))
        t.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    def _absorb(self, t: Trajectory, sample, gen, turn: int) -> bool:
        """Append one generated turn and, for a tool call, its observation. True if the trajectory goes on."""
        cfg, pol = self.cfg, self.policy
        self._append(t, gen.ids, turn, True, gen.logprobs)
        text = pol.tokenizer.decode([x for x in gen.ids if x not in pol.eos_token_ids], skip_special_tokens=False)
        t.turns.append(text)
        if gen.finish != "stop":
            t.finish_reason = "length"
            return False
        call = crop_tool.parse_tool_call(text, cfg.tool_name) if cfg.mode == "tool" else None
        if call is None:
            t.finish_reason = "answered"
            return False
        if turn + 1 >= cfg.max_turns:
            t.tool_calls.append(ToolCallRecord(turn, getattr(call, "raw", text), False,
                                               error="not executed: the turn limit was reached"))
            t.finish_reason = "max_turns"
            return False
        observation, image = self._run_tool(t, sample, call, turn)
        end = [] if gen.ids and gen.ids[-1] == self._im_end else [self._im_end]
        pre = end + self._encode("\n<|im_start|>user\n" + observation.before_image)
        obs_ids = list(pre)
        vis = None
        if image is not None:
            vis = pol.encode_image(image)
            obs_ids += pol.image_placeholder(vis)
            obs_ids += self._encode(observation.after_image)
        obs_ids += self._encode("<|im_end|>\n<|im_start|>assistant\n")
        if len(t.ids) + len(obs_ids) >= cfg.max_total_tokens:
            t.finish_reason = "length"
            if vis is not None:
                t.images.pop()
            return False
        self._append(t, obs_ids, turn, False)
        if vis is not None:
            t.vision.append(vis)
        return True

    def _run_tool(self, t: Trajectory, sample, call, turn: int):
        """Execute a parsed call on the sample's first image; returns (observation text, crop or None)."""
        cfg, pol = self.cfg, self.policy
        if isinstance(call, crop_tool.ToolCallError):
            t.tool_calls.append(ToolCallRecord(turn, call.raw or "", False, error=call.message))
            return crop_tool.observation_text(ok=False, error=call), None
        view = t.images[0]
        mapped = crop_tool.map_box(call.bbox, view.seen_size, view.original_size, self.convention)
        if isinstance(mapped, crop_tool.ToolCallError):
            t.tool_calls.append(ToolCallRecord(turn, call.raw, False, bbox=list(call.bbox), error=mapped.message))
            return crop_tool.observation_text(ok=False, error=mapped), None
        crop = crop_tool.crop_image(sample.images[0], mapped, pol.factor, cfg.crop_min_pixels, cfg.crop_max_pixels)
        t.tool_calls.append(ToolCallRecord(turn, call.raw, True, bbox=list(call.bbox), box_seen=list(mapped.seen_box),
                                           box_original=list(mapped.box)))
        n = (crop.size[0] // pol.factor) * (crop.size[1] // pol.factor)
        t.images.append(TrajImage("crop", crop.size, sample.images[0].size, n, turn, list(mapped.seen_box),
                                  list(mapped.box), image=crop))
        return crop_tool.observation_text(ok=True), crop

