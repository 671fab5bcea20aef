"""Frame arithmetic shared by every audio encoder: frame counts, resampling in time, windows, padding.

A clip of ``seconds`` of audio at ``fps`` video frames per second has ``ceil(seconds * fps)`` frames.
The arithmetic is done with exact fractions, so 4.0 s at 25 fps is 100 frames (not 101 from float
round-off) and NTSC rates (29.97 or 30000/1001) count frames exactly.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from ..video.timing import as_fps  # one definition of a frame rate for audio and video

# Largest denominator kept when a float frame rate is turned into a fraction. 1001 covers the broadcast
# rates exactly (30000/1001, 24000/1001, 2997/100, 2997/125, 25, 50) and absorbs float32 round-off:
# 29.97 -> 2997/100, 30000/1001 as a float (29.97002997...) -> 30000/1001, 23.976 -> 2997/125.


def samples_for_frames(num_frames: int, sample_rate: int, fps) -> int:
    """Samples spanned by ``num_frames`` video frames, rounded to the nearest sample (640 per frame at 25 fps)."""
    return round(Fraction(int(num_frames)) * Fraction(int(sample_rate)) / as_fps(fps))


def padded_frame_count(num_frames: int, frames_per_clip: int | None) -> int:
    """``num_frames`` rounded up to a whole number of clips of ``frames_per_clip`` frames."""
    if frames_per_clip is None:
        return num_frames
    if not isinstance(frames_per_clip, int) or isinstance(frames_per_clip, bool) or frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be a positive integer or None, got {frames_per_clip!r}")
    return -(-num_frames // frames_per_clip) * frames_per_clip


def align_corners_positions(num_source: int, num_target: int, start: int, stop: int) -> torch.Tensor:
    """Source positions of target indices ``start..stop-1`` when ``num_source`` steps are stretched
    onto ``num_target`` with aligned end points, in the same float32 arithmetic as
    ``F.interpolate(mode="linear", align_corners=True)`` (scale = (N-1)/(F-1), position = scale * j),
    so a chunk of frames gets the very positions a single pass over all frames would.
    """
    index = torch.arange(start, stop, dtype=torch.float32)  # [stop - start]
    if num_target <= 1 or num_source <= 1:
        return torch.zeros_like(index)
    scale = torch.tensor(num_source - 1, dtype=torch.float32) / (num_target - 1)
    return scale * index


def centre_positions(source_rate: float, fps, start: int, stop: int, num_source: int) -> torch.Tensor:
    """Positions, in source steps, of the centres of video frames ``start..stop-1``.

    Source step ``k`` is centred at ``k / source_rate`` seconds (a centred STFT frame, or a whisper
    token), video frame ``j`` at ``(j + 0.5) / fps`` seconds; positions are clamped to the available steps.
    """
    fps = as_fps(fps)
    index = torch.arange(start, stop, dtype=torch.float64)  # [stop - start]
    seconds = (index + 0.5) / float(fps)
    return (seconds * source_rate).clamp(0, max(num_source - 1, 0))


def lerp_rows(source: torch.Tensor, positions: torch.Tensor, first: int = 0) -> torch.Tensor:
    """Linear interpolation of ``source [N, ...]`` at fractional rows ``positions [F]`` -> ``[F, ...]``.

    ``source`` row 0 is row ``first`` of the full sequence the positions refer to; out-of-range
    positions are clamped. Weights are formed like PyTorch's linear upsampling: x0 * (1 - w) + x1 * w.
    """
    if source.shape[0] == 0:
        raise ValueError("cannot interpolate an empty feature sequence")
    last = source.shape[0] - 1
    floor = positions.floor()
    weight = (positions - floor).clamp(0, 1)  # [F]
    lower = (floor.long() - first).clamp(0, last)  # [F]
    upper = (lower + 1).clamp(max=last)  # [F]
    weight = weight.to(source.device, source.dtype).view(-1, *([1] * (source.dim() - 1)))
    lower, upper = lower.to(source.device), upper.to(source.device)
    return source[lower] * (1 - weight) + source[upper] * weight


def frame_windows(features: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Windows of ``2 * radius + 1`` frames centred on every frame, clamped at both ends.

    ``features [F, L, D]`` -> ``[F, 2r+1, L, D]``; window ``j`` holds frames ``j-r .. j+r`` with indices
    below 0 or above F-1 replaced by the first or last frame (the official Hallo/LetsTalk windowing).
    """
    if not isinstance(radius, int) or isinstance(radius, bool) or radius < 0:
        raise ValueError(f"window radius must be a non-negative integer, got {radius!r}")
    if features.dim() < 1 or features.shape[0] == 0:
        raise ValueError(f"features must have at least one frame, got shape {tuple(features.shape)}")
    num_frames = features.shape[0]
    offsets = torch.arange(-radius, radius + 1, device=features.device)  # [2r+1]
    index = (torch.arange(num_frames, device=features.device)[:, None] + offsets[None, :]).clamp(0, num_frames - 1)
    return features[index]  # [F, 2r+1, ...]


def chunk_ranges(num_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` frame ranges of at most ``chunk_frames`` covering ``num_frames``."""
    chunk_frames = max(1, int(chunk_frames))
    return [(start, min(start + chunk_frames, num_frames)) for start in range(0, num_frames, chunk_frames)]
