"""Metric functions of the evaluation: lip sync, identity, seams and drift, on frames ``[N, H, W, 3]``.

Frames follow the pipeline's convention: float tensors in 0..1 (uint8 arrays/tensors are accepted and
divided by 255). Every function works on any frames; only :class:`MouthMeter` is specific to the
synthetic talking-face world, whose renderer says where an identity's mouth is.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "as_frames",
    "pearson",
    "ssim",
    "structure_error",
    "colour_error",
    "identity_errors",
    "frame_changes",
    "seam_ratio",
    "drift_ratio",
    "MouthMeter",
]


def as_frames(frames, name: str = "frames") -> torch.Tensor:
    """Frames as a float32 tensor ``[N, H, W, 3]`` in 0..1; a single ``[H, W, 3]`` image becomes N=1."""
    if isinstance(frames, np.ndarray):
        if not (frames.flags.writeable and frames.flags.c_contiguous):
            frames = np.array(frames, order="C")  # a writable copy (e.g. of a read-only render cache)
        frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor or array [N, H, W, 3], got {type(frames).__name__}")
    if frames.dim() == 3:
        frames = frames[None]
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{name}: expected shape [N, H, W, 3] with N >= 1 (RGB, channels last), got {list(frames.shape)}")
    if frames.dtype == torch.uint8:
        return frames.float() / 255.0
    if not frames.is_floating_point():
        raise ValueError(f"{name}: expected uint8 or float values in 0..1, got dtype {frames.dtype}")
    return frames.float()


def _same_size(frames: torch.Tensor, portrait: torch.Tensor) -> None:
    if frames.shape[1:] != portrait.shape[1:]:
        raise ValueError(f"frames are {frames.shape[1]}x{frames.shape[2]} but the portrait is "
                         f"{portrait.shape[1]}x{portrait.shape[2]}; compare images of the same size")


def pearson(a, b) -> float:
    """Pearson correlation of two equally long sequences; NaN when either one is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pearson: sequences of different lengths ({a.shape[0]} and {b.shape[0]})")
    if a.shape[0] < 3:
        raise ValueError(f"pearson: need at least 3 values, got {a.shape[0]}")
    a = a - a.mean()
    b = b - b.mean()
    norm = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if norm < 1e-12:
        return float("nan")
    return float((a * b).sum() / norm)


def sync_correlation(made, truth, *, detrend_frames: int = 15, max_lag: int = 2) -> float:
    """Lip sync between two per-frame mouth signals of one clip: each loses its ``detrend_frames`` moving
    average (slow changes of lighting or pose are not speech), then the Pearson correlation at the best
    lag within ``+-max_lag`` frames (a frame or two of audio-visual offset is not a sync error).

    The two signals are cut to the shorter one; NaN when fewer than ``detrend_frames`` frames remain."""
    a = np.asarray(made, dtype=np.float64).reshape(-1)
    b = np.asarray(truth, dtype=np.float64).reshape(-1)
    length = min(a.shape[0], b.shape[0])
    if length < max(detrend_frames, 2 * max_lag + 3):
        return float("nan")
    a, b = a[:length], b[:length]

    def detrend(x: np.ndarray) -> np.ndarray:
        padded = np.pad(x, detrend_frames // 2, mode="edge")
        return x - np.convolve(padded, np.ones(detrend_frames) / detrend_frames, mode="valid")[:length]

    a, b = detrend(a), detrend(b)
    best = float("nan")
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b[:length - lag]) if lag >= 0 else (a[:lag], b[-lag:])
        r = pearson(x, y)
        if not math.isnan(r) and (math.isnan(best) or r > best):
            best = r
    return best


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()  # [2r+1]


