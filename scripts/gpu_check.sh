#!/usr/bin/env bash
# The prepared GPU check, in one command (about 6-8 minutes on an H200; each part has its own time limit):
#   bash scripts/gpu_check.sh [OUT]            CUDA tests, the step vs the reference and its memory on CUDA,
#                                              a short paper-shaped run; results in OUT (default $OUT, else
#                                              ./gpu-check-results): gpu_check.txt and gpu_check.json
#   bash scripts/gpu_check.sh --dry-run [OUT]  the same parts on the CPU at toy sizes (CI runs this)
# Runs from the source tree (no install): python with torch, safetensors, scipy, tqdm and pillow is enough.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" exec "$python" scripts/gpu_check.py "$@"
