"""A Qwen-VL processor that works without torchvision.

transformers' stock Qwen-VL processors want a video processor, which needs torchvision; without it
`AutoProcessor` quietly falls back to a bare tokenizer. vlmrl registers an image-only processor
(PIL image processor + tokenizer) for the three Qwen-VL config classes, so `AutoProcessor.from_pretrained`
returns a processor that handles images and text on a CPU-only machine.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoProcessor, AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

from vlmrl.family import get_family


def image_processor_for(family: str, min_pixels: int = 4 * 28 * 28, max_pixels: int = 1024 * 28 * 28):
    """The PIL Qwen-VL image processor configured like the family's released checkpoints."""
    fam = get_family(family)
    return Qwen2VLImageProcessorPil(
        patch_size=fam.patch, merge_size=fam.merge, temporal_patch_size=2, image_mean=list(fam.image_mean),
        image_std=list(fam.image_std),
        min_pixels=min_pixels, max_pixels=max_pixels,
    )


class QwenVLImageProcessor(Qwen2VLProcessor):
    """Qwen-VL processor with only an image processor and a tokenizer (no video, no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers does, plus a video processor config beside the image processor's (see
        `write_video_processor_config`), so the stock Qwen-VL processor (vLLM's) also loads the checkpoint."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        write_video_processor_config(save_directory, self.image_processor)
        return out


VIDEO_CONFIG = "video_preprocessor_config.json"


def write_video_processor_config(out: str | Path, image_processor=None) -> Path:
    """Write `video_preprocessor_config.json` into checkpoint `out`, matching its image processor (patch, merge,
    normalisation; read from `out` when not given). vlmrl never processes videos; the stock Qwen-VL processors
    that vLLM loads refuse a checkpoint without it. Written as JSON, since the video processor classes import
    torchvision. The image processor, and so everything vlmrl computes, is unchanged."""
    import json

    out = Path(out)
    if image_processor is None:
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(out), local_files_only=True)
    ip = image_processor
    cls = "Qwen3VLVideoProcessor" if ip.patch_size == get_family("qwen3_vl").patch else "Qwen2VLVideoProcessor"
    cfg = {"video_processor_type": cls, "patch_size": ip.patch_size, "merge_size": ip.merge_size,
           "temporal_patch_size": ip.temporal_patch_size, "image_mean": list(ip.image_mean),
           "image_std": list(ip.image_std)}
    path = out / VIDEO_CONFIG
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def _register() -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    for cfg in (Qwen2VLConfig, Qwen2_5_VLConfig, Qwen3VLConfig):
        AutoProcessor.register(cfg, QwenVLImageProcessor, exist_ok=True)


_register()


def save_processor(out: str | Path, family: str, tokenizer) -> None:
    """Write tokenizer, image processor and chat template so both AutoProcessor and our loader read them."""
    proc = QwenVLImageProcessor(image_processor_for(family), tokenizer, chat_template=tokenizer.chat_template)
    proc.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def load_processor(path: str | Path) -> QwenVLImageProcessor:
    """Load the image-only processor from a local checkpoint directory (never the hub)."""
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path), local_files_only=True)
    chat_template = tokenizer.chat_template
    return QwenVLImageProcessor(image_processor, tokenizer, chat_template=chat_template)
