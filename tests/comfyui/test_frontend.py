"""The UI workflows load in ComfyUI's real front end (headless Chromium) and give the API prompts."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.comfyui.browser import needs_browser, run_script
from tests.helpers import TEMPLATES, assert_options_exist

REPO = Path(__file__).resolve().parents[2]
FRONTEND_ONLY = {"audioUI"}  # values the front end keeps for its own widgets (the audio player)


@needs_browser
def test_front_end_loads_ui_workflows_and_submits_their_api_twins(comfy):
    names = list(TEMPLATES)
    files = [str(REPO / "workflows" / f"{name}.json") for name in names]
    report = run_script("frontend_prompt.js", comfy, *files)
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


@needs_browser
def test_templates_open_from_the_browser_whole_with_thumbnails_and_no_overlap(comfy, tmp_path):
    """Templates -> Extensions -> ComfyUI-LetsTalk -> each template, with the example media the pack put in
    input/letstalk/:
    the thumbnail shows, every node is known, no two nodes overlap once the picture and the audio player
    have loaded, and the graph opens at a readable zoom. A sampler added by hand starts at the basic
    workflow's sampling settings, and the node search finds the pack for "talking head", "lip sync" and "talking avatar".
    The screenshots stay in the test's temporary folder."""
    report = run_script("frontend_templates.js", comfy, tmp_path, *TEMPLATES)
    assert report["errors"] == []
    for name, opened in report["templates"].items():
        # our picture, fetched (a missing one shows as the front end's default-template.png)
        assert opened["thumbnail"]["src"].startswith("blob:") and opened["thumbnail"]["width"] >= 128, (name, opened)
        assert opened["unknown"] == [], (name, opened["unknown"])
        assert Path(opened["screenshot"]).is_file()
        assert opened["scale"] >= 0.6, name
        # at 1400x900 and the zoom it opens at, every node (title bar included) is in the part of the canvas
        # that no bar or minimap covers: the output too
        scale, (dx, dy), view = opened["scale"], opened["offset"], opened["view"]
        for node in opened["nodes"]:
            (x, y), (w, h) = node["pos"], node["size"]
            left, top, right, bottom = (x + dx) * scale, (y - 30 + dy) * scale, (x + w + dx) * scale, (y + h + dy) * scale
            assert (left >= view["left"] and top >= view["top"] and right <= view["right"]
                    and bottom <= view["bottom"]), (name, node["type"], (left, top, right, bottom), view)
            if view["minimap"]:
                x0, y0, x1, y1 = view["minimap"]
                assert right <= x0 or bottom <= y0 or left >= x1 or top >= y1, (name, node["type"], "under the minimap")
        ui = json.loads((REPO / "workflows" / f"{name}.json").read_text())
        assert sorted(n["type"] for n in opened["nodes"]) == sorted(n["type"] for n in ui["nodes"])
        nodes = opened["nodes"]
        clashes = [(a["type"], b["type"]) for i, a in enumerate(nodes) for b in nodes[i + 1:] if _overlaps(a, b)]
        assert clashes == [], (name, clashes)
    shipped = json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text())["7"]["inputs"]
    for key in ("sampler", "steps", "audio_cfg", "portrait_cfg", "overlap_frames", "seed"):
        assert report["sampler"][key] == shipped[key], key
    # a user's words find the nodes (front end 1.32.9 searches node names and display names only)
    wanted = {"talking head": "LetsTalk Sampler (talking head)", "lipsync": "LetsTalk Encode Speech (lipsync)",
              "lip sync": "LetsTalk Encode Speech (lipsync)", "speech": "LetsTalk Encode Speech (lipsync)",
              "talking video": "LetsTalk Decode Talking Video", "talking avatar": "Load LetsTalk Model (talking avatar)"}
    for query, node in wanted.items():
        assert any(item.startswith(node) for item in report["search"][query]), (query, report["search"][query])


@needs_browser
def test_a_portrait_without_a_face_stops_before_sampling_and_the_dialog_names_if_no_face(comfy, tmp_path):
    """A grey picture in the basic template at its defaults: the run stops at the portrait node, before any
    sampling, and the error dialog tells how to animate the centre instead, naming the node's own option."""
    Image.new("RGB", (360, 288), (128, 128, 128)).save(comfy.input_dir / "grey.png")
    report = run_script("frontend_run.js", comfy, tmp_path, "LetsTalk portrait to talking video", "grey.png")
    assert report["errors"] == []
    assert report["end"] == "execution_error"
    assert report["texts"] == [], "the sampler never ran"
    dialog = report["dialog"]
    assert "no face was found in the 360x288 image" in dialog and "set if_no_face to 'center crop'" in dialog
    assert_options_exist(comfy, "LetsTalkPortraitCondition", dialog)
