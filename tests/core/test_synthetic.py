"""The synthetic talking-face world: renderer, animator, espeak-ng speech, dataset writer, splits."""

import json
import shutil

import numpy as np
import pytest

from letstalk_core.training.synthetic import (
    HELDOUT_IDENTITY_START,
    HELDOUT_SENTENCES,
    TRAIN_SENTENCES,
    EspeakNotFoundError,
    FacePose,
    SpeechStyle,
    animate_face,
    audio_frame_features,
    generate_dataset,
    generate_talking_video,
    identity_split,
    make_speech_track,
    mouth_box,
    mouth_opening_from_audio,
    mouth_width_from_audio,
    random_sentence,
    render_face,
    sample_identity,
    sample_identity_seeds,
    sentence_split,
    synthesize_speech,
)
from letstalk_core.video import decode_audio, probe, read_video_frames

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng); synthetic speech cannot be made",
)

SR = 16000


def _bursts(pattern, sample_rate=SR, seed=0):
    """Audio made of (seconds, amplitude, tone_hz) pieces; amplitude 0 is digital silence."""
    rng = np.random.default_rng(seed)
    pieces = []
    for seconds, amplitude, tone in pattern:
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        if tone is None:
            wave = rng.normal(0, 0.5, t.shape)  # noise
        else:
            wave = np.sin(2 * np.pi * tone * t) + 0.3 * np.sin(2 * np.pi * 2 * tone * t)
        pieces.append((amplitude * wave).astype(np.float32))
    return np.concatenate(pieces)  # [S]


def _interior_pixels(frames):
    """Pixels of the mouth interior colour (dark red, as drawn by the renderer) per frame."""
    distance = np.linalg.norm(np.asarray(frames, np.float32) - np.array([70, 22, 30], np.float32), axis=-1)
    return (distance < 15).sum(axis=(-2, -1))


# ----- renderer --------------------------------------------------------------------------


