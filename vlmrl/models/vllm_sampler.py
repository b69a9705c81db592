"""The vLLM samplers (`rollout.backend: vllm`): vLLM generates, the trainer trains; docs/vllm.md.

- `VLLMSampler` (``vllm.mode: colocated``): vLLM's offline engine (`vlmrl.models.vllm_engine.VLLMEngine`) in the
  training process, started from the checkpoint directory. `sync_weights(model)` marks the engine stale; the next
  `generate` reloads the model's weights into it from memory (`reload_weights`, then the prefix, encoder and
  multimodal caches are reset), so several optimizer steps in a row cost one reload. On a GPU the engine sleeps
  (`vllm.sleep`: weights offloaded, KV cache freed) from the end of a rollout (`release`) to the next generate.
- `VLLMServerSampler` (``vllm.mode: server``): the trainer is a client of one or more
  `python -m vlmrl.models.vllm_server` processes (which may live in another Python environment, with vLLM's
  pinned transformers); it imports no vllm. Prompts are split across the servers. `sync_weights(model)` writes the
  weights as safetensors into `vllm.weights_dir` (a path the servers can read) and has every server reload them
  (main process only; other processes wait at a barrier). A server that does not answer within `vllm.timeout`
  seconds, or answers with an error, raises `SamplerUnavailable`, which ends the run (the last checkpoint is the
  one saved before; nothing is written after the error).

Both take vlmrl's prompts as they are (token ids + PIL images already sized; never re-rendered text) and return
vLLM's sampled ids and log-probs (see vllm_engine for what the log-probs are, and top_p's effect on them).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from vlmrl.config import RolloutConfig, VLLMConfig
from vlmrl.models.sampler import Generation, Prompt, Sampler, SamplingParams


class SamplerUnavailable(RuntimeError):
    """A vLLM server died, hung past the timeout, or answered with an error."""


# --------------------------------------------------------------------------- shared helpers


def model_weights(model) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a trained HF Qwen-VL model in checkpoint naming: the unwrapped model's state dict,
    tied weights under each of their names (vLLM's in-place reload wants the output head's too). A LoRA (peft)
    model gives its merged weights (`merged_lora_weights`)."""
    core = getattr(model, "module", model)
    if hasattr(core, "merge_adapter") and hasattr(core, "get_base_model"):
        return merged_lora_weights(core)
    return [(name, t.detach()) for name, t in core.state_dict().items()]


def merged_lora_weights(peft_model) -> list[tuple[str, torch.Tensor]]:
    """The weights W + BA of a peft LoRA model under the base model's checkpoint names (copies): the adapters are
    merged, the base model's state dict read without its `lora_*` entries and with `.base_layer.` dropped from
    the names, and the adapters unmerged again, as TRL's GRPOTrainer does before it loads weights into vLLM
    (`merge_adapter()` ... `unmerge_adapter()`)."""
    with torch.no_grad():
        peft_model.merge_adapter()
        try:
            return [(name.replace(".base_layer.", "."), t.detach().clone())
                    for name, t in peft_model.get_base_model().state_dict().items() if ".lora_" not in name]
        finally:
            peft_model.unmerge_adapter()


def safetensors_dict(weights) -> dict[str, torch.Tensor]:
    """Weights as safetensors can store them: contiguous, on the CPU, a tied weight's second name a copy."""
    seen, out = set(), {}
    for name, t in weights:
        t = t.contiguous().cpu()
        out[name] = t.clone() if t.data_ptr() in seen else t
        seen.add(t.data_ptr())
    return out


def requests_of(prompts: list[Prompt], params: SamplingParams) -> list[dict]:
    """The per-prompt part of a generate call: ids, images, n, max_tokens and a seed drawn from the params'
    generator (so a seeded rollout is reproducible)."""
    caps, counts = params.per_prompt(len(prompts))
    gen = params.torch_generator()
    seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=gen).tolist() if gen is not None else [None] * len(prompts)
    out = []
    for i, (p, cap, n, seed) in enumerate(zip(prompts, caps, counts, seeds)):
        if not isinstance(p, Prompt):
            raise TypeError(f"prompt {i}: expected a vlmrl.models.sampler.Prompt, got {type(p).__name__}")
        if not p.ids:
            raise ValueError(f"prompt {i}: no token ids")
        out.append({"ids": list(p.ids), "images": list(p.images), "n": n, "max_tokens": cap, "seed": seed})
    return out


def engine_settings(vcfg: VLLMConfig, rollout: RolloutConfig | None, dtype: str, factor: int):
    """`EngineSettings` from the recipe: vLLM resizes no image inside the rollout's pixel budgets."""
    from vlmrl.models.vllm_engine import EngineSettings

    r = rollout or RolloutConfig()
    max_pixels = max(r.first_view_max_pixels, r.image_max_pixels, r.crop_max_pixels)
    return EngineSettings(
        dtype=dtype, max_model_len=vcfg.max_model_len or r.max_total_tokens,
        max_images=max(4, r.max_turns + 2), min_pixels=factor * factor, max_pixels=max_pixels,
        gpu_memory_utilization=vcfg.gpu_memory_utilization, max_num_seqs=vcfg.max_num_seqs,
        enforce_eager=vcfg.enforce_eager, enable_prefix_caching=vcfg.enable_prefix_caching, sleep=vcfg.sleep,
        cpu_kvcache_gb=vcfg.cpu_kvcache_gb)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "auto")


def _generations(per_request: list[list[dict]]) -> list[Generation]:
    return [Generation(list(g["ids"]), [float(x) for x in g["logprobs"]], g["finish"])
            for gens in per_request for g in gens]


# --------------------------------------------------------------------------- colocated


