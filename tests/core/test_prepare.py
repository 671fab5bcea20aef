"""`prepare`: real-video preparation on small synthetic mp4s (faces, a face-less one, a broken file)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from letstalk_core.__main__ import main
from letstalk_core.checkpoints import load_checkpoint
from letstalk_core.pipeline import LetsTalkPipeline
from letstalk_core.latents import build_vae, load_shipped_config, save_vae
from letstalk_core.training.config import config_from_dict, load_preset
from letstalk_core.training.data import ClipDataset, PreparedSource
from letstalk_core.training.prepare import picture_area, prepare_dataset, read_manifest
from letstalk_core.training.synthetic import mouth_box_fraction, render_face, sample_identity
from letstalk_core.training.trainer import TransformerTrainer
from tests.helpers import shared_path
from letstalk_core.video import iter_video_frames
from tests.helpers import write_mp4

REPO = Path(__file__).resolve().parents[2]
HAS_MTCNN = importlib.util.find_spec("facenet_pytorch") is not None  # MTCNN, the pipeline's face detector

SECONDS = 1.2
FACE_BOX = (100, 40, 228, 168)  # x0, y0, x1, y1 of the rendered 128 px face inside the 300x200 canvas
IDENTITIES = {"alice.mp4": 0, "nested/bob.mp4": 1}  # the identity seed each face video is rendered with


def _speech_like(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """A voiced-sounding test signal: harmonics of 140 Hz with a syllable-rate envelope."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    tone = sum(np.sin(2 * np.pi * 140.0 * k * t) / k for k in range(1, 6))
    noise = np.random.default_rng(seed).normal(0, 0.02, t.shape)
    return (0.2 * envelope * tone + noise).astype(np.float32)


def _face_video(path, identity_seed: int, fps: int = 30) -> None:
    face = render_face(sample_identity(identity_seed), size=128)  # [128, 128, 3]
    frames = np.zeros((int(SECONDS * fps), 200, 300, 3), np.uint8)  # [N, H, W, 3]
    frames[:] = (40, 60, 80)
    x0, y0, x1, y1 = FACE_BOX
    frames[:, y0:y1, x0:x1] = face
    write_mp4(path, frames, fps, audio=_speech_like(SECONDS, seed=identity_seed), sample_rate=16_000)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    (folder / "nested").mkdir()
    for name, seed in IDENTITIES.items():
        _face_video(folder / name, seed)
    rng = np.random.default_rng(5)
    wall = np.clip(rng.normal(128, 6, (int(SECONDS * 25), 96, 128, 3)), 0, 255).astype(np.uint8)  # [N, H, W, 3]
    write_mp4(folder / "wall.mp4", wall, 25, audio=_speech_like(SECONDS, seed=9), sample_rate=16_000)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("not a video")
    return folder


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    config = load_shipped_config("demo_vae")
    config.update(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, sample_size=64)
    return save_vae(build_vae(config, kind="demo_vae", seed=0), tmp_path_factory.mktemp("vae") / "tiny_vae.safetensors")


