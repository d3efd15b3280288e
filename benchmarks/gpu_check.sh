#!/usr/bin/env bash
# One <= 10-minute check on a single H100/H200 (torch, transformers, accelerate preinstalled; no hub,
# no internet): bf16 DINM edit seconds and post-edit generation tokens/s, grouped vs one at a time,
# on randomly initialised models of SmolLM2-135M's and Llama-2-7B's shapes, plus the correctness
# check (grouped vs sequential outputs and weights). Nothing is downloaded; only src/ travels.
#
#   bash benchmarks/gpu_check.sh            # both shapes, K=8 (prints a table)
#   bash benchmarks/gpu_check.sh --tiny     # tiny config on the CPU: checks the script itself
#   bash benchmarks/gpu_check.sh --shapes llama-2-7b --k 16
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi"
timeout 570 "$PY" benchmarks/gpu_check.py "$@"