def _blur_valid(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian over ``[N, C, H, W]`` without padding ('valid' part only)."""
    channels = x.shape[1]
    k = kernel.to(x)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def ssim(frames, reference, *, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per frame ``[N]`` (Wang et al. 2004: Gaussian window, K1 0.01, K2 0.03,
    data range 1), averaged over the RGB channels; ``reference`` is one image or one per frame."""
    frames = as_frames(frames)
    reference = as_frames(reference, "reference")
    _same_size(frames, reference)
    if min(frames.shape[1:3]) < 8:
        raise ValueError(f"ssim: images of {frames.shape[1]}x{frames.shape[2]} are too small (need at least 8x8)")
    sigma = min(sigma, (min(frames.shape[1:3]) - 1) / 6)
    kernel = _gaussian_kernel(sigma)
    x = frames.permute(0, 3, 1, 2)  # [N, 3, H, W]
    y = reference.permute(0, 3, 1, 2).expand_as(x)  # [N, 3, H, W]
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = _blur_valid(x, kernel), _blur_valid(y, kernel)
    var_x = _blur_valid(x * x, kernel) - mu_x**2
    var_y = _blur_valid(y * y, kernel) - mu_y**2
    cov = _blur_valid(x * y, kernel) - mu_x * mu_y
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return score.mean(dim=(1, 2, 3))  # [N]


def structure_error(frames, portrait) -> torch.Tensor:
    """``1 - SSIM`` of each frame against the portrait, ``[N]`` (0 = same structure)."""
    return 1.0 - ssim(frames, portrait)


def colour_error(frames, portrait, *, grid: int = 4) -> torch.Tensor:
    """Mean absolute difference of the mean colour of ``grid x grid`` regions, per frame ``[N]`` (0..1).

    Region means ignore fine detail and small motion, so this measures colour drift (skin, hair,
    background, clothes) rather than pose.
    """
    frames = as_frames(frames)
    portrait = as_frames(portrait, "portrait")
    _same_size(frames, portrait)
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be an int >= 1, got {grid!r}")
    means = F.adaptive_avg_pool2d(frames.permute(0, 3, 1, 2), grid)  # [N, 3, g, g]
    target = F.adaptive_avg_pool2d(portrait.permute(0, 3, 1, 2), grid)  # [1|N, 3, g, g]
    return (means - target).abs().mean(dim=(1, 2, 3))  # [N]


def identity_errors(frames, portrait) -> dict[str, torch.Tensor]:
    """Per-frame ``colour``, ``structure`` and ``identity`` (= colour + structure) errors, each ``[N]``."""
    colour = colour_error(frames, portrait)
    structure = structure_error(frames, portrait)
    return {"colour": colour, "structure": structure, "identity": colour + structure}


def frame_changes(frames, previous=None) -> torch.Tensor:
    """Mean absolute change between consecutive frames, ``[N-1]`` (``[N]`` when the frame before the
    first, ``previous [H, W, 3]``, is given: then entry 0 is the change into frame 0)."""
    frames = as_frames(frames)
    if previous is not None:
        frames = torch.cat([as_frames(previous, "previous"), frames], dim=0)
    if frames.shape[0] < 2:
        return frames.new_zeros(0)
    return (frames[1:] - frames[:-1]).abs().mean(dim=(1, 2, 3))


def seam_ratio(changes, frames_per_clip: int, clip_starts: Optional[Sequence[int]] = None) -> dict[str, float]:
    """Mean change across clip boundaries against the mean change inside clips.

    ``changes[k]`` is the change from frame k to frame k+1 (see :func:`frame_changes`); it crosses a
    boundary when ``k + 1`` is a multiple of ``frames_per_clip``, or, with ``clip_starts`` (the first
    new frame of each clip, as when clips overlap), when ``k + 1`` is one of them. Returns ``boundary``,
    ``inside`` and ``ratio`` (1 = seams are as smooth as the motion inside clips; NaN without a boundary).
    """
    changes = np.asarray(changes.detach().cpu() if isinstance(changes, torch.Tensor) else changes, dtype=np.float64)
    if isinstance(frames_per_clip, bool) or not isinstance(frames_per_clip, (int, np.integer)) or frames_per_clip < 2:
        raise ValueError(f"frames_per_clip must be an int >= 2, got {frames_per_clip!r}")
    index = np.arange(changes.shape[0])
    if clip_starts is None:
        at_boundary = (index + 1) % frames_per_clip == 0
    else:
        starts = [int(start) for start in clip_starts]
        if any(start < 0 for start in starts):
            raise ValueError(f"clip_starts must be frame indices >= 0, got {starts}")
        at_boundary = np.isin(index + 1, [start for start in starts if start > 0])
    if not at_boundary.any() or at_boundary.all():
        return {"boundary": float("nan"), "inside": float("nan"), "ratio": float("nan"), "boundaries": 0}
    boundary = float(changes[at_boundary].mean())
    inside = float(changes[~at_boundary].mean())
    return {"boundary": boundary, "inside": inside, "ratio": boundary / max(inside, 1e-8),
            "boundaries": int(at_boundary.sum())}


def drift_ratio(errors, fps: float, window_seconds: float = 5.0) -> dict[str, float]:
    """Identity error over the last ``window_seconds`` against the first (ratio; 1 = no drift).

    ``errors`` is one error per frame of a long video. The video must be at least two windows long.
    """
    errors = np.asarray(errors.detach().cpu() if isinstance(errors, torch.Tensor) else errors, dtype=np.float64)
    if not (isinstance(fps, (int, float)) and fps > 0) or not (isinstance(window_seconds, (int, float)) and window_seconds > 0):
        raise ValueError(f"fps and window_seconds must be numbers > 0, got {fps!r} and {window_seconds!r}")
    window = max(1, int(round(window_seconds * fps)))
    if errors.shape[0] < 2 * window:
        raise ValueError(f"drift needs at least two windows of {window_seconds:g} s ({2 * window} frames at "
                         f"{fps:g} fps), got {errors.shape[0]} frames; make the video longer or the window shorter")
    first = float(errors[:window].mean())
    last = float(errors[-window:].mean())
    return {"first": first, "last": last, "ratio": last / max(first, 1e-8), "window_frames": window}


# ------------------------------------------------------------------------------------------ mouth opening
def _shifted_copies(image: torch.Tensor, max_shift: float, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``image [H, W, 3]`` translated by every (dy, dx) on a grid of ``step`` px up to ``max_shift`` px:
    ``([S, H, W, 3], shifts [S, 2])`` (bilinear, edges repeated)."""
    height, width, _ = image.shape
    offsets = torch.arange(-max_shift, max_shift + 1e-6, step)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    dy, dx = dy.flatten(), dx.flatten()  # [S]
    theta = torch.zeros(dx.shape[0], 2, 3)  # [S, 2, 3]
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -dx * 2 / width
    theta[:, 1, 2] = -dy * 2 / height
    grid = F.affine_grid(theta, [dx.shape[0], 3, height, width], align_corners=False)
    source = image.permute(2, 0, 1)[None].expand(dx.shape[0], -1, -1, -1)  # [S, 3, H, W]
    moved = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return moved.permute(0, 2, 3, 1).contiguous(), torch.stack([dy, dx], dim=1)


class MouthMeter:
    """Measures how far the mouth is open on frames of one portrait, from pixels alone.

    The head may move, so each frame is first aligned to the closed-mouth ``reference`` by the
    translation (search grid of ``step`` px up to ``max_shift`` px) that best matches the region
    around the mouth (``mouth_box`` widened by ``margin``, fractions of the image side). The raw
    reading is then the area of the mouth box where the aligned frame differs from the reference
    (soft: a summed RGB difference of ``low`` counts as nothing, ``high`` and more as a whole pixel),
    as a fraction of the box. An open mouth shows its dark inside, teeth and tongue and pushes the lower
    lip down, so this area grows with the opening; blinks, brows and head motion fall outside the box or
    are aligned away.

    :meth:`calibrate` renders the identity with known openings, mouth shapes, head motion and blinks
    (passed through the same degradation as the frames to be measured, e.g. a VAE round trip), picks
    the soft threshold that tracks the opening best among :attr:`THRESHOLDS` (blurrier frames need a
    lower one) and fits a line from the reading to the opening, so :meth:`measure` returns openings in
    the renderer's 0..1 units. ``calibration_r`` (the correlation on those frames) says how well the
    meter can see the mouth at all.
    """

    THRESHOLDS = ((0.05, 0.25), (0.03, 0.15), (0.02, 0.1))  # (low, high) summed |RGB| differences

    def __init__(self, reference, mouth_box: Sequence[int], *, margin: tuple[float, float] = (0.05, 0.04),
                 max_shift: Optional[float] = None, step: Optional[float] = None, chunk: Optional[int] = None):
        reference = as_frames(reference, "reference")
        if reference.shape[0] != 1:
            raise ValueError(f"reference: expected one image [H, W, 3], got {reference.shape[0]}")
        self.reference = reference[0]  # [H, W, 3]
        height, width, _ = self.reference.shape
        top, bottom, left, right = (int(v) for v in mouth_box)
        if not (0 <= top < bottom <= height and 0 <= left < right <= width):
            raise ValueError(f"mouth_box {tuple(mouth_box)} (top, bottom, left, right) does not lie inside the "
                             f"{height}x{width} reference")
        self.box = (top, bottom, left, right)
        pad_y, pad_x = int(round(margin[1] * height)), int(round(margin[0] * width))
        self.region = (max(0, top - pad_y), min(height, bottom + pad_y), max(0, left - pad_x), min(width, right + pad_x))
        size = max(height, width)
        self.max_shift = float(max_shift if max_shift is not None else max(1.0, round(0.06 * size)))
        self.step = float(step if step is not None else max(0.5, size / 128))
        # shift only the region (with a replicated border wide enough for the largest shift), so memory
        # stays small at any image size
        rt, rb, rl, rr = self.region
        pad = int(math.ceil(self.max_shift)) + 1
        padded = F.pad(self.reference.permute(2, 0, 1)[None], (pad, pad, pad, pad), mode="replicate")[0]
        window = padded[:, rt:rb + 2 * pad, rl:rr + 2 * pad].permute(1, 2, 0)  # [h+2p, w+2p, 3]
        shifted, self.shifts = _shifted_copies(window, self.max_shift, self.step)  # [S, h+2p, w+2p, 3], [S, 2]
        self.templates = shifted[:, pad:-pad, pad:-pad].contiguous()  # [S, h, w, 3]: the region, shifted
        # frames compared at once: about 64 MB of float32 differences per chunk
        self.chunk = int(chunk) if chunk else max(1, int(16_000_000 // self.templates.numel()))
        self.low, self.high = self.THRESHOLDS[0]
        self.scale, self.offset = 1.0, 0.0
        self.calibration_r = float("nan")

    @classmethod
    def for_identity(cls, identity, size: int, *, through: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                     calibrate: bool = True) -> "MouthMeter":
        """A meter for a synthetic identity (a ``FaceIdentity`` or its seed) at ``size`` px.

        ``through`` maps rendered frames ``[N, H, W, 3]`` to how the frames to be measured will look
        (e.g. a VAE round trip); the reference and the calibration frames go through it.
        """
        from ..training.synthetic.face import FaceIdentity, FacePose, mouth_box, render_face, sample_identity

        if not isinstance(identity, FaceIdentity):
            identity = sample_identity(identity)
        through = through or (lambda frames: frames)
        portrait = through(as_frames(render_face(identity, FacePose(), size)))  # [1, H, W, 3]
        meter = cls(portrait[0], mouth_box(identity, size))
        if calibrate:
            meter.calibrate(identity, through=through)
        return meter

    def aligned_difference(self, frames) -> torch.Tensor:
        """Summed |RGB| difference between each aligned frame and the reference in the mouth box, ``[N, h, w]``."""
        frames = as_frames(frames)
        _same_size(frames, self.reference[None])
        rt, rb, rl, rr = self.region
        top, bottom, left, right = self.box
        templates = self.templates  # [S, h, w, 3]
        differences = []
        for start in range(0, frames.shape[0], self.chunk):
            part = frames[start:start + self.chunk]  # [n, H, W, 3]
            mismatch = (part[:, None, rt:rb, rl:rr] - templates[None]).abs().mean(dim=(2, 3, 4))  # [n, S]
            best = mismatch.argmin(dim=1)  # [n]
            aligned = templates[best][:, top - rt:bottom - rt, left - rl:right - rl]  # [n, h, w, 3]
            differences.append((part[:, top:bottom, left:right] - aligned).abs().sum(-1))  # [n, h, w]
        return torch.cat(differences)

    def _reading(self, difference: torch.Tensor, low: float, high: float) -> np.ndarray:
        return ((difference - low) / (high - low)).clamp(0, 1).mean(dim=(1, 2)).numpy().astype(np.float64)

    def raw(self, frames) -> np.ndarray:
        """Uncalibrated reading per frame, ``[N]``: the changed fraction of the aligned mouth box."""
        return self._reading(self.aligned_difference(frames), self.low, self.high)

    def measure(self, frames) -> np.ndarray:
        """Mouth opening per frame, float ``[N]`` in the renderer's units (after :meth:`calibrate`)."""
        return (self.raw(frames) - self.offset) * self.scale

    def calibrate(self, identity, *, through=None, openings: Sequence[float] = (0.0, 0.15, 0.3, 0.5, 0.75, 1.0),
                  widths: Sequence[float] = (0.25, 0.75), seed: int = 0) -> float:
        """Choose the threshold and fit reading -> opening on rendered frames with known openings (each
        opening and mouth shape once still and once with random head motion and blink); returns and
        stores the correlation of the readings with the true openings."""
        from ..training.synthetic.face import FacePose, render_face

        rng = np.random.default_rng(seed)
        size = int(self.reference.shape[0])
        poses = [FacePose(mouth_open=float(o), mouth_width=float(w)) for o in openings for w in widths]
        poses += [FacePose(mouth_open=float(o), mouth_width=float(w), head_dx=float(rng.uniform(-0.02, 0.02)),
                           head_dy=float(rng.uniform(-0.015, 0.015)), head_roll=float(rng.uniform(-0.05, 0.05)),
                           blink=float(rng.choice([0.0, 0.0, 1.0])))
                  for o in openings for w in widths]
        rendered = as_frames(np.stack([render_face(identity, pose, size) for pose in poses]))  # [P, H, W, 3]
        if through is not None:
            rendered = through(rendered)
        difference = self.aligned_difference(rendered)  # [P, h, w]
        truth = np.array([pose.mouth_open for pose in poses])
        scored = []
        for low, high in self.THRESHOLDS:
            r = pearson(self._reading(difference, low, high), truth)
            scored.append((-1.0 if math.isnan(r) else r, low, high))
        best_r, self.low, self.high = max(scored)
        raw = self._reading(difference, self.low, self.high)
        self.calibration_r = pearson(raw, truth)
        slope = np.polyfit(truth, raw, 1)[0] if np.ptp(raw) > 1e-9 else 0.0
        if slope > 1e-9:
            self.offset = float(raw[truth == 0].mean())
            self.scale = 1.0 / float(slope)
        return self.calibration_r
