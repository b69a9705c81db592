#!/usr/bin/env bash
# GPU device check of the vLLM backend, < 10 minutes on one GPU (tools/device_check_vllm.py says what it does).
# Needs a Python with torch (CUDA), vLLM and vlmrl's dependencies: $VLMRL_PYTHON, else .venv-vllm/bin/python, else
# python3; when vLLM is missing it tries `pip install -e '.[vllm]'` (network). Results: $OUT (default
# device_check_vllm_out/): summary.json, bench and train logs.
# CPU dry run of the same path (a minute): bash tools/device_check_vllm.sh --size tiny32
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${VLMRL_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv-vllm/bin/python ]; then PY=.venv-vllm/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import vllm, vlmrl" >/dev/null 2>&1; then
  echo "[device-check] vLLM/vlmrl not importable with $PY: pip install -e '.[vllm]'"
  "$PY" -m pip install -q -e ".[vllm]"
fi
nvidia-smi -L 2>/dev/null || echo "[device-check] no nvidia-smi: CPU run"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLMRL_NO_PROGRESS=1
exec "$PY" tools/device_check_vllm.py --out "${OUT:-device_check_vllm_out}" "$@"
