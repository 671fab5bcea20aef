"""What the two evaluations (held-out synthetic identities, :mod:`.runner`; real footage, :mod:`.real`)
share: making a video with one running step count, the codec round trip, where clips begin, seams
pooled over videos, means that skip what was not measured, and the pass/fail of each target."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..sampling import clip_plan

SAMPLE_RATE = 16_000  # the speech both evaluations give the model
Progress = Callable[[int, int], None]


class StepCounter:
    """Turns per-video ``progress(done, total)`` into one running count over the whole evaluation."""

    def __init__(self, progress: Optional[Progress], total: int):
        self.progress, self.total, self.done, self.base = progress, total, 0, 0

    def video(self) -> Progress:
        """The ``progress`` callback for the next video."""
        self.base = self.done

        def step(done: int, total: int) -> None:
            self.done = self.base + done
            if self.progress is not None:
                self.progress(self.done, self.total)

        return step


def make_video(pipe, portrait: np.ndarray, speech: np.ndarray, options, *, counter: StepCounter,
               on_chunk: Optional[Callable[[torch.Tensor], None]] = None,
               keep: bool = True) -> tuple[Optional[torch.Tensor], float]:
    """The video ``pipe`` makes of ``portrait`` (taken as it is, not cropped) and ``speech`` (16 kHz) with
    ``options`` (:class:`~letstalk_core.sampling.SamplingOptions`, its fps too); returns (frames
    ``[F, H, W, 3]`` in 0..1, or None without ``keep``, seconds taken). ``on_chunk`` sees every decoded
    chunk as it comes."""
    started = time.perf_counter()
    conditions = pipe.prepare(portrait, torch.from_numpy(speech), fps=options.fps, crop=False,
                              sample_rate=SAMPLE_RATE)
    kept = []
    for chunk in pipe.iter_frames(conditions, options, progress=counter.video()):
        chunk = chunk.float().cpu()  # [n, H, W, 3]
        if on_chunk is not None:
            on_chunk(chunk)
        if keep:
            kept.append(chunk)
    return (torch.cat(kept) if keep else None), time.perf_counter() - started


def codec_round_trip(codec) -> Callable[[torch.Tensor], torch.Tensor]:
    """frames ``[N, H, W, 3]`` -> the same frames encoded and decoded by ``codec`` (what the model's latents
    can show at best)."""
    from ..latents import images_to_comfy
    from ..latents.codecs import images_from_comfy

    def through(frames: torch.Tensor) -> torch.Tensor:
        latents = codec.encode(images_from_comfy(frames))  # [N, C, h, w]
        return images_to_comfy(codec.decode(latents))  # [N, H, W, 3]

    return through


def nanmean(values) -> float:
    """The mean of the values that were measured (not None, not NaN); NaN when none was."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def clip_count(num_frames: int, frames_per_clip: int, overlap_frames: int = 0) -> int:
    """How many clips make ``num_frames`` frames (each costs one sampling run)."""
    return len(clip_plan(num_frames, frames_per_clip, overlap_frames))


def clip_starts(num_frames: int, frames_per_clip: int, overlap_frames: int) -> list[int]:
    """The first new frame of every clip after the first (where the seams are)."""
    return [window.new_start for window in clip_plan(num_frames, frames_per_clip, overlap_frames)[1:]]


def pooled_seams(seams: list[dict]) -> dict[str, float]:
    """Several videos' :func:`~.metrics.seam_ratio` results as one: the mean boundary and inside changes
    over the videos that have a boundary, their ratio, and the boundaries counted."""
    with_boundaries = [s for s in seams if s["boundaries"]]
    if not with_boundaries:
        return {"boundary": float("nan"), "inside": float("nan"), "ratio": float("nan"), "boundaries": 0}
    boundary = nanmean(s["boundary"] for s in with_boundaries)
    inside = nanmean(s["inside"] for s in with_boundaries)
    return {"boundary": boundary, "inside": inside, "ratio": boundary / max(inside, 1e-8),
            "boundaries": sum(s["boundaries"] for s in with_boundaries)}


def checks(metrics: dict[str, Any], targets: dict[str, tuple[str, float]]) -> dict[str, dict[str, Any]]:
    """Each target: the value, the target as text and whether it passes (False when not measured)."""
    out = {}
    for name, (comparison, threshold) in targets.items():
        value = metrics.get(name, float("nan"))
        measured = value is not None and not math.isnan(value)
        passed = measured and (value >= threshold if comparison == ">=" else value <= threshold)
        out[name] = {"value": value, "target": f"{comparison} {threshold:g}", "pass": bool(passed),
                     "measured": bool(measured)}
    return out
