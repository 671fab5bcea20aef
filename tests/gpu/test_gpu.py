"""The pack on a CUDA GPU: run by ``scripts/gpu_check.sh`` (``pytest -m gpu``); skipped with a reason elsewhere.

- the pipeline on ``cuda`` in bf16 and fp16 near its fp32 result, and a 60-second speech streamed into an mp4 in
  flat GPU memory (peak within 15% of a 10-second one's);
- ComfyUI started without ``--cpu``: the transformer placed on the GPU by its model management, the sampler node
  in fp16 and bf16, ``POST /free`` giving the GPU memory back, and, with ``--disable-smart-memory``, a video too
  long to keep sampled while a native VAE from Load VAE decodes it (the transformer evicted between clips and
  loaded again before each).
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "letstalk-demo.safetensors"
EXAMPLES = REPO / "workflows" / "examples"

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
pytestmark = pytest.mark.gpu


def example_speech(seconds: float) -> tuple[torch.Tensor, int]:
    speech, rate = sf.read(EXAMPLES / "speech.wav", dtype="float32")
    repeats = int(np.ceil(seconds * rate / len(speech)))
    return torch.from_numpy(np.tile(speech, repeats)[: int(seconds * rate)]), rate


@needs_gpu
def test_the_pipeline_on_cuda_in_bf16_and_fp16_stays_near_fp32():
    from letstalk_core.pipeline import LetsTalkPipeline

    speech, rate = example_speech(1.0)
    made = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        pipe = LetsTalkPipeline.from_pretrained(DEMO, device="cuda", dtype=dtype)
        assert next(pipe.checkpoint.model.parameters()).device.type == "cuda"
        made[dtype] = pipe(EXAMPLES / "portrait.png", speech, sample_rate=rate, steps=8, audio_cfg=2.0)
        assert torch.isfinite(made[dtype]).all()
    for dtype, bound in ((torch.bfloat16, 0.03), (torch.float16, 0.01)):  # CPU: 0.0057 and 0.00095
        assert float((made[dtype] - made[torch.float32]).abs().mean()) < bound, dtype


@needs_gpu
def test_sixty_seconds_stream_in_flat_gpu_memory(tmp_path):
    from letstalk_core.pipeline import LetsTalkPipeline

    pipe = LetsTalkPipeline.from_pretrained(DEMO, device="cuda", dtype=torch.bfloat16)
    peaks = {}
    for seconds in (10.0, 60.0):
        speech, rate = example_speech(seconds)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out = pipe(EXAMPLES / "portrait.png", speech, sample_rate=rate, out=tmp_path / f"{seconds:.0f}.mp4", steps=4)
        torch.cuda.synchronize()
        peaks[seconds] = torch.cuda.max_memory_allocated()
        assert Path(out).is_file()
    assert peaks[60.0] <= 1.15 * peaks[10.0], f"peak GPU memory {peaks[10.0] / 2**20:.0f} MiB for 10 s, " \
                                              f"{peaks[60.0] / 2**20:.0f} MiB for 60 s"


# ---- ComfyUI on the GPU ------------------------------------------------------------------------------
def basic_workflow(checkpoint: str, precision: str, prefix: str) -> dict:
    prompt = copy.deepcopy(json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text()))
    prompt["1"]["inputs"]["image"] = "gpu_face.png"
    prompt["2"]["inputs"]["audio"] = "gpu_talk.wav"
    prompt["3"]["inputs"].update(checkpoint=checkpoint, precision=precision)
    prompt["7"]["inputs"].update(steps=4)
    prompt["10"]["inputs"]["filename_prefix"] = prefix
    return prompt


def gpu_server(tmp_path, *extra_args, env=None):
    from scripts.comfy_harness import ComfyServer

    server = ComfyServer(tmp_path / "base", cpu=False, extra_args=extra_args, env=env)
    server.prepare()
    (server.input_dir / "gpu_face.png").write_bytes((EXAMPLES / "portrait.png").read_bytes())
    speech, rate = example_speech(3.0)
    sf.write(server.input_dir / "gpu_talk.wav", speech.numpy(), rate)
    return server


def vram_used(server) -> int:
    device = server.client.system_stats()["devices"][0]
    return int(device["vram_total"]) - int(device["vram_free"])


@needs_gpu
def test_comfyui_places_the_model_on_the_gpu_in_fp16_and_bf16_and_free_gives_it_back(tmp_path):
    with gpu_server(tmp_path) as server:
        before = vram_used(server)
        for precision in ("fp16", "bf16"):
            server.client.run(basic_workflow("letstalk-demo.safetensors", precision, f"gpu/{precision}"), timeout=300)
        log = server.log()
        assert "Requested to load PatchableParts" in log and "torch.float16" in log and "torch.bfloat16" in log
        assert "loaded completely" in log  # ComfyUI's own line when a model went onto the GPU
        loaded = vram_used(server)
        assert loaded > before + 20 * 2**20, (before, loaded)  # the 7 M-parameter model and its activations
        server.client.free(unload_models=True, free_memory=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and vram_used(server) > before + 64 * 2**20:
            time.sleep(1.0)
        assert vram_used(server) <= before + 64 * 2**20, (before, loaded, vram_used(server))


@needs_gpu
def test_a_long_video_decoded_by_a_native_vae_without_smart_memory(tmp_path):
    """Every model is unloaded after use (--disable-smart-memory) and the video is sampled while it is decoded
    (LETSTALK_KEEP_LATENTS_MB=0), through a VAE from Load VAE: the transformer must come back before each clip."""
    from safetensors.torch import save_file

    from letstalk_core.latents import build_vae, load_shipped_config
    from tests.helpers import make_tiny_bundle

    with gpu_server(tmp_path, "--disable-smart-memory",
                    env={**os.environ, "LETSTALK_KEEP_LATENTS_MB": "0"}) as server:
        make_tiny_bundle(server.models_dir / "letstalk" / "tiny.safetensors")
        codec = build_vae(dict(load_shipped_config("sd_vae"), latent_channels=4), seed=1)  # ComfyUI's own format
        save_file({k: v.contiguous() for k, v in codec.vae.state_dict().items()},
                  server.models_dir / "vae" / "sd_like.safetensors")
        prompt = basic_workflow("tiny.safetensors", "fp16", "gpu/native")
        prompt["7"]["inputs"].update(sampler="ddim", steps=2, audio_cfg=1.0, overlap_frames=0)
        prompt["20"] = {"class_type": "VAELoader", "inputs": {"vae_name": "sd_like.safetensors"}}
        prompt["6"]["inputs"]["vae"] = ["20", 0]
        prompt["8"]["inputs"]["vae"] = ["20", 0]
        server.client.run(prompt, timeout=300)
        log = server.log()
        assert "too long to keep, so the clips are sampled while the video is decoded" in log
        assert log.count("Requested to load PatchableParts") >= 2  # evicted for the VAE and loaded again


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check runs for real there")
def test_the_gpu_check_says_plainly_when_there_is_no_gpu(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "results")],
                            env={**os.environ, "LETSTALK_PYTHON": sys.executable}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "torch sees no CUDA GPU here: nothing to check" in result.stderr
    assert not (tmp_path / "results").exists()


@needs_gpu
def test_with_novram_the_log_says_the_model_runs_on_the_cpu(tmp_path):
    """--novram keeps every weight off the GPU; the pack then samples on the CPU, and says so once."""
    from tests.helpers import make_tiny_bundle

    with gpu_server(tmp_path, "--novram") as server:
        make_tiny_bundle(server.models_dir / "letstalk" / "tiny.safetensors")
        prompt = basic_workflow("tiny.safetensors", "fp32", "gpu/novram")
        prompt["7"]["inputs"].update(sampler="ddim", steps=2, audio_cfg=1.0, overlap_frames=0)
        server.client.run(prompt, timeout=300)
        assert server.log().count("ComfyUI keeps the model on cpu rather than cuda") == 1
