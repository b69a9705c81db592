"""Models: the codec (images and token ids -> model inputs: codec.py), the policy (load a local Qwen-VL
checkpoint, teacher-forced log-probs: policy.py), the sampler interface (sampler.py) and its Hugging Face
implementation with the CPU speed tricks (hf_sampler.py), the tiny offline model builder (tiny.py), and the
image-only processor (processor.py). Names are imported on first use."""

from vlmrl._lazy import lazy_exports

_EXPORTS = {
    "Codec": "vlmrl.models.codec", "Seq": "vlmrl.models.codec", "VisionInput": "vlmrl.models.codec",
    "Policy": "vlmrl.models.policy", "detect_family": "vlmrl.models.policy",
    "Generation": "vlmrl.models.sampler", "Prompt": "vlmrl.models.sampler", "Sampler": "vlmrl.models.sampler",
    "SamplingParams": "vlmrl.models.sampler", "HFSampler": "vlmrl.models.hf_sampler",
    "HFSamplerConfig": "vlmrl.config", "make_tiny": "vlmrl.models.tiny", "load_processor": "vlmrl.models.processor",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
