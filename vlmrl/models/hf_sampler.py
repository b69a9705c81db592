"""The Hugging Face sampler: batched sampling with the policy's own model, and every CPU speed trick of it.

`HFSampler(policy, HFSamplerConfig(...)).generate(prompts, params)` implements `vlmrl.models.sampler.Sampler`.
Vision special tokens are never sampled. Recorded log-probs are those of the sampled tokens under the
temperature-scaled distribution (before top-p), i.e. what `Policy.logprobs(..., temperature=...)` recomputes.

Speed (see tools/bench/rollout.py), all switched in `HFSamplerConfig`:
- each prompt is prefilled once and its cache given to its samples; with `share_prompt_cache` (and the fused
  decoding step, and prompts of at least `share_prompt_min` cached keys per layer) the samples read one copy of it
  (`KVCache.share_prefix`) instead of a copy each;
- the cache is written in place (`KVCache`), and decoding steps skip the HF forward's per-step work (`DecodeStep`);
- `packed_weights`: on CPU in float32 decoding steps use oneDNN-packed copies of the linear weights of at least
  `packed_min_numel` entries (a second copy of the language model's weights, refreshed when they change);
- `reuse_kv`: the sampler remembers the rows of its previous call (their tokens, images and cache); a call whose
  every prompt extends one of them (the same ids first, the same image objects first) prefills only the new tokens
  of each, at the rope positions a full pass gives them, as a rollout's later tool turns do. Any other call is
  prefilled in full. Both give the same tokens and log-probs (up to float rounding). `release()` (the engine calls it
  when a rollout ends) and `sync_weights` (their cache belongs to the old weights) forget the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmrl.config import HFSamplerConfig  # noqa: F401  (the recipe section hf_sampler; importable from here too)
from vlmrl.models.codec import Seq
from vlmrl.models.decoding import DecodeStep, PackedLinears, can_fuse
from vlmrl.models.kvcache import KVCache, KVRef, KVState, compaction_runs
from vlmrl.models.sampler import Generation, Prompt, Sampler, SamplingParams


@dataclass
class _Rows:
    """Decoding state of a batch: its cache, next-token logits [n, V], next rope position [n], which cache
    columns hold real tokens [n, W], and the tokens (and images) each row's cache holds."""

    cache: object
    logits: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor
    covered: list[tuple[list[int], list]]

    def repeat(self, counts: list[int], share: bool = False) -> "_Rows":
        """Row i becomes counts[i] rows; `share` (equal counts only): the cache keeps each prompt once
        (`KVCache.share_prefix`)."""
        equal = len(set(counts)) == 1
        k = counts[0] if equal else torch.tensor(counts, device=self.logits.device)
        if not equal or k > 1:
            if share and equal:
                self.cache.share_prefix(k)
            else:
                self.cache.batch_repeat_interleave(k)
            self.logits, self.pos, self.valid = (x.repeat_interleave(k, 0) for x in (self.logits, self.pos, self.valid))
        self.covered = [c for c, m in zip(self.covered, counts) for _ in range(m)]
        return self


