#!/usr/bin/env bash
# The GPU check in one call (under 8 minutes on one H200): prints the README's "GPU performance"
# table and writes every figure to $OUT/gpu_check.json ($OUT defaults to the current folder).
#   benchmarks/gpu_check.sh            # paper-size models, on the GPU torch sees
#   benchmarks/gpu_check.sh --tiny     # tiny models and counts, any CPU, seconds
set -euo pipefail
checkout="$(cd "$(dirname "$0")/.." && pwd)"
# A bare machine: install synface and its pinned dependencies first.
python -c "import synface" 2>/dev/null || python -m pip install --quiet -e "$checkout"
exec python "$checkout/benchmarks/gpu_check.py" --out "${OUT:-.}/gpu_check.json" "$@"
