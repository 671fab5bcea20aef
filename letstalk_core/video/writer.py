"""Streaming mp4 writing (H.264 yuv420p) with the speech track muxed in as AAC.

Frames reach ffmpeg (the binary shipped by imageio-ffmpeg) chunk by chunk through a pipe,
so a long video never has to sit in memory. The file appears under its final name only
when everything succeeded: frames go to a hidden temporary file in the destination
folder, the audio is muxed into a second one, and that one is renamed at the end. An
exception inside ``with Mp4Writer(...)`` or an explicit ``abort()`` removes both.

    with Mp4Writer("out.mp4", fps=25, audio=waveform, sample_rate=16000) as writer:
        for frames in decoded_chunks:          # [N, H, W, 3] uint8, or float 0..1
            writer.write(frames)
    # out.mp4 now exists; its audio lasts exactly as long as its video.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from ..files import ffmpeg_exe
from ..sound import read_sound
from .timing import as_fps

if TYPE_CHECKING:
    import torch

AudioLike = Union[np.ndarray, "torch.Tensor", str, os.PathLike, dict]  # what read_sound accepts

__all__ = ["Mp4Writer", "SUPPORTED_EXTENSIONS"]

# Containers that hold H.264 + AAC without re-muxing tricks.
SUPPORTED_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv")

_AAC_SAMPLE_RATES = frozenset((7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000))

_FFMPEG_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast",
    "medium", "slow", "slower", "veryslow",
)




def _check_output_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"output path must be a str or os.PathLike, got {type(path).__name__}")
    out = Path(path).expanduser()
    if out.suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"output path {str(out)!r} has the unsupported extension {out.suffix!r}; "
            f"accepted: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.exists():
        raise FileNotFoundError(
            f"output folder {str(folder)!r} for {str(out)!r} does not exist; create it first"
        )
    if not folder.is_dir():
        raise NotADirectoryError(f"output folder {str(folder)!r} for {str(out)!r} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {str(folder)!r} for {str(out)!r} is not writable")
    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"output path {str(out)!r} is an existing directory, not a file name")
    return out


def _frames_to_uint8(frames) -> np.ndarray:
    """Return frames as a C-contiguous uint8 array ``[N, H, W, 3]``.

    Accepted: numpy or torch, ``[N, H, W, 3]`` or one frame ``[H, W, 3]``, dtype uint8
    (0..255) or floating point (0..1, clipped).
    """
    kind = type(frames).__module__.split(".")[0]
    if kind == "torch":
        import torch

        if frames.dtype == torch.uint8:
            array = frames.detach().cpu().numpy()
        elif frames.is_floating_point():
            if not torch.isfinite(frames).all():
                raise ValueError("frames contain NaN or inf; float frames must be finite values in 0..1")
            # float -> uint8 on the frames' own device, then one copy to host
            array = (frames.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
        else:
            raise ValueError(
                f"frames have torch dtype {frames.dtype}; accepted: torch.uint8 (0..255) or a float dtype (0..1)"
            )
    elif isinstance(frames, np.ndarray):
        if frames.dtype == np.uint8:
            array = frames
        elif np.issubdtype(frames.dtype, np.floating):
            if not np.isfinite(frames).all():
                raise ValueError("frames contain NaN or inf; float frames must be finite values in 0..1")
            array = np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
        else:
            raise ValueError(
                f"frames have numpy dtype {frames.dtype}; accepted: uint8 (0..255) or float (0..1)"
            )
    else:
        raise TypeError(
            f"frames must be a numpy array or torch tensor [N, H, W, 3], got {type(frames).__name__}"
        )
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"frames have shape {tuple(frames.shape)}; accepted: [N, H, W, 3] or [H, W, 3] RGB (channels last)"
        )
    if array.shape[1] < 2 or array.shape[2] < 2:
        raise ValueError(f"frames have shape {tuple(frames.shape)}; height and width must be at least 2 pixels")
    return np.ascontiguousarray(array)


class Mp4Writer:
    """Write an H.264 yuv420p video chunk by chunk, then mux the audio in as AAC.

    Args:
        path: output file (``.mp4``, ``.m4v``, ``.mov`` or ``.mkv``); its folder must exist.
        fps: frame rate; int, float, ``Fraction`` or ``"30000/1001"`` (29.97 becomes 30000/1001).
        audio: optional speech track: anything :func:`letstalk_core.sound.read_sound` accepts (a
            ``[S]``, ``[C, S]`` or ``[S, C]`` array/tensor with ``sample_rate``, a path to an
            audio/video file, a ComfyUI AUDIO dict). May also be given to ``close``. It is trimmed or padded with silence to the video length.
        sample_rate: sample rate of an array ``audio``.
        crf: x264 constant rate factor (0 = lossless .. 51); 18 looks visually lossless.
        preset: x264 speed preset.
        audio_bitrate: AAC bitrate, e.g. ``"192k"``.

    Frames whose width or height is odd are padded by one replicated edge pixel, since
    yuv420p needs even sizes; ``encoded_size`` tells the size in the file.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        fps=25,
        *,
        audio: Optional[AudioLike] = None,
        sample_rate: Optional[int] = None,
        crf: int = 18,
        preset: str = "medium",
        audio_bitrate: str = "192k",
    ):
        self.path = _check_output_path(path)
        self.fps: Fraction = as_fps(fps)
        if not isinstance(crf, int) or isinstance(crf, bool) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an int in 0..51, got {crf!r}")
        if preset not in _FFMPEG_PRESETS:
            raise ValueError(f"preset {preset!r} is not an x264 preset; accepted: {', '.join(_FFMPEG_PRESETS)}")
        if not isinstance(audio_bitrate, str) or not audio_bitrate.rstrip("kK").isdigit():
            raise ValueError(f"audio_bitrate must be a string like '192k', got {audio_bitrate!r}")
        self.crf = crf
        self.preset = preset
        self.audio_bitrate = audio_bitrate
        self._audio = None
        if audio is not None:
            self.set_audio(audio, sample_rate)
        elif sample_rate is not None:
            raise ValueError("sample_rate was given without audio; pass the audio array too")

        self.frame_size: Optional[tuple[int, int]] = None  # (height, width) of the frames handed in
        self.encoded_size: Optional[tuple[int, int]] = None  # (height, width) in the file
        self.frame_count = 0
        self._process: Optional[subprocess.Popen] = None
        self._stderr = None
        self._video_tmp: Optional[Path] = None
        self._final_tmp: Optional[Path] = None
        self._state = "open"  # open -> closed | aborted

    # ----- audio -------------------------------------------------------------------
    def set_audio(self, audio: AudioLike, sample_rate: Optional[int] = None) -> None:
        """Set (or replace) the speech track muxed in at ``close``; validated now, by the package's one
        audio normaliser (:func:`letstalk_core.sound.read_sound`)."""
        sound = read_sound(audio, sample_rate, name="audio")
        self._audio = np.ascontiguousarray(sound.samples.numpy().T), sound.sample_rate  # [S, C]

    # ----- frames ------------------------------------------------------------------
    def write(self, frames) -> None:
        """Append frames: ``[N, H, W, 3]`` or ``[H, W, 3]``, uint8 0..255 or float 0..1."""
        self._require_open("write")
        array = _frames_to_uint8(frames)  # [N, H, W, 3] uint8
        height, width = array.shape[1:3]
        if self.frame_size is None:
            self.frame_size = (height, width)
            self.encoded_size = (height + height % 2, width + width % 2)
            self._start_encoder()
        elif (height, width) != self.frame_size:
            raise ValueError(
                f"frame size changed mid-stream: frame {self.frame_count} is {height}x{width} (HxW) but "
                f"the video started at {self.frame_size[0]}x{self.frame_size[1]}; all frames must share one size"
            )
        if self.encoded_size != self.frame_size:
            pad_h = self.encoded_size[0] - height
            pad_w = self.encoded_size[1] - width
            array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        try:
            self._process.stdin.write(np.ascontiguousarray(array).data)  # no extra copy
        except (BrokenPipeError, OSError) as err:
            message = self._ffmpeg_error()
            self._cleanup()
            self._state = "aborted"
            raise RuntimeError(f"ffmpeg stopped while encoding {self.path}: {err}\n{message}") from err
        self.frame_count += array.shape[0]

    def _temp_name(self, kind: str) -> Path:
        # a hidden, unique name next to the output; ffmpeg creates it with the usual permissions
        return self.path.parent / f".{self.path.stem}.{uuid.uuid4().hex[:12]}.{kind}{self.path.suffix}"

    def _start_encoder(self) -> None:
        self._video_tmp = self._temp_name("video")
        height, width = self.encoded_size
        cmd = [
            ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(self.fps),
            "-i", "-",
            "-an", "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
            str(self._video_tmp),
        ]
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)

    # ----- finishing ---------------------------------------------------------------
    def close(self, audio: Optional[AudioLike] = None, sample_rate: Optional[int] = None) -> Path:
        """Finish the video, mux the audio (trimmed/padded to the video length), rename into place.

        Returns the output path. On any failure nothing is left under the output name.
        """
        self._require_open("close")
        try:
            if audio is not None:
                self.set_audio(audio, sample_rate)
            if self.frame_count == 0:
                raise ValueError(f"no frames were written to {self.path}; write at least one frame before close()")
            self._process.stdin.close()
            returncode = self._process.wait()
            if returncode != 0:
                raise RuntimeError(f"ffmpeg failed (exit code {returncode}) encoding {self.path}:\n{self._ffmpeg_error()}")
            if self._audio is None:
                os.replace(self._video_tmp, self.path)
                self._video_tmp = None
            else:
                self._mux_audio()
        except BaseException:
            self._cleanup()
            self._state = "aborted"
            raise
        self._cleanup()
        self._state = "closed"
        return self.path

    @property
    def duration(self) -> float:
        """Seconds of video written so far (``frame_count / fps``)."""
        return float(self.frame_count / self.fps)

    def _mux_audio(self) -> None:
        samples, sample_rate = self._audio  # [S, C] float32
        # exactly as many samples as the video lasts (frame_count / fps seconds)
        target = int(round(self.frame_count * sample_rate / self.fps))
        if samples.shape[0] >= target:
            samples = samples[:target]
        else:
            samples = np.concatenate([samples, np.zeros((target - samples.shape[0], samples.shape[1]), np.float32)])
        self._final_tmp = self._temp_name("part")
        # AAC knows a fixed set of rates; others are resampled by ffmpeg (same duration)
        aac_rate = sample_rate if sample_rate in _AAC_SAMPLE_RATES else 48000
        cmd = [
            ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-i", str(self._video_tmp),
            "-f", "f32le", "-ar", str(sample_rate), "-ac", str(samples.shape[1]), "-i", "-",
            "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
            "-c:a", "aac", "-b:a", self.audio_bitrate, "-ar", str(aac_rate),
            str(self._final_tmp),
        ]
        result = subprocess.run(cmd, input=np.ascontiguousarray(samples, dtype="<f4").tobytes(), capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"ffmpeg failed (exit code {result.returncode}) muxing the audio into {self.path}:\n"
                + result.stderr.decode(errors="replace")
            )
        os.replace(self._final_tmp, self.path)
        self._final_tmp = None

    def abort(self) -> None:
        """Stop encoding and remove every temporary file; nothing appears under ``path``."""
        if self._state != "open":
            return
        self._cleanup()
        self._state = "aborted"

    def _cleanup(self) -> None:
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.kill()
            try:
                if process.stdin and not process.stdin.closed:
                    process.stdin.close()
            except OSError:
                pass
            process.wait()
            self._process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        for attr in ("_video_tmp", "_final_tmp"):
            tmp = getattr(self, attr)
            if tmp is not None:
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass
                setattr(self, attr, None)

    def _ffmpeg_error(self) -> str:
        if self._stderr is None:
            return ""
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def _require_open(self, action: str) -> None:
        if self._state != "open":
            raise RuntimeError(f"cannot {action}: the writer for {self.path} is already {self._state}")

    # ----- context manager ---------------------------------------------------------
    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.close()

    def __del__(self):  # a writer dropped without close() leaves no temp files behind
        try:
            if getattr(self, "_state", None) == "open":
                self.abort()
        except Exception:
            pass
