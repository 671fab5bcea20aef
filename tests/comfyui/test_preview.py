"""With previews switched on (--preview-method), the sampler shows each finished clip's last frame, and its
progress as text."""

from __future__ import annotations

import asyncio
import copy
import json
import struct
import uuid
from pathlib import Path

import aiohttp

from letstalk_core.sampling import clip_plan
from scripts.comfy_harness import ComfyServer
from tests.helpers import TINY_FRAMES_PER_CLIP, TINY_SAMPLER_INPUTS, make_tiny_bundle, write_portrait, write_speechlike

REPO = Path(__file__).resolve().parents[2]


PREVIEW_EVENTS, TEXT_EVENT = {1, 2, 4}, 3  # ComfyUI's binary messages: previews (plain or with metadata), text


async def run_and_count_previews(url: str, workflow: dict) -> tuple[int, list[tuple[str, str]], str]:
    """The preview images, the progress texts (node id, text) and how the prompt ended."""
    client_id = uuid.uuid4().hex
    previews, texts, status = 0, [], "unknown"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": workflow, "client_id": client_id}) as answer:
                prompt_id = (await answer.json())["prompt_id"]
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    kind = struct.unpack(">I", message.data[:4])[0]
                    if kind in PREVIEW_EVENTS:
                        previews += 1
                    elif kind == TEXT_EVENT:
                        length = struct.unpack(">I", message.data[4:8])[0]
                        texts.append((message.data[8:8 + length].decode(), message.data[8 + length:].decode()))
                elif message.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(message.data)
                    data = event.get("data", {})
                    if data.get("prompt_id") != prompt_id:
                        continue
                    if event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                        status = event["type"]
                        break
    return previews, texts, status


def test_sampler_sends_one_preview_per_clip(tmp_path):
    with ComfyServer(tmp_path / "base", extra_args=("--preview-method", "auto")) as server:
        make_tiny_bundle(server.models_dir / "letstalk" / "tiny.safetensors")
        write_portrait(server.input_dir / "face.png")
        write_speechlike(server.input_dir / "talk.wav", 0.46)  # 12 frames: 3 clips of 4
        workflow = copy.deepcopy(json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text()))
        workflow["1"]["inputs"]["image"] = "face.png"
        workflow["2"]["inputs"]["audio"] = "talk.wav"
        workflow["3"]["inputs"]["checkpoint"] = "tiny.safetensors"
        workflow["7"]["inputs"].update(sampler="ddim", steps=2, **TINY_SAMPLER_INPUTS)
        previews, texts, status = asyncio.run(asyncio.wait_for(run_and_count_previews(server.url, workflow), 600))
    assert status == "execution_success"
    # 12 frames in clips of 4 with the workflow's overlap: one preview per clip sampled
    clips = clip_plan(12, TINY_FRAMES_PER_CLIP, workflow["7"]["inputs"].get("overlap_frames", 0))
    assert previews == len(clips) and len(clips) > 1
    # and on the sampler node, as text beside its bar: the clip it is on, then each clip done with the time left
    on_sampler = [text for node, text in texts if node == "7"]
    # the first text says the settings the auto/-1 inputs resolved to
    assert on_sampler[0].startswith(f"sampling clip 1 of {len(clips)} (ddim 2 steps, audio guidance "), on_sampler[0]
    assert on_sampler[0].endswith(f"audio guidance 1, {TINY_SAMPLER_INPUTS['overlap_frames']} overlap frames)..."), \
        on_sampler[0]
    assert [text.split(",")[0] for text in on_sampler[1:-1]] == [f"clip {n} of {len(clips)} done" for n in
                                                                  range(1, len(clips))]
    assert on_sampler[-1].startswith(f"all {len(clips)} clips sampled in ")
    # the 0.46 s speech runs with a warning on the Encode Speech node
    assert [text for node, text in texts if node == "5"] == [
        "LetsTalk: ComfyUI AUDIO input lasts only 0.46 s, so the video will be 12 frames long; a mouth that moves "
        "with words needs at least 0.5 s of speech"]
