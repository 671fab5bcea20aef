#!/usr/bin/env bash
# Set everything up (idempotent), then run the whole test suite, real ComfyUI included.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k audio -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -ra "$@"
