"""Sampling: the respaced LetsTalk schedule on diffusers schedulers, audio/portrait guidance, and the
long-video loop with the memory bank."""

from .guidance import GuidanceScales, guided_model_output
from .long_video import (
    ClipLatents,
    ClipWindow,
    SamplingCancelled,
    check_overlap_frames,
    clip_generator,
    clip_plan,
    draw_base_seed,
    iter_video_clips,
)
from .options import DEFAULT_STEPS, SamplingOptions, recommended_options
from .schedules import (
    NUM_TRAIN_TIMESTEPS,
    SAMPLERS,
    TIMESTEP_SPACINGS,
    LearnedRangeDDPMScheduler,
    RespacedSampler,
    even_timesteps,
    make_sampler,
    respaced_betas,
    respaced_timesteps,
    stride_timesteps,
    training_alphas_cumprod,
    training_betas,
)

__all__ = [
    "DEFAULT_STEPS",
    "SamplingOptions",
    "recommended_options",
    "NUM_TRAIN_TIMESTEPS",
    "SAMPLERS",
    "TIMESTEP_SPACINGS",
    "ClipLatents",
    "ClipWindow",
    "GuidanceScales",
    "LearnedRangeDDPMScheduler",
    "RespacedSampler",
    "SamplingCancelled",
    "check_overlap_frames",
    "clip_generator",
    "clip_plan",
    "draw_base_seed",
    "even_timesteps",
    "guided_model_output",
    "iter_video_clips",
    "make_sampler",
    "respaced_betas",
    "respaced_timesteps",
    "stride_timesteps",
    "training_alphas_cumprod",
    "training_betas",
]
