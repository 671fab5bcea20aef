#!/usr/bin/env bash
# The GPU check: on a machine with one NVIDIA GPU, set everything up, run the test suite's GPU-marked tests
# (tests/gpu: the pipeline on cuda in bf16/fp16, a 60-second speech streamed in flat GPU memory, ComfyUI placing
# the model on the GPU in fp16 and bf16, POST /free giving the memory back, a long video decoded by a native VAE
# with --disable-smart-memory) and bench/gpu.py (time per forward, seconds per second of video, peak GPU memory,
# for the demo model and the S/B sizes). About 5-8 minutes after set-up.
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]      # default output/gpu_check/
#
# LETSTALK_PYTHON=/path/to/python skips the set-up and uses that Python, which must already hold the
# requirements (for a machine without package access). Exit status: 0 all passed, 1 a test or the bench failed,
# 2 no CUDA GPU.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${1:-$ROOT/output/gpu_check}"
PY="${LETSTALK_PYTHON:-}"
if [ -z "$PY" ]; then
    bash "$ROOT/scripts/setup.sh" || { echo "[gpu_check] set-up failed" >&2; exit 1; }
    PY="$ROOT/.venv/bin/python"
fi
cd "$ROOT"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "[gpu_check] torch sees no CUDA GPU here: nothing to check (the CPU suite is scripts/test.sh)" >&2
    exit 2
fi
mkdir -p "$RESULTS"
nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 || true
status=0
echo "[gpu_check] GPU tests (tests/gpu)"
timeout 330 "$PY" -m pytest -m gpu tests/gpu -v -rs -p no:cacheprovider 2>&1 | tee "$RESULTS/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "[gpu_check] bench/gpu.py"
timeout 120 "$PY" bench/gpu.py --json "$RESULTS/bench.json" 2>&1 | tee "$RESULTS/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "[gpu_check] results in $RESULTS (exit $status)"
exit "$status"
