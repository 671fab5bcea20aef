"""Small real artefacts the tests share: a tiny random LetsTalk bundle, speech-like audio, a portrait."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from letstalk_core.checkpoints import save_checkpoint
from letstalk_core.latents import build_vae, load_shipped_config, vae_bundle_entries
from letstalk_core.model import AudioProjection, LetsTalkTransformer
from letstalk_core.training.synthetic.face import render_face, sample_identity
from letstalk_core.video import Mp4Writer

REPO = Path(__file__).resolve().parents[1]
# ground truth from the authors' code, committed with the tests (tests/fixtures/official_letstalk/index.json
# says what made each file)
OFFICIAL_FIXTURES = REPO / "tests" / "fixtures" / "official_letstalk"
# optional material beside the repository (real footage, third-party weights): tests of it skip without it
SHARED = Path(os.environ.get("LETSTALK_SHARED", REPO.parent / "shared"))
# the UI workflows (ComfyUI's template browser lists workflows/*.json by file name) and their API twins
TEMPLATES = {"LetsTalk portrait to talking video": "letstalk_basic_api",
             "LetsTalk long speech to mp4": "letstalk_long_audio_api"}


def shared_path(*parts: str) -> Path:
    """A path under ``../shared`` (or ``$LETSTALK_SHARED``); the calling test skips, saying why, when it is absent."""
    import pytest

    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not here: this optional material sits beside the repository in the project's "
                    "workspace, not in a user's clone")
    return path


TINY_FRAMES_PER_CLIP = 4
# sampler inputs that replace the shipped basic workflow's for the tiny bundle: its overlap (4) is a whole
# tiny clip (2 keeps clips overlapping), and the tiny bundle, trained without condition dropout, refuses
# the workflow's audio guidance (3)
TINY_SAMPLER_INPUTS = {"overlap_frames": 2, "audio_cfg": 1.0}


def tiny_vae_config(latent_channels: int = 4) -> dict:
    config = load_shipped_config("demo_vae")
    config.update(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, latent_channels=latent_channels)
    return config


def make_tiny_bundle(path: Path, *, condition_dropout: dict | None = None, with_vae: bool = True,
                     seed: int = 0, audio_layers: int = 1, audio_features: int = 80,
                     audio_encoder: tuple[str, dict, dict] | None = None) -> Path:
    """A random vdt_long bundle (64 px, 8x8x4 latents, clips of 4 frames, 2 memory frames); mel audio
    unless ``audio_layers``/``audio_features`` say another encoder's shape (then no encoder is named, or
    ``audio_encoder`` = (type, transformers config dict, state dict) is bundled)."""
    torch.manual_seed(seed)
    model = LetsTalkTransformer(variant="vdt_long", in_channels=4, patch_size=2, hidden_size=32, depth=1,
                                num_heads=2, audio_dim=16, sample_size=8, frames_per_clip=TINY_FRAMES_PER_CLIP,
                                memory_frames=2)
    projection = AudioProjection(window_size=5, input_features=audio_layers * audio_features,
                                 num_layers=audio_layers, feature_dim=audio_features, intermediate_dim=16,
                                 num_tokens=2, output_dim=16)
    tensors, metadata = {}, {}
    if (audio_layers, audio_features) == (1, 80):
        metadata["audio_encoder_config"] = json.dumps({"type": "mel", "n_mels": 80})
    if audio_encoder is not None:
        kind, config, state_dict = audio_encoder
        metadata["audio_encoder_config"] = json.dumps({"type": kind, "config": config})
        tensors.update({f"audio_encoder.{k}": v.contiguous() for k, v in state_dict.items()})
    if with_vae:
        vae_tensors, vae_meta = vae_bundle_entries(build_vae(tiny_vae_config(), seed=seed))
        tensors.update(vae_tensors)
        metadata.update(vae_meta)
    if condition_dropout is not None:
        metadata["training"] = json.dumps({"condition_dropout": condition_dropout})
    return save_checkpoint(path, model, projection, extra_tensors=tensors, extra_metadata=metadata)


def make_demo_sized_bundle(path: Path, seed: int = 0) -> Path:
    """A random bundle the size of the demo model (128 px: 16x16x4 latents, hidden 192, depth 6, clips of
    16, 2 memory frames, mel audio), for benchmarks: speed and memory behave as the real demo's."""
    torch.manual_seed(seed)
    model = LetsTalkTransformer(variant="vdt_long", in_channels=4, patch_size=2, hidden_size=192, depth=6,
                                num_heads=6, audio_dim=192, sample_size=16, frames_per_clip=16, memory_frames=2)
    projection = AudioProjection(window_size=5, input_features=80, num_layers=1, feature_dim=80,
                                 intermediate_dim=256, num_tokens=8, output_dim=192)
    tensors, metadata = vae_bundle_entries(build_vae(load_shipped_config("demo_vae"), seed=seed))
    metadata["audio_encoder_config"] = json.dumps({"type": "mel", "n_mels": 80})
    return save_checkpoint(path, model, projection, extra_tensors=tensors, extra_metadata=metadata)


def write_speechlike(path: Path, seconds: float, sample_rate: int = 16000, channels: int = 1) -> Path:
    """A voiced tone with a syllable-rate loudness envelope (what a mel encoder sees as speech)."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    tone = envelope * (0.4 * np.sin(2 * np.pi * 180 * t) + 0.2 * np.sin(2 * np.pi * 720 * t))
    sf.write(path, np.stack([tone] * channels, axis=1).astype(np.float32), sample_rate)
    return path


def write_portrait(path: Path, size: int = 96, seed: int = 7, extra_width: int = 0) -> Path:
    """A synthetic face (the demo world's renderer), optionally widened to a non-square picture."""
    face = render_face(sample_identity(seed), size=size)  # [size, size, 3] uint8
    if extra_width:
        face = np.concatenate([face, face[:, :extra_width]], axis=1)
    Image.fromarray(face).save(path)
    return path


def write_mp4(path, frames, fps=25, *, audio=None, sample_rate=None, **writer_options) -> Path:
    """All ``frames`` (``[N, H, W, 3]``, or an iterable of such chunks) through one :class:`Mp4Writer`:
    test videos in one call."""
    with Mp4Writer(path, fps, audio=audio, sample_rate=sample_rate, **writer_options) as writer:
        if isinstance(frames, (np.ndarray, torch.Tensor)):
            writer.write(frames)
        else:
            for chunk in frames:
                writer.write(chunk)
    return writer.path


def options_named(message: str) -> list[tuple[str, str | None]]:
    """The node options an error message tells the user to set: ``set NAME to 'VALUE'``, and a leading
    ``NAME:`` or ``NAME must`` (the input a message is about), as (name, value or None)."""
    named = [(name, value) for name, value in re.findall(r"set (\w+) to '([^']*)'", message)]
    named += [(name, None) for name in re.findall(r"^(\w+)(?::| must) ", message)]
    return named


def assert_options_exist(comfy, node_type: str, message: str) -> None:
    """Every option named in ``message`` is an input of ``node_type`` as the node shows it, and a value it
    names is one of that input's choices."""
    info = comfy.client.object_info(node_type)[node_type]["input"]
    inputs = {**info.get("required", {}), **info.get("optional", {})}
    named = options_named(message)
    assert named, message
    for name, value in named:
        assert name in inputs, (name, message)
        spec = inputs[name]
        if value is not None:
            choices = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
            assert value in choices, (name, value, choices)