@pytest.mark.skipif(not HAS_MTCNN, reason="face detection needs facenet-pytorch")
def test_prepare_skips_broken_and_faceless_and_resumes(videos, tmp_path, tiny_vae):
    out = tmp_path / "prepared"
    report = prepare_dataset(videos, out, fps=25, size=64, audio_encoder="mel", vae=tiny_vae)
    assert sorted(report.prepared) == ["alice.mp4", "nested/bob.mp4"]
    assert report.seconds > 0 and report.clips_per_minute == pytest.approx(2 * 60 / report.seconds)
    assert "clips per minute" in report.summary()
    reasons = dict(report.skipped)
    assert set(reasons) == {"broken.mp4", "wall.mp4"}
    assert "broken" in reasons["broken.mp4"]
    assert "no face" in reasons["wall.mp4"]

    manifest = read_manifest(out)
    assert manifest["fps"] == 25 and manifest["size"] == 64
    assert {s["name"] for s in manifest["skipped"]} == {"broken.mp4", "wall.mp4"}
    entries = {e["name"]: e for e in manifest["videos"]}
    for entry in entries.values():
        assert entry["face_detected"] is True
        # 30 fps input resampled to 25 fps: 1.2 s -> 30 frames (ffmpeg may drop or keep one at the end)
        assert abs(entry["num_frames"] - SECONDS * 25) <= 1
        x0, y0, x1, y1 = entry["crop_box"]
        assert x1 - x0 == y1 - y0  # square
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        assert FACE_BOX[0] < centre[0] < FACE_BOX[2] and FACE_BOX[1] < centre[1] < FACE_BOX[3]
        # the mouth box from the face landmarks holds the renderer's own mouth centre
        truth_top, truth_bottom, truth_left, truth_right = mouth_box_fraction(sample_identity(IDENTITIES[entry["name"]]))
        side = x1 - x0
        truth_y = (FACE_BOX[1] + 128 * (truth_top + truth_bottom) / 2 - y0) / side
        truth_x = (FACE_BOX[0] + 128 * (truth_left + truth_right) / 2 - x0) / side
        top, bottom, left, right = entry["mouth_box"]
        assert top < truth_y < bottom and left < truth_x < right, (entry["mouth_box"], truth_y, truth_x)
        with safe_open(str(out / entry["shard"]), framework="pt") as shard:
            frames = shard.get_tensor("frames")
            features = shard.get_tensor("audio_features")
            latents = shard.get_tensor("latents")
            audio = shard.get_tensor("audio")
        n = entry["num_frames"]
        assert frames.dtype == torch.uint8 and tuple(frames.shape) == (n, 64, 64, 3)
        assert tuple(features.shape) == (n, 1, 80) and torch.isfinite(features).all()
        assert tuple(latents.shape) == (n, 4, 8, 8)
        assert abs(audio.shape[0] - n * 16_000 / 25) < 16_000 / 25 + 1
        # the crop holds the face, not the flat background colour (40, 60, 80)
        background = torch.tensor([40.0, 60.0, 80.0])
        assert (frames.float() - background).abs().mean() > 20

    # a rerun skips what is in the manifest and tries the skipped ones again
    again = prepare_dataset(videos, out, fps=25, size=64, audio_encoder="mel", vae=tiny_vae)
    assert again.prepared == [] and sorted(again.already) == ["alice.mp4", "nested/bob.mp4"]
    assert {name for name, _ in again.skipped} == {"broken.mp4", "wall.mp4"}
    assert read_manifest(out)["videos"] == manifest["videos"]

    # with the centre-crop option the face-less video is prepared too
    centred = prepare_dataset(videos, out, fps=25, size=64, audio_encoder="mel", vae=tiny_vae, on_no_face="center")
    assert centred.prepared == ["wall.mp4"]
    wall = next(e for e in read_manifest(out)["videos"] if e["name"] == "wall.mp4")
    assert wall["face_detected"] is False and wall["crop_box"] == [16, 0, 112, 96]

    # other settings on the same folder are refused instead of mixing shards
    with pytest.raises(ValueError, match="size"):
        prepare_dataset(videos, out, fps=25, size=32, audio_encoder="mel", vae=tiny_vae)

    # the training data reader takes the shards (pixels and cached latents)
    source = PreparedSource(out, use_latents=True)
    dataset = ClipDataset(source, frames_per_clip=8, memory_frames=2, use_latents=True)
    sample = dataset.sample(0, torch.Generator().manual_seed(0))
    assert tuple(sample.clip.shape) == (8, 4, 8, 8) and tuple(sample.memory.shape) == (2, 4, 8, 8)
    assert not (sample.start <= sample.reference_index < sample.start + 8)
    assert tuple(sample.audio_windows.shape) == (8, 5, 1, 80)
    assert sample.mouth_box == tuple(source.entries[0]["mouth_box"])  # for the mouth-weighted loss

    # and the trainer trains on them, from pixels and from the cached latents
    for cached in (False, True):
        values = {
            "output_dir": str(tmp_path / f"run_{cached}"),
            "data": {"source": "prepared", "path": str(out), "resolution": 64, "use_cached_latents": cached},
            "model": {"hidden_size": 32, "depth": 1, "num_heads": 2, "patch_size": 2, "frames_per_clip": 8},
            "audio": {"intermediate_dim": 16, "num_tokens": 2, "output_dim": 32},
            "vae": {"path": str(tiny_vae)},
            "training": {"max_steps": 1, "batch_size": 2},
        }
        trainer = TransformerTrainer(config_from_dict(values), show_progress=False)
        checkpoint = load_checkpoint(trainer.train())
        assert len(trainer.last_losses) == 1 and np.isfinite(trainer.last_losses[0])
        assert checkpoint.vae_config is not None and checkpoint.config["sample_size"] == 8


