"""The policy and its scorer: one Qwen-VL model plus its processor, with what training needs of it.

- `Policy.load(path)`: a local Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint (never the hub); `policy.codec` (see
  vlmrl/models/codec.py) turns token ids and images into model inputs (`collate`).
- `logprobs(seqs, mask)`: teacher-forced per-token log-probs (and entropies) of the masked tokens; with
  `share_prefix=True`, rows that share a prompt (ids and images) run it once, with gradients.

Sampling is not here: it goes through a `vlmrl.models.sampler.Sampler` (`vlmrl.models.hf_sampler.HFSampler` runs
this policy's model). Every tensor the scorer returns is laid out like `collate`'s batch: row b, column
T - len(b) + i is token i of sequence b.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from vlmrl.family import FAMILY_OF_MODEL_TYPE
from vlmrl.models.codec import Codec, Seq, VisionInput  # noqa: F401  (Seq, VisionInput: importable from here too)
from vlmrl.models.kvcache import cache_arg
from vlmrl.models.last_mlp import checkpointing, last_mlp_only_at



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
        self.codec = codec = Codec(processor, family)
        self.tokenizer, self.image_processor, self.family = codec.tokenizer, codec.image_processor, family
        self.factor, self.merge = codec.factor, codec.merge
        self.image_token_id, self.pad_token_id = codec.image_token_id, codec.pad_token_id
        self.eos_token_ids, self.banned_token_ids = codec.eos_token_ids, codec.banned_token_ids
        self._banned = None
        self._bool_keep = None  # see _bool_logits_to_keep
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
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24's name (the old one warns)
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
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

    def collate(self, seqs: list[Seq], tokens: dict | None = None) -> dict:
        """`codec.collate` on this model and device: left-padded model inputs with 3-D rope positions."""
        return self.codec.collate(seqs, self.core, self.device, tokens)

    # ------------------------------------------------------------------ scoring

    def logp_from_logits(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Log-probs [..., V] of the temperature-scaled distribution, vision special tokens excluded: what sampling
        draws from and what scoring reads."""
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
            tokens = self.codec.token_batch(seqs)
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
            logits = self.forward(batch, keep, use_cache=False).logits
        sel = mask[rows, first:]
        logits = logits if by_mask else logits[:, :-1][sel]  # [masked tokens, V], in sel's row-major order
        logp_all = self.logp_from_logits(logits, temperature)
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

    def forward(self, inputs: dict, keep: int | torch.Tensor, **kw):
        """`self.model(**inputs, logits_to_keep=keep, **kw)`; with `last_mlp_only` (the default), the last decoder
        layer's MLP runs only at the kept positions, the only ones whose output is read (vlmrl/models/last_mlp.py)."""
        shape = tuple(inputs["input_ids"].shape)
        if "past_key_values" in kw:  # under the name the installed transformers takes (vlmrl.models.kvcache)
            kw.update(cache_arg(self.core, kw.pop("past_key_values")))
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
        with that cache attached, at the rope positions `continuation_inputs` gives. Both parts are right
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
        inputs = self.continuation_inputs(parts, start=pre["position_ids"].amax(dim=(0, 2)).cpu()[idx] + 1)
        if inputs is None:
            return None
        idx = idx.to(self.device)
        inputs["attention_mask"] = torch.cat([pre["attention_mask"][idx], inputs["attention_mask"]], dim=1)
        cache = DynamicCache(config=self.core.config.get_text_config())
        self.forward(pre, 1, past_key_values=cache, use_cache=True)
        cache.batch_select_indices(idx)  # each row gets its prompt's keys and values (an autograd index)
        if isinstance(keep, torch.Tensor):  # a boolean mask over the whole layout: the parts are its last columns
            keep = keep[torch.tensor(live, device=keep.device), T - inputs["input_ids"].shape[1]:]
        logits = self.forward(inputs, keep, past_key_values=cache, use_cache=True).logits
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

    def continuation_inputs(self, parts: list[Seq], start: torch.Tensor) -> dict | None:
        """Model inputs for blocks of tokens that continue cached rows: `parts[i]` is what row i adds (its ids and
        the images in them), `start[i]` [n] the rope position of its first token. Left padded, on the device.

        Rope positions: `get_rope_index` of the part, shifted by `start`. Every position Qwen-VL's rope index
        gives is the running position at its group's start plus an offset within the group, and the cached part
        ends before an image or after one, never inside, so this is what a pass over the whole sequence gives
        (tests/test_hf_sampler_kv.py and tests/test_perf_share.py check it against teacher forcing for the three
        families). None when a part starts inside an image."""
        if any(p.ids.count(self.image_token_id) != sum(v.num_tokens(self.merge) for v in p.images) for p in parts):
            return None
        block = self.codec.token_batch(parts)
        block["position_ids"] = self.codec.rope_positions(block, self.core) + start.view(1, -1, 1)
        images = [v for p in parts for v in p.images]
        if images:
            block["pixel_values"] = torch.cat([v.pixel_values for v in images], dim=0)
        return {k: v.to(self.device) for k, v in block.items()}


def _same_seq(a: Seq, b: Seq) -> bool:
    """Same token ids and the same images (the same objects, or equal grids and pixels)."""
    return a.ids == b.ids and len(a.images) == len(b.images) and all(
        x is y or (x.grid_thw == y.grid_thw and torch.equal(x.pixel_values, y.pixel_values))
        for x, y in zip(a.images, b.images))


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
    with warnings.catch_warnings():  # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, cfg)
