"""LetsTalkPipeline and `python -m letstalk_core generate` with a tiny random bundle."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from letstalk_core.latents import build_vae
from letstalk_core.pipeline import LetsTalkPipeline, SampledVideo, iter_clip_latents, keep_latent_bytes, load_parts
from letstalk_core.sampling import SamplingCancelled
from letstalk_core.sampling.options import SamplingOptions
from letstalk_core.video import probe, read_video_frames
from tests.helpers import (TINY_FRAMES_PER_CLIP, make_tiny_bundle, tiny_vae_config, write_portrait,
                           write_speechlike)

REPO = Path(__file__).resolve().parents[2]
FRAMES_PER_CLIP = TINY_FRAMES_PER_CLIP
make_bundle = make_tiny_bundle


def write_speech(path: Path, seconds: float) -> Path:
    return write_speechlike(path, seconds)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    bundle = make_bundle(root / "tiny.safetensors")
    guided = make_bundle(root / "guided.safetensors", condition_dropout={"audio": 0.1, "portrait": 0.1})
    portrait = write_portrait(root / "portrait.png")
    wide = write_portrait(root / "wide.png", extra_width=40)  # 136 x 96
    return {"root": root, "bundle": bundle, "guided": guided, "portrait": portrait, "wide": wide,
            "speech": write_speech(root / "speech.wav", 1.0)}


@pytest.fixture(scope="module")
def pipe(assets):
    return LetsTalkPipeline.from_pretrained(assets["bundle"])


FAST = {"sampler": "ddim", "steps": 2}


@pytest.mark.parametrize("seconds,fps", [(0.5, 25), (1.0, 25), (0.7, 29.97)])
def test_mp4_frame_count_and_av_duration(pipe, assets, tmp_path, seconds, fps):
    speech = write_speech(tmp_path / "s.wav", seconds)
    out = pipe(assets["portrait"], speech, out=tmp_path / "talk.mp4", fps=fps, **FAST)
    info = probe(out)
    expected = math.ceil(seconds * (30000 / 1001 if fps == 29.97 else fps) - 1e-9)
    assert info.frame_count == expected
    assert info.has_audio
    assert abs(info.audio_duration - info.frame_count / info.fps) <= 1 / info.fps
    assert (info.height, info.width) == (96, 96)  # the 96 px portrait: the face is pasted back by default


def test_same_seed_same_frames_and_other_seed_differs(pipe, assets):
    first = pipe(assets["portrait"], assets["speech"], seed=3, **FAST)
    again = pipe(assets["portrait"], assets["speech"], seed=3, **FAST)
    other = pipe(assets["portrait"], assets["speech"], seed=4, **FAST)
    assert first.shape == (25, 96, 96, 3)  # pasted back into the 96 px portrait
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_frames_stream_clip_by_clip(pipe, assets, tmp_path):
    speech = write_speech(tmp_path / "three_clips.wav", 3 * FRAMES_PER_CLIP / 25)  # exactly 3 clips
    conditions = pipe.prepare(assets["portrait"], speech)
    events = []
    frames = pipe.iter_frames(conditions, progress=lambda done, total: events.append(("step", done)), **FAST)
    held = 0
    for chunk in frames:
        events.append(("frames", chunk.shape[0]))
        held = max(held, chunk.shape[0])
    steps = [i for i, e in enumerate(events) if e[0] == "step"]
    yields = [i for i, e in enumerate(events) if e[0] == "frames"]
    assert len(steps) == 3 * FAST["steps"] and sum(events[i][1] for i in yields) == 3 * FRAMES_PER_CLIP
    # the first clip's frames come out before the second clip's first step, and so on
    assert yields[0] < steps[FAST["steps"]] and yields[-1] > steps[-1]
    assert held <= FRAMES_PER_CLIP


def test_a_sampled_video_keeps_short_videos_and_samples_long_ones_while_decoding(pipe, assets):
    conditions = pipe.prepare(assets["portrait"], assets["speech"])
    options = pipe.options(**FAST)
    steps = []

    def video(**kwargs):
        return SampledVideo(pipe.checkpoint, conditions, options, **kwargs)

    kept = video().sample(progress=lambda done, total: steps.append(done))
    assert not kept.lazy and kept.sampled and steps
    first = torch.cat([c.latents for c in kept.iter_clips()], dim=1)
    steps.clear()
    assert torch.equal(torch.cat([c.latents for c in kept.iter_clips()], dim=1), first) and not steps  # reused

    lazy = video(keep_bytes=0)  # latents larger than what may be kept: made clip by clip as they are read
    assert lazy.lazy and lazy.latent_bytes == 25 * 4 * 8 * 8 * 4
    with pytest.raises(ValueError, match="sampled while it is decoded"):
        lazy.sample()
    clips = lazy.iter_clips(progress=lambda done, total: steps.append(done))
    assert not steps  # nothing sampled before the first clip is asked for
    assert torch.equal(torch.cat([c.latents for c in clips], dim=1), first)  # the same video, not kept
    assert not lazy.sampled and len(steps) == lazy.num_clips * options.steps
    assert not video().lazy  # the default: 64 MiB may be kept
    assert video(keep_bytes=keep_latent_bytes("0")).lazy and not video(keep_bytes=keep_latent_bytes(1)).lazy
    with pytest.raises(ValueError, match="LETSTALK_KEEP_LATENTS_MB must be a number of MiB >= 0"):
        keep_latent_bytes("lots", "LETSTALK_KEEP_LATENTS_MB")


def test_paste_back_keeps_the_original_size(pipe, assets):
    frames = pipe(assets["wide"], assets["speech"], paste_back=True, **FAST)
    assert frames.shape == (25, 96, 136, 3)
    # by default only a picture larger than the model's square is pasted into; False keeps the crop
    assert pipe(assets["wide"], assets["speech"], **FAST).shape == (25, 96, 136, 3)
    assert pipe(assets["wide"], assets["speech"], paste_back=False, **FAST).shape == (25, 64, 64, 3)
    small = write_portrait(assets["root"] / "small.png", size=64)
    assert pipe(small, assets["speech"], **FAST).shape == (25, 64, 64, 3)


def test_the_video_sounds_like_the_users_own_track(pipe, assets, tmp_path):
    """AAC 48 kHz stereo in, 48 kHz stereo out (not the encoder's 16 kHz mono copy), cut to the frames."""
    import subprocess as sp

    import imageio_ffmpeg

    stereo = write_speechlike(tmp_path / "stereo.wav", 0.9, sample_rate=48000, channels=2)
    aac = tmp_path / "speech.m4a"
    sp.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(stereo), "-c:a", "aac", str(aac)], check=True)
    out = pipe(assets["portrait"], aac, out=tmp_path / "talk.mp4", **FAST)
    info = probe(out)
    assert (info.audio_sample_rate, info.audio_channels) == (48000, 2)
    assert abs(info.audio_duration - info.frame_count / info.fps) <= 1 / info.fps
    speech = pipe.prepare(assets["portrait"], aac).speech.speech
    track, rate = speech.original()
    assert rate == 48000 and track.shape[0] == 2 and speech.sample_rate == 16000
    with pytest.raises(ValueError, match="finite"):
        pipe(assets["portrait"], (torch.full((2, 16000), float("nan")), 16000), **FAST)


