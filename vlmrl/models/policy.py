"""The policy wrapper: one Qwen-VL model plus its processor, with the few operations RL needs.

- `Policy.load(path)`: a local Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint (never the hub).
- `encode_image(img)`: pixels + grid for an image already sized to the family's factor (see data.vision).
- `collate(seqs)`: left-padded batch with `mm_token_type_ids` and explicit 3-D rope positions.
- `logprobs(seqs, mask)`: teacher-forced per-token log-probs (and entropies) of the masked tokens; with
  `share_prefix=True`, rows that share a prompt (ids and images) run it once, with gradients.
- `generate(prompts, ...)`: batched sampling with a KV cache; vision special tokens are never sampled.

A `Seq` is a token-id list plus the `VisionInput`s of its image placeholders, in order. Every tensor the
wrapper returns is laid out like `collate`'s batch: row b, column T - len(b) + i is token i of sequence b.

Sampling cost (see tools/bench/rollout.py): each prompt is prefilled once and its cache shared by its
samples; the cache is written in place (`KVCache`); decoding steps skip the HF forward's per-step work
(`DecodeStep`); and a later turn that extends a sampled row (`Seq.kv`, taken from `Generation.kv`) prefills
only its new tokens, at the rope positions a full pass gives them.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlmrl.data.vision import image_factor
from vlmrl.family import FAMILY_OF_MODEL_TYPE, get_family
from vlmrl.models.decoding import DecodeStep, PackedLinears, can_fuse
from vlmrl.models.kvcache import KVCache, KVRef, KVState, compaction_runs
from vlmrl.models.last_mlp import checkpointing, last_mlp_only_at

VISION_SPECIAL = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass
class VisionInput:
    """One image as the vision tower takes it: flattened patches and its (t, h, w) patch grid."""

    pixel_values: torch.Tensor  # [t*h*w, C*temporal*patch*patch]
    grid_thw: tuple[int, int, int]
    size: tuple[int, int]  # (width, height) in pixels, after sizing

    def num_tokens(self, merge: int = 2) -> int:
        t, h, w = self.grid_thw
        return t * h * w // (merge * merge)


@dataclass
class Seq:
    """Token ids of one sequence and the images of its `<|image_pad|>` runs, in order."""

    ids: list[int]
    images: list[VisionInput] = field(default_factory=list)
    kv: KVRef | None = field(default=None, repr=False, compare=False)  # cached prefix (see generate)


@dataclass
class Generation:
    """Sampled continuation of one prompt."""

    ids: list[int]
    logprobs: list[float]
    finish: str  # "stop" (eos or stop string) or "length"
    kv: KVRef | None = field(default=None, repr=False, compare=False)  # the row's cache, for a next turn


@dataclass
class _Rows:
    """Decoding state of a batch: its cache, next-token logits [n, V], next rope position [n], which cache
    columns hold real tokens [n, W], and the tokens (and images) each row's cache holds."""

    cache: object
    logits: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor
    covered: list[tuple[list[int], list]]

    def repeat(self, k: int, share: bool = False) -> "_Rows":
        """Each row becomes k rows; `share`: the cache keeps each prompt once (`KVCache.share_prefix`)."""
        if k > 1:
            if share:
                self.cache.share_prefix(k)
            else:
                self.cache.batch_repeat_interleave(k)
            self.logits, self.pos, self.valid = (x.repeat_interleave(k, 0) for x in (self.logits, self.pos, self.valid))
            self.covered = [c for c in self.covered for _ in range(k)]
        return self


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto") from None


def detect_family(path: str | Path) -> str:
    """The Qwen-VL family of a checkpoint directory, or a clear error if it is not one."""
    import json

    path = Path(path)
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not cfg_file.is_file():
        raise ValueError(f"{path} is not a Hugging Face checkpoint: no config.json")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
    if model_type not in FAMILY_OF_MODEL_TYPE:
        raise ValueError(
            f"{cfg_file}: model_type {model_type!r} is not a Qwen-VL model "
            f"(supported: {', '.join(FAMILY_OF_MODEL_TYPE)})"
        )
    return FAMILY_OF_MODEL_TYPE[model_type]


