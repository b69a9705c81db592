#!/usr/bin/env bash
# The vLLM backend's tests that need vLLM in-process, in the separate .venv-vllm (built by tools/setup_vllm.sh).
# (tests/test_vllm_server.py runs in the main suite: trainer in .venv, server in .venv-vllm.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_vllm.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLMRL_NO_PROGRESS=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv-vllm/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning \
  tests/test_vllm_sampler.py tests/test_vllm_train_eval.py "$@"
