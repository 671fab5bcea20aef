"""POST /free gives back the memory a LetsTalk model took."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import psutil
import torch

from letstalk_core.checkpoints import save_checkpoint
from letstalk_core.latents import build_vae, vae_bundle_entries
from letstalk_core.model import AudioProjection, LetsTalkTransformer
from tests.helpers import TINY_SAMPLER_INPUTS, make_tiny_bundle, tiny_vae_config, write_portrait, write_speechlike

REPO = Path(__file__).resolve().parents[2]


def workflow(checkpoint: str, prefix: str) -> dict:
    prompt = copy.deepcopy(json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text()))
    prompt["1"]["inputs"]["image"] = "mem_face.png"
    prompt["2"]["inputs"]["audio"] = "mem_talk.wav"
    prompt["3"]["inputs"]["checkpoint"] = checkpoint
    prompt["7"]["inputs"].update(sampler="ddim", steps=1, **TINY_SAMPLER_INPUTS)  # mem_big: clips of 4 too
    prompt["10"]["inputs"]["filename_prefix"] = prefix
    return prompt


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def settle(comfy, target: int | None = None, timeout: float = 30.0) -> int:
    """/free, then wait for the server to act on it (it does so between prompts)."""
    comfy.client.free()
    deadline = time.monotonic() + timeout
    value = rss(comfy.process.pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        value = rss(comfy.process.pid)
        if target is not None and value <= target:
            break
    return value


def test_free_returns_memory_to_where_it_was_before_the_model_loaded(comfy):
    letstalk = comfy.models_dir / "letstalk"
    make_tiny_bundle(letstalk / "mem_tiny.safetensors")
    torch.manual_seed(0)
    # the official B width and depth: large enough that keeping it would break the 10% bound below
    big = LetsTalkTransformer(variant="vdt_long", in_channels=4, patch_size=2, hidden_size=768, depth=12,
                              num_heads=12, audio_dim=16, sample_size=8, frames_per_clip=4, memory_frames=2)
    projection = AudioProjection(window_size=5, input_features=80, num_layers=1, feature_dim=80,
                                 intermediate_dim=16, num_tokens=2, output_dim=16)
    tensors, metadata = vae_bundle_entries(build_vae(tiny_vae_config(), seed=0))
    metadata["audio_encoder_config"] = json.dumps({"type": "mel", "n_mels": 80})
    save_checkpoint(letstalk / "mem_big.safetensors", big, projection, extra_tensors=tensors, extra_metadata=metadata)
    model_bytes = sum(p.numel() * p.element_size() for p in big.parameters())
    del big
    write_portrait(comfy.input_dir / "mem_face.png")
    write_speechlike(comfy.input_dir / "mem_talk.wav", 0.16)

    comfy.client.run(workflow("mem_tiny.safetensors", "mem/warm"))  # imports and caches warmed up
    before = settle(comfy)
    comfy.client.run(workflow("mem_big.safetensors", "mem/big"))
    loaded = rss(comfy.process.pid)
    # the model was really loaded (part of its memory may reuse pages freed earlier in the process)
    assert loaded - before > 0.5 * model_bytes, (before, loaded, model_bytes)
    assert loaded > before * 1.10 + 0.25 * model_bytes  # so the bound below can tell kept from freed
    after = settle(comfy, target=int(before * 1.10))
    assert after <= before * 1.10, f"RSS before load {before / 2**20:.0f} MiB, after /free {after / 2**20:.0f} MiB"