class Policy:
    """A Qwen-VL model with its tokenizer and image processor."""

    def __init__(self, model, processor, family: str):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.family = family
        self.factor = image_factor(family)
        self.merge = get_family(family).merge
        tok = self.tokenizer
        self.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        self.eos_token_ids = sorted({tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")} - {None})
        self.banned_token_ids = [tok.convert_tokens_to_ids(t) for t in VISION_SPECIAL]
        self._banned = None
        self._bool_keep = None  # see _bool_logits_to_keep
        # sampling: a prompt's KV cache is kept once for its samples (KVCache.share_prefix) when the fused
        # decoding step applies; False repeats it per sample (the same results, more memory traffic)
        self.share_prompt_cache = True
        self.share_prompt_min = 1 << 14
        # sampling on CPU in float32: decoding steps use oneDNN-packed copies of the linear weights (a second
        # copy of the language model's weights, refreshed when they change); False: the modules as they are
        self.decode_linears = PackedLinears()
        # forward passes with logits_to_keep run the last layer's MLP only where the LM head reads (same values
        # and gradients there; vlmrl/models/last_mlp.py); False: at every position
        self.last_mlp_only = True

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path, dtype: str = "auto", device: str = "auto", gradient_checkpointing: bool = False,
             lora: dict | None = None) -> "Policy":
        """Load a local checkpoint. `lora` (e.g. {"r": 16, "alpha": 32}) wraps the language model with peft."""
        from transformers import AutoModelForImageTextToText
        from transformers.utils import logging as hf_logging

        from vlmrl.models.processor import load_processor

        from vlmrl.models.checks import check_model_dir

        family = check_model_dir(path)  # a clear error for a directory that is not a complete Qwen-VL checkpoint
        dev = resolve_device(device)
        hf_logging.disable_progress_bar()
        model = AutoModelForImageTextToText.from_pretrained(
            str(path), dtype=resolve_dtype(dtype, dev), local_files_only=True)
        model.to(dev)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if lora:
            model = apply_lora(model, **lora)
        return cls(model, load_processor(path), family)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def core(self):
        """The underlying transformers model, unwrapped from DDP / accelerate and peft."""
        m = self.model
        m = getattr(m, "module", m)
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        return m

    # ------------------------------------------------------------------ inputs

    def encode_image(self, image) -> VisionInput:
        """Patchify a PIL image whose sides are multiples of the family factor (size it with fit_to_budget)."""
        w, h = image.size
        if w % self.factor or h % self.factor:
            raise ValueError(
                f"image of size {w}x{h} is not a multiple of {self.factor} per side; "
                "resize it with vlmrl.data fit_to_budget / smart_resize first")
        out = self.image_processor(images=[image], do_resize=False, return_tensors="pt")
        grid = tuple(int(x) for x in out["image_grid_thw"][0].tolist())
        return VisionInput(out["pixel_values"], grid, (w, h))

    def image_placeholder(self, vis: VisionInput) -> list[int]:
        """Token ids of one image in a sequence: vision_start, n image pads, vision_end."""
        tok = self.tokenizer
        start, end = tok.convert_tokens_to_ids("<|vision_start|>"), tok.convert_tokens_to_ids("<|vision_end|>")
        return [start] + [self.image_token_id] * vis.num_tokens(self.merge) + [end]

    def check_seq(self, seq: Seq, where: str = "sequence") -> None:
        """Raise a clear error when image placeholders and images disagree."""
        ids = torch.tensor(seq.ids)
        n_tokens = int((ids == self.image_token_id).sum())
        expected = sum(v.num_tokens(self.merge) for v in seq.images)
        if n_tokens != expected:
            raise ValueError(
                f"{where}: {n_tokens} image tokens in the text but the {len(seq.images)} image(s) need {expected}")

    def collate(self, seqs: list[Seq], tokens: dict | None = None) -> dict:
        """Left-pad sequences into model inputs with mm_token_type_ids and 3-D rope positions (`tokens`: their
        `_token_batch`, when the caller has it already)."""
        batch = dict(tokens) if tokens is not None else self._token_batch(seqs)
        images = [v for s in seqs for v in s.images]
        if images:
            batch["pixel_values"] = torch.cat([v.pixel_values for v in images], dim=0)
        batch["position_ids"] = self.rope_positions(batch)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _token_batch(self, seqs: list[Seq]) -> dict:
        """input_ids, attention_mask, mm_token_type_ids (and image_grid_thw) of the left-padded sequences."""
        T = max(len(s.ids) for s in seqs)
        B = len(seqs)
        ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, T - len(s.ids):] = torch.tensor(s.ids, dtype=torch.long)
            attn[b, T - len(s.ids):] = 1
        mm = (ids == self.image_token_id).long() * attn
        batch = {"input_ids": ids, "attention_mask": attn, "mm_token_type_ids": mm}
        grids = [v.grid_thw for s in seqs for v in s.images]
        if grids:
            batch["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        return batch

    def rope_positions(self, batch: dict) -> torch.Tensor:
        """[3, B, T] multimodal rope positions (padding gets position 0)."""
        core = self.core.model if hasattr(self.core, "model") else self.core
        pos, _ = core.get_rope_index(
            batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"), attention_mask=batch["attention_mask"])
        return pos

    # ------------------------------------------------------------------ scoring

    def _logp_from_logits(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        if self._banned is None or self._banned.device != logits.device:
            with torch.inference_mode(False):  # a normal tensor: also used under autograd (logprobs)
                self._banned = torch.tensor(self.banned_token_ids, device=logits.device)
        logits = logits.index_fill(-1, self._banned, float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    def logprobs(self, seqs: list[Seq], mask: torch.Tensor | None = None, temperature: float = 1.0,
                 with_entropy: bool = False, batch: dict | None = None, share_prefix: bool = False):
        """Per-token log-probs [B, T] of each token given the ones before it, at the masked positions
        (left-padded layout; 0 elsewhere); with `with_entropy`, also the full-distribution entropies.
        The LM head runs only from the first masked column on, so long prompts cost no vocabulary work.
        Goes through `self.model(...)`, so DDP and peft wrappers see the forward pass.

        `share_prefix`: rows that start with the same prompt (the same token ids and images) run it, and its
        images, once (`_shared_prefix_logits`); the results and gradients are the single pass's, up to float
        rounding. Without a caller's `batch` only; it falls back to the single pass where it cannot apply."""
        if batch is None:
            tokens = self._token_batch(seqs)
            ids, attn = tokens["input_ids"].to(self.device), tokens["attention_mask"]
        else:
            ids, attn = batch["input_ids"], batch["attention_mask"]
        if mask is None:
            mask = attn.clone()
            mask[:, 0] = 0
        mask = mask.to(ids.device).bool()
        if mask[:, 0].any():
            raise ValueError("the first position has no context: it cannot be scored")
        T = ids.shape[1]
        cols = torch.nonzero(mask.any(0)).flatten()
        out = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        ent = torch.zeros_like(out)
        if cols.numel() == 0:
            return (out, ent) if with_entropy else out
        # the LM head runs only where it is needed: at exactly the positions that predict a masked token (a
        # boolean logits_to_keep, so a tool observation costs no vocabulary work), or, on transformers that lack
        # it, from the first such position on
        by_mask = self._bool_logits_to_keep()
        first = 0 if by_mask else int(cols[0])  # the columns below are taken from `first` on
        keep = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1) if by_mask else T - first + 1
        shared = self._shared_prefix_logits(seqs, mask, keep) if share_prefix and batch is None else None
        if shared is not None:
            rows, logits = shared
        else:
            rows = torch.arange(len(ids), device=ids.device)
            batch = batch if batch is not None else self.collate(seqs, tokens)
            logits = self._forward(batch, keep, use_cache=False).logits
        sel = mask[rows, first:]
        logits = logits if by_mask else logits[:, :-1][sel]  # [masked tokens, V], in sel's row-major order
        logp_all = self._logp_from_logits(logits, temperature)
        targets = ids[rows, first:][sel]
        vals = torch.zeros(sel.shape, dtype=torch.float32, device=ids.device)
        vals[sel] = logp_all.gather(-1, targets[:, None]).squeeze(-1).to(vals.dtype)
        out[rows, first:] = vals
        if not with_entropy:
            return out
        p = logp_all.exp()
        vals = torch.zeros_like(vals)
        vals[sel] = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)
        ent[rows, first:] = vals
        return out, ent

    def _forward(self, inputs: dict, keep: int | torch.Tensor, **kw):
        """`self.model(**inputs, logits_to_keep=keep, **kw)`; with `last_mlp_only` (the default), the last decoder
        layer's MLP runs only at the kept positions, the only ones whose output is read (vlmrl/models/last_mlp.py)."""
        shape = tuple(inputs["input_ids"].shape)
        with last_mlp_only_at(self.core, keep, shape) if self.last_mlp_only else nullcontext():
            return self.model(**inputs, logits_to_keep=keep, **kw)

    def _bool_logits_to_keep(self) -> bool:
        """Whether the model takes a [B, T] boolean `logits_to_keep` (transformers' `slice_logits_to_keep`,
        which returns the kept positions' logits flattened to [kept, V])."""
        if self._bool_keep is None:
            module = sys.modules.get(type(self.core).__module__)
            helper = getattr(module, "slice_logits_to_keep", None)
            try:
                self._bool_keep = helper is not None and tuple(
                    helper(torch.zeros(1, 2, 1), torch.tensor([[False, True]])).shape) == (1, 1)
            except Exception:  # an older helper without boolean masks
                self._bool_keep = False
        return self._bool_keep

    def _can_share_prefix(self) -> bool:
        """Whether `logprobs(share_prefix=True)` may run a prompt once for its rows. It runs the model twice per
        backward pass and feeds the second pass the first one's KV cache, so it falls back to one pass under DDP
        or a process group of several ranks (DDP's gradient hooks expect one forward per backward), with gradient
        checkpointing (transformers drops the cache in training then), and for models with other than
        full-attention layers (a sliding-window cache keeps only part of the prompt)."""
        dist = torch.distributed
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return False
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return False
        return not checkpointing(self.core) and self._full_attention_only()

    def _full_attention_only(self) -> bool:
        cfg = self.core.config.get_text_config()
        return set(getattr(cfg, "layer_types", None) or ["full_attention"]) == {"full_attention"}

    def _shared_prefix_logits(self, seqs: list[Seq], mask: torch.Tensor, keep: int | torch.Tensor):
        """The logits `logprobs` needs (the last `keep` columns of the left-padded layout: [n, keep, V]; or the
        positions a boolean `keep` [B, T] marks: [kept, V]) of the n rows that have a masked token, computed with
        each distinct prompt run once; (row indices, logits), or None when sharing does not apply or would save
        nothing (then the caller runs its single pass).

        A row's prompt is everything before the token that precedes its first masked token, so every scored
        token and the logit that predicts it lie in the row's own part. Rows whose prompts have the same ids and
        the same images (the same objects or equal pixels) form a group. One pass over the distinct prompts
        (vision tower included) fills a KV cache with grad; the cache is indexed out to the rows (autograd sums
        the rows' gradients back into the prompt's), and a second pass runs the rows' own parts, left padded,
        with that cache attached, at the rope positions `_continuation_inputs` gives. Both parts are right
        aligned, so the second pass's last columns are the single pass's."""
        from transformers import DynamicCache

        if not self._can_share_prefix():
            return None
        live = torch.nonzero(mask.any(1)).flatten().tolist()
        if len(live) < 2:
            return None
        T = mask.shape[1]
        prompts: list[Seq] = []  # the distinct prompts
        parts, which = [], []  # each live row's own part, and its prompt's index
        for b in live:
            s = seqs[b]
            cut = int(torch.nonzero(mask[b, T - len(s.ids):]).flatten()[0]) - 1
            n_img = self._images_within(s, cut) if cut >= 1 else None
            if n_img is None:  # no prompt, or the cut falls inside an image
                return None
            prompt = Seq(s.ids[:cut], s.images[:n_img])
            g = next((j for j, p in enumerate(prompts) if _same_seq(p, prompt)), len(prompts))
            if g == len(prompts):
                prompts.append(prompt)
            which.append(g)
            parts.append(Seq(s.ids[cut:], s.images[n_img:]))
        if len(prompts) == len(live):
            return None
        pre = self.collate(prompts)
        idx = torch.tensor(which)
        inputs = self._continuation_inputs(parts, start=pre["position_ids"].amax(dim=(0, 2)).cpu()[idx] + 1)
        if inputs is None:
            return None
        idx = idx.to(self.device)
        inputs["attention_mask"] = torch.cat([pre["attention_mask"][idx], inputs["attention_mask"]], dim=1)
        cache = DynamicCache(config=self.core.config.get_text_config())
        self._forward(pre, 1, past_key_values=cache, use_cache=True)
        cache.batch_select_indices(idx)  # each row gets its prompt's keys and values (an autograd index)
        if isinstance(keep, torch.Tensor):  # a boolean mask over the whole layout: the parts are its last columns
            keep = keep[torch.tensor(live, device=keep.device), T - inputs["input_ids"].shape[1]:]
        logits = self._forward(inputs, keep, past_key_values=cache, use_cache=True).logits
        return torch.tensor(live, device=self.device), logits

    def _images_within(self, seq: Seq, n: int) -> int | None:
        """How many of `seq`'s images lie in its first `n` tokens, or None when token n-1 or n splits one."""
        tokens = seq.ids[:n].count(self.image_token_id)
        total = 0
        for k, v in enumerate(seq.images):
            if total == tokens:
                return k
            total += v.num_tokens(self.merge)
        return len(seq.images) if total == tokens else None

    def _continuation_inputs(self, parts: list[Seq], start: torch.Tensor) -> dict | None:
        """Model inputs for blocks of tokens that continue cached rows: `parts[i]` is what row i adds (its ids and
        the images in them), `start[i]` [n] the rope position of its first token. Left padded, on the device.

        Rope positions: `get_rope_index` of the part, shifted by `start`. Every position Qwen-VL's rope index
        gives is the running position at its group's start plus an offset within the group, and the cached part
        ends before an image or after one, never inside, so this is what a pass over the whole sequence gives
        (tests/test_perf_kv.py and tests/test_perf_share.py check it against teacher forcing for the three
        families). None when a part starts inside an image."""
        if any(p.ids.count(self.image_token_id) != sum(v.num_tokens(self.merge) for v in p.images) for p in parts):
            return None
        block = self._token_batch(parts)
        block["position_ids"] = self.rope_positions(block) + start.view(1, -1, 1)
        images = [v for p in parts for v in p.images]
        if images:
            block["pixel_values"] = torch.cat([v.pixel_values for v in images], dim=0)
        return {k: v.to(self.device) for k, v in block.items()}

    # ------------------------------------------------------------------ sampling

    @torch.inference_mode()
    def generate(self, prompts: list[Seq], max_new_tokens: int | list[int] = 64, temperature: float = 1.0, top_p: float = 1.0,
                 stop_strings: tuple[str, ...] = (), num_samples: int = 1,
                 generator: torch.Generator | None = None) -> list[Generation]:
        """Sample `num_samples` continuations of each prompt (prompt-major order: p0s0, p0s1, ..., p1s0, ...).

        Each prompt is prefilled once and its KV cache shared by its samples. `temperature=0` is greedy.
        `max_new_tokens` may be a list with one cap per prompt.
        Recorded log-probs are those of the sampled tokens under the temperature-scaled distribution
        (before top-p), i.e. what `logprobs(..., temperature=...)` recomputes.

        Each Generation's `kv` refers to its row's cache. Prompts that all carry `kv` refs of one earlier call
        (`Seq(prompt.ids + gen.ids + more, images, kv=gen.kv)`) are prefilled from their new tokens on; any
        other batch is prefilled in full. Both give the same tokens and log-probs (up to float rounding)."""
        if not prompts:
            return []
        for i, p in enumerate(prompts):
            self.check_seq(p, where=f"prompt {i}")
        caps = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(caps) != len(prompts) or min(caps) < 1:
            raise ValueError(f"max_new_tokens must be >= 1 per prompt, got {max_new_tokens}")
        was_training = self.model.training
        self.model.eval()
        try:
            rows = self._prefill(prompts, reserve=max(caps))
            rows = rows.repeat(num_samples, share=self._share_prompt(rows))
            caps = [c for c in caps for _ in range(num_samples)]
            return self._decode(rows, caps, temperature, top_p, stop_strings, generator)
        finally:
            if was_training:
                self.model.train()

    def _share_prompt(self, rows: _Rows) -> bool:
        """Whether the G samples of each prompt read one copy of its cache (`KVCache.share_prefix`): with the
        fused decoding step, and when a row's prompt keys per layer (kv heads x tokens x head dim) number at
        least `share_prompt_min`; below that the few extra small ops per step cost more than they save."""
        if not (self.share_prompt_cache and can_fuse(self.core.model.language_model, rows.cache)):
            return False
        keys = rows.cache.layers[0].keys
        return keys.shape[1] * keys.shape[2] * keys.shape[3] >= self.share_prompt_min

    def _new_cache(self, reserve: int):
        """A KVCache (written in place) for full-attention models; HF's DynamicCache otherwise."""
        from transformers import DynamicCache

        cfg = self.core.config.get_text_config()
        if set(getattr(cfg, "layer_types", None) or ["full_attention"]) == {"full_attention"}:
            return KVCache(cfg.num_hidden_layers, reserve)
        return DynamicCache(config=cfg)

    def _prefill(self, prompts: list[Seq], reserve: int) -> _Rows:
        refs = [p.kv for p in prompts]
        if all(r is not None for r in refs):
            state = refs[0].state
            if isinstance(state.cache, KVCache) and all(
                    r.state is state and r.matches(p.ids, p.images) for r, p in zip(refs, prompts)):
                rows = self._prefill_continued(prompts, refs, reserve)
                if rows is not None:
                    return rows
        return self._prefill_fresh(prompts, reserve)

    def _prefill_fresh(self, prompts: list[Seq], reserve: int) -> _Rows:
        batch = self.collate(prompts)
        cache = self._new_cache(reserve)
        logits = self._forward(batch, 1, past_key_values=cache, use_cache=True).logits[:, -1]
        pos = batch["position_ids"].amax(dim=(0, 2)) + 1  # [n] next rope position
        return _Rows(cache, logits, pos, batch["attention_mask"].bool(), [(p.ids, p.images) for p in prompts])

    def _prefill_continued(self, prompts: list[Seq], refs: list[KVRef], reserve: int) -> _Rows | None:
        """Prefill only what each prompt adds to the tokens its row's cache holds.

        The kept rows are compacted into a fresh cache (their real columns right-aligned; a prompt cache shared by
        its samples stays shared when the rows going on are the same number per prompt), and the new tokens
        fed as one left-padded block (so right-aligned; a shorter row's leading slots are masked holes), at the
        rope positions `_continuation_inputs` gives. None when a row's new part would start inside an image
        (then the caller prefills in full)."""
        keep = [min(len(r.ids), len(p.ids) - 1) for r, p in zip(refs, prompts)]  # >= 1 new token per row
        parts = [Seq(p.ids[k:], p.images[len(r.images):]) for p, r, k in zip(prompts, refs, keep)]
        start = torch.tensor([r.next_pos - (len(r.ids) - k) for r, k in zip(refs, keep)])
        inputs = self._continuation_inputs(parts, start)
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
        valid = torch.cat([valid.to(self.device), inputs["attention_mask"].bool()], dim=1)
        inputs["attention_mask"] = valid.long()
        logits = self._forward(inputs, 1, past_key_values=cache, use_cache=True).logits[:, -1]
        pos = inputs["position_ids"].amax(dim=(0, 2)) + 1
        return _Rows(cache, logits, pos, valid, [(p.ids, p.images) for p in prompts])

    def _decode(self, rows: _Rows, caps: list[int], temperature: float, top_p: float, stop_strings,
                generator: torch.Generator | None) -> list[Generation]:
        """The sampling loop: one token per active row and step, kept on the device until the end."""
        dev = rows.logits.device
        n, steps, W = rows.logits.shape[0], max(caps), rows.valid.shape[1]
        stop_ids, text_stops = self._stop_tokens(stop_strings)
        stop_ids = torch.tensor(sorted(stop_ids), device=dev)
        caps_t = torch.tensor(caps, device=dev)
        toks = torch.full((n, steps), self.pad_token_id, dtype=torch.long, device=dev)
        lps = torch.zeros((n, steps), device=dev)
        valid = torch.zeros((n, W + steps), dtype=torch.bool, device=dev)  # cache columns holding real tokens
        valid[:, :W] = rows.valid
        length = torch.zeros(n, dtype=torch.long, device=dev)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        stopped = torch.zeros_like(done)
        step_fn = DecodeStep(self.core, rows.cache, int(rows.pos.min()), int(rows.pos.max()) + steps,
                             linears=self.decode_linears)
        logits, pos, temp = rows.logits, rows.pos, (temperature if temperature > 0 else 1.0)
        for step in range(steps):  # ends by `break`: at the last step every row has reached its cap
            logp = self._logp_from_logits(logits, temp)
            tok = sample_tokens(logp, top_p=top_p, greedy=temperature <= 0, generator=generator)
            active = ~done
            tok = tok.masked_fill(done, self.pad_token_id)  # finished rows idle on masked padding
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

    def _generations(self, rows: _Rows, toks, lps, length, stopped, valid: torch.Tensor, W: int) -> list[Generation]:
        """The sampled rows, each with a KVRef to its row of the cache: its prompt and the sampled tokens that
        were fed back (`valid[:, W:]`; a row's last token is not, when the loop ended right after it)."""
        fed, next_pos = valid[:, W:].sum(1).tolist(), rows.pos.tolist()
        state = KVState(rows.cache, valid) if isinstance(rows.cache, KVCache) else None
        out = []
        for i, (ids, lp, L, s) in enumerate(zip(toks.tolist(), lps.tolist(), length.tolist(), stopped.tolist())):
            ref = None
            if state is not None:
                covered_ids, covered_images = rows.covered[i]
                ref = KVRef(state, i, covered_ids + ids[:fed[i]], covered_images, next_pos=next_pos[i] + fed[i])
            out.append(Generation(ids[:L], lp[:L], "stop" if s else "length", ref))
        return out

    def _text_stops(self, toks: torch.Tensor, length: torch.Tensor, rows: torch.Tensor, text_stops) -> torch.Tensor:
        """Rows (among `rows`) whose decoded tail ends with a multi-token stop string."""
        hit = torch.zeros_like(rows)
        for i in torch.nonzero(rows).flatten().tolist():
            L = int(length[i])
            tail = self.tokenizer.decode(toks[i, max(0, L - 8):L].tolist(), skip_special_tokens=False)
            hit[i] = any(tail.endswith(s) for s in text_stops)
        return hit

    def _stop_tokens(self, stop_strings) -> tuple[set[int], tuple[str, ...]]:
        """Stop strings that are one token become stop ids; the rest are matched on decoded text."""
        ids = set(self.eos_token_ids)
        text = []
        for s in stop_strings:
            enc = self.tokenizer.encode(s, add_special_tokens=False)
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


def _same_seq(a: Seq, b: Seq) -> bool:
    """Same token ids and the same images (the same objects, or equal grids and pixels)."""
    return a.ids == b.ids and len(a.images) == len(b.images) and all(
        x is y or (x.grid_thw == y.grid_thw and torch.equal(x.pixel_values, y.pixel_values))
        for x, y in zip(a.images, b.images))


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


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0,
               target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj")):
    """Wrap the language model's linear layers with LoRA adapters (needs the `lora` extra: peft)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'vlmrl[lora]'") from None
    # only language-model projections: the vision tower keeps its weights frozen
    pattern = r".*language_model.*\.(" + "|".join(target_modules) + r")$"
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)
    return get_peft_model(model, cfg)
