"""The sampling options of one video, checked in one place, with the defaults a checkpoint recommends.

Every route that makes a video (``generate``, :class:`~letstalk_core.pipeline.LetsTalkPipeline`, the
sampler node, ``evaluate``) starts from :func:`recommended_options` of the checkpoint and applies the
caller's overrides with :meth:`SamplingOptions.replace`, so the same checkpoint gives the same video by
every route when nothing is overridden.

Where the recommendation comes from, first match wins:

1. the checkpoint's own ``sampling`` metadata (written by the trainer, or by ``convert --sampler ...``
   after a model was evaluated: the demo bundle stores the settings that met its targets);
2. a checkpoint of the authors' code: the authors' loop (DDPM, 250 steps, no guidance, no overlap);
3. any other checkpoint: :data:`PROJECT_DEFAULT` (DPM-Solver++ 25 steps, no guidance, no overlap).

The frame rate is the one the checkpoint was trained at when it records it, else 25.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..checks import check_int
from .long_video import check_overlap_frames
from .schedules import check_sampler

# model evaluations per clip when a sampler is chosen without a step count
DEFAULT_STEPS = {"ddpm": 250, "ddim": 50, "dpmpp_2m": 25, "euler": 50}
DEFAULT_FPS = 25


def _check_scale(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (1 = no guidance), got {value!r}")
    return float(value)


def _check_fps(value) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction, np.floating, np.integer)) \
            or not math.isfinite(value) or not 1 <= value <= 120:
        raise ValueError(f"fps must be a number from 1 to 120 (frames per second of the video), got {value!r}")
    return Fraction(value).limit_denominator(1001)


@dataclass(frozen=True)
class SamplingOptions:
    """How one video is sampled. Checked when made; :meth:`check_for` adds the checks that need the
    checkpoint (overlap below its clip length, guidance only where training dropped conditions)."""

    sampler: str = "dpmpp_2m"
    steps: int = DEFAULT_STEPS["dpmpp_2m"]
    seed: int = 0
    audio_cfg: float = 1.0
    portrait_cfg: float = 1.0
    overlap_frames: int = 0
    fps: Fraction = Fraction(DEFAULT_FPS)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: the checked values replace the given ones
        set_(self, "sampler", check_sampler(self.sampler))
        set_(self, "steps", check_int("steps", self.steps, 1, accepted="an integer >= 1 (model evaluations per clip)"))
        set_(self, "seed", check_int("seed", self.seed))
        set_(self, "audio_cfg", _check_scale("audio_cfg", self.audio_cfg))
        set_(self, "portrait_cfg", _check_scale("portrait_cfg", self.portrait_cfg))
        set_(self, "overlap_frames", check_overlap_frames(self.overlap_frames))  # the clip length: check_for
        set_(self, "fps", _check_fps(self.fps))

    @property
    def guided(self) -> bool:
        return self.audio_cfg != 1 or self.portrait_cfg != 1

    def replace(self, **overrides: Any) -> "SamplingOptions":
        """A copy with the overrides that are not None. Choosing another sampler without a step count
        takes that sampler's default steps (:data:`DEFAULT_STEPS`), not this one's."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown sampling options: {', '.join(unknown)}")
        given = {name: value for name, value in overrides.items() if value is not None}
        if "sampler" in given and given["sampler"] != self.sampler and "steps" not in given:
            given["steps"] = DEFAULT_STEPS[check_sampler(given["sampler"])]
        return dataclasses.replace(self, **given)

    def check_for(self, checkpoint) -> "SamplingOptions":
        """Raises ValueError when these options cannot run on ``checkpoint``; returns self."""
        check_overlap_frames(self.overlap_frames, int(checkpoint.frames_per_clip),
                             model=f" for checkpoint {checkpoint.path}")
        if self.guided and not checkpoint.supports_guidance:
            raise ValueError(
                f"checkpoint {checkpoint.path} was trained without condition dropout, so guidance has no meaning for "
                f"it; use audio_cfg=1 and portrait_cfg=1 (got {self.audio_cfg:g} and {self.portrait_cfg:g})")
        return self

    def recommendation(self) -> dict[str, Any]:
        """What a checkpoint stores (``sampling`` metadata): everything but the seed."""
        return {"sampler": self.sampler, "steps": self.steps, "audio_cfg": self.audio_cfg,
                "portrait_cfg": self.portrait_cfg, "overlap_frames": self.overlap_frames}

    def describe(self) -> str:
        return (f"{self.sampler} {self.steps} steps, audio guidance {self.audio_cfg:g}, portrait guidance "
                f"{self.portrait_cfg:g}, {self.overlap_frames} overlap frames, {float(self.fps):g} fps, seed {self.seed}")


PROJECT_DEFAULT = SamplingOptions()
AUTHORS_LOOP = SamplingOptions(sampler="ddpm", steps=DEFAULT_STEPS["ddpm"])
RECOMMENDATION_KEYS = ("sampler", "steps", "audio_cfg", "portrait_cfg", "overlap_frames")


def check_overrides(**overrides: Any) -> None:
    """Raises ValueError for an override that no checkpoint accepts (an unknown sampler, steps < 1...),
    so a caller can refuse it before loading a model; the checkpoint's own checks follow in ``check_for``."""
    PROJECT_DEFAULT.replace(**overrides)


def options_from_recommendation(recommendation: dict, source: str) -> SamplingOptions:
    """:class:`SamplingOptions` from a stored recommendation (all of :data:`RECOMMENDATION_KEYS`)."""
    if not isinstance(recommendation, dict):
        raise ValueError(f"{source}: the sampling recommendation must be a JSON object, got "
                         f"{type(recommendation).__name__}")
    missing = [key for key in RECOMMENDATION_KEYS if key not in recommendation]
    unknown = sorted(set(recommendation) - set(RECOMMENDATION_KEYS))
    if missing or unknown:
        raise ValueError(f"{source}: the sampling recommendation needs exactly {', '.join(RECOMMENDATION_KEYS)}"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    try:
        return SamplingOptions(**recommendation)
    except ValueError as error:
        raise ValueError(f"{source}: the sampling recommendation is invalid: {error}") from None


def recommended_options(checkpoint) -> SamplingOptions:
    """The options ``checkpoint`` recommends (see the module's note for where they come from)."""
    stored = checkpoint.metadata.get("sampling")
    if stored is not None:
        try:
            recommendation = json.loads(stored)
        except json.JSONDecodeError as error:
            raise ValueError(f"{checkpoint.path}: metadata 'sampling' is not valid JSON ({error})") from None
        options = options_from_recommendation(recommendation, str(checkpoint.path))
    elif checkpoint.source_format != "letstalk":
        options = AUTHORS_LOOP
    else:
        options = PROJECT_DEFAULT
    fps = checkpoint.training_fps
    return options.replace(fps=fps) if fps is not None else options
