"""Reading videos back: frames, stream facts and the audio track, all through ffmpeg.

Only the ffmpeg binary that imageio-ffmpeg ships is used (no ffprobe): stream facts come
from the header ffmpeg prints for ``ffmpeg -i``, the frame count from
``imageio_ffmpeg.count_frames_and_secs``, the audio duration from decoding the track to
raw PCM and counting samples.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from ..files import ffmpeg_exe
from ..sound import mix_and_resample, read_sound
from .timing import as_fps

__all__ = [
    "VideoInfo",
    "probe",
    "read_video_frames",
    "iter_video_frames",
    "decode_audio",
    "stream_header",
]

PathLike = Union[str, os.PathLike]

_VIDEO_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<codec>\w+).*?, (?P<w>\d+)x(?P<h>\d+)")
_FPS_RE = re.compile(r", (?P<fps>[\d.]+(?:k)?) fps")
_TBR_RE = re.compile(r", (?P<tbr>[\d.]+(?:k)?) tbr")
_AUDIO_RE = re.compile(
    r"Stream #\d+:\d+.*?: Audio: (?P<codec>\w+).*?, (?P<rate>\d+) Hz, (?P<layout>[^,]+)"
)
_DURATION_RE = re.compile(r"Duration: (?P<h>\d+):(?P<m>\d+):(?P<s>[\d.]+)")
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6, "7.1": 8}




def _existing_file(path: PathLike, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"{name} {str(file)!r} does not exist")
    if not file.is_file():
        raise IsADirectoryError(f"{name} {str(file)!r} is not a file")
    return file


def stream_header(path: PathLike) -> str:
    """The stream description ffmpeg prints for ``ffmpeg -i path`` (its stderr)."""
    file = _existing_file(path)
    result = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(file)], capture_output=True
    )
    text = result.stderr.decode(errors="replace")
    if "Stream #" not in text:
        raise ValueError(f"{str(file)!r} is not a media file ffmpeg can read:\n{text.strip()}")
    return text


def _parse_rate(text: str) -> float:
    return float(text[:-1]) * 1000 if text.endswith("k") else float(text)


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a video file; durations in seconds."""

    path: Path
    width: int
    height: int
    frame_count: int
    fps: Fraction
    duration: float  # frame_count / fps
    container_duration: Optional[float]
    has_audio: bool
    audio_sample_rate: Optional[int]
    audio_channels: Optional[int]
    audio_duration: Optional[float]  # decoded samples / sample rate

    @property
    def av_offset(self) -> Optional[float]:
        """Audio duration minus video duration (seconds), or None without audio."""
        return None if self.audio_duration is None else self.audio_duration - self.duration


def _audio_stream(header: str):
    match = _AUDIO_RE.search(header)
    if match is None:
        return None
    layout = match.group("layout").strip()
    if layout in _LAYOUT_CHANNELS:
        channels = _LAYOUT_CHANNELS[layout]
    else:
        count = re.match(r"(\d+) channels", layout)
        channels = int(count.group(1)) if count else 2
    return int(match.group("rate")), channels


def probe(path: PathLike, *, decode_audio_track: bool = True) -> VideoInfo:
    """Frame count, fps, durations and audio facts of a video file.

    The frame count is exact (the video stream is decoded); the audio duration is the
    number of decoded samples over the sample rate (skipped when ``decode_audio_track``
    is False).
    """
    import imageio_ffmpeg

    file = _existing_file(path)
    header = stream_header(file)
    video = _VIDEO_RE.search(header)
    if video is None:
        raise ValueError(f"{str(file)!r} has no video stream (ffmpeg found: {_stream_lines(header)})")
    stream_line = header[video.start():].splitlines()[0]
    rate = _FPS_RE.search(stream_line) or _TBR_RE.search(stream_line)
    if rate is None:
        raise ValueError(f"could not read the frame rate of {str(file)!r} from: {stream_line.strip()}")
    fps = as_fps(_parse_rate(rate.group(1)))
    frame_count, _ = imageio_ffmpeg.count_frames_and_secs(str(file))
    duration_match = _DURATION_RE.search(header)
    container_duration = None
    if duration_match:
        container_duration = (
            int(duration_match.group("h")) * 3600 + int(duration_match.group("m")) * 60 + float(duration_match.group("s"))
        )
    audio = _audio_stream(header)
    audio_duration = None
    if audio is not None and decode_audio_track:
        samples, sample_rate = decode_audio(file)
        audio_duration = samples.shape[0] / sample_rate
    return VideoInfo(
        path=file,
        width=int(video.group("w")),
        height=int(video.group("h")),
        frame_count=int(frame_count),
        fps=fps,
        duration=float(frame_count / fps),
        container_duration=container_duration,
        has_audio=audio is not None,
        audio_sample_rate=None if audio is None else audio[0],
        audio_channels=None if audio is None else audio[1],
        audio_duration=audio_duration,
    )


def _stream_lines(header: str) -> str:
    lines = [line.strip() for line in header.splitlines() if "Stream #" in line]
    return "; ".join(lines) if lines else "no streams"


def iter_video_frames(path: PathLike, chunk_size: int = 16, fps=None) -> Iterator[np.ndarray]:
    """Yield the frames of a video as uint8 chunks ``[<=chunk_size, H, W, 3]``; with ``fps``, ffmpeg
    resamples the video to that frame rate first."""
    import imageio_ffmpeg

    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    file = _existing_file(path)
    output_params = None
    if fps is not None:
        rate = as_fps(fps)
        output_params = ["-vf", f"fps={rate.numerator}/{rate.denominator}"]
    reader = imageio_ffmpeg.read_frames(str(file), pix_fmt="rgb24", output_params=output_params)
    try:
        meta = reader.__next__()
        width, height = meta["size"]
        chunk = []
        for raw in reader:
            chunk.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
            if len(chunk) == chunk_size:
                yield np.stack(chunk)  # [chunk_size, H, W, 3]
                chunk = []
        if chunk:
            yield np.stack(chunk)  # [rest, H, W, 3]
    finally:
        reader.close()


def read_video_frames(path: PathLike) -> np.ndarray:
    """All frames of a video as one uint8 array ``[N, H, W, 3]``."""
    chunks = list(iter_video_frames(path, chunk_size=64))
    if not chunks:
        raise ValueError(f"{str(path)!r} contains no decodable video frames")
    return np.concatenate(chunks)  # [N, H, W, 3]


def decode_audio(
    path: PathLike, sample_rate: Optional[int] = None, *, mono: bool = False
) -> tuple[np.ndarray, int]:
    """The first audio stream of any media file as float32 ``[S, C]``, read by the package's one
    audio normaliser and mixed/resampled by its one resampler (:mod:`letstalk_core.sound`, as the
    speech input is), so training data and inference hear the same features.

    Args:
        sample_rate: resample to this rate (torchaudio's band-limited sinc); None keeps the file's rate.
        mono: mix down to one channel (the mean of the channels).
    Returns:
        ``(samples [S, C], sample_rate)``.
    """
    file = _existing_file(path, "audio path")
    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0):
        raise ValueError(f"sample_rate must be a positive int or None, got {sample_rate!r}")
    sound = read_sound(file)
    samples, rate = mix_and_resample(sound.samples, sound.sample_rate, sample_rate, mono=mono)  # [C, T]
    return np.ascontiguousarray(samples.numpy().T), rate  # [S, C]