def test_prepare_resumes_after_interruption(videos, tmp_path):
    out = tmp_path / "prepared"
    seen = []

    def stop_after_first(done, total, name):
        seen.append(name)
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(videos, out, size=32, detector="none", on_no_face="center", progress=stop_after_first)
    first = read_manifest(out)
    assert [e["name"] for e in first["videos"]] == ["alice.mp4"]  # written before the interruption
    report = prepare_dataset(videos, out, size=32, detector="none", on_no_face="center")
    assert report.already == ["alice.mp4"]
    assert sorted(report.prepared) == ["nested/bob.mp4", "wall.mp4"]
    assert [name for name, _ in report.skipped] == ["broken.mp4"]
    shards = [e["shard"] for e in read_manifest(out)["videos"]]
    assert len(set(shards)) == 3 and all((out / s).is_file() for s in shards)


def test_prepare_cli_and_bad_inputs(videos, tmp_path, capsys):
    out = tmp_path / "cli"
    status = main(["prepare", "--videos", str(videos), "--out", str(out), "--size", "32", "--no-face-detection"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "prepared 3 video(s)" in printed and "skipped broken.mp4" in printed
    assert json.loads((out / "manifest.json").read_text())["on_no_face"] == "center"
    assert main(["prepare", "--videos", str(tmp_path / "missing"), "--out", str(out)]) == 2
    with pytest.raises(ValueError, match="multiple of 8"):
        prepare_dataset(videos, out, size=30)
    with pytest.raises(ValueError, match="on_no_face"):
        prepare_dataset(videos, out, size=32, detector="none")


def _letterboxed_face_video(path, identity_seed: int, *, bar: int = 40, silent: bool = False) -> None:
    """A 300x280 frame with black bars of ``bar`` px above and below a 300x200 picture holding a face."""
    fps = 25
    face = render_face(sample_identity(identity_seed), size=128)  # [128, 128, 3]
    frames = np.zeros((int(SECONDS * fps), 200 + 2 * bar, 300, 3), np.uint8)  # [N, H, W, 3]
    frames[:, bar:bar + 200] = (40, 60, 80)
    x0, y0, x1, y1 = FACE_BOX
    frames[:, bar + y0:bar + y1, x0:x1] = face
    audio = np.zeros(int(SECONDS * 16_000), np.float32) if silent else _speech_like(SECONDS, seed=identity_seed)
    write_mp4(path, frames, fps, audio=audio, sample_rate=16_000)


@pytest.mark.skipif(not HAS_MTCNN, reason="face detection needs facenet-pytorch")
def test_prepare_keeps_black_bars_out_and_reports_small_and_silent_videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    _letterboxed_face_video(folder / "letterboxed.mp4", 2)
    _letterboxed_face_video(folder / "silent.mp4", 3, silent=True)
    small = np.full((int(SECONDS * 25), 48, 64, 3), 120, np.uint8)
    write_mp4(folder / "small.mp4", small, 25, audio=_speech_like(SECONDS), sample_rate=16_000)
    write_mp4(folder / "mute.mp4", small, 25)  # no audio track at all
    write_mp4(folder / "black.mp4", np.zeros((int(SECONDS * 25), 96, 96, 3), np.uint8), 25,
              audio=_speech_like(SECONDS), sample_rate=16_000)
    report = prepare_dataset(folder, tmp_path / "out", size=64, margin=1.5)
    reasons = dict(report.skipped)
    assert report.prepared == ["letterboxed.mp4"]
    assert "silent audio track" in reasons["silent.mp4"]
    assert "picture is 64x48 px" in reasons["small.mp4"] and "smaller than the 64 px crop" in reasons["small.mp4"]
    assert "no audio" in reasons["mute.mp4"]
    assert reasons["black.mp4"] == "every sampled frame is black"
    (entry,) = read_manifest(tmp_path / "out")["videos"]
    x0, y0, x1, y1 = entry["crop_box"]
    # a square of 4x the face (~244 px) would reach into both bars of the 280 px frame: it shrinks to the
    # 200 px picture between them
    assert (y0, y1) == (40, 240) and x1 - x0 == 200
    with safe_open(str(tmp_path / "out" / entry["shard"]), framework="pt") as shard:
        frames = shard.get_tensor("frames")
    assert frames[:, :2].float().mean() > 30  # the top rows are the picture, not a black bar


def test_split_holds_out_clips_per_folder_and_training_never_reads_them(tmp_path):
    folder = tmp_path / "videos"
    (folder / "speaker_a").mkdir(parents=True)
    (folder / "long_talk").mkdir()
    wall = np.full((int(SECONDS * 25), 64, 64, 3), 120, np.uint8)
    names = [f"speaker_a/s{i}.mp4" for i in range(8)] + ["long_talk/part1.mp4"]
    for i, name in enumerate(names):
        write_mp4(folder / name, wall, 25, audio=_speech_like(SECONDS, seed=i), sample_rate=16_000)
    out = tmp_path / "out"
    prepare_dataset(folder, out, size=32, detector="none", on_no_face="center", holdout_fraction=0.25)
    manifest = read_manifest(out)
    heldout = manifest["split"]["heldout"]
    # 2 of the 8 clips of speaker_a; the folder with one clip trains entirely
    assert len(heldout) == 2 and all(name.startswith("speaker_a/") for name in heldout)
    assert "split by sentence" in manifest["split"]["rule"]
    assert {e["name"] for e in manifest["videos"] if e["split"] == "heldout"} == set(heldout)
    source = PreparedSource(out)
    assert len(source) == 7 and not {e["name"] for e in source.entries} & set(heldout)
    assert {e["name"] for e in PreparedSource(out, split="heldout").entries} == set(heldout)  # for measuring
    with pytest.raises(ValueError, match="split must be 'train' or 'heldout'"):
        PreparedSource(out, split="test")
    # the same clips give the same split on a rerun, and a rerun with another fraction moves it
    prepare_dataset(folder, out, size=32, detector="none", on_no_face="center", holdout_fraction=0.25)
    assert read_manifest(out)["split"]["heldout"] == heldout
    prepare_dataset(folder, out, size=32, detector="none", on_no_face="center", holdout_fraction=0.0)
    assert read_manifest(out)["split"]["heldout"] == [] and len(PreparedSource(out)) == 9
    with pytest.raises(ValueError, match=r"holds no prepared videos to measure \(none is held out\)"):
        PreparedSource(out, split="heldout")
    # named clips are held out on top of the fraction, and a rerun prepares nothing again to move the split
    report = prepare_dataset(folder, out, size=32, detector="none", on_no_face="center", holdout_fraction=0.25,
                             hold_out=["long_talk/*", "speaker_a/s7.mp4"])
    assert not report.prepared and len(report.already) == 9 and report.clips_per_minute is None
    assert set(report.heldout) >= {"long_talk/part1.mp4", "speaker_a/s7.mp4"}
    assert set(report.heldout) == set(heldout) | {"long_talk/part1.mp4", "speaker_a/s7.mp4"}
    assert read_manifest(out)["split"]["hold_out"] == ["long_talk/*", "speaker_a/s7.mp4"]
    assert "held out of training" in report.summary()
    with pytest.raises(ValueError, match=r"hold_out pattern 'speaker_b/\*' matches no video"):
        prepare_dataset(folder, out, size=32, detector="none", on_no_face="center", hold_out=["speaker_b/*"])
    with pytest.raises(ValueError, match=r"hold_out must be a list of clip-name patterns"):
        prepare_dataset(folder, out, size=32, detector="none", on_no_face="center", hold_out=[""])
    for bad in (-0.1, 1.0, "a quarter", True):
        with pytest.raises(ValueError, match=r"holdout_fraction must be a number in \[0, 1\)"):
            prepare_dataset(folder, out, size=32, detector="none", on_no_face="center", holdout_fraction=bad)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MTCNN, reason="face detection needs facenet-pytorch")
def test_personal_preset_trains_on_prepared_faces_through_taef2(videos, tmp_path):
    """The recipe of the README's "make this person talk": prepare at 128 px through the bundled TAEF2, then
    `train --preset personal`; the checkpoint carries TAEF2, so it makes videos with nothing else named."""
    out = tmp_path / "prepared"
    report = prepare_dataset(videos, out, size=128, vae=REPO / "models" / "taef2", margin=0.3, holdout_fraction=0.0)
    assert sorted(report.prepared) == ["alice.mp4", "nested/bob.mp4"]
    assert "smaller than the 128 px crop" in dict(report.skipped)["wall.mp4"]
    config = load_preset("personal", {"data": {"path": str(out)}, "output_dir": str(tmp_path / "run"),
                                      "training": {"max_steps": 2, "save_every": 100}}, base_dir=REPO)
    assert config.model.in_channels == 32 and config.recipe.mouth_loss_weight > 0
    trainer = TransformerTrainer(config, show_progress=False)
    path = trainer.train()
    checkpoint = load_checkpoint(path)
    assert len(trainer.last_losses) == 2 and all(np.isfinite(trainer.last_losses))
    # the crop margin of the training frames travels with the checkpoint, so portraits are framed alike
    assert checkpoint.crop_margin == 0.3 and LetsTalkPipeline.from_pretrained(path).crop_margin == 0.3
    assert checkpoint.config["in_channels"] == 32 and checkpoint.config["sample_size"] == 16
    assert checkpoint.vae_config["_class_name"] == "AutoencoderTiny" and checkpoint.vae_config["midblock_pool"]


# ------------------------------------------------------------------ the real footage beside the repository
def _linked(folder: Path, sources: list[Path]) -> Path:
    folder.mkdir()
    for source in sources:
        (folder / source.name).symlink_to(source)
    return folder


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MTCNN, reason="face detection needs facenet-pytorch")
def test_prepare_real_footage_as_it_comes(tmp_path):
    """GRID (MPEG-1 + MP2, 360x288) and CREMA-D (FLV) through TAEF2; a letterboxed 1280x720 30 fps address."""
    footage = shared_path("footage")
    clips = _linked(tmp_path / "clips", [footage / "grid" / "s1" / "bbbs7a.mpg",
                                         footage / "crema-d" / "1001_DFA_NEU_XX.flv"])
    report = prepare_dataset(clips, tmp_path / "out", size=128, vae=REPO / "models" / "taef2", margin=0.3)
    assert sorted(report.prepared) == ["1001_DFA_NEU_XX.flv", "bbbs7a.mpg"] and report.skipped == []
    manifest = read_manifest(tmp_path / "out")
    for entry in manifest["videos"]:
        top, bottom, left, right = entry["mouth_box"]
        assert 0.45 < top < bottom < 0.95 and 0.25 < left < right < 0.75, entry  # the mouth: low and central
        with safe_open(str(tmp_path / "out" / entry["shard"]), framework="pt") as shard:
            latents, audio = shard.get_tensor("latents"), shard.get_tensor("audio")
        assert tuple(latents.shape[1:]) == (32, 16, 16) and 0.5 < float(latents.std()) < 2.0
        assert abs(audio.shape[0] - entry["num_frames"] * 16_000 / 25) <= 16_000 / 25
    grid = next(e for e in manifest["videos"] if e["name"] == "bbbs7a.mpg")
    assert grid["num_frames"] == 75  # GRID: 3 s at 25 fps

    address = footage / "obama" / "weekly_address_b.mp4"
    out = tmp_path / "address"
    report = prepare_dataset(_linked(tmp_path / "address_clip", [address]), out, size=128, margin=0.3)
    assert report.prepared == ["weekly_address_b.mp4"]
    (entry,) = read_manifest(out)["videos"]
    frames = [frame for chunk in iter_video_frames(address, 8, fps=1) for frame in chunk][:8]
    top, bottom, left, right = picture_area(frames)
    assert top > 0 and bottom < frames[0].shape[0]  # the file is letterboxed
    x0, y0, x1, y1 = entry["crop_box"]
    assert y0 >= top and y1 <= bottom and 0 <= x0 and x1 <= frames[0].shape[1]
    with safe_open(str(out / entry["shard"]), framework="pt") as shard:
        audio = shard.get_tensor("audio")
    # 30 fps resampled to 25: as many frames as the speech has 40 ms steps
    assert abs(entry["num_frames"] - audio.shape[0] / 16_000 * 25) <= 1
