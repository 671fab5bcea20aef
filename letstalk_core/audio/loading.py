"""Speech input: ComfyUI AUDIO dicts, audio/video files and arrays -> mono float32 at 16 kHz.

Files are read with soundfile (wav, flac, ogg, aiff, ...) and otherwise decoded with the ffmpeg binary
that ships with imageio-ffmpeg (mp3, m4a/aac, opus, and the audio track of mp4/mov/mkv/webm videos).
Channels are averaged to mono; the rate is changed with torchaudio's band-limited sinc resampler.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from ..files import ffmpeg_exe

TARGET_SAMPLE_RATE = 16_000

# Extensions we know how to read; anything else is still tried with ffmpeg before giving up.
SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".aiff", ".aif"}
FFMPEG_EXTENSIONS = {".mp3", ".m4a", ".aac", ".opus", ".wma", ".mp4", ".mov", ".mkv", ".webm", ".avi"}
ACCEPTED_INPUTS = (
    "a ComfyUI AUDIO dict {'waveform': tensor [B, C, T], 'sample_rate': int}, a path to an audio or video "
    f"file ({', '.join(sorted(SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS))}), or a numpy array / torch tensor "
    "[T], [C, T] or [T, C] together with its sample_rate"
)


@dataclass(frozen=True)
class MonoAudio:
    """Mono speech ready for an audio encoder, and the track it came from (for the video's sound)."""

    samples: torch.Tensor  # [T] float32
    sample_rate: int
    source: str  # what the audio came from, for messages
    track: torch.Tensor | None = None  # [C, T'] float32: the input at its own rate and channels
    track_rate: int | None = None

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def original(self) -> tuple[torch.Tensor, int]:
        """The track as the user gave it, ``([C, T], rate)``: what a made video should sound like.
        The mono samples themselves when no other track was kept."""
        if self.track is None:
            return self.samples[None], self.sample_rate
        return self.track, int(self.track_rate)


def describe_source(audio) -> str:
    if isinstance(audio, (str, Path)):
        return f"audio file '{audio}'"
    if isinstance(audio, dict):
        return "ComfyUI AUDIO input"
    if isinstance(audio, MonoAudio):
        return audio.source
    return f"audio {type(audio).__name__}"


def load_audio(
    audio,
    sample_rate: int | None = None,
    *,
    target_sample_rate: int = TARGET_SAMPLE_RATE,
    loudness_lufs: float | None = None,
) -> MonoAudio:
    """Any accepted speech input -> :class:`MonoAudio` at ``target_sample_rate`` (16 kHz).

    ``audio``: a ComfyUI AUDIO dict, a file path, a ``(array, sample_rate)`` tuple, or an array/tensor
    with ``sample_rate`` given. ``loudness_lufs``: if set (e.g. -23.0), the speech is scaled to that
    integrated loudness (ITU-R BS.1770, ``torchaudio.functional.loudness``) and then, if needed, scaled
    down so no sample exceeds full scale. Silence is valid and returned as zeros.
    """
    if isinstance(audio, MonoAudio):
        source, samples, rate = audio.source, audio.samples[None], audio.sample_rate
        track, track_rate = audio.original()
    elif isinstance(audio, (str, Path)):
        source = describe_source(audio)
        samples, rate = _read_file(Path(audio))
    elif isinstance(audio, dict):
        source = describe_source(audio)
        samples, rate = _from_comfy_dict(audio)
    elif isinstance(audio, tuple) and len(audio) == 2 and sample_rate is None:
        source = f"audio {type(audio[0]).__name__}"
        samples, rate = _channels_first(audio[0], source), _check_rate(audio[1], source)
    elif isinstance(audio, (np.ndarray, torch.Tensor)):
        source = describe_source(audio)
        if sample_rate is None:
            raise ValueError(f"{source} was given without its sample_rate; pass sample_rate=... (e.g. 16000)")
        samples, rate = _channels_first(audio, source), _check_rate(sample_rate, source)
    else:
        raise TypeError(f"Unsupported audio input of type {type(audio).__name__}; expected {ACCEPTED_INPUTS}")

    samples = samples.to(torch.float32)  # [C, T]
    _check_samples(samples, rate, source)
    if not isinstance(audio, MonoAudio):
        track, track_rate = samples, rate  # kept for the video's sound, as given
    mono = samples.mean(dim=0)  # [T]
    if rate != target_sample_rate:
        mono = AF.resample(mono, rate, target_sample_rate)
    if loudness_lufs is not None:
        mono = normalize_loudness(mono, target_sample_rate, loudness_lufs)
    return MonoAudio(samples=mono.contiguous(), sample_rate=target_sample_rate, source=source, track=track,
                     track_rate=track_rate)


def normalize_loudness(samples: torch.Tensor, sample_rate: int, target_lufs: float = -23.0) -> torch.Tensor:
    """Scale mono ``samples [T]`` to ``target_lufs`` integrated loudness, never past full scale.

    Silence and clips too short to measure (under 0.4 s) are returned unchanged.
    """
    if not math.isfinite(target_lufs):
        raise ValueError(f"loudness target must be a finite LUFS value such as -23.0, got {target_lufs!r}")
    if samples.numel() < int(0.4 * sample_rate):
        return samples
    measured = float(AF.loudness(samples[None].to(torch.float32), sample_rate))
    if not math.isfinite(measured):
        return samples
    scaled = samples * (10.0 ** ((target_lufs - measured) / 20.0))
    peak = float(scaled.abs().max())
    return scaled / peak if peak > 1.0 else scaled


def _check_rate(sample_rate, source: str) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"{source}: sample_rate must be a positive integer (e.g. 16000), got {sample_rate!r}")
    return int(sample_rate)


