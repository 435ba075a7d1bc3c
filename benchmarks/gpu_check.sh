#!/usr/bin/env bash
# The GPU paths on a GPU machine, one line per check (see benchmarks/gpu_check.py). Skips with a message where
# there is no CUDA, so CI and CPU machines can call it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: skipped, no CUDA device here"
  exit 0
fi
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
