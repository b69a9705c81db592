"""The multi-turn rollout engine: prompts x their samples (`n_per_prompt`) through the AdaptVision crop-tool loop.

Tool mode: the model first sees a low-resolution view; each turn generates for the trajectories still
active, stops at `</tool_call>` or the end of the turn, has the recipe's tool (`rollout.tool`, the crop tool
by default; vlmrl.rollout.tools) read and run the call, and appends its observation turn (`<tool_response>` +
image + instruction, or an error text), until an answer, the turn cap or the length cap. The engine knows no
tool's arguments: it hands the tool the sample's images and those seen so far (ToolContext) and records what
the tool returns. Direct mode: one turn on the full-resolution image.

Token bookkeeping is append-only: a turn's tokens are never re-rendered, so a teacher-forced pass over
`traj.ids` reproduces the sampling-time log-probs (tests/test_rollout.py checks it).

Generation goes through a `vlmrl.models.sampler.Sampler` only (default: `HFSampler` over the policy): each turn
hands it `Prompt`s (token ids + PIL images) and takes back sampled ids and log-probs. Images are encoded with the
policy's codec (`codec.vision`, memoised per image), whose encodings the trajectories keep for training.
The HF sampler continues a later turn from the cache of the turn before (it remembers its previous call's rows),
so it prefills only the observation; tests/test_hf_sampler_kv.py checks it matches a full re-prefill. A rollout
ends with `sampler.release()`, which frees that cache.
"""

from __future__ import annotations

from typing import Callable

import torch

from vlmrl.config import RolloutConfig
from vlmrl.data.images import resample_filter
from vlmrl.models.hf_sampler import HFSampler
from vlmrl.models.policy import Policy
from vlmrl.models.sampler import Generation, Prompt, Sampler, SamplingParams
from vlmrl.rollout.tools import crop as crop_tool
from vlmrl.rollout.tools.base import ToolCallError, ToolContext
from vlmrl.rollout.tools.coords import default_convention
from vlmrl.rollout.tools.registry import make_tool
from vlmrl.rollout.trajectory import ToolCallRecord, TrajImage, Trajectory


class PromptTooLong(ValueError):
    """A prompt (with its image tokens) does not fit the length cap; prompts with images are never cut."""


def _default_messages(sample, cfg: RolloutConfig, family: str) -> list[dict]:
    from vlmrl.data.prompts import build_messages

    if cfg.mode == "direct":
        return build_messages(sample, mode="direct", style=cfg.prompt_style)
    convention = cfg.coord_convention or default_convention(family)
    tool = make_tool(cfg.tool, cfg.tool_name)
    return build_messages(sample, mode="tool", style=cfg.prompt_style, tool_name=tool.name, coords=convention,
                          schema=tool.schema(convention, cfg.prompt_style), line=tool.short_prompt(convention))