class HFSampler(Sampler):
    """Samples from `policy`'s model (a `vlmrl.models.policy.Policy`), encoding images with its codec."""

    def __init__(self, policy, config: HFSamplerConfig | None = None):
        self.policy = policy
        self.codec = policy.codec
        self.config = config or HFSamplerConfig()
        self.linears = PackedLinears(self.config.packed_weights, self.config.packed_min_numel)
        self.eos_token_ids = list(self.codec.eos_token_ids)
        self._last: list[KVRef] = []  # the rows of the previous call (reuse_kv)
        self.continued = False  # whether the last call continued the rows of the one before (reuse_kv)

    def sync_weights(self, model) -> None:
        """The policy's model is the one sampled from, so its new weights are used as they are (packed copies follow
        their weights' versions); the remembered rows are dropped: their cache holds the old weights' keys."""
        core = getattr(model, "module", model)
        core = core.get_base_model() if hasattr(core, "get_base_model") else core
        if core is not self.policy.core:
            raise ValueError("HFSampler samples from its policy's own model; sync_weights got another model")
        self.release()

    def release(self) -> None:
        """Forget the remembered rows, freeing their cache."""
        self._last = []

    # ------------------------------------------------------------------ generate

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        """`params.n` samples of each prompt, prompt-major (p0s0, p0s1, ..., p1s0, ...)."""
        if not prompts:
            return []
        caps, counts = params.per_prompt(len(prompts))
        # images are encoded outside inference mode: the codec's memoised encodings also feed training passes
        seqs = [self._seq(p, i) for i, p in enumerate(prompts)]
        # rows are continued one sample each (a continued cache is not repeated per sample)
        refs = self._matching_rows(prompts) if self.config.reuse_kv and max(counts) == 1 else None
        self._last, self.continued = [], False
        model = self.policy.model
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                rows = self._prefill(seqs, prompts, refs, reserve=max(caps))
                rows = rows.repeat(counts, share=self._share_prompt(rows))
                caps = [c for c, m in zip(caps, counts) for _ in range(m)]
                gens, refs = self._decode(rows, caps, params.temperature, params.top_p, params.stop_strings,
                                          params.torch_generator())
        finally:
            if was_training:
                model.train()
        if self.config.reuse_kv:
            self._last = refs
        return gens

    def _seq(self, prompt: Prompt, i: int) -> Seq:
        """A prompt's ids and encoded images (the codec's memoised encodings), checked."""
        if not isinstance(prompt, Prompt):
            raise TypeError(f"prompt {i}: expected a vlmrl.models.sampler.Prompt, got {type(prompt).__name__}")
        if not prompt.ids:
            raise ValueError(f"prompt {i}: no token ids")
        seq = Seq(list(prompt.ids), [self.codec.vision(im) for im in prompt.images])
        self.codec.check_seq(seq, where=f"prompt {i}")
        return seq

    def _matching_rows(self, prompts: list[Prompt]) -> list[KVRef] | None:
        """For each prompt, a distinct row of the previous call that it extends (the first unused one), or None
        when some prompt extends none."""
        if not self._last:
            return None
        used, refs = set(), []
        for p in prompts:
            j = next((j for j, r in enumerate(self._last) if j not in used and r.matches(p.ids, p.images)), None)
            if j is None:
                return None
            used.add(j)
            refs.append(self._last[j])
        return refs

    def _share_prompt(self, rows: _Rows) -> bool:
        """Whether the samples of each prompt read one copy of its cache (`KVCache.share_prefix`): with the fused
        decoding step, and when a row's prompt keys per layer (kv heads x tokens x head dim) number at least
        `share_prompt_min`; below that the few extra small ops per step cost more than they save."""
        cfg = self.config
        if not (cfg.share_prompt_cache and can_fuse(self.policy.core.model.language_model, rows.cache)):
            return False
        keys = rows.cache.layers[0].keys
        return keys.shape[1] * keys.shape[2] * keys.shape[3] >= cfg.share_prompt_min

    def _new_cache(self, reserve: int):
        """A KVCache (written in place) for full-attention models; HF's DynamicCache otherwise."""
        from transformers import DynamicCache

        cfg = self.policy.core.config.get_text_config()
        if set(getattr(cfg, "layer_types", None) or ["full_attention"]) == {"full_attention"}:
            return KVCache(cfg.num_hidden_layers, reserve)
        return DynamicCache(config=cfg)

    # ------------------------------------------------------------------ prefill

    def _prefill(self, seqs: list[Seq], prompts: list[Prompt], refs: list[KVRef] | None, reserve: int) -> _Rows:
        if refs is not None:
            state = refs[0].state
            if isinstance(state.cache, KVCache) and all(r.state is state for r in refs):
                rows = self._prefill_continued(seqs, prompts, refs, reserve)
                if rows is not None:
                    self.continued = True
                    return rows
        return self._prefill_fresh(seqs, prompts, reserve)

    def _prefill_fresh(self, seqs: list[Seq], prompts: list[Prompt], reserve: int) -> _Rows:
        pol = self.policy
        batch = pol.collate(seqs)
        cache = self._new_cache(reserve)
        logits = pol.forward(batch, 1, past_key_values=cache, use_cache=True).logits[:, -1]
        pos = batch["position_ids"].amax(dim=(0, 2)) + 1  # [n] next rope position
        return _Rows(cache, logits, pos, batch["attention_mask"].bool(), [(p.ids, p.images) for p in prompts])

    def _prefill_continued(self, seqs: list[Seq], prompts: list[Prompt], refs: list[KVRef], reserve: int) -> _Rows | None:
        """Prefill only what each prompt adds to the tokens its row's cache holds.

        The kept rows are compacted into a fresh cache (their real columns right-aligned; a prompt cache shared by
        its samples stays shared when the rows going on are the same number per prompt), and the new tokens
        fed as one left-padded block (so right-aligned; a shorter row's leading slots are masked holes), at the
        rope positions `Policy.continuation_inputs` gives. None when a row's new part would start inside an image
        (then the caller prefills in full)."""
        pol = self.policy
        keep = [min(len(r.ids), len(s.ids) - 1) for r, s in zip(refs, seqs)]  # >= 1 new token per row
        parts = [Seq(s.ids[k:], s.images[len(r.images):]) for s, r, k in zip(seqs, refs, keep)]
        start = torch.tensor([r.next_pos - (len(r.ids) - k) for r, k in zip(refs, keep)])
        inputs = pol.continuation_inputs(parts, start)
        if inputs is None:
            return None
        state = refs[0].state
        rows = [r.row for r in refs]
        old = state.valid[rows].cpu()
        cache = state.take()
        spare = inputs["input_ids"].shape[1] + reserve
        P = cache.layers[0].prefix_len
        in_prompt = old[:, :P].sum(1).tolist()
        prefixes = _kept_prefixes(cache.layers[0], rows, in_prompt, keep)
        if prefixes is None:  # each kept row gets its own copy of everything it keeps
            runs, valid = compaction_runs(old, keep)
            cache.compact(rows, runs, max(keep), reserve=spare)
        else:  # the prompts stay stored once; only the rows' own columns are compacted
            own = [k - c for k, c in zip(keep, in_prompt)]
            runs, valid = compaction_runs(old[:, P:], own)
            cache.compact(rows, [[(s + P, n) for s, n in r] for r in runs], max(own), reserve=spare,
                          prefixes=prefixes)
            valid = torch.cat([old[:, :P], valid], dim=1)
        valid = torch.cat([valid.to(pol.device), inputs["attention_mask"].bool()], dim=1)
        inputs["attention_mask"] = valid.long()
        logits = pol.forward(inputs, 1, past_key_values=cache, use_cache=True).logits[:, -1]
        pos = inputs["position_ids"].amax(dim=(0, 2)) + 1
        return _Rows(cache, logits, pos, valid, [(p.ids, p.images) for p in prompts])

    # ------------------------------------------------------------------ decode

    def _decode(self, rows: _Rows, caps: list[int], temperature: float, top_p: float, stop_strings,
                generator: torch.Generator | None) -> tuple[list[Generation], list[KVRef]]:
        """The sampling loop: one token per active row and step, kept on the device until the end."""
        pol, pad = self.policy, self.codec.pad_token_id
        dev = rows.logits.device
        n, steps, W = rows.logits.shape[0], max(caps), rows.valid.shape[1]
        stop_ids, text_stops = self._stop_tokens(stop_strings)
        stop_ids = torch.tensor(sorted(stop_ids), device=dev)
        caps_t = torch.tensor(caps, device=dev)
        toks = torch.full((n, steps), pad, dtype=torch.long, device=dev)
        lps = torch.zeros((n, steps), device=dev)
        valid = torch.zeros((n, W + steps), dtype=torch.bool, device=dev)  # cache columns holding real tokens
        valid[:, :W] = rows.valid
        length = torch.zeros(n, dtype=torch.long, device=dev)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        stopped = torch.zeros_like(done)
        step_fn = DecodeStep(pol.core, rows.cache, int(rows.pos.min()), int(rows.pos.max()) + steps,
                             linears=self.linears)
        logits, pos, temp = rows.logits, rows.pos, (temperature if temperature > 0 else 1.0)
        for step in range(steps):  # ends by `break`: at the last step every row has reached its cap
            logp = pol.logp_from_logits(logits, temp)
            tok = sample_tokens(logp, top_p=top_p, greedy=temperature <= 0, generator=generator)
            active = ~done
            tok = tok.masked_fill(done, pad)  # finished rows idle on masked padding
            toks[:, step] = tok
            lps[:, step] = logp.gather(-1, tok[:, None]).squeeze(-1)
            length += active
            stop = active & torch.isin(tok, stop_ids)
            if text_stops:
                stop |= self._text_stops(toks, length, active & ~stop, text_stops)
            stopped |= stop
            done = done | stop | (length >= caps_t)
            if bool(done.all()):
                break
            valid[:, W + step] = active  # the token just sampled is fed for the rows that sampled it
            logits = step_fn(tok, pos, valid[:, :W + step + 1])
            pos = pos + 1
        return self._generations(rows, toks, lps, length, stopped, valid[:, :W + step], W)

    def _generations(self, rows: _Rows, toks, lps, length, stopped, valid: torch.Tensor,
                     W: int) -> tuple[list[Generation], list[KVRef]]:
        """The sampled rows, and a KVRef to each row of the cache (none for a cache other than `KVCache`): its
        prompt and the sampled tokens that were fed back (`valid[:, W:]`; a row's last token is not, when the loop
        ended right after it)."""
        fed, next_pos = valid[:, W:].sum(1).tolist(), rows.pos.tolist()
        state = KVState(rows.cache, valid) if isinstance(rows.cache, KVCache) else None
        gens, refs = [], []
        for i, (ids, lp, L, s) in enumerate(zip(toks.tolist(), lps.tolist(), length.tolist(), stopped.tolist())):
            if state is not None:
                covered_ids, covered_images = rows.covered[i]
                refs.append(KVRef(state, i, covered_ids + ids[:fed[i]], covered_images, next_pos=next_pos[i] + fed[i]))
            gens.append(Generation(ids[:L], lp[:L], "stop" if s else "length"))
        return gens, refs

    def _text_stops(self, toks: torch.Tensor, length: torch.Tensor, rows: torch.Tensor, text_stops) -> torch.Tensor:
        """Rows (among `rows`) whose decoded tail ends with a multi-token stop string."""
        hit = torch.zeros_like(rows)
        for i in torch.nonzero(rows).flatten().tolist():
            L = int(length[i])
            tail = self.codec.tokenizer.decode(toks[i, max(0, L - 8):L].tolist(), skip_special_tokens=False)
            hit[i] = any(tail.endswith(s) for s in text_stops)
        return hit

    def _stop_tokens(self, stop_strings) -> tuple[set[int], tuple[str, ...]]:
        """Stop strings that are one token become stop ids (with `eos_token_ids`); the rest are matched on text."""
        ids = set(self.eos_token_ids)
        text = []
        for s in stop_strings:
            enc = self.codec.tokenizer.encode(s, add_special_tokens=False)
            if len(enc) == 1:
                ids.add(enc[0])
            else:
                text.append(s)
        return ids, tuple(text)