def test_portraits_are_cropped_with_the_margin_the_checkpoint_was_trained_with(pipe, assets):
    assert pipe.checkpoint.crop_margin is None and pipe.crop_margin == 0.5  # not recorded: the default
    default = pipe.prepare(assets["wide"], assets["speech"]).portrait.crop.crop_box
    assert pipe.prepare(assets["wide"], assets["speech"], margin=0.5).portrait.crop.crop_box == default
    pipe.checkpoint.training["crop_margin"] = 0.2  # as a checkpoint trained on `prepare --margin 0.2` records
    try:
        assert pipe.crop_margin == 0.2
        tighter = pipe.prepare(assets["wide"], assets["speech"]).portrait.crop.crop_box
        assert tighter == pipe.prepare(assets["wide"], assets["speech"], margin=0.2).portrait.crop.crop_box != default
    finally:
        del pipe.checkpoint.training["crop_margin"]


def test_cancel_leaves_no_file(pipe, assets, tmp_path):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3

    out = tmp_path / "cancelled.mp4"
    with pytest.raises(SamplingCancelled):
        pipe(assets["portrait"], assets["speech"], out=out, should_stop=should_stop, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_cancel_stops_decoding_too(pipe, assets):
    """A sampled video's decoding asks should_stop after every decoded chunk (ComfyUI's Cancel while a long
    video decodes), and stops with SamplingCancelled."""
    from letstalk_core.pipeline import SampledVideo, video_frames

    conditions = pipe.prepare(assets["portrait"], assets["speech"])
    video = SampledVideo(pipe.checkpoint, conditions, pipe.options(**FAST)).sample()
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 2

    frames = video_frames(video, should_stop=should_stop)
    first = [next(frames), next(frames)]  # two chunks pass
    assert all(chunk.shape[-1] == 3 for chunk in first)
    with pytest.raises(SamplingCancelled, match="decoding was stopped"):
        next(frames)
    assert len(list(video_frames(video, should_stop=lambda: False))) > 3  # not asked to stop: every chunk


def test_guidance_needs_a_checkpoint_trained_with_dropout(assets):
    plain = load_parts(assets["bundle"])[0]
    guided, codec, encoder = load_parts(assets["guided"])
    pipe = LetsTalkPipeline(guided, codec, encoder)
    frames = pipe(assets["portrait"], assets["speech"], audio_cfg=2.0, portrait_cfg=1.5, **FAST)
    assert torch.isfinite(frames).all()
    conditions = pipe.prepare(assets["portrait"], assets["speech"])
    with pytest.raises(ValueError, match="trained without condition dropout"):
        iter_clip_latents(plain, conditions.portrait.latent, conditions.speech.features(plain.frames_per_clip),
                          SamplingOptions(audio_cfg=2.0))


@pytest.mark.parametrize("options,message", [
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"sampler": "plms"}, "sampler 'plms' is not known"),
    ({"audio_cfg": -1.0}, "audio_cfg must be a finite number >= 0"),
    ({"portrait_cfg": float("nan")}, "portrait_cfg must be a finite number >= 0"),
    ({"portrait_cfg": "lots"}, "portrait_cfg must be a finite number"),
    ({"overlap_frames": -1}, "overlap_frames must be an integer from 0 to frames_per_clip - 1"),
    ({"overlap_frames": 1000}, "overlap_frames must be an integer from 0 to frames_per_clip - 1"),
])
def test_bad_options_are_refused_by_name(pipe, assets, options, message):
    with pytest.raises(ValueError, match=message):
        pipe(assets["portrait"], assets["speech"], **{**FAST, **options})


