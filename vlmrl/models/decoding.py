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
  (tests/test_perf_kv.py).
- otherwise: the HF language model with a 2-D mask and 3-D positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmrl.models.kvcache import KVCache

FUSED_TEXT_MODELS = ("qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text")
_ATTN_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
_LAYER_PARTS = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")


def can_fuse(lm, cache) -> bool:
    """Whether `lm` (a Qwen-VL text model) and `cache` allow the fused decoding step."""
    cfg = lm.config
    return (isinstance(cache, KVCache) and cfg._attn_implementation == "sdpa" and cfg.model_type in FUSED_TEXT_MODELS
            and getattr(lm.rotary_emb, "rope_type", "default") == "default"
            and all(all(hasattr(layer, a) for a in _LAYER_PARTS) and all(hasattr(layer.self_attn, a) for a in _ATTN_PARTS)
                    for layer in lm.layers))


class DecodeStep:
    def __init__(self, core, cache, pos_lo: int, pos_hi: int, fused: bool | None = None):
        """`core`: the transformers model (unwrapped); positions fed will lie in [pos_lo, pos_hi)."""
        self.lm, self.head, self.cache = core.model.language_model, core.lm_head, cache
        self.fused = can_fuse(self.lm, cache) if fused is None else fused
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
                             position_ids=pos.view(1, n, 1).expand(3, n, 1), past_key_values=self.cache,
                             use_cache=True).last_hidden_state
            return self.head(hidden[:, -1])
        h = self.lm.embed_tokens(tok[:, None])  # [n, 1, hidden]
        idx = pos - self.lo
        rope = (self.cos[idx][:, None, None], self.sin[idx][:, None, None])  # [n, 1, 1, head_dim]
        # the additive mask sdpa would build from the boolean one in every layer, built once per step
        mask = torch.zeros(valid.shape, dtype=h.dtype, device=h.device).masked_fill_(~valid, float("-inf"))
        mask = mask[:, None, None, :]
        for i, layer in enumerate(self.lm.layers):
            h = h + self._attention(i, layer.self_attn, layer.input_layernorm(h), rope, mask)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.head(self.lm.norm(h)[:, -1])

    def _attention(self, i: int, attn, x: torch.Tensor, rope, mask: torch.Tensor) -> torch.Tensor:
        """Self-attention of one new token per row [n, 1, hidden] over the row's cache (written here)."""
        n, d = x.shape[0], attn.head_dim
        q = attn.q_proj(x).view(n, 1, -1, d)
        k = attn.k_proj(x).view(n, 1, -1, d)
        v = attn.v_proj(x).view(n, 1, -1, d)
        if hasattr(attn, "q_norm"):  # Qwen3-VL normalises each head of q and k
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [n, heads, 1, d]
        cos, sin = rope
        q = q * cos + q.roll(self.half, -1) * sin
        k = k * cos + k.roll(self.half, -1) * sin
        keys, values = self.cache.layers[i].update(k, v)  # [n, kv_heads, W, d]
        # grouped-query attention: the query heads of one kv head become that head's query rows
        out = F.scaled_dot_product_attention(q.reshape(n, keys.shape[1], -1, d), keys, values, attn_mask=mask,
                                             scale=attn.scaling)
        return attn.o_proj(out.reshape(n, 1, -1))
