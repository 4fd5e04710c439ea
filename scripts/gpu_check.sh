#!/usr/bin/env bash
# Every check that needs a GPU, in one command of about 5 minutes on one GPU (what it checks:
# scripts/gpu_check.py). Needs the set-up with a CUDA build of torch, e.g.
#   GGLM_TORCH="torch==2.5.1" bash scripts/setup.sh && bash scripts/gpu_check.sh [OUT_DIR]
# GPU_CHECK_DEVICE=cpu runs the same code paths on a CPU (as the tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
# shellcheck disable=SC2086  # GPU_CHECK_ARGS holds several words
timeout 540 python scripts/gpu_check.py --device "${GPU_CHECK_DEVICE:-cuda}" --out "$OUT" \
  ${GPU_CHECK_ARGS:-}
