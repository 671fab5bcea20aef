"""One audio normaliser (letstalk_core.sound): the speech input, the mp4 writer, the video reader and the
synthetic animator read the same input the same way, and refuse the same bad input with the same words."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from letstalk_core.audio import load_audio
from letstalk_core.sound import mix_and_resample, read_sound
from letstalk_core.training.synthetic import mouth_opening_from_audio
from letstalk_core.video import Mp4Writer, decode_audio
from tests.helpers import write_mp4

SR = 16000


def _stereo(seconds=1.0, rate=SR):
    t = np.arange(int(seconds * rate)) / rate
    left = 0.4 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    right = 0.2 * np.sin(2 * np.pi * 330 * t)
    return np.stack([left, right]).astype(np.float32)  # [C, T]


def _frames(count):
    return np.zeros((count, 32, 32, 3), np.uint8)


def test_every_layout_of_the_same_sound_reads_the_same(tmp_path):
    channels_first = _stereo()
    pcm = np.round(channels_first * 32767).astype(np.int16)
    wav_path = tmp_path / "speech.wav"
    with wave.open(str(wav_path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(SR)
        wav.writeframes(np.ascontiguousarray(pcm.T).tobytes())  # interleaved
    expected = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    inputs = {
        "[C, T] float": (channels_first, SR),
        "[T, C] float": (channels_first.T.copy(), SR),
        "[C, T] int16": (pcm, SR),
        "[T, C] torch int16": (torch.from_numpy(pcm.T.copy()), SR),
        "[1, C, T] tensor": (torch.from_numpy(channels_first)[None], SR),
        "ComfyUI AUDIO": ({"waveform": torch.from_numpy(channels_first)[None], "sample_rate": SR}, None),
        "(array, rate)": ((channels_first, SR), None),
        "wav file": (wav_path, None),
    }
    for label, (audio, rate) in inputs.items():
        sound = read_sound(audio, rate)
        assert sound.samples.dtype == torch.float32 and sound.sample_rate == SR, label
        assert sound.samples.shape == (2, SR), label
        torch.testing.assert_close(sound.samples, expected, atol=1.0 / 32768 + 1e-6, rtol=0, msg=label)

    # the four readers of the package agree on the mono mix of the same input
    mono = expected.mean(0)
    torch.testing.assert_close(load_audio(pcm, SR).samples, mono, atol=1e-4, rtol=0)
    torch.testing.assert_close(load_audio(wav_path).samples, mono, atol=1e-4, rtol=0)
    decoded, rate = decode_audio(wav_path, mono=True)
    assert rate == SR
    torch.testing.assert_close(torch.from_numpy(decoded[:, 0]), mono, atol=1e-4, rtol=0)
    np.testing.assert_allclose(mouth_opening_from_audio(pcm, SR, 25), mouth_opening_from_audio(wav_path, None, 25),
                               atol=1e-4)
    np.testing.assert_allclose(mouth_opening_from_audio(pcm, SR, 25),
                               mouth_opening_from_audio(channels_first.T.copy(), SR, 25), atol=1e-3)
    # the mp4 writer takes int16 PCM and a ComfyUI AUDIO dict like the rest, and keeps both channels
    made = write_mp4(tmp_path / "int16.mp4", _frames(25), fps=25, audio=pcm, sample_rate=SR)
    assert decode_audio(made)[0].shape[1] == 2
    comfy = {"waveform": torch.from_numpy(channels_first)[None], "sample_rate": SR}
    assert decode_audio(write_mp4(tmp_path / "dict.mp4", _frames(25), fps=25, audio=comfy))[0].shape[1] == 2


def test_mix_and_resample_is_the_mean_then_the_sinc_resampler():
    samples = torch.from_numpy(_stereo(1.0, 22050))
    mixed, rate = mix_and_resample(samples, 22050)
    assert rate == 22050 and torch.equal(mixed, samples.mean(0, keepdim=True))
    resampled, rate = mix_and_resample(samples, 22050, SR, mono=False)
    assert rate == SR and resampled.shape == (2, SR)


@pytest.mark.parametrize("audio, rate, message", [
    (np.zeros((10, 2000), np.float32), SR, r"at most 8 channels"),
    (np.zeros((4, 4), np.float32), SR, r"at most 8 channels, fewer than its samples"),
    (np.zeros((2, 3, 100), np.float32), SR, r"shape \(2, 3, 100\)"),
    (np.zeros(100, np.uint8), SR, r"dtype torch.uint8; accepted: float samples in -1..1 or int16/int32 PCM"),
    (np.zeros(100, np.complex64), SR, r"dtype torch.complex64"),
    (np.zeros(100, np.float32), None, r"without its sample_rate"),
    (np.zeros(100, np.float32), 16000.0, r"sample_rate must be an integer number of Hz"),
    (np.zeros(100, np.float32), True, r"sample_rate must be an integer number of Hz"),
    (np.zeros(100, np.float32), 500, r"sample_rate 500 is outside 1000..384000 Hz"),
    (np.zeros(0, np.float32), SR, r"empty \(0 samples\)"),
    (np.array([0.0, np.nan, 0.0], np.float32), SR, r"1 NaN/inf samples of 3"),
    ({"waveform": torch.zeros(2, 1, 100), "sample_rate": SR}, None, r"batch of 2 clips"),
    ({"waveform": torch.zeros(1, 100)}, None, r"lacks \['sample_rate'\]"),
    ([0.0, 0.1], SR, r"unsupported input of type list"),
])
def test_bad_audio_is_refused_the_same_way_by_every_reader(tmp_path, audio, rate, message):
    error = TypeError if isinstance(audio, list) else ValueError
    with pytest.raises(error, match=message):
        read_sound(audio, rate)
    with pytest.raises(error, match=message):
        load_audio(audio, rate)
    with pytest.raises(error, match=message):
        Mp4Writer(tmp_path / "never.mp4", 25, audio=audio, sample_rate=rate)
    with pytest.raises(error, match=message):
        mouth_opening_from_audio(audio, rate, 25)
    assert list(tmp_path.iterdir()) == []


def test_a_file_with_a_sample_rate_is_refused_and_names_the_file(tmp_path):
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SR)
        wav.writeframes(np.zeros(SR, np.int16).tobytes())
    with pytest.raises(ValueError, match=r"audio file '.*speech\.wav': a file's sample rate comes from the file"):
        read_sound(path, SR)
    with pytest.raises(FileNotFoundError, match=r"missing\.wav' does not exist"):
        read_sound(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="is a folder"):
        read_sound(tmp_path)
