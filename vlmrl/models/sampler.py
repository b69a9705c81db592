"""The sampler interface: what every generation backend implements, and all the rest of vlmrl sees of one.

A `Prompt` is token ids plus the PIL images of its image placeholders, in order (never pixel tensors or cache
handles), so a backend that runs elsewhere (vLLM, a server) takes it as is. `Sampler.generate(prompts, params)`
returns one `Generation` per sample, prompt-major (prompt 0's samples, then prompt 1's, ...): the sampled token ids,
their log-probs under the temperature-scaled distribution (before top-p; what a teacher-forced pass at the same
temperature recomputes) and why it ended. `Sampler.sync_weights(model)` is called after the optimizer steps of an
update (once per training step) with the trained model, before the next `generate`; `Sampler.release()` when no later prompt will extend the rows
sampled so far (the end of a rollout).

Implementations: `vlmrl.models.hf_sampler.HFSampler` (the policy's own Hugging Face model, on the same device).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


@dataclass
class Prompt:
    """Token ids of a prompt, and the PIL images of its `<|image_pad|>` runs, in order (each sized to the model
    family's factor, its run as many pads as `Codec.image_tokens(image.size)`)."""

    ids: list[int]
    images: list = field(default_factory=list)


@dataclass
class SamplingParams:
    """How to sample. `max_new_tokens` and `n` (samples per prompt) are one value or one per prompt;
    `temperature` 0 is greedy; generation stops at an end-of-turn token, a `stop_strings` string (kept in the
    output) or `max_new_tokens`. `generator` (or else `seed`) makes sampling reproducible."""

    max_new_tokens: int | list[int] = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    n: int | list[int] = 1
    generator: torch.Generator | None = None
    seed: int | None = None

    def per_prompt(self, n_prompts: int) -> tuple[list[int], list[int]]:
        """(max_new_tokens, n) as one value per prompt; a clear error for wrong lengths or values."""
        out = []
        for name, minimum in (("max_new_tokens", 1), ("n", 1)):
            value = getattr(self, name)
            values = [value] * n_prompts if isinstance(value, int) else list(value)
            if len(values) != n_prompts:
                raise ValueError(f"SamplingParams.{name}: {len(values)} values for {n_prompts} prompts")
            if values and min(values) < minimum:
                raise ValueError(f"SamplingParams.{name} must be >= {minimum} per prompt, got {value}")
            out.append(values)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        return out[0], out[1]

    def torch_generator(self) -> torch.Generator | None:
        """`generator`, or a CPU generator seeded with `seed`, or None (torch's global one)."""
        if self.generator is not None or self.seed is None:
            return self.generator
        return torch.Generator().manual_seed(self.seed)


@dataclass
class Generation:
    """One sampled continuation: token ids, their log-probs, and "stop" (end of turn or stop string) or "length"."""

    ids: list[int]
    logprobs: list[float]
    finish: str


class Sampler(ABC):
    """A generation backend."""

    @abstractmethod
    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        """`params.n` samples of each prompt, prompt-major."""

    @abstractmethod
    def sync_weights(self, model) -> None:
        """Make later `generate` calls sample from `model`'s current weights (called after an update's optimizer steps)."""

    def release(self) -> None:
        """The caller will not extend the rows of earlier calls (a rollout ended): a backend may free what it kept
        to continue them. Nothing to do by default."""
