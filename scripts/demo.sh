#!/usr/bin/env bash
# Set everything up (idempotent), then run the bundled example workflow through real ComfyUI:
# the bundled portrait and speech sample (which the pack itself copies into ComfyUI's input/letstalk/
# when it loads, as in any user's ComfyUI) go through the pack's nodes with the bundled demo model
# (models/letstalk-demo.safetensors, which the pack offers as a checkpoint choice by itself), and the
# talking video is written under output/. Prints a line per sampled clip with the time left, then the
# path of the mp4.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"

WORKFLOW="$ROOT/workflows/api/letstalk_basic_api.json"
MODEL="$ROOT/models/letstalk-demo.safetensors"
PORTRAIT="$ROOT/workflows/examples/portrait.png"
SPEECH="$ROOT/workflows/examples/speech.wav"

missing=()
for f in "$WORKFLOW" "$MODEL" "$PORTRAIT" "$SPEECH"; do
    [ -f "$f" ] || missing+=("${f#$ROOT/}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "[demo] cannot run the demo yet: missing ${missing[*]}" >&2
    echo "[demo] (they are part of the repository: restore them with git; how the demo model was trained, to train another: models/README.md)" >&2
    exit 1
fi

mkdir -p "$ROOT/output"
echo "[demo] making a talking video from workflows/examples/ through ComfyUI (a few minutes on a CPU)"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/comfy_harness.py" run "$WORKFLOW" --output-dir "$ROOT/output"