def _channels_first(array, source: str) -> torch.Tensor:
    """[T], [C, T], [T, C] or [1, C, T] -> [C, T]. A 2-D array whose second axis is small (<= 8) and
    shorter than the first is read as [T, C] (the soundfile/numpy layout), otherwise as [C, T]."""
    tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in (torch.int16, torch.int32)):
        raise ValueError(f"{source}: samples must be real floats (or int16/int32 PCM), got dtype {tensor.dtype}")
    if tensor.dtype == torch.int16:
        tensor = tensor.to(torch.float32) / 32768.0
    elif tensor.dtype == torch.int32:
        tensor = tensor.to(torch.float32) / 2147483648.0
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() == 1:
        return tensor[None]  # [1, T]
    if tensor.dim() == 2:
        if tensor.shape[1] <= 8 and tensor.shape[1] < tensor.shape[0]:
            return tensor.T  # [T, C] -> [C, T]
        return tensor
    raise ValueError(f"{source}: expected samples shaped [T], [C, T], [T, C] or [1, C, T], got {tuple(tensor.shape)}")


def _from_comfy_dict(audio: dict) -> tuple[torch.Tensor, int]:
    source = "ComfyUI AUDIO input"
    missing = {"waveform", "sample_rate"} - set(audio)
    if missing:
        raise ValueError(f"{source} lacks {sorted(missing)}; expected {{'waveform': [B, C, T], 'sample_rate': int}}")
    waveform = audio["waveform"]
    if not isinstance(waveform, torch.Tensor) or waveform.dim() != 3:
        shape = tuple(waveform.shape) if hasattr(waveform, "shape") else type(waveform).__name__
        raise ValueError(f"{source}: 'waveform' must be a tensor [B, C, T], got {shape}")
    if waveform.shape[0] != 1:
        raise ValueError(
            f"{source} holds a batch of {waveform.shape[0]} clips; LetsTalk takes one speech track, pass a batch of 1"
        )
    return waveform[0].detach().cpu(), _check_rate(audio["sample_rate"], source)


def _check_samples(samples: torch.Tensor, sample_rate: int, source: str) -> None:
    if samples.shape[-1] == 0:
        raise ValueError(f"{source} is empty (0 samples); give at least one video frame of speech")
    finite = torch.isfinite(samples)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = int((~finite).flatten().nonzero()[0]) % samples.shape[-1]
        raise ValueError(
            f"{source} has {bad} NaN/inf samples of {samples.numel()} (first at {first / sample_rate:.3f} s); "
            "audio must be finite (silence is fine)"
        )


def _read_file(path: Path) -> tuple[torch.Tensor, int]:
    source = f"audio file '{path}'"
    if not path.exists():
        raise FileNotFoundError(f"{source} does not exist")
    if path.is_dir():
        raise ValueError(f"{source} is a folder; give an audio or video file")
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        import soundfile

        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [T, C]
            return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)
        except (soundfile.LibsndfileError, RuntimeError):
            pass  # a mislabelled file: let ffmpeg try
    return decode_with_ffmpeg(path, source)


def decode_with_ffmpeg(path: Path, source: str | None = None) -> tuple[torch.Tensor, int]:
    """Decode the first audio track with ffmpeg to float WAV on a pipe -> ``(samples [C, T], rate)``,
    keeping rate and channels, so that down-mixing and resampling are the same (ours) for every input.
    The one ffmpeg audio decoder of the project: speech input, video reading and training data."""
    source = source or f"audio file '{path}'"
    command = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn",
               "-map_metadata", "-1", "-fflags", "+bitexact", "-acodec", "pcm_f32le", "-f", "wav", "-"]
    decoded = subprocess.run(command, capture_output=True)
    message = decoded.stderr.decode(errors="replace").strip()
    if decoded.returncode != 0 or not decoded.stdout:
        if "matches no streams" in message:
            raise ValueError(f"{source} has no audio track; give a file with speech")
        raise ValueError(
            f"{source} is not a readable audio or video file (unknown format): {message[-300:]}; accepted: {ACCEPTED_INPUTS}"
        )
    return _parse_float_wav(decoded.stdout, source)


def _parse_float_wav(data: bytes, source: str) -> tuple[torch.Tensor, int]:
    """RIFF/WAVE bytes with float32 samples (as ffmpeg streams them, sizes possibly unset) -> [C, T], rate."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{source}: ffmpeg did not return WAV data")
    position, channels, rate = 12, None, None
    while position + 8 <= len(data):
        chunk, size = data[position : position + 4], int.from_bytes(data[position + 4 : position + 8], "little")
        if chunk == b"fmt ":
            channels = int.from_bytes(data[position + 10 : position + 12], "little")
            rate = int.from_bytes(data[position + 12 : position + 16], "little")
        elif chunk == b"data":
            if not channels or not rate:
                break
            payload = data[position + 8 :]
            usable = len(payload) - len(payload) % (4 * channels)
            samples = np.frombuffer(payload[:usable], dtype="<f4").reshape(-1, channels).T.copy()  # [C, T]
            return torch.from_numpy(samples), rate
        position += 8 + size + (size & 1)
    raise ValueError(f"{source}: could not find the audio format and samples in ffmpeg's output")
