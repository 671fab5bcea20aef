"""Evaluation: the mouth meter on rendered frames, the metric functions on constructed inputs, and
`evaluate` (API and command line) on a tiny random bundle."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from letstalk_core.evaluation import (
    MouthMeter,
    colour_error,
    drift_ratio,
    evaluate_checkpoint,
    format_report,
    frame_changes,
    identity_errors,
    pearson,
    seam_ratio,
    ssim,
    structure_error,
)
from letstalk_core.__main__ import main
from letstalk_core.evaluation.metrics import sync_correlation
from letstalk_core.evaluation.real import evaluate_videos, format_real_report, load_real_clips
from letstalk_core.evaluation.runner import heldout_speech, identity_seeds
from letstalk_core.training.prepare import prepare_dataset
from letstalk_core.sampling import clip_plan
from letstalk_core.training.synthetic import (
    FacePose,
    animate_face,
    mouth_opening_from_audio,
    render_face,
    sample_identity,
)
from tests.helpers import TINY_FRAMES_PER_CLIP, make_tiny_bundle, write_speechlike

REPO = Path(__file__).resolve().parents[2]
HAS_MTCNN = importlib.util.find_spec("facenet_pytorch") is not None
FPS = 25


# ------------------------------------------------------------------------------------------ mouth meter
@pytest.mark.parametrize("identity_seed,size", [(1_000_003, 64), (1_000_011, 96)])
def test_mouth_meter_follows_the_true_opening_on_rendered_frames(identity_seed, size):
    identity = sample_identity(identity_seed)
    speech = heldout_speech(2.0, seed=identity_seed % 7)  # [S] at 16 kHz, starts on the first word
    motion = animate_face(speech, 16000, FPS, seed=3)  # head motion, blinks, brows and mouth shape too
    truth = mouth_opening_from_audio(speech, 16000, FPS)
    frames = np.stack([render_face(identity, motion.pose(i), size) for i in range(len(motion))])  # [F, S, S, 3]
    meter = MouthMeter.for_identity(identity, size)
    measured = meter.measure(frames)
    assert measured.shape == truth.shape
    assert np.ptp(truth) > 0.5  # the speech really opens and closes the mouth
    assert pearson(measured, truth) > 0.9
    assert meter.calibration_r > 0.9
    # calibrated: readings are in the renderer's units (a closed mouth reads ~0, a wide one ~1)
    sweep = np.stack([render_face(identity, FacePose(mouth_open=o), size) for o in (0.0, 0.5, 1.0)])
    readings = meter.measure(sweep)
    assert abs(readings[0]) < 0.1 and abs(readings[1] - 0.5) < 0.2 and abs(readings[2] - 1.0) < 0.2


def test_mouth_meter_ignores_head_motion_with_a_closed_mouth():
    identity = sample_identity(1_000_005)
    meter = MouthMeter.for_identity(identity, 64)
    moved = np.stack([render_face(identity, FacePose(head_dx=dx, head_dy=dy), 64)
                      for dx, dy in ((0.0, 0.0), (0.03, 0.0), (-0.02, 0.015), (0.0, -0.02))])
    opened = render_face(identity, FacePose(mouth_open=0.6), 64)
    assert np.abs(meter.measure(moved)).max() < 0.15
    assert meter.measure(opened)[0] > 0.4


def test_mouth_meter_refuses_a_box_outside_the_image():
    with pytest.raises(ValueError, match="mouth_box"):
        MouthMeter(np.zeros((32, 32, 3), np.uint8), (10, 40, 5, 20))


# ------------------------------------------------------------------------------------------ metrics
def test_pearson_on_constructed_sequences():
    x = np.arange(10.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert math.isnan(pearson(x, np.ones(10)))
    with pytest.raises(ValueError, match="different lengths"):
        pearson(x, x[:5])


def test_identical_frames_have_zero_identity_error_and_changes_raise_it():
    portrait = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    same = portrait[None].repeat(3, 1, 1, 1)  # [3, 32, 32, 3]
    errors = identity_errors(same, portrait)
    for name in ("colour", "structure", "identity"):
        assert errors[name].shape == (3,)
        assert errors[name].abs().max() < 1e-5, name
    brighter = (portrait + 0.1).clamp(max=1.0)
    assert float(colour_error(brighter, portrait)) == pytest.approx(float((brighter - portrait).mean()), abs=1e-5)
    noisy = (portrait + 0.2 * torch.randn(32, 32, 3, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert float(structure_error(noisy, portrait)) > 0.1
    assert float(colour_error(noisy, portrait)) < float(structure_error(noisy, portrait))


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(2)
    a = torch.rand(40, 48, 3, generator=generator)
    b = (a + 0.15 * torch.randn(40, 48, 3, generator=generator)).clamp(0, 1)
    expected = metrics.structural_similarity(a.numpy(), b.numpy(), channel_axis=-1, data_range=1.0,
                                             gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert float(ssim(b, a)) == pytest.approx(expected, abs=1e-4)


def test_seam_ratio_detects_a_jump_at_clip_boundaries():
    clip = 4
    level = torch.cumsum(torch.full((16,), 0.01), 0)  # smooth brightening: 0.01 per frame
    level[8:] += 0.1  # a jump between frame 7 (end of clip 2) and frame 8 (start of clip 3)
    frames = level.view(16, 1, 1, 1).expand(16, 8, 8, 3).clone()  # [16, 8, 8, 3]
    result = seam_ratio(frame_changes(frames), clip)
    assert result["boundaries"] == 3
    # boundaries change by 0.01, 0.11, 0.01; inside clips always 0.01
    assert result["inside"] == pytest.approx(0.01, abs=1e-6)
    assert result["boundary"] == pytest.approx(0.13 / 3, abs=1e-6)
    assert result["ratio"] == pytest.approx(13 / 3, rel=1e-4)
    smooth = seam_ratio(frame_changes(frames[:8]), clip)
    assert smooth["ratio"] == pytest.approx(1.0, rel=1e-4)
    assert math.isnan(seam_ratio(frame_changes(frames[:4]), clip)["ratio"])  # no boundary at all


def test_seam_ratio_at_the_starts_of_overlapping_clips():
    level = torch.cumsum(torch.full((14,), 0.01), 0)
    level[6:] += 0.1  # a jump into frame 6, where the second clip's new frames begin (clips of 8, overlap 2)
    frames = level.view(14, 1, 1, 1).expand(14, 4, 4, 3).clone()
    at_starts = seam_ratio(frame_changes(frames), 8, clip_starts=[0, 6, 12])
    assert at_starts["boundaries"] == 2  # into frames 6 and 12 (a start at 0 has no frame before it)
    assert at_starts["boundary"] == pytest.approx(0.12 / 2, abs=1e-6)
    assert at_starts["inside"] == pytest.approx(0.01, abs=1e-6)
    # counted at multiples of 8 instead, the jump would count as motion inside a clip
    assert seam_ratio(frame_changes(frames), 8)["ratio"] < 1
    with pytest.raises(ValueError, match="clip_starts"):
        seam_ratio(frame_changes(frames), 8, clip_starts=[-1])


def test_frame_changes_with_the_previous_chunk_equal_the_whole_video():
    frames = torch.rand(10, 6, 6, 3, generator=torch.Generator().manual_seed(3))
    whole = frame_changes(frames)
    parts = torch.cat([frame_changes(frames[:4]), frame_changes(frames[4:], previous=frames[3])])
    assert torch.allclose(whole, parts)


def test_drift_ratio_from_constructed_error_sequences():
    steady = np.full(300, 0.2)
    assert drift_ratio(steady, FPS, 2.0)["ratio"] == pytest.approx(1.0)
    growing = np.concatenate([np.full(50, 0.2), np.linspace(0.2, 0.5, 200), np.full(50, 0.5)])
    result = drift_ratio(growing, FPS, 2.0)
    assert result["window_frames"] == 50
    assert result["first"] == pytest.approx(0.2) and result["last"] == pytest.approx(0.5)
    assert result["ratio"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="two windows"):
        drift_ratio(np.ones(60), FPS, 2.0)


def test_bad_evaluation_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a held-out identity"):
        identity_seeds([12])
    for bad in (0, True):  # a count of identities is an integer >= 1, and a bool is not one
        with pytest.raises(ValueError, match=f"identities must be an integer >= 1, got {bad}"):
            identity_seeds(bad)
    with pytest.raises(ValueError, match="sampler"):
        evaluate_checkpoint(tmp_path / "none.safetensors", sampler="magic")
    with pytest.raises(ValueError, match="drift_seconds"):
        evaluate_checkpoint(tmp_path / "none.safetensors", drift_seconds=4, drift_window=5)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        evaluate_checkpoint(tmp_path / "none.safetensors", audio=[tmp_path / "missing.wav"], drift_seconds=0)
    with pytest.raises(ValueError, match="colour|frames"):
        colour_error(torch.zeros(2, 8, 8), torch.zeros(8, 8, 3))


# ------------------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("evaluation") / "tiny.safetensors")


TWO_CLIPS = 2 * TINY_FRAMES_PER_CLIP / FPS  # seconds


def test_evaluate_two_clips_with_floor_ceiling_drift_and_sampler_table(bundle):
    steps_seen = []
    result = evaluate_checkpoint(
        bundle, identities=2, seconds=TWO_CLIPS, sampler="ddim", steps=2, drift_seconds=4 * TWO_CLIPS,
        drift_window=TWO_CLIPS, with_sampler_table=True, sampler_settings=(("ddim", 2), ("dpmpp_2m", 1)),
        progress=lambda done, total: steps_seen.append((done, total)),
    )
    m = result["metrics"]
    assert result["settings"]["frames_per_clip"] == TINY_FRAMES_PER_CLIP
    assert all(seed >= 1_000_000 for seed in result["settings"]["identities"])
    assert [s["frames"] for s in result["samples"]] == [8, 8]
    # the renderer's frames are the ceiling: the meter sees its mouth well
    assert m["sync_ceiling"] > 0.8
    for name in ("sync", "sync_floor", "sync_ceiling_vae", "colour_error", "structure_error", "seam_ratio",
                 "drift_ratio", "renderer_identity_error"):
        assert math.isfinite(m[name]), name
    assert -1 <= m["sync"] <= 1 and -1 <= m["sync_floor"] <= 1
    assert m["seam_boundaries"] == 2  # one boundary in each of the two 2-clip videos
    # a random model does not keep the portrait: much worse than the renderer's own frames
    assert m["identity_error"] > m["renderer_identity_error"]
    assert set(result["checks"]) == {"sync", "sync_floor", "seam_ratio", "drift_ratio"}
    assert result["checks"]["sync"]["pass"] == (m["sync"] >= 0.7)
    # progress counts every model step once: 2 videos x 2 clips x (2 + 2 + 1 steps) + drift 8 clips x 2
    assert steps_seen[-1] == (2 * 2 * 5 + 8 * 2, 2 * 2 * 5 + 8 * 2)
    assert [(r["sampler"], r["steps"]) for r in result["sampler_table"]] == [("ddim", 2), ("dpmpp_2m", 1)]
    assert all(r["seconds_per_clip"] > 0 for r in result["sampler_table"])
    report = format_report(result)
    for text in ("lip sync", "floor", "ceiling", "seam ratio", "drift ratio", ">= 0.7", "<= 0.2", "<= 1.5",
                 "<= 1.2", "dpmpp_2m"):
        assert text in report
    assert ("PASS" in report) or ("FAIL" in report)


@pytest.mark.slow  # a fresh Python process imports torch and the pack
def test_evaluate_command_writes_table_and_json(bundle, tmp_path):
    speech = write_speechlike(tmp_path / "speech.wav", TWO_CLIPS)
    out = tmp_path / "eval.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    completed = subprocess.run(
        [sys.executable, "-m", "letstalk_core", "evaluate", "--checkpoint", str(bundle), "--audio", str(speech),
         "--identities", "1000003", "--sampler", "ddim", "--steps", "1", "--drift-seconds", "0", "--json", str(out),
         "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "lip sync" in completed.stdout and "seam ratio" in completed.stdout
    data = json.loads(out.read_text())
    assert data["settings"]["identities"] == [1000003]
    assert data["settings"]["speech"] == ["audio file speech.wav"]
    sample = data["samples"][0]
    # one identity with one audio file: the floor came from an extra video with other (held-out) speech
    assert sample["sync_floor"] is None or -1 <= sample["sync_floor"] <= 1
    assert sample["sync_ceiling"] is not None
    assert data["metrics"]["drift_ratio"] is None  # skipped: strict JSON null, not NaN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "speech.wav"]


def test_evaluate_with_guidance_guides_every_video_and_says_so(tmp_path):
    guided_bundle = make_tiny_bundle(tmp_path / "guided.safetensors",
                                     condition_dropout={"audio": 0.1, "portrait": 0.1, "both": 0.1})
    common = dict(identities=[1000003], seconds=TWO_CLIPS, sampler="ddim", steps=1, drift_seconds=0)
    plain = evaluate_checkpoint(guided_bundle, **common)
    guided = evaluate_checkpoint(guided_bundle, audio_cfg=3.0, **common)
    assert guided["settings"]["audio_cfg"] == 3.0 and guided["settings"]["portrait_cfg"] == 1.0
    assert "guidance audio 3 portrait 1" in format_report(guided)
    assert "guidance audio" not in format_report(plain)
    # the same seed and speech: only the guidance differs, and it changes the video
    assert guided["metrics"]["identity_error"] != plain["metrics"]["identity_error"]
    for bad in (-1.0, float("nan"), "3"):
        with pytest.raises(ValueError, match="audio_cfg"):
            evaluate_checkpoint(guided_bundle, audio_cfg=bad, **common)
    # a checkpoint trained without condition dropout refuses guidance, naming the scales
    with pytest.raises(ValueError, match="guidance"):
        evaluate_checkpoint(make_tiny_bundle(tmp_path / "plain.safetensors"), portrait_cfg=2.0, **common)


def test_evaluate_with_overlapping_clips_counts_seams_where_new_frames_begin(bundle):
    common = dict(identities=[1000003], seconds=3 * TWO_CLIPS / 2, sampler="ddim", steps=1, drift_seconds=0)
    steps_seen = []
    result = evaluate_checkpoint(bundle, overlap_frames=1, progress=lambda done, total: steps_seen.append(total),
                                 **common)
    frames = result["samples"][0]["frames"]
    plan = clip_plan(frames, TINY_FRAMES_PER_CLIP, 1)
    assert frames == 3 * TINY_FRAMES_PER_CLIP and len(plan) == 4  # 3 clips' frames take 4 overlapping clips
    assert result["settings"]["overlap_frames"] == 1
    assert result["metrics"]["seam_boundaries"] == len(plan) - 1
    assert steps_seen[-1] == 2 * len(plan)  # the video and the floor's extra video, 1 step per clip
    assert "1 frames of overlap" in format_report(result)
    plain = evaluate_checkpoint(bundle, **common)
    assert plain["metrics"]["seam_boundaries"] == 2 and "overlap" not in format_report(plain)
    with pytest.raises(ValueError, match="overlap_frames must be an integer from 0 to frames_per_clip - 1"):
        evaluate_checkpoint(bundle, overlap_frames=TINY_FRAMES_PER_CLIP, **common)


def test_evaluate_command_refuses_a_training_identity(bundle, capsys):
    from letstalk_core.__main__ import main

    status = main(["evaluate", "--checkpoint", str(bundle), "--identities", "5,6", "--drift-seconds", "0",
                   "--no-progress"])
    assert status == 2
    assert "not a held-out identity" in capsys.readouterr().err


# ------------------------------------------------------------------------------ evaluate --videos
def test_sync_correlation_removes_slow_trends_and_finds_a_small_lag():
    rng = np.random.default_rng(0)
    mouth = rng.normal(size=80)
    trend = np.linspace(0, 20, 80)  # a slow change of light: not speech
    assert sync_correlation(mouth + trend, mouth) > 0.95
    assert pearson(mouth + trend, mouth) < 0.5
    shifted = np.roll(mouth, 2)  # two frames late
    assert sync_correlation(shifted, mouth) > 0.95 and sync_correlation(shifted, mouth, max_lag=0) < 0.3
    assert math.isnan(sync_correlation(mouth[:10], mouth[:10]))  # shorter than the moving average


def _talking_video(path: Path, identity_seed: int, speech: np.ndarray, size: int = 96, fps: int = FPS) -> None:
    """A face animated by the renderer from ``speech`` on a plain canvas, with that speech as its track."""
    from tests.helpers import write_mp4

    num_frames = int(len(speech) / 16_000 * fps)
    motion = animate_face(speech, 16_000, fps, seed=identity_seed, num_frames=num_frames)
    identity = sample_identity(identity_seed)
    canvas = np.full((num_frames, size + 32, size + 64, 3), (60, 70, 90), np.uint8)  # [N, H, W, 3]
    for i in range(num_frames):
        canvas[i, 16:16 + size, 32:32 + size] = render_face(identity, motion.pose(i), size)
    write_mp4(path, canvas, fps, audio=speech, sample_rate=16_000)


@pytest.mark.skipif(not HAS_MTCNN, reason="the real-footage evaluation crops faces with facenet-pytorch")
def test_evaluate_videos_on_talking_faces_with_ceiling_floor_and_seams(bundle, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for index, seed in enumerate((1000003, 1000017)):
        _talking_video(videos / f"clip{index}.mp4", seed, heldout_speech(1.2, seed=index))
    seen = []
    result = evaluate_videos(videos, bundle, sampler="ddim", steps=1, margin=0.3,
                             progress=lambda done, total: seen.append((done, total)))
    m, clips = result["metrics"], result["clips"]
    assert [c["clip"] for c in clips] == ["clip0.mp4", "clip1.mp4"] and result["left_out"] == []
    assert all(c["frames"] == 30 for c in clips)
    # the real video through the tiny (random) VAE is a poor copy, yet the mouth meter sees its motion
    for name in ("sync", "sync_floor", "sync_ceiling", "structure_error", "codec_structure_error", "seam_ratio"):
        assert math.isfinite(m[name]), name
    assert m["sync_above_floor"] == pytest.approx(m["sync"] - m["sync_floor"])
    assert set(result["checks"]) == {"sync", "sync_above_floor", "seam_ratio"}
    # every clip is made twice (its own speech, and the floor's other speech): 2 x 2 x 8 clips of 4 frames
    assert seen[-1][0] == seen[-1][1] == 2 * 2 * 8
    report = format_real_report(result)
    for text in ("lip sync against the real video", "ceiling", "floor", ">= 0.6", ">= 0.25", "<= 1.5", "clip1.mp4"):
        assert text in report
    assert sorted(p.name for p in videos.iterdir()) == ["clip0.mp4", "clip1.mp4"]  # nothing written beside them
    # --only picks clips by name; the others are left out with the reason
    one = evaluate_videos(videos, bundle, sampler="ddim", steps=1, margin=0.3, only=["clip1.*"])
    assert [c["clip"] for c in one["clips"]] == ["clip1.mp4"]
    assert one["left_out"] == [{"name": "clip0.mp4", "reason": "matches no --only pattern"}]
    with pytest.raises(ValueError, match=r"clip0.mp4: matches no --only pattern; clip1.mp4: matches no --only"):
        evaluate_videos(videos, bundle, sampler="ddim", steps=1, margin=0.3, only=["nothing*"])
    with pytest.raises(ValueError, match=r"only must be a list of clip-name patterns"):
        evaluate_videos(videos, bundle, only="clip1.*")


def test_evaluate_videos_measures_the_real_mouth_with_a_high_ceiling(tmp_path):
    """The measure itself, without a model: the renderer's video against itself through a lossless path is
    near 1, against a video of other speech near 0."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for index, seed in enumerate((1000003, 1000003)):
        _talking_video(videos / f"clip{index}.mp4", seed, heldout_speech(2.0, seed=index), size=128)
    clips, left_out = load_real_clips(videos, 64, margin=0.3, work_dir=tmp_path / "prepared")
    assert left_out == [] and len(clips) == 2
    meters = [MouthMeter(clip.frames[0], clip.mouth_box) for clip in clips]
    own = meters[0].raw(clips[0].frames)
    assert sync_correlation(own, own) == pytest.approx(1.0)
    assert np.ptp(own) > 0.05  # the mouth moves, and the meter sees it move
    other = meters[0].raw(clips[1].frames)
    assert sync_correlation(other, own) < 0.6


