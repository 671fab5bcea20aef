"""Streaming mp4 writer, audio muxing and the ffmpeg-based reader."""

import os
import wave
from fractions import Fraction

import numpy as np
import pytest
import torch

from letstalk_core.audio import load_audio
from tests.helpers import write_mp4
from letstalk_core.video import (
    Mp4Writer,
    as_fps,
    decode_audio,
    frame_count,
    iter_video_frames,
    probe,
    read_video_frames,
)


def _frames(count, height=32, width=48, seed=0):
    """Smooth coloured frames whose mean brightness encodes the frame index."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=(1, 1, 1, 3))
    ramp = np.linspace(0, 40, width)[None, None, :, None]
    index = (np.arange(count) % 8 * 6)[:, None, None, None]
    rows = np.linspace(0, 30, height)[None, :, None, None]
    return np.clip(base + ramp + rows + index, 0, 255).astype(np.uint8)  # [N, H, W, 3]


def _tone(seconds, sample_rate=16000, channels=1):
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    mono = 0.3 * np.sin(2 * np.pi * 330 * t).astype(np.float32)  # [S]
    return mono if channels == 1 else np.stack([mono, 0.5 * mono])  # [C, S]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_fps_parsing_is_exact():
    assert as_fps(25) == 25
    assert as_fps(29.97) == Fraction(30000, 1001)
    assert as_fps("29.97") == Fraction(30000, 1001)
    assert as_fps("30000/1001") == Fraction(30000, 1001)
    assert as_fps(23.976) == Fraction(24000, 1001)
    assert as_fps(12.5) == Fraction(25, 2)
    assert frame_count(32000, 16000, 25) == 50
    assert frame_count(32160, 16000, 25) == 51
    assert frame_count(16000, 16000, "30000/1001") == 30
    assert frame_count(4 * 44100, 44100, 25) == 100  # exact: no float round-off up to 101
    for bad in ((-1, 16000), (1.5, 16000), (100, 0), (100, 16000.0)):
        with pytest.raises(ValueError):
            frame_count(*bad, 25)
    for bad in (0, -5, "fast", float("nan")):
        with pytest.raises(ValueError):
            as_fps(bad)


@pytest.mark.parametrize(
    "fps, frame_count, audio_seconds",
    [(25, 50, 2.0), (25, 13, 3.0), (30, 37, 0.5), ("29.97", 61, 2.5), (29.97, 30, 1.0)],
)
def test_frame_count_and_av_durations_agree(tmp_path, fps, frame_count, audio_seconds):
    out = tmp_path / "clip.mp4"
    frames = _frames(frame_count)
    with Mp4Writer(out, fps, audio=_tone(audio_seconds), sample_rate=16000, preset="ultrafast") as writer:
        writer.write(frames)
    info = probe(out)
    fps_exact = as_fps(fps)
    assert info.frame_count == frame_count
    assert info.fps == fps_exact
    assert (info.width, info.height) == (48, 32)
    assert info.has_audio and info.audio_sample_rate == 16000 and info.audio_channels == 1
    assert info.duration == pytest.approx(frame_count / float(fps_exact))
    # audio trimmed or padded to the video: within one frame (in fact within a few samples)
    assert abs(info.audio_duration - info.duration) < 1.0 / float(fps_exact)
    assert abs(info.audio_duration - info.duration) < 0.002
    assert _leftovers(tmp_path) == ["clip.mp4"]


def test_streaming_chunks_keep_every_frame_in_order(tmp_path):
    out = tmp_path / "stream.mp4"
    frames = _frames(23, seed=3)
    with Mp4Writer(out, 25, crf=0, preset="ultrafast") as writer:
        writer.write(frames[:5])
        writer.write(frames[5])  # one [H, W, 3] frame
        writer.write(frames[6:17])
        writer.write(torch.from_numpy(frames[17:]).float() / 255.0)  # float torch chunk 0..1
    assert writer.frame_count == 23
    decoded = read_video_frames(out)  # [N, H, W, 3]
    assert decoded.shape == (23, 32, 48, 3) and decoded.dtype == np.uint8
    # yuv420p loses a little colour, but the per-frame brightness pattern must survive in order
    error = np.abs(decoded.astype(np.float32) - frames.astype(np.float32)).mean()
    assert error < 4.0
    means = decoded.reshape(23, -1).mean(1)
    expected = frames.reshape(23, -1).mean(1)
    assert np.corrcoef(means, expected)[0, 1] > 0.99
    chunks = list(iter_video_frames(out, chunk_size=10))
    assert [c.shape[0] for c in chunks] == [10, 10, 3]
    info = probe(out)
    assert not info.has_audio and info.audio_duration is None


def test_odd_sizes_are_padded_to_even(tmp_path):
    out = write_mp4(tmp_path / "odd.mp4", _frames(4, height=31, width=47), fps=25)
    info = probe(out)
    assert (info.height, info.width) == (32, 48)
    decoded = read_video_frames(out)
    # the padded row/column repeats the edge pixels
    assert np.abs(decoded[:, -1].astype(int) - decoded[:, -2].astype(int)).mean() < 3


def test_audio_given_at_close_stereo_and_from_file(tmp_path):
    first = tmp_path / "first.mp4"
    with Mp4Writer(first, 25, preset="ultrafast") as writer:
        writer.write(_frames(40))
        writer.close(audio=torch.from_numpy(_tone(0.9, 22050, channels=2)), sample_rate=22050)
    info = probe(first)
    assert info.audio_channels == 2 and info.audio_sample_rate == 22050
    assert abs(info.audio_duration - 1.6) < 0.002  # padded with silence from 0.9 s to 1.6 s
    samples, rate = decode_audio(first)
    assert samples.shape[1] == 2 and rate == 22050
    tail = samples[int(1.0 * rate):]
    assert np.abs(tail).max() < 0.02  # the padding is silent
    assert np.abs(samples[: int(0.8 * rate)]).max() > 0.2

    # a rate AAC does not have is resampled, the duration still matches
    odd_rate = write_mp4(tmp_path / "odd_rate.mp4", _frames(25), fps=25, audio=_tone(1.0, 10000), sample_rate=10000)
    info = probe(odd_rate)
    assert info.audio_sample_rate == 48000 and abs(info.audio_duration - 1.0) < 0.002
    odd_rate.unlink()

    # an audio file path as the source; longer than the video, so trimmed
    wav_path = tmp_path / "speech.wav"
    pcm = (_tone(3.0) * 32767).astype(np.int16)
    with wave.open(str(wav_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm.tobytes())
    second = write_mp4(tmp_path / "second.mp4", _frames(30), fps=30, audio=wav_path, preset="ultrafast")
    info = probe(second)
    assert info.frame_count == 30 and abs(info.audio_duration - 1.0) < 0.002
    assert sorted(_leftovers(tmp_path)) == ["first.mp4", "second.mp4", "speech.wav"]


def test_exception_inside_context_leaves_nothing(tmp_path):
    out = tmp_path / "cancelled.mp4"
    with pytest.raises(KeyboardInterrupt):
        with Mp4Writer(out, 25, audio=_tone(1.0), sample_rate=16000) as writer:
            writer.write(_frames(10))
            raise KeyboardInterrupt
    assert _leftovers(tmp_path) == []


def test_abort_leaves_nothing_and_keeps_an_existing_file(tmp_path):
    out = tmp_path / "video.mp4"
    out.write_bytes(b"previous result")
    writer = Mp4Writer(out, 25)
    writer.write(_frames(8))
    writer.abort()
    assert _leftovers(tmp_path) == ["video.mp4"]
    assert out.read_bytes() == b"previous result"
    with pytest.raises(RuntimeError, match="aborted"):
        writer.write(_frames(1))


def test_failed_close_leaves_nothing(tmp_path):
    out = tmp_path / "empty.mp4"
    writer = Mp4Writer(out, 25)
    with pytest.raises(ValueError, match="no frames"):
        writer.close()
    assert _leftovers(tmp_path) == []


def test_output_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        Mp4Writer(tmp_path / "missing" / "out.mp4", 25)
    with pytest.raises(ValueError, match=r"\.avi"):
        Mp4Writer(tmp_path / "out.avi", 25)
    if os.geteuid() != 0:  # root may write anywhere, so the check cannot trigger there
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match="not writable"):
                Mp4Writer(locked / "out.mp4", 25)
        finally:
            locked.chmod(0o700)


def test_output_path_not_writable_is_refused(tmp_path, monkeypatch):
    # os.access is the writer's writability check; simulate a read-only folder for root too
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    with pytest.raises(PermissionError, match="not writable"):
        Mp4Writer(tmp_path / "out.mp4", 25)


def test_frame_errors_name_the_problem(tmp_path):
    with Mp4Writer(tmp_path / "a.mp4", 25) as writer:
        with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
            writer.write(np.zeros((2, 3, 32, 48), np.uint8))  # channels first
        with pytest.raises(ValueError, match="dtype int64"):
            writer.write(np.zeros((2, 32, 48, 3), np.int64))
        with pytest.raises(ValueError, match="torch dtype torch.int32"):
            writer.write(torch.zeros(2, 32, 48, 3, dtype=torch.int32))
        with pytest.raises(ValueError, match="NaN"):
            writer.write(np.full((1, 32, 48, 3), np.nan, np.float32))
        with pytest.raises(TypeError, match="list"):
            writer.write([[0, 0, 0]])
        writer.write(_frames(3))
        with pytest.raises(ValueError, match="frame size changed mid-stream"):
            writer.write(_frames(1, height=40, width=48))
    assert probe(tmp_path / "a.mp4").frame_count == 3


def test_audio_errors(tmp_path):
    with pytest.raises(ValueError, match="sample_rate"):
        Mp4Writer(tmp_path / "a.mp4", 25, audio=_tone(1.0))
    with pytest.raises(ValueError, match="shape"):
        Mp4Writer(tmp_path / "a.mp4", 25, audio=np.zeros((2, 3, 100), np.float32), sample_rate=16000)
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        Mp4Writer(tmp_path / "a.mp4", 25, audio=np.zeros(100, np.uint8), sample_rate=16000)
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        Mp4Writer(tmp_path / "a.mp4", 25, audio=tmp_path / "nope.wav")
    assert _leftovers(tmp_path) == []


def test_decode_audio_resamples_mixes_down_and_refuses_a_silent_video(tmp_path):
    stereo = write_mp4(tmp_path / "stereo.mp4", _frames(25), fps=25, audio=_tone(1.0, 22050, channels=2),
                       sample_rate=22050)
    samples, rate = decode_audio(stereo, 16000, mono=True)
    assert rate == 16000 and samples.shape[1] == 1 and samples.dtype == np.float32
    assert abs(samples.shape[0] - 16000) <= 1100  # one second, give or take AAC's padding
    native, native_rate = decode_audio(stereo)
    assert native_rate == 22050 and native.shape[1] == 2
    # the mixdown is the mean of the channels (0.3 and 0.15 amplitude), as for speech input
    assert abs(np.abs(samples[2000:14000]).max() - 0.225) < 0.02
    np.testing.assert_allclose(samples[:, 0], load_audio(stereo).samples.numpy(), atol=1e-6)

    silent = write_mp4(tmp_path / "silent.mp4", _frames(25), fps=25)
    with pytest.raises(ValueError, match=r"silent\.mp4.*no audio track"):
        decode_audio(silent)
    with pytest.raises(ValueError, match="sample_rate must be a positive int"):
        decode_audio(stereo, 0)
