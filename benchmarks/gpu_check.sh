#!/usr/bin/env bash
# The GPU check, sized for a few minutes on one CUDA device (CI has no GPU):
#   1. benchmarks/train_speed.py: training throughput of the MLP, conv and autoregressive models
#      in float32, bf16 autocast, torch.compile, both, and CUDA graphs (compile_mode=reduce_overhead,
#      alone and with bf16), as one table (also train_speed.json, copied to $OUT when it is set);
#   2. benchmarks/gpu_check.py: correctness on CUDA (CUDA graphs vs eager and the MLP's written-out
#      pass vs autograd on one seed; the PixelCNN's band convolutions, cone and evaluation pieces
#      against their references, with timings; conv weights NCHW vs channels-last; default
#      experiment, eval, diagnose, every model, resume after SIGINT bit for bit).
# Measured on an H200: docs/performance_gpu.md.
# Usage: bash benchmarks/gpu_check.sh [train_speed.py options, e.g. --quick or --models mlp]
# Record the table, with the GPU's name, in docs/performance.md ("GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# run folders go to GPU_CHECK_DIR (default /tmp/gpu_check); the table's JSON is copied to $OUT when set
export GPU_CHECK_DIR=${GPU_CHECK_DIR:-/tmp/gpu_check}
mkdir -p "$GPU_CHECK_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: not found"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible to torch')" || exit 2
status=0
# each part has its own time limit, so a slow compile cannot starve the correctness checks
timeout "${SPEED_LIMIT_S:-330}" "$PY" benchmarks/train_speed.py --device cuda --json "$GPU_CHECK_DIR/train_speed.json" "$@" || status=1
[ -n "${OUT:-}" ] && [ -f "$GPU_CHECK_DIR/train_speed.json" ] && cp "$GPU_CHECK_DIR/train_speed.json" "$OUT/"
timeout "${CHECK_LIMIT_S:-300}" "$PY" benchmarks/gpu_check.py || status=1
exit $status