class VLLMSampler(Sampler):
    """vLLM's offline engine in this process, over checkpoint `model_dir` (vLLM reads the architecture,
    tokenizer and processor from it); samples from `policy`'s weights once they are synced (also before the
    first generate, so a resumed run samples from its checkpoint's weights)."""

    def __init__(self, policy, model_dir: str | os.PathLike, cfg: VLLMConfig | None = None,
                 rollout: RolloutConfig | None = None, engine=None, sleep_on_release: bool = False):
        from vlmrl.models.vllm_engine import VLLMEngine

        self.policy = policy
        self.cfg = cfg or VLLMConfig()
        dtype = self.cfg.dtype if self.cfg.dtype != "auto" else _dtype_name(next(policy.model.parameters()).dtype)
        self.engine = engine or VLLMEngine(str(model_dir), engine_settings(self.cfg, rollout, dtype, policy.factor))
        self._stale = policy.model  # the model whose weights the next generate loads
        self.sleep_on_release = sleep_on_release  # training: free vLLM's GPU memory for the update
        self.sync_seconds = 0.0  # the last reload's

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        reqs = requests_of(prompts, params)
        self._load_if_stale()
        from vlmrl.models.vllm_engine import Request

        out = self.engine.generate([Request(**r) for r in reqs], params.temperature, params.top_p,
                                   tuple(params.stop_strings))
        return _generations(out)

    def sync_weights(self, model) -> None:
        """The next generate reloads `model`'s weights (so a run of optimizer steps costs one reload)."""
        self._stale = model

    def _load_if_stale(self) -> None:
        if self._stale is not None:
            self.sync_seconds = self.engine.load_weights(model_weights(self._stale))
            self._stale = None

    def release(self) -> None:
        """End of a rollout: in training (`sleep_on_release`) on a GPU with `vllm.sleep`, vLLM frees its memory
        for the update (an evaluation's rollouts follow each other: no sleep between them)."""
        if self.sleep_on_release:
            self.engine.sleep()


# --------------------------------------------------------------------------- server client


def encode_image(im) -> dict:
    """A PIL image as JSON: mode, size and raw pixels (base64), exact and cheap to decode."""
    return {"mode": im.mode, "size": list(im.size), "data": base64.b64encode(im.tobytes()).decode("ascii")}


def decode_image(d: dict):
    from PIL import Image

    return Image.frombytes(d["mode"], tuple(d["size"]), base64.b64decode(d["data"]))


def call(url: str, path: str, body: dict | None = None, timeout: float = 600.0) -> dict:
    """POST (or GET without a body) JSON to a vlmrl vLLM server; `SamplerUnavailable` on a connection error, a
    timeout or an error answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[-2000:]
        raise SamplerUnavailable(f"vLLM server {url}{path} answered {e.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        what = ("did not answer within the timeout" if isinstance(reason, TimeoutError) or "timed out" in str(reason)
                else f"is unreachable ({reason})")
        raise SamplerUnavailable(f"vLLM server {url} {what} ({time.perf_counter() - t0:.1f} s, timeout "
                                 f"{timeout:g} s, request {path}); is it running? (python -m vlmrl.models.vllm_server)"
                                 ) from None


class VLLMServerSampler(Sampler):
    """Client of the vlmrl vLLM servers at `cfg.server_urls`; pushes weights through `weights_dir`."""

    def __init__(self, cfg: VLLMConfig, weights_dir: str | os.PathLike | None = None, model=None,
                 is_main: bool = True):
        if not cfg.server_urls:
            raise ValueError("vllm.mode server needs vllm.server_urls (e.g. [http://127.0.0.1:8011])")
        self.cfg = cfg
        self.urls = list(cfg.server_urls)
        self.weights_dir = Path(weights_dir or cfg.weights_dir or "vllm_weights")
        self.is_main = is_main
        self.health = [call(u, "/health", timeout=min(cfg.timeout, 30.0)) for u in self.urls]
        self._stale = model  # pushed before the first generate (a resumed run's weights)
        self.sync_seconds = 0.0

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        reqs = requests_of(prompts, params)
        if self._stale is not None:
            self._push(self._stale)
        common = {"temperature": params.temperature, "top_p": params.top_p,
                  "stop_strings": list(params.stop_strings)}
        k = len(self.urls)
        parts = [list(range(len(reqs)))[j::k] for j in range(k)]  # round-robin over the servers
        results: list = [None] * k
        errors: list = [None] * k

        def run(j):
            try:
                body = common | {"requests": [dict(reqs[i], images=[encode_image(im) for im in reqs[i]["images"]])
                                              for i in parts[j]]}
                results[j] = call(self.urls[j], "/generate", body, timeout=self.cfg.timeout)["generations"]
            except BaseException as e:  # re-raised below, in the caller's thread
                errors[j] = e

        threads = [threading.Thread(target=run, args=(j,), daemon=True) for j in range(k) if parts[j]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for e in errors:
            if e is not None:
                raise e
        per_request: list = [None] * len(reqs)
        for j in range(k):
            for i, gens in zip(parts[j], results[j] or []):
                per_request[i] = gens
        return _generations(per_request)

    def sync_weights(self, model) -> None:
        """Write `model`'s weights and have every server reload them (main process; the others wait)."""
        self._push(model)

    def _push(self, model) -> None:
        from safetensors.torch import save_file

        t0 = time.perf_counter()
        if self.is_main:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.weights_dir / "model.safetensors.tmp"
            save_file(safetensors_dict(model_weights(model)), str(tmp), metadata={"format": "pt"})
            os.replace(tmp, self.weights_dir / "model.safetensors")
            for u in self.urls:
                call(u, "/reload", {"path": str(self.weights_dir.resolve())}, timeout=self.cfg.timeout)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
        self._stale = None
        self.sync_seconds = time.perf_counter() - t0
