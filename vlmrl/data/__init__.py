"""Data layer: the Sample schema, dataset loaders, image decoding and pixel budget, synthetic tasks,
prompt templates. Heavy submodules (synthetic) are imported on use."""

from .images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    budget_size,
    decode_image,
    fit_to_budget,
    load_image,
    resolve_path,
    to_rgb,
)
from .formats import detect_format, infer_answer_type
from .loaders import VQADataset, find_data_files, load_dataset, load_samples
from vlmrl.family import default_convention

from .prompts import (
    build_messages,
    crop_tool_schema,
    direct_messages,
    tool_messages,
    tool_system_prompt,
)
from .sample import ANSWER_TYPES, DataError, Sample, render_choices
from .vision import image_factor, smart_resize, visual_tokens

__all__ = [
    "ANSWER_TYPES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DataError",
    "Sample",
    "VQADataset",
    "budget_size",
    "build_messages",
    "crop_tool_schema",
    "decode_image",
    "default_convention",
    "detect_format",
    "direct_messages",
    "find_data_files",
    "fit_to_budget",
    "image_factor",
    "infer_answer_type",
    "load_dataset",
    "load_image",
    "load_samples",
    "render_choices",
    "resolve_path",
    "smart_resize",
    "to_rgb",
    "tool_messages",
    "tool_system_prompt",
    "visual_tokens",
]


def make_zoom_dataset(*args, **kwargs):
    """See :func:`vlmrl.data.synthetic.make_zoom_dataset`."""
    from .synthetic import make_zoom_dataset as _f

    return _f(*args, **kwargs)
