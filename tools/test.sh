#!/usr/bin/env bash
# README command two: set everything up, then run the test suite (offline).
# With no arguments it also builds .venv-vllm (tools/setup_vllm.sh) and runs the vLLM backend's tests in it; a
# failed vLLM set-up fails the run (after the main suite). VLMRL_SKIP_VLLM=1 leaves vLLM out (its tests are
# then skipped, with the reason). Arguments go to pytest and run the main suite only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh dev,lora,plot
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLMRL_NO_PROGRESS=1
if [ "$#" -gt 0 ] || [ "${VLMRL_SKIP_VLLM:-0}" = 1 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
status=0
vllm_ok=1
# before the main suite: its server-mode tests (tests/test_vllm_server.py) start servers in .venv-vllm
bash tools/setup_vllm.sh || { vllm_ok=0; status=1; echo "[test] FAILED to build .venv-vllm: the vLLM tests did not run" >&2; }
.venv/bin/python -m pytest -q || status=$?
if [ "$vllm_ok" = 1 ]; then
  bash tools/test_vllm.sh || status=$?
fi
exit $status