@pytest.mark.skipif(not HAS_MTCNN, reason="the real-footage evaluation crops faces with facenet-pytorch")
def test_evaluate_videos_refuses_an_empty_folder_and_a_wrong_size(bundle, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no clip of .* can be evaluated .*the folder holds no video"):
        evaluate_videos(empty, bundle)
    assert main(["evaluate", "--checkpoint", str(bundle), "--videos", str(empty), "--no-progress"]) == 2
    assert "no clip" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--videos: folder .* not found"):
        evaluate_videos(tmp_path / "missing", bundle)
    prepared = tmp_path / "prepared"
    (tmp_path / "one").mkdir()
    _talking_video(tmp_path / "one" / "a.mp4", 1000003, heldout_speech(1.0, seed=0))
    prepare_dataset(tmp_path / "one", prepared, size=32, detector="none", on_no_face="center")
    with pytest.raises(ValueError, match="prepared at 32 px but the model makes 64 px videos"):
        evaluate_videos(prepared, bundle)
    # clips whose mouth cannot be found, or too short to measure, are left out with the reason
    (tmp_path / "short").mkdir()
    _talking_video(tmp_path / "short" / "b.mp4", 1000003, heldout_speech(0.4, seed=1))
    unusable = tmp_path / "unusable"
    prepare_dataset(tmp_path / "one", unusable, size=64, detector="none", on_no_face="center")
    prepare_dataset(tmp_path / "short", tmp_path / "short_prepared", size=64, margin=0.3)
    with pytest.raises(ValueError, match="a.mp4: no face landmarks were found, so the mouth cannot be measured"):
        evaluate_videos(unusable, bundle)
    with pytest.raises(ValueError, match="b.mp4: 10 frames; the lip-sync measure needs 16"):
        evaluate_videos(tmp_path / "short_prepared", bundle)
    with pytest.raises(ValueError, match="max_clips must be a positive integer"):
        evaluate_videos(prepared, bundle, max_clips=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1 .*, got 0"):
        evaluate_videos(prepared, bundle, steps=0)


def test_evaluate_videos_crops_with_the_margin_the_checkpoint_records(bundle, tmp_path, monkeypatch):
    """A folder of videos is face-cropped as the pipeline frames a portrait: with the margin the checkpoint's
    training frames had, else the one default; --margin / margin= still choose another."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from letstalk_core.evaluation import real
    from letstalk_core.framing import DEFAULT_CROP_MARGIN

    with safe_open(str(bundle), framework="pt") as stored:
        metadata, tensors = dict(stored.metadata()), {key: stored.get_tensor(key) for key in stored.keys()}
    training = json.loads(metadata.get("training", "{}"))
    assert "crop_margin" not in training  # the tiny bundle records none: the default applies to it
    metadata["training"] = json.dumps({**training, "crop_margin": 0.2})  # as training on `prepare --margin 0.2`
    recorded = tmp_path / "trained_on_margin_0.2.safetensors"
    save_file(tensors, str(recorded), metadata=metadata)

    margins = []

    def crop_nothing(folder, size, *, margin, **kwargs):  # stands in for the face crop of the videos
        margins.append(margin)
        return [], [("a.mp4", "stopped by the test after the crop margin was chosen")]

    monkeypatch.setattr(real, "load_real_clips", crop_nothing)
    videos = tmp_path / "videos"
    videos.mkdir()
    for checkpoint, margin in ((recorded, None), (bundle, None), (recorded, 0.4)):
        with pytest.raises(ValueError, match="stopped by the test"):
            evaluate_videos(videos, checkpoint, margin=margin)
    assert margins == [0.2, DEFAULT_CROP_MARGIN, 0.4]
    for extra in ([], ["--margin", "0.35"]):
        assert main(["evaluate", "--checkpoint", str(recorded), "--videos", str(videos), "--no-progress", *extra]) == 2
    assert margins[3:] == [0.2, 0.35]


def test_evaluate_without_videos_refuses_a_model_trained_on_real_footage(capsys):
    """`evaluate` alone used to score the real-face demo model on synthetic cartoon faces it never saw."""
    from letstalk_core.checkpoints import load_checkpoint
    from letstalk_core.shipped import CARTOON_CHECKPOINT, DEMO_CHECKPOINT

    assert load_checkpoint(DEMO_CHECKPOINT).trained_on_real_footage is True  # recorded by its crop margin
    assert load_checkpoint(CARTOON_CHECKPOINT).trained_on_real_footage is False
    assert main(["evaluate", "--no-progress", "--identities", "1", "--drift-seconds", "0"]) == 2
    error = capsys.readouterr().err
    assert "trained on real footage" in error and "evaluate --videos FOLDER" in error
