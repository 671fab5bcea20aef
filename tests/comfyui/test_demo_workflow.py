"""The bundled demo, as README command 1 runs it: the shipped workflow, portrait, speech and demo model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from letstalk_core.pipeline import DEMO_CHECKPOINT
from letstalk_core.video import probe, read_video_frames

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "workflows" / "examples"

# Until the demo model is trained and bundled (issue 6) these tests are skipped, saying so in the report.
pytestmark = pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason=f"the demo model {DEMO_CHECKPOINT.name} is "
                                "not bundled yet (issue 6)")


def test_demo_model_is_a_choice_and_the_default(comfy):
    info = comfy.client.object_info("LoadLetsTalkModel")["LoadLetsTalkModel"]
    spec = info["input"]["required"]["checkpoint"]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # the new and the legacy combo form
    assert DEMO_CHECKPOINT.name in options
    assert spec[1]["default"] == DEMO_CHECKPOINT.name


def test_shipped_workflow_animates_the_bundled_example(comfy):
    for name in ("portrait.png", "speech.wav"):
        shutil.copyfile(EXAMPLES / name, comfy.input_dir / name)
    workflow = json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text())
    outputs = comfy.client.run(workflow, timeout=900)
    videos = [comfy.default_output_dir / item["subfolder"] / item["filename"]
              for node in outputs.values() for items in node.values() if isinstance(items, list)
              for item in items if isinstance(item, dict) and item.get("type") == "output" and "filename" in item]
    assert len(videos) == 1
    info = probe(videos[0])
    assert info.frame_count == math.ceil(6.0 * 25)
    assert info.has_audio
    frames = read_video_frames(videos[0]).astype(np.float32) / 255  # [F, H, W, 3]
    # a face that moves (frames differ over time) but stays one face (no frame-to-frame noise)
    changes = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))
    assert changes.max() > 0.002
    assert frames.std(axis=0).mean() < 0.1
