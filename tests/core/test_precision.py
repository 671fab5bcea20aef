"""Weights precision by name: auto/fp32/bf16/fp16, what a device runs, and the fallback with a note."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from letstalk_core import precision
from letstalk_core.precision import PRECISION_CHOICES, check_precision, device_runs, resolve_precision

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "letstalk-demo.safetensors"


def test_names_auto_and_what_this_cpu_runs():
    assert PRECISION_CHOICES == ("auto", "fp32", "bf16", "fp16")
    assert resolve_precision("auto", "cpu") == (torch.float32, None)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16), (" BF16 ", torch.bfloat16)):
        assert device_runs(dtype, "cpu"), name  # this project's CPU runs all three
        assert resolve_precision(name, "cpu") == (dtype, None)
    assert resolve_precision("auto", "cpu", auto=torch.bfloat16) == (torch.bfloat16, None)  # ComfyUI's choice
    for bad in ("fp64", "half", "", None, 16):
        with pytest.raises(ValueError, match=r"precision must be one of auto, fp32, bf16, fp16, got"):
            check_precision(bad)


def test_a_precision_the_device_cannot_run_falls_back_with_a_note(monkeypatch):
    """No machine here lacks bf16 or fp16, so the device's answer is replaced: the fallback order and the note
    are what is tested (the probe itself is tested above on this CPU)."""
    cannot = {torch.bfloat16}
    monkeypatch.setattr(precision, "device_runs", lambda dtype, device: dtype not in cannot)
    assert resolve_precision("bf16", "cpu") == (torch.float16, "precision bf16 (bf16) cannot run on cpu; using fp16 "
                                                               "instead")
    cannot.add(torch.float16)
    dtype, note = resolve_precision("auto", "cpu", auto=torch.bfloat16)
    assert dtype == torch.float32 and note == "precision auto (bf16) cannot run on cpu; using fp32 instead"
    dtype, note = resolve_precision("fp16", "cpu")
    assert dtype == torch.float32 and "fp16" in note


@pytest.mark.skipif(not DEMO.is_file(), reason="the shipped demo model is missing")
def test_the_demo_model_in_bf16_and_fp16_gives_fp32_frames_within_rounding(tmp_path):
    """Transformer and projection in half precision, codec and audio encoder in float32: no dtype mismatch
    through guidance, the memory frames and paste-back; frames (0..1) near the fp32 ones."""
    from letstalk_core.pipeline import LetsTalkPipeline

    speech, rate = sf.read(REPO / "workflows" / "examples" / "speech.wav", dtype="float32")
    speech = torch.from_numpy(speech[: int(rate * 0.7)])  # 18 frames: 3 clips of 8, memory frames in use
    made = {}
    for name in ("fp32", "bf16", "fp16"):
        pipe = LetsTalkPipeline.from_pretrained(DEMO, dtype=precision.dtype_of(name))
        made[name] = pipe(REPO / "workflows" / "examples" / "portrait.png", speech, sample_rate=rate, steps=4,
                          audio_cfg=2.0)
        assert made[name].dtype == torch.float32 and torch.isfinite(made[name]).all()
    # measured: bf16 0.0057 mean (0.23 at worst, a few pixels), fp16 0.00095 mean
    for name, bound in (("bf16", 0.02), ("fp16", 0.005)):
        difference = (made[name] - made["fp32"]).abs()
        assert 0 < float(difference.mean()) < bound, (name, float(difference.mean()))


@pytest.mark.slow  # a fresh Python process imports torch and the pack
def test_generate_takes_precision_and_device(tmp_path):
    from tests.helpers import write_speechlike

    speech = write_speechlike(tmp_path / "s.wav", 0.6)

    def generate(*extra):
        return subprocess.run(
            [sys.executable, "-m", "letstalk_core", "generate", "--image",
             str(REPO / "workflows" / "examples" / "portrait.png"), "--audio", str(speech), "--out",
             str(tmp_path / "out.mp4"), "--steps", "1", "--audio-cfg", "1", *extra],
            cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})

    done = generate("--precision", "bf16", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "weights in bf16 on cpu" in done.stdout
    refused = generate("--precision", "fp64")
    assert refused.returncode == 2 and "--precision: invalid choice: 'fp64'" in refused.stderr
    if not torch.cuda.is_available():
        no_gpu = generate("--device", "cuda")
        assert no_gpu.returncode == 2 and "has no CUDA GPU that torch can use; use --device cpu" in no_gpu.stderr
    mel = generate("--text", "bin blue at f two now")  # the demo model hears log-mel bands
    assert mel.returncode == 2 and "--text: this model's speech encoder is 'mel', which does not read words" in mel.stderr
    bad = generate("--device", "tpu9")
    assert bad.returncode == 2 and "--device must be auto, cpu, cuda or cuda:N, got 'tpu9'" in bad.stderr
