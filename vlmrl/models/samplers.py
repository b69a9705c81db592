"""Choosing the sampler a recipe asks for (`rollout.backend`, and the `vllm:` section's mode)."""

from __future__ import annotations

from vlmrl.config import RolloutConfig, VLLMConfig
from vlmrl.models.sampler import Sampler


def make_sampler(policy, backend: str = "hf", hf_config=None, vllm_config: VLLMConfig | None = None,
                 rollout: RolloutConfig | None = None, model_dir: str | None = None, weights_dir: str | None = None,
                 is_main: bool = True, training: bool = False) -> Sampler:
    """The sampler a recipe asks for: `HFSampler` (backend hf), `VLLMSampler` (vllm, colocated; `model_dir` is the
    checkpoint vLLM starts from) or `VLLMServerSampler` (vllm, server). `training`: a colocated vLLM sleeps
    between rollouts and updates (GPU, `vllm.sleep`)."""
    if backend == "hf":
        from vlmrl.models.hf_sampler import HFSampler

        return HFSampler(policy, hf_config)
    if backend != "vllm":
        raise ValueError(f"unknown sampler backend {backend!r}; use hf or vllm")
    vcfg = vllm_config or VLLMConfig()
    if vcfg.mode == "server":
        from vlmrl.models.vllm_sampler import VLLMServerSampler

        return VLLMServerSampler(vcfg, weights_dir, model=policy.model, is_main=is_main)
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(f"rollout.backend vllm (colocated) needs vLLM in this environment ({e}): pip install "
                          "'vlmrl[vllm]' on a GPU machine, or bash tools/setup_vllm.sh and run with "
                          ".venv-vllm/bin/python; or use vllm.mode: server") from None
    if model_dir is None:
        raise ValueError("the colocated vLLM sampler needs the checkpoint directory vLLM starts from")
    from vlmrl.models.vllm_sampler import VLLMSampler

    return VLLMSampler(policy, model_dir, vcfg, rollout, sleep_on_release=training)
