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
def _skip_first_run_dialog(comfy) -> None:
    """The front end opens its template browser on a first visit and may load a workflow of its own;
    this server's user has seen it."""
    import urllib.request

    request = urllib.request.Request(f"{comfy.url}/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()


def test_front_end_loads_ui_workflows_and_submits_their_api_twins(comfy):
    _skip_first_run_dialog(comfy)
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


def _overlaps(a: dict, b: dict, title: float = 30.0) -> bool:
    """Do two nodes' boxes (the title bar above ``pos`` included) intersect on the canvas?"""
    (ax, ay), (aw, ah) = a["pos"], a["size"]
    (bx, by), (bw, bh) = b["pos"], b["size"]
    return ax < bx + bw and bx < ax + aw and ay - title < by + bh and by - title < ay + ah


@pytest.mark.skipif(not (CHROMIUM and shutil.which("node") and (NODE_MODULES / "playwright-core").is_dir()),
                    reason="needs chromium, node and playwright-core (scripts/setup.sh installs them)")
def test_templates_open_from_the_browser_whole_with_thumbnails_and_no_overlap(comfy, tmp_path):
    """Templates -> Extensions -> ComfyUI-LetsTalk -> each template, with the example media in input/:
    the thumbnail shows, every node is known, no two nodes overlap once the picture and the audio player
    have loaded, and the graph opens at a readable zoom. A sampler added by hand starts at the basic
    workflow's sampling settings, and the node search finds the pack for "talking head", "lip sync" and "talking avatar".
    The screenshots stay in the test's temporary folder."""
    for name in ("portrait.png", "speech.wav"):
        shutil.copy(REPO / "workflows" / "examples" / name, comfy.input_dir / name)
    _skip_first_run_dialog(comfy)
    result = subprocess.run(["node", str(Path(__file__).with_name("frontend_templates.js")), CHROMIUM, comfy.url,
                             str(tmp_path), *TEMPLATES], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    for name, opened in report["templates"].items():
        # our picture, fetched (a missing one shows as the front end's default-template.png)
        assert opened["thumbnail"]["src"].startswith("blob:") and opened["thumbnail"]["width"] >= 128, (name, opened)
        assert opened["unknown"] == [], (name, opened["unknown"])
        assert Path(opened["screenshot"]).is_file()
        assert opened["scale"] >= 0.6, name
        ui = json.loads((REPO / "workflows" / f"{name}.json").read_text())
        assert sorted(n["type"] for n in opened["nodes"]) == sorted(n["type"] for n in ui["nodes"])
        nodes = opened["nodes"]
        clashes = [(a["type"], b["type"]) for i, a in enumerate(nodes) for b in nodes[i + 1:] if _overlaps(a, b)]
        assert clashes == [], (name, clashes)
    shipped = json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text())["7"]["inputs"]
    for key in ("sampler", "steps", "audio_cfg", "portrait_cfg", "overlap_frames", "seed"):
        assert report["sampler"][key] == shipped[key], key
    # a user's words find the nodes (front end 1.32.9 searches node names and display names only)
    assert any(item.startswith("LetsTalk Sampler (talking head)") for item in report["search"]["talking head"]), report
    assert any(item.startswith("LetsTalk Encode Audio (lip sync)") for item in report["search"]["lip sync"]), report
    assert any(item.startswith("Load LetsTalk Model (talking avatar)") for item in report["search"]["talking avatar"])