def _kept_prefixes(layer, rows: list[int], in_prompt: list[int], keep: list[int]) -> list[int] | None:
    """The prompts whose shared cache (`KVCache.share_prefix`) the continuing `rows` can keep reading: when the
    rows are the same number per prompt, prompt-major, and each keeps its whole prompt (`keep[j]` of its tokens
    >= the `in_prompt[j]` that are prompt tokens). None otherwise, or when the cache has no shared prefix."""
    if getattr(layer, "prefix", None) is None or not rows:
        return None
    owners = [r // layer.group for r in rows]
    prefixes = list(dict.fromkeys(owners))
    per = len(rows) // len(prefixes)
    if owners != [p for p in prefixes for _ in range(per)] or any(k < c for k, c in zip(keep, in_prompt)):
        return None
    return prefixes


def sample_tokens(logp: torch.Tensor, top_p: float = 1.0, greedy: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from log-probs [N, V]: argmax, or inverse-CDF sampling within the top-p nucleus.

    Inverse-CDF (cumsum + searchsorted) is ~15x cheaper than torch.multinomial over large vocabularies."""
    if greedy:
        return logp.argmax(-1)
    probs = logp.exp()
    if top_p < 1.0:
        sp, idx = probs.sort(dim=-1, descending=True)
        cum = sp.cumsum(-1)
        keep = (cum - sp) < top_p  # always keeps the most likely token
        sp = sp * keep
        cum = sp.cumsum(-1)
        u = torch.rand(probs.shape[0], 1, device=probs.device, generator=generator) * cum[:, -1:]
        j = torch.searchsorted(cum, u).clamp_(max=probs.shape[-1] - 1)
        return idx.gather(-1, j).squeeze(-1)
    cum = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, device=probs.device, generator=generator) * cum[:, -1:]
    tok = torch.searchsorted(cum, u).clamp_(max=probs.shape[-1] - 1).squeeze(-1)
    # never land on a zero-probability token because of float ties at the boundary
    bad = probs.gather(-1, tok[:, None]).squeeze(-1) <= 0
    if bad.any():
        tok[bad] = probs[bad].argmax(-1)
    return tok
