"""The bundled demo, as README command 1 runs it: the shipped workflow, portrait, speech and demo model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from letstalk_core.shipped import CARTOON_CHECKPOINT, DEMO_CHECKPOINT
from letstalk_core.video import probe, read_video_frames
from letstalk_core.video.timing import frame_count
from tests.comfyui.browser import HAVE_BROWSER, run_script

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "workflows" / "examples"

pytestmark = pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason=f"the demo model {DEMO_CHECKPOINT.name} is "
                                "not in models/ (restore it with git)")


def test_demo_model_is_the_default_the_cartoon_model_a_choice_and_the_codec_files_none(comfy):
    info = comfy.client.object_info("LoadLetsTalkModel")["LoadLetsTalkModel"]
    spec = info["input"]["required"]["checkpoint"]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # the new and the legacy combo form
    assert spec[1]["default"] == DEMO_CHECKPOINT.name
    assert {DEMO_CHECKPOINT.name, CARTOON_CHECKPOINT.name} <= set(options)
    # models/taef2/*.pth are the bundles' codec, not checkpoints: not offered
    assert not [name for name in options if "taef2" in name], options


def test_shipped_workflow_animates_the_bundled_example(comfy, tmp_path):
    """In a fresh base directory, with nothing uploaded: the pack put the example in input/letstalk/ when it
    loaded. Where headless Chromium is at hand, the UI template is opened from the template browser and run
    as it opens, as a user would, and the sampler node must tell clip n of N and the time left beside its
    bar; elsewhere its API twin is posted."""
    for name in ("portrait.png", "speech.wav"):
        assert (comfy.input_dir / "letstalk" / name).read_bytes() == (EXAMPLES / name).read_bytes()
    if HAVE_BROWSER:
        report = run_script("frontend_run.js", comfy, tmp_path, "LetsTalk portrait to talking video", timeout=1800)
        assert report["errors"] == [] and report["end"] == "execution_success", report
        texts = report["texts"]
        # the first text names the settings the sampler resolved to (the checkpoint's recommendation)
        first = re.fullmatch(r"sampling clip 1 of (\d+) \((\w+) (\d+) steps, audio guidance [\d.]+, \d+ overlap "
                             r"frames\)\.\.\.", texts[0])
        assert first, texts
        total = int(first.group(1))
        assert any(re.fullmatch(rf"clip \d+ of {total} done, \d+ s so far, about \d+ s left", text) for text in texts)
        assert texts[-1].startswith(f"all {total} clips sampled in "), texts
        history = comfy.client.get("/history?max_items=1")
        [entry] = history.values()
        outputs = entry["outputs"]
    else:
        workflow = json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text())
        outputs = comfy.client.run(workflow, timeout=900)
    videos = [comfy.default_output_dir / item["subfolder"] / item["filename"]
              for node in outputs.values() for items in node.values() if isinstance(items, list)
              for item in items if isinstance(item, dict) and item.get("type") == "output" and "filename" in item]
    assert len(videos) == 1
    info = probe(videos[0])
    speech = soundfile.info(str(EXAMPLES / "speech.wav"))
    assert info.frame_count == frame_count(speech.frames, speech.samplerate, 25)
    assert (info.width, info.height) == (360, 288), "the face pasted back into the whole 360x288 portrait"
    # the speech at its own rate (44.1 kHz); ComfyUI 0.3.75's Save Video opens its AAC stream with the
    # encoder's default layout, so a mono track comes out as two equal channels
    assert info.audio_sample_rate == speech.samplerate and info.audio_channels in (speech.channels, 2)
    frames = read_video_frames(videos[0]).astype(np.float32) / 255  # [F, H, W, 3]
    # a face that moves (frames differ over time) but stays one face (no frame-to-frame noise)
    changes = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))
    assert changes.max() > 0.002
    assert frames.std(axis=0).mean() < 0.1


def test_generate_defaults_and_the_basic_workflow_at_defaults_make_the_same_frames(comfy, tmp_path):
    """The same checkpoint gives the same video by every route with default settings: the shipped basic
    workflow (sampler "auto" / -1, margin -1, paste back) in real ComfyUI against `generate`'s path (the
    pipeline at its defaults) in this process, same portrait, speech and seed. Frames compared as
    ComfyUI's Save Image writes them (PNG, 8 bits), so no video codec stands between the two."""
    from PIL import Image

    from letstalk_core.pipeline import LetsTalkPipeline

    speech, rate = soundfile.read(str(EXAMPLES / "speech.wav"), dtype="float32")
    short = tmp_path / "speech_2s.wav"
    soundfile.write(str(short), speech[: 2 * rate], rate)  # 2 s: 50 frames
    shutil.copyfile(EXAMPLES / "portrait.png", comfy.input_dir / "portrait.png")
    shutil.copyfile(short, comfy.input_dir / "speech_2s.wav")
    workflow = json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text())
    workflow["2"]["inputs"]["audio"] = "speech_2s.wav"
    seed = workflow["7"]["inputs"]["seed"]
    del workflow["9"], workflow["10"], workflow["11"]
    workflow["12"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "routes/f"}}
    outputs = comfy.client.run(workflow, timeout=900)
    saved = [item for node in outputs.values() for item in node.get("images", []) if item.get("type") == "output"]
    comfy_frames = np.stack([np.asarray(Image.open(comfy.default_output_dir / item["subfolder"] / item["filename"]))
                             for item in sorted(saved, key=lambda item: item["filename"])])  # [F, H, W, 3] uint8

    pipe = LetsTalkPipeline.from_pretrained(DEMO_CHECKPOINT)  # generate's default: the shipped demo model
    frames = pipe(EXAMPLES / "portrait.png", short, seed=seed)  # [F, H, W, 3] 0..1
    ours = np.clip(255.0 * frames.numpy(), 0, 255).astype(np.uint8)  # as Save Image turns IMAGE into PNG
    assert ours.shape == comfy_frames.shape == (50, *ours.shape[1:])
    difference = np.abs(ours.astype(np.int16) - comfy_frames.astype(np.int16))
    assert difference.max() <= 1, f"{(difference > 1).mean():.2%} of values differ by more than one level"
    assert (difference > 0).mean() < 0.01
