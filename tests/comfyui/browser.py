"""Headless Chromium on the real ComfyUI front end, for the tests that look at it as a user does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / ".venv" / "node" / "node_modules"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HAVE_BROWSER = bool(CHROMIUM and shutil.which("node") and (NODE_MODULES / "playwright-core").is_dir())
needs_browser = pytest.mark.skipif(not HAVE_BROWSER, reason="needs chromium, node and playwright-core "
                                                            "(scripts/setup.sh installs them)")


def skip_first_run_dialog(comfy) -> None:
    """The front end opens its template browser on a first visit and may load a workflow of its own;
    this server's user has seen it."""
    request = urllib.request.Request(f"{comfy.url}/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()


def run_script(script: str, comfy, *args: str, timeout: float = 600) -> dict:
    """Run ``tests/comfyui/<script>`` against ``comfy`` in headless Chromium; its last line of JSON."""
    skip_first_run_dialog(comfy)
    result = subprocess.run(["node", str(Path(__file__).with_name(script)), CHROMIUM, comfy.url, *map(str, args)],
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
