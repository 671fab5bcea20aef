"""The UI workflows load in ComfyUI's real front end (headless Chromium) and give the API prompts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import TEMPLATES

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / ".venv" / "node" / "node_modules"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FRONTEND_ONLY = {"audioUI"}  # values the front end keeps for its own widgets (the audio player)


@pytest.mark.skipif(not (CHROMIUM and shutil.which("node") and (NODE_MODULES / "playwright-core").is_dir()),
                    reason="needs chromium, node and playwright-core (scripts/setup.sh installs them)")
def test_front_end_loads_ui_workflows_and_submits_their_api_twins(comfy):
    names = list(TEMPLATES)
    files = [str(REPO / "workflows" / f"{name}.json") for name in names]
    result = subprocess.run(["node", str(Path(__file__).with_name("frontend_prompt.js")), CHROMIUM, comfy.url, *files],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    for name, file in zip(names, files):
        api = json.loads((REPO / "workflows" / "api" / f"{TEMPLATES[name]}.json").read_text())
        prompt = report["prompts"][file]
        assert set(prompt) == set(api)
        for node_id, node in api.items():
            got = prompt[node_id]
            assert got["class_type"] == node["class_type"]
            inputs = {k: v for k, v in got["inputs"].items() if k not in FRONTEND_ONLY}
            assert inputs == node["inputs"], (name, node_id)
