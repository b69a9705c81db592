"""A vLLM rollout server for `vllm.mode: server`: run it in the environment that has vLLM (.venv-vllm here).

    python -m vlmrl.models.vllm_server --model DIR [--port 8011] [--host 127.0.0.1] [--recipe RECIPE.yaml]
                                       [--dtype float32|bfloat16|auto] [--gpu-memory-utilization F]

It starts `VLLMEngine` over checkpoint DIR (with the recipe's `rollout:` and `vllm:` settings when given: pixel
budgets, max_model_len, ...) and answers JSON over HTTP, one generate at a time:

    GET  /health            {"ok": true, "model": DIR, "reloads": n, "start_seconds": s}
    POST /generate          {"requests": [{"ids", "images": [{"mode", "size", "data": base64 raw}], "n",
                              "max_tokens", "seed"}], "temperature", "top_p", "stop_strings"}
                            -> {"generations": [[{"ids", "logprobs", "finish"}, ...], ...]}
    POST /reload            {"path": DIR with *.safetensors} -> {"seconds": s}  (weights reloaded, caches reset)
    POST /reset             {} -> {}  (prefix, encoder and multimodal caches reset)

An error inside a request answers 500 with the error text (the client raises it). The trainer side is
`vlmrl.models.vllm_sampler.VLLMServerSampler`; docs/vllm.md has the GPU layout (servers on some GPUs, training
on the others).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(engine, lock: threading.Lock):
    from vlmrl.models.vllm_engine import Request
    from vlmrl.models.vllm_sampler import decode_image

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: one line per request is noise in a training log
            pass

        def _send(self, code: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self._send(200, {"ok": True, "model": engine.model_dir, "reloads": engine.reloads,
                                 "start_seconds": engine.start_seconds})
            else:
                self._send(404, {"error": f"no such endpoint {self.path}"})

        def do_POST(self):
            try:
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                with lock:
                    if self.path == "/generate":
                        reqs = [Request(ids=r["ids"], images=[decode_image(d) for d in r["images"]], n=r["n"],
                                        max_tokens=r["max_tokens"], seed=r["seed"]) for r in body["requests"]]
                        out = {"generations": engine.generate(reqs, body["temperature"], body["top_p"],
                                                              tuple(body.get("stop_strings", ())))}
                    elif self.path == "/reload":
                        out = {"seconds": engine.load_weights_from(body["path"])}
                    elif self.path == "/reset":
                        engine.reset_caches()
                        out = {}
                    else:
                        self._send(404, {"error": f"no such endpoint {self.path}"})
                        return
                self._send(200, out)
            except Exception as e:  # the client shows it
                traceback.print_exc()
                self._send(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmrl.models.vllm_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint directory vLLM starts from")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--recipe", default=None, help="training recipe: its rollout: and vllm: sections set the engine")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto (default: the recipe's "
                   "vllm.dtype; auto = float32 on CPU, the checkpoint's on GPU)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    args = p.parse_args(argv)

    from vlmrl.config import RolloutConfig, VLLMConfig, load_config
    from vlmrl.family import get_family
    from vlmrl.models.checks import check_model_dir
    from vlmrl.models.vllm_engine import VLLMEngine, on_cpu
    from vlmrl.models.vllm_sampler import engine_settings

    family = check_model_dir(args.model)
    cfg = load_config(args.recipe) if args.recipe else None
    vcfg = cfg.vllm if cfg else VLLMConfig()
    if args.gpu_memory_utilization is not None:
        vcfg.gpu_memory_utilization = args.gpu_memory_utilization
    dtype = args.dtype or vcfg.dtype
    if dtype == "auto" and on_cpu():
        dtype = "float32"
    settings = engine_settings(vcfg, cfg.rollout if cfg else RolloutConfig(), dtype, get_family(family).factor)
    settings.sleep = False  # a server keeps its memory: nothing else runs on its device
    engine = VLLMEngine(args.model, settings)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(engine, threading.Lock()))
    print(f"vlmrl vLLM server ready on http://{args.host}:{server.server_address[1]} (model {args.model}, "
          f"started in {engine.start_seconds:.1f} s)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # vLLM may spawn processes: the server starts only from here
    sys.exit(main())
