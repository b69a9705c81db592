"""One decoding step of a Qwen-VL language model, with as little per-step work as possible.

`DecodeStep(core, cache, pos_lo, pos_hi)(tok, pos, valid)` feeds one token per row (`tok` [n]) at rope
position `pos` [n] with the cache columns `valid` [n, W] (bool, the new token's column included) and
returns the next-token logits [n, V]. No vision inputs are needed after the prefill.

Two ways, the faster one whenever it applies:

- fused (sdpa attention, a `KVCache`, Qwen2-VL / Qwen2.5-VL / Qwen3-VL text layers): the decoder layers written
  out as the transformers layers compute them (norm, q/k/v projections, Qwen3-VL's q/k norms, rotary,
  cache write, one grouped-query sdpa call, output projection, MLP), calling the model's own modules, so LoRA
  adapters and any weights apply. The mask is the `valid` columns as they are (made additive once per step, not
  once per layer), and rope cos/sin come from a table the model's own rotary module filled for the positions the
  loop can reach (a decoded token's three mrope components are equal, so the table is exact). This skips the
  per-step mask building, rope recomputation and module wrappers of the HF forward; results are the HF layers'
  (tests/test_hf_sampler_kv.py). When the cache holds each prompt once for its G samples (`KVCache.share_prefix`),
  attention reads that shared prompt once per group (`attend_shared_prefix`) instead of once per row.
  With `linears=PackedLinears()` (CPU, float32), the plain `nn.Linear` layers run on copies of their weights in
  oneDNN's blocked layout: a decoding step multiplies a few rows by every weight, and MKL's ordinary GEMM
  is 1.6-2.7x slower at 8 rows than oneDNN's on pre-packed weights (tools/bench). Same float32 math (another
  summation order: differences ~1e-6).
- otherwise: the HF language model with a 2-D mask and 3-D positions.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from vlmrl.models.kvcache import KVCache, cache_arg

FUSED_TEXT_MODELS = ("qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text")
_ATTN_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
_LAYER_PARTS = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
MLP_CLASSES = ("Qwen2MLP", "Qwen3VLTextMLP")  # down_proj(act_fn(gate_proj(x)) * up_proj(x))


def can_fuse(lm, cache) -> bool:
    """Whether `lm` (a Qwen-VL text model) and `cache` allow the fused decoding step."""
    cfg = lm.config
    return (isinstance(cache, KVCache) and cfg._attn_implementation == "sdpa" and cfg.model_type in FUSED_TEXT_MODELS
            and getattr(lm.rotary_emb, "rope_type", "default") == "default"
            and all(all(hasattr(layer, a) for a in _LAYER_PARTS) and all(hasattr(layer.self_attn, a) for a in _ATTN_PARTS)
                    for layer in lm.layers))


class PackedLinears:
    """Decode-time copies of `nn.Linear` weights in oneDNN's blocked layout, made on first use and again whenever
    the weight changes (an optimizer step bumps its version). `linear(module, x)` is `module(x)`, through the
    packed copy when the module is a plain float32 CPU `nn.Linear` without hooks (so LoRA-wrapped layers and
    hooked ones run as they are) whose weight has at least `min_numel` entries: below that (256 x 256 included)
    oneDNN's per-call overhead (~15 us) and the packing itself (>= ~150 us per weight) cost more than its faster
    product saves. Holds one copy of the weights it has packed (freed with the modules)."""

    def __init__(self, enabled: bool = True, min_numel: int = 1 << 17):
        self.enabled = enabled and torch.backends.mkldnn.is_available()
        self.min_numel = min_numel
        self._packs = weakref.WeakKeyDictionary()  # module -> ((data_ptr, version), packed weight)

    def linear(self, module, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed(module, x) if self.enabled else None
        if packed is None:
            return module(x)
        return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")

    def _packed(self, module, x: torch.Tensor):
        w = getattr(module, "weight", None)
        if (type(module) is not nn.Linear or module._forward_hooks or module._forward_pre_hooks
                or w.numel() < self.min_numel or w.device.type != "cpu" or w.dtype != torch.float32
                or x.dtype != torch.float32):
            return None
        stamp = (w.data_ptr(), w._version)
        hit = self._packs.get(module)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch_size=max(1, x.numel() // x.shape[-1]))
        except (RuntimeError, AttributeError, NotImplementedError):  # a build without these oneDNN ops
            self.enabled = False
            return None
        self._packs[module] = (stamp, packed)
        return packed


class DecodeStep:
    def __init__(self, core, cache, pos_lo: int, pos_hi: int, fused: bool | None = None,
                 linears: PackedLinears | None = None):
        """`core`: the transformers model (unwrapped); positions fed will lie in [pos_lo, pos_hi)."""
        self.lm, self.head, self.cache = core.model.language_model, core.lm_head, cache
        self.fused = can_fuse(self.lm, cache) if fused is None else fused
        self.linear = linears.linear if linears is not None else (lambda module, x: module(x))
        if self.fused:
            like = self.lm.embed_tokens.weight[:0]
            positions = torch.arange(pos_lo, pos_hi, device=like.device).view(1, 1, -1).expand(3, 1, -1)
            cos, sin = self.lm.rotary_emb(like, positions)
            # rotate_half(x) * sin == roll(x, d/2) * signed_sin with the first half of sin negated (exact)
            half = sin.shape[-1] // 2
            signed = torch.cat([-sin[0, ..., :half], sin[0, ..., half:]], dim=-1)
            self.cos, self.sin, self.lo, self.half = cos[0].contiguous(), signed.contiguous(), pos_lo, half

    def __call__(self, tok: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            n = tok.shape[0]
            hidden = self.lm(input_ids=tok[:, None], attention_mask=valid.long(),
                             position_ids=pos.view(1, n, 1).expand(3, n, 1), use_cache=True,
                             **cache_arg(self.lm, self.cache)).last_hidden_state
            return self.head(hidden[:, -1])
        h = self.lm.embed_tokens(tok[:, None])  # [n, 1, hidden]
        idx = pos - self.lo
        rope = (self.cos[idx][:, None, None], self.sin[idx][:, None, None])  # [n, 1, 1, head_dim]
        # the additive mask sdpa would build from the boolean one in every layer, built once per step
        P, group = self.cache.layers[0].prefix_len, self.cache.layers[0].group
        mask = _additive(valid[:, P:], h.dtype)
        if P:  # shared prompt: its mask is the same for the G rows of a prompt
            mask = (_additive(valid[::group, :P], h.dtype), mask)
        for i, layer in enumerate(self.lm.layers):
            h = h + self._attention(i, layer.self_attn, layer.input_layernorm(h), rope, mask)
            h = h + self._mlp(layer.mlp, layer.post_attention_layernorm(h))
        return self.linear(self.head, self.lm.norm(h)[:, -1])

    def _mlp(self, mlp, x: torch.Tensor) -> torch.Tensor:
        """The Qwen-VL text MLP, down(act(gate(x)) * up(x)), with its projections through `self.linear`."""
        if type(mlp).__name__ not in MLP_CLASSES or mlp._forward_hooks or mlp._forward_pre_hooks:
            return mlp(x)
        lin = self.linear
        return lin(mlp.down_proj, mlp.act_fn(lin(mlp.gate_proj, x)) * lin(mlp.up_proj, x))

    def _attention(self, i: int, attn, x: torch.Tensor, rope, mask: torch.Tensor) -> torch.Tensor:
        """Self-attention of one new token per row [n, 1, hidden] over the row's cache (written here)."""
        n, d = x.shape[0], attn.head_dim
        q = self.linear(attn.q_proj, x).view(n, 1, -1, d)
        k = self.linear(attn.k_proj, x).view(n, 1, -1, d)
        v = self.linear(attn.v_proj, x).view(n, 1, -1, d)
        if hasattr(attn, "q_norm"):  # Qwen3-VL normalises each head of q and k
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [n, heads, 1, d]
        cos, sin = rope
        q = q * cos + q.roll(self.half, -1) * sin
        k = k * cos + k.roll(self.half, -1) * sin
        layer = self.cache.layers[i]
        keys, values = layer.append(k, v)  # [n, kv_heads, W, d] (the rows' own columns)
        # grouped-query attention: the query heads of one kv head become that head's query rows
        q = q.reshape(n, keys.shape[1], -1, d)
        if layer.prefix is not None:
            out = attend_shared_prefix(q, *layer.prefix, keys, values, *mask, attn.scaling)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling)
        return self.linear(attn.o_proj, out.reshape(n, 1, -1))


