#!/usr/bin/env bash
# The GPU check, sized for a few minutes on one CUDA device (CI has no GPU):
#   1. benchmarks/train_speed.py: training throughput of the MLP, conv and autoregressive models
#      in float32, bf16 autocast, torch.compile and both, as one table (also $OUT/train_speed.json);
#   2. benchmarks/gpu_check.py: correctness on CUDA (default experiment, eval, diagnose, resume
#      after SIGINT bit for bit).
# Usage: bash benchmarks/gpu_check.sh [train_speed.py options, e.g. --quick or --models mlp]
# Record the table, with the GPU's name, in docs/performance.md ("GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export GPU_CHECK_DIR=${OUT:-/tmp/gpu_check}
mkdir -p "$GPU_CHECK_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: not found"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible to torch')" || exit 2
status=0
"$PY" benchmarks/train_speed.py --device cuda --json "$GPU_CHECK_DIR/train_speed.json" "$@" || status=1
"$PY" benchmarks/gpu_check.py || status=1
exit $status