def test_renderer_is_deterministic_and_identities_differ():
    pose = FacePose(mouth_open=0.3, blink=0.2, head_dx=0.01, head_roll=0.05)
    first = render_face(sample_identity(7), pose, 96)
    again = render_face(sample_identity(7), pose, 96)
    assert first.shape == (96, 96, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    others = [render_face(sample_identity(seed), pose, 96) for seed in (8, 9, 1_000_123)]
    for other in others:
        assert np.abs(first.astype(int) - other.astype(int)).mean() > 8.0
    identities = [sample_identity(seed) for seed in range(40)]
    assert len({i.skin for i in identities}) == 40
    assert len({i.hair_style for i in identities}) >= 5
    assert len({i.background_top for i in identities}) == 40


def test_mouth_pixels_follow_mouth_opening_and_nothing_else():
    identity = sample_identity(3)
    size = 128
    closed = render_face(identity, FacePose(mouth_open=0.0), size).astype(int)
    half = render_face(identity, FacePose(mouth_open=0.5), size).astype(int)
    wide = render_face(identity, FacePose(mouth_open=1.0), size).astype(int)
    top, bottom, left, right = mouth_box(identity, size)
    inside = np.zeros((size, size), bool)
    inside[top:bottom, left:right] = True
    change_half = np.abs(half - closed).sum(-1)
    change_wide = np.abs(wide - closed).sum(-1)
    assert change_wide[inside].mean() > 25
    assert (change_wide[inside] > 30).sum() > (change_half[inside] > 30).sum() * 1.3 > 0
    assert change_wide[~inside].max() == 0 and change_half[~inside].max() == 0  # nothing else moves
    # an open mouth shows its interior, more of it the wider it opens
    assert 0 == _interior_pixels(closed) < _interior_pixels(half) < _interior_pixels(wide)


def test_blink_and_head_motion_change_the_right_places():
    identity = sample_identity(11)
    size = 128
    open_eyes = render_face(identity, FacePose(blink=0.0), size).astype(int)
    closed_eyes = render_face(identity, FacePose(blink=1.0), size).astype(int)
    changed = np.abs(open_eyes - closed_eyes).sum(-1) > 30
    rows = np.nonzero(changed.any(1))[0]
    eye_row = (identity.head_y + identity.eye_y) * size
    assert changed.sum() > 20
    assert abs(rows.mean() - eye_row) < 0.06 * size  # only around the eyes
    moved = render_face(identity, FacePose(head_dx=0.05), size).astype(int)
    column_mass = lambda img: (np.abs(img - open_eyes[:1, :1]).sum(-1) * np.arange(size)[None]).sum()
    assert column_mass(moved) > column_mass(open_eyes)  # the head moved to the right


def test_renderer_rejects_bad_inputs():
    with pytest.raises(ValueError, match="mouth_open"):
        FacePose(mouth_open=1.5)
    with pytest.raises(ValueError, match="head_roll"):
        FacePose(head_roll=2.0)
    with pytest.raises(ValueError, match="identity seed"):
        sample_identity(-1)
    with pytest.raises(ValueError, match="size"):
        render_face(sample_identity(0), FacePose(), 8)
    with pytest.raises(TypeError, match="FaceIdentity"):
        render_face(0, FacePose(), 64)


# ----- animator --------------------------------------------------------------------------


def test_mouth_opening_follows_energy_and_silence_closes():
    # 0.6 s silence, loud, quiet, silence, medium, silence
    pattern = [(0.6, 0, 200), (0.8, 0.5, 220), (0.6, 0.12, 220), (0.8, 0, 200), (0.6, 0.3, 300), (0.6, 0, 200)]
    audio = _bursts(pattern)
    opening = mouth_opening_from_audio(audio, SR, fps=25)
    rms, _ = audio_frame_features(audio, SR, fps=25)
    assert opening.shape == (int(np.ceil(audio.shape[0] / SR * 25)),)
    assert 0.0 <= opening.min() and opening.max() <= 1.0
    assert np.corrcoef(opening, rms)[0, 1] > 0.9
    # silence (away from the edges of the bursts) gives a closed mouth
    assert np.all(opening[:12] == 0.0)
    assert np.all(opening[52:68] == 0.0)  # 2.1 s .. 2.7 s
    assert np.all(opening[-12:] == 0.0)
    loud, quiet, medium = opening[18:32].mean(), opening[38:48].mean(), opening[73:83].mean()
    assert loud > medium > quiet > 0.05
    assert loud > 0.85
    # scaling the whole recording does not change the ground truth
    np.testing.assert_allclose(mouth_opening_from_audio(audio * 0.3, SR, fps=25), opening, atol=1e-6)
    # frame counts for other rates: ceil(seconds * fps)
    assert mouth_opening_from_audio(audio, SR, fps=29.97).shape == (int(np.ceil(4.0 * 30000 / 1001)),)
    assert mouth_opening_from_audio(np.zeros(SR, np.float32), SR).max() == 0.0


def test_mouth_shape_from_spectrum():
    dark = _bursts([(1.0, 0.4, 250)])
    bright = _bursts([(1.0, 0.4, None)])  # white noise: high spectral centroid
    assert mouth_width_from_audio(dark, SR)[5:-5].mean() < 0.4
    assert mouth_width_from_audio(bright, SR)[5:-5].mean() > 0.75


def test_animator_blinks_moves_smoothly_and_is_deterministic():
    audio = _bursts([(2.0, 0.4, 220), (1.0, 0, 200), (7.0, 0.3, 180)])
    motion = animate_face(audio, SR, fps=25, seed=5)
    assert len(motion) == 250
    starts = np.nonzero((motion.blink[1:] > 0.5) & (motion.blink[:-1] <= 0.5))[0]
    assert len(starts) >= 2  # several blinks in 10 s
    assert motion.blink.max() == 1.0 and (motion.blink == 0).mean() > 0.7
    for curve, limit in ((motion.head_dx, 0.05), (motion.head_dy, 0.05), (motion.head_roll, 0.15)):
        assert np.abs(curve).max() <= limit
        assert np.abs(np.diff(curve)).max() < limit / 5  # smooth
        assert curve.std() > 0  # but moving
    same = animate_face(audio, SR, fps=25, seed=5)
    np.testing.assert_array_equal(same.blink, motion.blink)
    np.testing.assert_array_equal(same.head_roll, motion.head_roll)
    other = animate_face(audio, SR, fps=25, seed=6)
    assert not np.array_equal(other.blink, motion.blink)
    np.testing.assert_array_equal(other.mouth_open, motion.mouth_open)  # the mouth depends on audio only
    pose = motion.pose(10)
    assert pose.mouth_open == pytest.approx(motion.mouth_open[10])
    with pytest.raises(IndexError):
        motion.pose(250)


def test_animator_rejects_bad_audio():
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        mouth_opening_from_audio(np.zeros(1000, np.uint8), SR)
    with pytest.raises(ValueError, match="sample_rate"):
        mouth_opening_from_audio(np.zeros(1000, np.float32), 0)
    with pytest.raises(ValueError, match="shape"):
        mouth_opening_from_audio(np.zeros((20, 30, 2), np.float32), SR)


# ----- speech -----------------------------------------------------------------------------


@needs_espeak
def test_espeak_speech_is_16khz_and_not_silent():
    audio = synthesize_speech("The quick brown fox jumps over the lazy dog.", SpeechStyle("en-gb", "f2", 170, 60))
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = audio.shape[0] / 16000
    assert 1.0 < seconds < 6.0
    assert np.sqrt((audio**2).mean()) > 0.02
    opening = mouth_opening_from_audio(audio, 16000)
    assert (opening > 0.3).mean() > 0.25  # the mouth moves during speech
    slow = synthesize_speech("The quick brown fox jumps over the lazy dog.", SpeechStyle("en-gb", "f2", 110, 60))
    assert slow.shape[0] > audio.shape[0] * 1.2
    other = synthesize_speech("The quick brown fox jumps over the lazy dog.", SpeechStyle("en-us", "m3", 170, 30))
    assert other.shape != audio.shape or not np.allclose(other, audio)
    with pytest.raises(ValueError, match="text"):
        synthesize_speech("  ")


def test_missing_espeak_gives_install_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no espeak-ng on PATH
    with pytest.raises(EspeakNotFoundError, match="apt-get install espeak-ng"):
        synthesize_speech("hello")


@needs_espeak
def test_speech_track_has_exact_length_and_right_sentences():
    track = make_speech_track(3.0, seed=4, split="train")
    assert track.audio.shape == (48000,) and track.sample_rate == 16000
    assert all(sentence_split(s) == "train" for s in track.sentences)
    assert track.audio[:1600].max() == 0.0  # starts with silence
    heldout = make_speech_track(2.5, seed=4, split="heldout")
    assert all(s in HELDOUT_SENTENCES for s in heldout.sentences)
    again = make_speech_track(3.0, seed=4, split="train")
    np.testing.assert_array_equal(again.audio, track.audio)
    with pytest.raises(ValueError, match="do not belong"):
        make_speech_track(2.0, seed=0, split="train", sentences=[HELDOUT_SENTENCES[0]])


def test_sentence_splits_are_disjoint():
    assert not {s.lower() for s in TRAIN_SENTENCES} & {s.lower() for s in HELDOUT_SENTENCES}
    rng = np.random.default_rng(0)
    generated = {random_sentence(rng) for _ in range(300)}
    assert len(generated) > 250  # varied
    assert all(sentence_split(s) == "train" for s in generated)
    assert all(sentence_split(s) == "heldout" for s in HELDOUT_SENTENCES)


# ----- dataset ----------------------------------------------------------------------------


def test_identity_splits_are_disjoint():
    train = sample_identity_seeds("train", 500, seed=1)
    heldout = sample_identity_seeds("heldout", 500, seed=1)
    assert len(set(train)) == 500 and len(set(heldout)) == 500
    assert not set(train) & set(heldout)
    assert all(identity_split(s) == "train" for s in train) and max(train) < HELDOUT_IDENTITY_START
    assert all(identity_split(s) == "heldout" for s in heldout) and min(heldout) >= HELDOUT_IDENTITY_START
    assert identity_split(999_999) == "train" and identity_split(1_000_000) == "heldout"
    with pytest.raises(ValueError, match="held-out identities"):
        generate_talking_video("unused.mp4", HELDOUT_IDENTITY_START + 5, split="train")


@needs_espeak
def test_generated_video_has_frames_audio_and_sidecar(tmp_path):
    paths = generate_dataset(tmp_path / "data", num_videos=1, seconds=1.3, fps=25, size=64, split="heldout", seed=2)
    assert [p.name for p in paths] == ["heldout_00000.mp4"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["heldout_00000.json", "heldout_00000.mp4"]
    info = probe(paths[0])
    assert info.frame_count == 33 and (info.width, info.height) == (64, 64)
    assert info.has_audio and abs(info.audio_duration - info.duration) < 1 / 25
    sidecar = json.loads(paths[0].with_suffix(".json").read_text())
    assert sidecar["split"] == "heldout" and sidecar["identity_seed"] >= HELDOUT_IDENTITY_START
    assert sidecar["num_frames"] == 33 and len(sidecar["mouth_open"]) == 33
    assert all(s in HELDOUT_SENTENCES for s in sidecar["sentences"])
    # the stored ground truth is what the public function computes from the video's own audio
    audio, rate = decode_audio(paths[0], 16000, mono=True)
    recomputed = mouth_opening_from_audio(audio[:, 0], rate, fps=25, num_frames=33)
    stored = np.array(sidecar["mouth_open"])
    assert stored.max() > 0.5
    assert np.abs(recomputed - stored).mean() < 0.08
    np.testing.assert_allclose(mouth_opening_from_audio(paths[0], fps=25), recomputed, atol=1e-6)
    # the video shows the identity in the stored poses: re-rendering a frame matches it
    frames = read_video_frames(paths[0]).astype(np.float64)  # [F, H, W, 3]
    identity = sample_identity(sidecar["identity_seed"])
    pose_keys = ("mouth_open", "mouth_width", "blink", "head_dx", "head_dy", "head_roll", "brow_raise")
    for index in (0, int(np.argmax(stored)), 32):
        pose = FacePose(**{key: sidecar[key][index] for key in pose_keys})
        rendered = render_face(identity, pose, 64).astype(np.float64)
        psnr = 10 * np.log10(255.0**2 / ((frames[index] - rendered) ** 2).mean())
        assert psnr > 28, (index, psnr)
    # and the wrong pose does not match as well
    wrong = FacePose(**{key: sidecar[key][0] for key in pose_keys})
    peak = int(np.argmax(stored))
    error_right = ((frames[peak] - render_face(identity, FacePose(**{k: sidecar[k][peak] for k in pose_keys}), 64)) ** 2).mean()
    assert ((frames[peak] - render_face(identity, wrong, 64)) ** 2).mean() > 2 * error_right


@needs_espeak
def test_generated_video_at_ntsc_rate(tmp_path):
    path = tmp_path / "ntsc.mp4"
    sidecar = generate_talking_video(path, identity_seed=42, seconds=1.0, fps=29.97, size=48, seed=3)
    info = probe(path)
    assert sidecar["fps"] == "30000/1001" and sidecar["split"] == "train"
    assert info.frame_count == 30 == sidecar["num_frames"]
    assert abs(info.audio_duration - info.duration) < 1 / 29.97
