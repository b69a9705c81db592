"""`vlmrl make-tiny`: build a tiny random-initialised Qwen-VL checkpoint offline.

The checkpoint is a normal Hugging Face directory (config, safetensors weights, tokenizer, image processor,
chat template) that `transformers` loads with `from_pretrained` and no hub access. The tokenizer is a
byte-level BPE trained here on a small built-in corpus, with Qwen's special tokens and tool/think/answer
tags, so any text round-trips. The same seed gives byte-identical weights.

Sizes: `tiny` (LM hidden 64, 2 layers; for tests), `tiny32` (the same with 2 attention heads of size 32: vLLM's
CPU attention needs a head size of at least 32; the vLLM tests' model) and `small` (LM hidden 256, 4 layers, a
few million parameters; the demo model).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from vlmrl.models.chat_template import ADDED_TOKENS, CHAT_TEMPLATE, SPECIAL_TOKENS

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

SIZES = {
    #          LM hidden, layers, heads, kv heads, mlp, vocab, vision hidden, vision layers, vision heads
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, vocab=640, v_hidden=32, v_layers=2, v_heads=2),
    "tiny32": dict(hidden=64, layers=2, heads=2, kv_heads=1, mlp=128, vocab=640, v_hidden=32, v_layers=2, v_heads=2),
    "small": dict(hidden=256, layers=4, heads=4, kv_heads=2, mlp=768, vocab=2048, v_hidden=128, v_layers=4, v_heads=4),
}


# --------------------------------------------------------------------------- tokenizer

def _corpus(seed: int) -> list[str]:
    """Text the BPE merges are learned from: chat scaffolding, tool calls, numbers and VQA words."""
    rng = random.Random(seed)
    words = (
        "what is the colour color of shape square circle triangle star large small big tiny red green blue "
        "yellow purple orange black white gray how many are there in image picture digit number letter word "
        "written inside box corner top bottom left right center which answer question option choose think "
        "look region crop zoom see detail read text first then final the a an to is it I need closer "
        "user assistant system you are helpful call tool function arguments name bbox_2d coordinates"
    ).split()
    lines = []
    for _ in range(3000):
        n = rng.randint(3, 12)
        lines.append(" ".join(rng.choice(words) for _ in range(n)) + rng.choice([".", "?", "!", ":", ""]))
        box = [rng.randint(0, 1000) for _ in range(4)]
        lines.append('{"name": "crop", "arguments": {"bbox_2d": [%d, %d, %d, %d]}}' % tuple(box))
        lines.append(f"{rng.randint(0, 99999)} {rng.random():.3f} {rng.choice('ABCDEFGH')}. {rng.choice(words)}")
    lines.append(CHAT_TEMPLATE)
    return lines


def build_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE tokenizer with Qwen's special tokens, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + ADDED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# --------------------------------------------------------------------------- model config

def build_config(family: str, size: str, tokenizer):
    """A transformers config for the family and size, wired to the tokenizer's special-token ids."""
    from transformers import AutoConfig

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    s = SIZES[size]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = s["hidden"] // s["heads"]
    half = head_dim // 2
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=s["hidden"],
        intermediate_size=s["mlp"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    if family == "qwen3_vl":
        # interleaved M-RoPE: temporal gets the most frequencies
        t_sec = half - 2 * (half * 5 // 16)
        text.update(head_dim=head_dim, rope_parameters=dict(
            rope_type="default", rope_theta=1_000_000.0, mrope_section=[t_sec, half * 5 // 16, half * 5 // 16],
            mrope_interleaved=True))
        vision = dict(
            depth=s["v_layers"], hidden_size=s["v_hidden"], intermediate_size=s["v_hidden"] * 4,
            num_heads=s["v_heads"], patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
            out_hidden_size=s["hidden"], num_position_embeddings=256,
            deepstack_visual_indexes=list(range(s["v_layers"] - 1)),
        )
    else:
        section = [half // 4, (half - half // 4 + 1) // 2, (half - half // 4) // 2]
        text.update(rope_parameters=dict(rope_type="default", rope_theta=1_000_000.0, mrope_section=section))
        if family == "qwen2_vl":
            vision = dict(depth=s["v_layers"], embed_dim=s["v_hidden"], hidden_size=s["hidden"], mlp_ratio=4,
                          num_heads=s["v_heads"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        else:
            vision = dict(depth=s["v_layers"], hidden_size=s["v_hidden"], intermediate_size=s["v_hidden"] * 4,
                          num_heads=s["v_heads"], out_hidden_size=s["hidden"], patch_size=14, spatial_merge_size=2,
                          temporal_patch_size=2, window_size=112, fullatt_block_indexes=[s["v_layers"] - 1])
    return AutoConfig.for_model(
        family,
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_image_processor(family: str):
    from vlmrl.models.processor import image_processor_for

    return image_processor_for(family)


# --------------------------------------------------------------------------- make-tiny

def make_tiny(family: str, out: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """Build, save and return the path of a random-initialised checkpoint."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmrl.models.processor import save_processor

    out = Path(out)
    tokenizer = build_tokenizer(SIZES[size]["vocab"], seed=0)
    config = build_config(family, size, tokenizer)
    torch.manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_processor(out, family, tokenizer)
    (out / "vlmrl_tiny.json").write_text(json.dumps({"family": family, "size": size, "seed": seed}, indent=2) + "\n")
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=FAMILIES, default="qwen2_5_vl", help="model family (default qwen2_5_vl)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--size", choices=tuple(SIZES), default="tiny", help="tiny (tests), tiny32 (vLLM tests: head size 32) or small (demo)")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")


def run(args: argparse.Namespace) -> int:
    path = make_tiny(args.family, args.out, size=args.size, seed=args.seed)
    n = sum(1 for _ in path.iterdir())
    print(f"wrote {args.size} {args.family} checkpoint to {path} ({n} files)")
    return 0