def _additive(valid: torch.Tensor, dtype) -> torch.Tensor:
    """[n, W] bool -> [n, 1, 1, W] additive mask (0 where valid, -inf elsewhere)."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, float("-inf"))[:, None, None]


def attend_shared_prefix(q, pk, pv, keys, values, pmask, mask, scale: float) -> torch.Tensor:
    """Attention of each row's queries over its prompt's shared keys/values and then its own.

    q [n, H, g, d]: n = B*G rows, prompt-major (the G rows of prompt b are b*G..b*G+G-1), H kv heads with g query
    heads each; pk/pv [B, H, P, d]: the prompts' keys/values, stored once per prompt; keys/values [n, H, T, d]:
    each row's later tokens; pmask [B, 1, 1, P] and mask [n, 1, 1, T]: additive masks. Returns [n, H, g, d].

    One softmax over the row's P + T scores, so the result is ordinary attention over the concatenation; the
    gain is that the prompt's scores for all G*g query rows of a group come from one matmul against one copy of
    its keys (and likewise for the values), so a decoding step reads the prompt's cache once per group."""
    n, H, g, d = q.shape
    B, P = pk.shape[0], pk.shape[2]
    G = n // B
    q = q * scale
    # prompt scores: the group's G rows side by side as G*g query rows of one matrix per (prompt, kv head)
    qp = q.view(B, G, H, g, d).transpose(1, 2).reshape(B, H, G * g, d)
    s_prompt = (qp @ pk.transpose(-1, -2) + pmask).view(B, H, G, g, P).transpose(1, 2).reshape(n, H, g, P)
    probs = torch.cat([s_prompt, q @ keys.transpose(-1, -2) + mask], dim=-1).softmax(-1)
    p_prompt = probs[..., :P].reshape(B, G, H, g, P).transpose(1, 2).reshape(B, H, G * g, P)
    out = (p_prompt @ pv).view(B, H, G, g, d).transpose(1, 2).reshape(n, H, g, d)
    return out + probs[..., P:] @ values