class RolloutEngine:
    """Runs rollouts: `policy` gives the tokenizer and image codec, `sampler` (default: `HFSampler(policy)`) the
    generations. `messages_fn(sample, cfg, family)` builds the chat messages of a sample."""

    def __init__(self, policy: Policy, cfg: RolloutConfig | None = None,
                 messages_fn: Callable | None = None, sampler: Sampler | None = None):
        self.policy = policy
        self.codec = policy.codec
        self.sampler = sampler if sampler is not None else HFSampler(policy)
        self.cfg = cfg or RolloutConfig()
        self.messages_fn = messages_fn or _default_messages
        tok = policy.tokenizer
        self._im_end = tok.convert_tokens_to_ids("<|im_end|>")
        self._encode = lambda s: tok.encode(s, add_special_tokens=False)
        self.convention = self.cfg.coord_convention or default_convention(policy.family)
        self.tool = make_tool(self.cfg.tool, self.cfg.tool_name)

    # ------------------------------------------------------------------ prompts

    def view(self, image):
        """The view the model is shown of a prompt image: the first view in tool mode, else the image in its budget."""
        cfg, f = self.cfg, self.policy.factor
        rs = resample_filter(cfg.resample)
        if cfg.mode == "tool":
            return crop_tool.first_view(image, cfg.first_view_scale, f, cfg.first_view_min_pixels,
                                        cfg.first_view_max_pixels, rs)
        return crop_tool.first_view(image, 1.0, f, cfg.image_min_pixels, cfg.image_max_pixels, rs)

    def build_prompt(self, sample, index: int = 0) -> tuple[Prompt, list[TrajImage]]:
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
        ids, views, images = [], [], []
        for t in raw_ids:
            if t != pol.image_token_id:
                ids.append(t)
                continue
            src = sample.images[len(views)]
            view = self.view(src)
            v = self.codec.vision(view)
            views.append(view)
            images.append(TrajImage("input", view.size, src.size, v.num_tokens(pol.merge), -1, image=view,
                                    source=len(views) - 1))
            ids.extend([pol.image_token_id] * v.num_tokens(pol.merge))
        if len(ids) >= self.cfg.max_total_tokens:
            raise PromptTooLong(f"{where}: the prompt is {len(ids)} tokens (images included), which does not "
                                f"fit max_total_tokens={self.cfg.max_total_tokens}")
        return Prompt(ids, views), images

    # ------------------------------------------------------------------ rollouts

    @torch.no_grad()
    def rollout(self, samples: list, n_per_prompt: int | list[int] = 1, generator: torch.Generator | None = None,
                prompts: list | None = None, first_group_id: int = 0) -> list[Trajectory]:
        """`n_per_prompt[i]` trajectories for sample i (an int: that many for every sample), prompt-major
        (sample 0's, then sample 1's, ...). Sample i's trajectories form group `first_group_id + i`.
        `prompts`: the samples' `build_prompt` results when the caller already built them."""
        cfg = self.cfg
        counts = [n_per_prompt] * len(samples) if isinstance(n_per_prompt, int) else list(n_per_prompt)
        if len(counts) != len(samples):
            raise ValueError(f"n_per_prompt has {len(counts)} entries for {len(samples)} samples")
        bad = [i for i, n in enumerate(counts) if not isinstance(n, int) or isinstance(n, bool) or n < 1]
        if bad:
            raise ValueError(f"n_per_prompt[{bad[0]}] must be an integer >= 1, got {counts[bad[0]]!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        if prompts is None:
            prompts = [self.build_prompt(s, i) for i, s in enumerate(samples)]
        trajs: list[Trajectory] = []
        for i, (s, (seq, imgs), n) in enumerate(zip(samples, prompts, counts)):
            vision = [self.codec.vision(im) for im in seq.images]
            for g in range(n):
                trajs.append(Trajectory(
                    prompt_index=i, sample_index=g, sample_id=str(getattr(s, "id", i)), question=s.question,
                    answer=str(s.answer), answer_type=s.answer_type, ids=list(seq.ids),
                    response_mask=[0] * len(seq.ids), turn_ids=[-1] * len(seq.ids), logprobs=[0.0] * len(seq.ids),
                    prompt_len=len(seq.ids), images=[TrajImage(**{**im.__dict__}) for im in imgs],
                    mode=cfg.mode, choices=getattr(s, "choices", None), meta=dict(getattr(s, "meta", {}) or {}),
                    group_id=first_group_id + i, vision=list(vision)))
        stops = ("</tool_call>",) if cfg.mode == "tool" else ()
        active = list(range(len(trajs)))
        for turn in range(cfg.max_turns if cfg.mode == "tool" else 1):
            if not active:
                break
            if turn == 0:
                gens = self._first_turn([p[0] for p in prompts], counts, stops, generator,
                                         [s.question for s in samples])
            else:
                # each trajectory's whole history (the images it has seen, in order, are its TrajImages')
                seqs = [Prompt(list(trajs[i].ids), [im.image for im in trajs[i].images]) for i in active]
                gens = self._generate_each(seqs, stops, generator)
            still = []
            for i, gen in zip(active, gens):
                if self._absorb(trajs[i], samples[trajs[i].prompt_index], gen, turn):
                    still.append(i)
            active = still
        self.sampler.release()  # no later turn extends these rows
        for t in trajs:
            t.visual_tokens = sum(im.visual_tokens for im in t.images)
        return trajs

    def _first_turn(self, seqs: list[Prompt], counts: list[int], stops, generator, questions: list[str]):
        """`counts[i]` samples of prompt i, each starting with `first_turn_prefix` when one is set (its
        `{question}`, if any, replaced by the sample's question): the forced tokens are part of the turn
        (log-prob 0.0), so its text, and a tool call in it, is what gets parsed; the prompt sampled from ends
        with them. A prefix that already holds a stop string (a whole `<tool_call>...</tool_call>`) is the turn."""
        cfg = self.cfg
        texts = [cfg.first_turn_prefix.replace("{question}", (q or "").strip()) for q in questions]
        cuts = [min((p.index(s) + len(s) for s in stops if s in p), default=None) for p in texts]
        whole_turn = all(c is not None for c in cuts)
        if whole_turn:
            texts = [p[:c] for p, c in zip(texts, cuts)]
        encoded = {p: self._encode(p) if p else [] for p in set(texts)}  # one prefix text: encoded once
        forced = [encoded[p] for p in texts]
        owner = [i for i, n in enumerate(counts) for _ in range(n)]  # the prompt of each generation
        if whole_turn:
            return [Generation(list(forced[i]), [0.0] * len(forced[i]), "stop") for i in owner]
        seqs = [Prompt(list(s.ids) + f, s.images) for s, f in zip(seqs, forced)]
        budget = [max(1, min(cfg.max_new_tokens - len(f), cfg.max_total_tokens - len(s.ids))) for s, f in zip(seqs, forced)]
        gens = self.sampler.generate(seqs, SamplingParams(
            max_new_tokens=budget, temperature=cfg.temperature, top_p=cfg.top_p, stop_strings=stops,
            n=counts[0] if len(set(counts)) == 1 else counts, generator=generator))
        return [Generation(forced[i] + g.ids, [0.0] * len(forced[i]) + g.logprobs, g.finish)
                if forced[i] else g for i, g in zip(owner, gens)]

    def _generate_each(self, seqs: list[Prompt], stops, generator):
        """Later turns: each trajectory has its own history; cap new tokens by its remaining length."""
        cfg = self.cfg
        budget = [max(1, min(cfg.max_new_tokens, cfg.max_total_tokens - len(s.ids))) for s in seqs]
        return self.sampler.generate(seqs, SamplingParams(
            max_new_tokens=budget, temperature=cfg.temperature, top_p=cfg.top_p, stop_strings=stops, n=1,
            generator=generator))

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
        call = self.tool.read(text) if cfg.mode == "tool" else None
        if call is None:
            t.finish_reason = "answered"
            return False
        if turn + 1 >= cfg.max_turns:
            t.tool_calls.append(ToolCallRecord(turn, getattr(call, "raw", text), False,
                                               error="not executed: the turn limit was reached", name=self.tool.name,
                                               arguments=getattr(call, "arguments", None)))
            t.finish_reason = "max_turns"
            return False
        observation, image = self._run_tool(t, sample, call, turn)
        end = [] if gen.ids and gen.ids[-1] == self._im_end else [self._im_end]
        pre = end + self._encode("\n<|im_start|>user\n" + observation.before_image)
        obs_ids = list(pre)
        vis = None
        if image is not None:
            vis = self.codec.vision(image)
            obs_ids += self.codec.image_placeholder(vis)
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
        """Run a read call with the recipe's tool; records it and returns (observation, its image or None)."""
        cfg, pol, tool = self.cfg, self.policy, self.tool
        out = call
        if not isinstance(call, ToolCallError):
            context = ToolContext(sample.images, t.images, self.convention, pol.factor, cfg.crop_min_pixels,
                                  cfg.crop_max_pixels, turn, cfg.crop_min_box, resample_filter(cfg.resample))
            out = tool.run(call.args, context)
        arguments = getattr(call, "arguments", None)
        if isinstance(out, ToolCallError):
            t.tool_calls.append(ToolCallRecord(turn, call.raw or "", False, out.message, tool.name, arguments,
                                               dict(out.record)))
            return tool.error_observation(out), None
        t.tool_calls.append(ToolCallRecord(turn, call.raw, True, None, tool.name, arguments, dict(out.record)))
        if out.image is None:
            return out, None
        shown = out.image
        n = self.codec.image_tokens(shown.image.size)
        t.images.append(TrajImage(shown.kind, shown.image.size, sample.images[shown.source].size, n, turn,
                                  shown.box_seen, shown.box_original, image=shown.image, source=shown.source))
        return out, shown.image
