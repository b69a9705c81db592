#!/usr/bin/env bash
# README command one: set everything up, then run the main job on the embedded default (`vlmrl quickstart`):
# a small Qwen2.5-VL-shaped model built offline, the synthetic zoom task, an SFT warm start, DTPO in the
# crop-tool loop, held-out evaluation of the warm start, the RL model and two fixed baselines, a summary
# table, then GRPO vs PAPO-G on the direct task, then the real-image stage (scikit-learn digits, installed by
# the `digits` extra: SFT warm start, GRPO and PAPO-G, held-out accuracy). Extra arguments go to `vlmrl quickstart` (e.g. --seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh dev,lora,plot,digits
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/vlmrl quickstart "$@"