def test_bad_inputs_are_refused_by_name(pipe, assets, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (48, 80)).save(tiny)
    with pytest.raises(ValueError, match="64"):
        pipe(tiny, assets["speech"], **FAST)
    with pytest.raises(ValueError, match="shorter than one video frame"):
        pipe(assets["portrait"], write_speech(tmp_path / "blip.wav", 0.01), **FAST)
    with pytest.raises((ValueError, FileNotFoundError), match="no_such_folder"):
        pipe(assets["portrait"], assets["speech"], out=tmp_path / "no_such_folder" / "x.mp4", **FAST)


def test_vae_with_other_latent_channels_is_refused(assets, tmp_path):
    from letstalk_core.latents import save_vae

    wrong = save_vae(build_vae(tiny_vae_config(latent_channels=8), seed=0), tmp_path / "vae8.safetensors")
    with pytest.raises(ValueError, match="8.*4|4.*8"):
        load_parts(assets["bundle"], vae=wrong)


def test_checkpoint_without_vae_asks_for_one(tmp_path):
    bare = make_bundle(tmp_path / "bare.safetensors", with_vae=False)
    with pytest.raises(ValueError, match="carries no VAE"):
        load_parts(bare)


@pytest.mark.slow  # a fresh Python process imports torch and the pack
def test_generate_cli(assets, tmp_path):
    out = tmp_path / "cli.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "letstalk_core", "generate", "--checkpoint", str(assets["bundle"]),
         "--image", str(assets["portrait"]), "--audio", str(assets["speech"]), "--out", str(out),
         "--sampler", "ddim", "--steps", "2", "--seed", "1", "--overlap-frames", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert probe(out).frame_count == 25
    assert len(read_video_frames(out)) == 25
    bad = subprocess.run(
        [sys.executable, "-m", "letstalk_core", "generate", "--checkpoint", str(assets["bundle"]),
         "--image", str(assets["portrait"]), "--audio", str(assets["speech"]), "--out", str(out),
         "--steps", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert bad.returncode != 0 and "steps must be an integer >= 1" in bad.stderr


def test_the_library_takes_the_checkpoint_it_is_given_and_only_the_command_line_falls_back(tmp_path):
    """No library function guesses a checkpoint; `generate` without --checkpoint takes the shipped one."""
    from letstalk_core.shipped import DEMO_CHECKPOINT, checkpoint_or_demo

    with pytest.raises(ValueError, match="checkpoint: give a LetsTalk checkpoint"):
        load_parts(None)
    assert checkpoint_or_demo(tmp_path / "mine.safetensors") == tmp_path / "mine.safetensors"
    if DEMO_CHECKPOINT.is_file():
        assert checkpoint_or_demo(None) == DEMO_CHECKPOINT


def test_generate_cli_speaks_of_files_and_warns_of_very_short_speech(assets, tmp_path):
    def generate(audio, out):
        return subprocess.run(
            [sys.executable, "-m", "letstalk_core", "generate", "--checkpoint", str(assets["bundle"]),
             "--image", str(assets["portrait"]), "--audio", str(audio), "--out", str(out),
             "--sampler", "ddim", "--steps", "1"],
            cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})

    notes = tmp_path / "notes.txt"
    notes.write_text("this is what I will say\n" * 50)
    refused = generate(notes, tmp_path / "refused.mp4")
    assert refused.returncode == 2
    assert f"audio file '{notes}' has no audio track" in refused.stderr  # ffmpeg reads text as a video
    assert "give an audio or video file (.aac" in refused.stderr and "ComfyUI" not in refused.stderr
    assert not (tmp_path / "refused.mp4").exists()
    short = write_speech(tmp_path / "short.wav", 0.3)
    result = generate(short, tmp_path / "short.mp4")
    assert result.returncode == 0, result.stderr
    assert "lasts only 0.30 s, so the video will be 8 frames long" in result.stderr
    assert probe(tmp_path / "short.mp4").frame_count == 8
    assert "lasts only" not in generate(assets["speech"], tmp_path / "long.mp4").stderr


@pytest.mark.parametrize("kind", ["wav2vec2", "whisper"])
def test_bundle_carrying_its_audio_encoder_is_enough(assets, tmp_path, kind):
    """`generate --checkpoint X --image --audio --out` needs nothing else when X bundles its encoder."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from letstalk_core.audio import load_audio_encoder

    torch.manual_seed(0)
    if kind == "wav2vec2":
        config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
        encoder = Wav2Vec2Model(config)
        layers = 2
    else:
        config = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                               num_mel_bins=80, max_source_positions=1500)
        encoder = WhisperEncoder(config)
        layers = 3  # the embedding output and each layer
    bundle = make_tiny_bundle(tmp_path / f"{kind}.safetensors", audio_layers=layers, audio_features=32,
                              audio_encoder=(kind, config.to_dict(), encoder.state_dict()))
    pipe = LetsTalkPipeline.from_pretrained(bundle)
    assert pipe.audio_encoder.kind == kind and pipe.audio_encoder.num_layers == layers
    out = pipe(assets["portrait"], assets["speech"], out=tmp_path / "talk.mp4", **FAST)
    assert probe(out).frame_count == 25
    if kind == "wav2vec2":  # the bundled encoder computes what the same weights give from a folder
        from letstalk_core.audio import load_audio

        folder = tmp_path / "wav2vec2_folder"
        encoder.save_pretrained(folder)
        speech = load_audio(str(assets["speech"]))
        torch.testing.assert_close(pipe.audio_encoder.encode(speech, 25),
                                   load_audio_encoder(folder).encode(speech, 25))
