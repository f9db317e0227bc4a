#!/usr/bin/env bash
# GPU check (never run by CI): ZeRO-3 teacher of >=1B parameters offloaded to CPU memory,
# bf16, NCCL, one GPU worker, ~50 steps; prints real tokens/s, peak GPU memory, peak host
# RSS and MFU (bench/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv
PYTHONUNBUFFERED=1 python bench/gpu_check.py "$@"
