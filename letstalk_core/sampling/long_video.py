"""The long-video loop: clip after clip of ``frames_per_clip`` latents, chained by the memory bank.

The first clip's memory is the portrait latent repeated ``memory_frames`` (K) times; every later
clip's memory is the last K latents the previous clip produced. Audio covers the padded length (a
multiple of ``frames_per_clip``); the video is trimmed to ``num_frames``. :func:`iter_video_clips`
yields each clip's latents as soon as they are done, so a decoder can stream clip by clip in constant
memory.

Overlap (``overlap_frames`` = V > 0, beyond the authors' loop, which is V = 0): every clip after the
first covers the last V frames of the clip before it again, and those frames are held to what that clip
made (at each step they are replaced by the made latents diffused to the step's noise level, as in
RePaint's inpainting), so the model continues the motion inside one clip instead of across a clip
boundary. The memory is then the K latents just before the clip's first (overlapped) frame. Each clip
adds ``frames_per_clip - V`` new frames, so a video takes about ``F / (F - V)`` times the steps; the last
clip is placed to end at the padded length, so it may overlap more. :func:`clip_plan` gives the layout.

Noise: one base seed is drawn from the caller's ``torch.Generator``; clip ``i`` gets its own CPU
generator derived from (base seed, i), so a clip's noise never depends on how many clips run after
it, and the same seed gives the same latents on any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..checks import check_int
from .guidance import GuidanceScales, guided_model_output
from .schedules import make_sampler


class SamplingCancelled(Exception):
    """Raised when ``should_stop()`` returned True; the clips yielded before it stay valid."""


@dataclass(frozen=True)
class ClipLatents:
    """One finished clip: ``latents [B, f, C, H, W]`` for video frames ``start_frame .. start_frame+f-1``
    (``f = frames_per_clip`` except for a trimmed last clip)."""

    index: int
    start_frame: int
    latents: torch.Tensor


@dataclass(frozen=True)
class ClipWindow:
    """Where one clip of the plan lies: it is sampled over frames ``window_start .. window_start+F-1``
    and contributes the new frames ``new_start .. new_end-1`` (the ones before ``new_start`` are
    held to the previous clip's)."""

    index: int
    window_start: int
    new_start: int
    new_end: int

    @property
    def overlap(self) -> int:
        return self.new_start - self.window_start


def clip_plan(num_frames: int, frames_per_clip: int, overlap_frames: int = 0) -> list[ClipWindow]:
    """The clips that make ``num_frames`` frames in clips of ``frames_per_clip`` with ``overlap_frames``
    frames of overlap. Windows stay inside the length padded to whole clips (the audio's length), so the
    last window may overlap the one before by more than ``overlap_frames``. With no overlap, clip ``i``
    is frames ``i*F .. i*F+F-1``, the authors' layout."""
    check_int("num_frames", num_frames, 1)
    check_int("frames_per_clip", frames_per_clip, 1)
    check_overlap_frames(overlap_frames, frames_per_clip)
    padded = -(-num_frames // frames_per_clip) * frames_per_clip
    plan = [ClipWindow(0, 0, 0, min(frames_per_clip, num_frames))]
    new_start = frames_per_clip
    while new_start < num_frames:
        window = min(new_start - overlap_frames, padded - frames_per_clip)
        plan.append(ClipWindow(len(plan), window, new_start, min(window + frames_per_clip, num_frames)))
        new_start = window + frames_per_clip
    return plan


def check_overlap_frames(overlap_frames, frames_per_clip: int | None = None, *, model: str = "") -> int:
    """``overlap_frames`` as an int; raises ValueError unless it is an integer from 0 to
    ``frames_per_clip - 1`` (any integer >= 0 while the clip length is not known, None). ``model``
    names where the clip length comes from in the message (e.g. ``" for checkpoint x.safetensors"``)."""
    accepted = "an integer from 0 to frames_per_clip - 1"
    if frames_per_clip is not None:
        accepted += f" = {frames_per_clip - 1}{model}"
    return check_int("overlap_frames", overlap_frames, 0, None if frames_per_clip is None else frames_per_clip - 1,
                     accepted=accepted + " (0: clips follow each other, the authors' loop)")


def clip_generator(base_seed: int, clip_index: int) -> torch.Generator:
    """CPU generator for clip ``clip_index``, derived from ``base_seed`` with numpy's SeedSequence
    (independent streams, and clip i's stream does not depend on any other clip)."""
    words = np.random.SeedSequence([int(base_seed), int(clip_index)]).generate_state(2, dtype=np.uint32)
    seed = ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)
    return torch.Generator(device="cpu").manual_seed(seed)


def draw_base_seed(generator: torch.Generator | None) -> int:
    """One 62-bit integer drawn from ``generator`` (from torch's global RNG when None)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


def iter_video_clips(
    model: Callable[..., torch.Tensor],
    portrait_latent: torch.Tensor,
    *,
    audio_tokens: torch.Tensor | None = None,
    audio_windows: torch.Tensor | None = None,
    audio_projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
    null_audio_tokens: torch.Tensor | None = None,
    num_frames: int | None = None,
    frames_per_clip: int | None = None,
    memory_frames: int | None = None,
    sampler: str = "ddpm",
    steps: int = 250,
    timestep_spacing: str = "auto",
    audio_scale: float = 1.0,
    portrait_scale: float = 1.0,
    guidance_supported: bool = False,
    overlap_frames: int = 0,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[ClipLatents]:
    """Samples a talking video clip by clip; yields :class:`ClipLatents` in order.

    ``model(latents, timestep, portrait_latents, audio_tokens, memory_latents=None)`` -> ``[B, F, 2C, H, W]``.
    ``portrait_latent [B, C, H, W]``. Audio for the whole padded length, either ``audio_tokens
    [B, T, M, D]`` or ``audio_windows [B, T, W, L, D]`` with the ``audio_projection`` that maps them to
    tokens (run clip by clip; it also gives the null audio tokens, from zero windows, for guidance).
    ``num_frames`` (default T) is the true frame count; T must be at least ``num_frames`` rounded up to
    a multiple of ``frames_per_clip``. ``frames_per_clip`` and ``memory_frames`` default to
    ``model.config``'s. ``sampler`` one of ``ddpm``, ``ddim``, ``dpmpp_2m``, ``euler`` with ``steps``
    model evaluations per clip. ``audio_scale``/``portrait_scale`` other than 1 need
    ``guidance_supported``. ``overlap_frames`` (0 .. frames_per_clip - 1) frames of every clip after the
    first repeat the end of the clip before and are held to it (see the module's note); 0 is the authors'
    loop. ``progress(done, total)`` after every step (total = clips x steps);
    ``should_stop()`` before every step, raising :class:`SamplingCancelled` when it returns True.

    All inputs are checked here, before anything runs; sampling happens as the iterator is consumed.
    """
    frames_per_clip = _from_model_config(model, "frames_per_clip", frames_per_clip)
    memory_frames = _from_model_config(model, "memory_frames", memory_frames)
    check_int("frames_per_clip", frames_per_clip, 1)
    check_int("memory_frames", memory_frames, 0)
    if memory_frames > frames_per_clip:
        raise ValueError(
            f"memory_frames ({memory_frames}) cannot exceed frames_per_clip ({frames_per_clip}): the memory of a "
            "clip is the last memory_frames latents of the previous clip"
        )
    check_overlap_frames(overlap_frames, frames_per_clip)
    schedule = make_sampler(sampler, steps, timestep_spacing)
    scales = GuidanceScales(audio_scale=audio_scale, portrait_scale=portrait_scale)
    scales.check_supported(guidance_supported)
    for name, callback in (("progress", progress), ("should_stop", should_stop)):
        if callback is not None and not callable(callback):
            raise ValueError(f"{name} must be callable or None, got {type(callback).__name__}")

    if not torch.is_tensor(portrait_latent) or portrait_latent.ndim != 4:
        raise ValueError(f"portrait_latent must be a [B, C, H, W] tensor; got {_describe(portrait_latent)}")
    batch = portrait_latent.shape[0]

    if (audio_tokens is None) == (audio_windows is None):
        raise ValueError("give exactly one of audio_tokens [B, T, M, D] or audio_windows [B, T, W, L, D]")
    if audio_windows is not None:
        if not torch.is_tensor(audio_windows) or audio_windows.ndim != 5:
            raise ValueError(f"audio_windows must be a [B, T, W, L, D] tensor; got {_describe(audio_windows)}")
        if audio_projection is None or not callable(audio_projection):
            raise ValueError("audio_windows need audio_projection, the module that maps them to audio tokens")
        audio = audio_windows
    else:
        if not torch.is_tensor(audio_tokens) or audio_tokens.ndim != 4:
            raise ValueError(f"audio_tokens must be a [B, T, M, D] tensor; got {_describe(audio_tokens)}")
        audio = audio_tokens
    if audio.shape[0] != batch:
        raise ValueError(f"the audio has batch size {audio.shape[0]} but portrait_latent has {batch}")
    audio_frames = audio.shape[1]
    if num_frames is None:
        num_frames = audio_frames
    check_int("num_frames", num_frames, 1)
    padded = -(-num_frames // frames_per_clip) * frames_per_clip
    if audio_frames < padded:
        raise ValueError(
            f"the audio covers {audio_frames} frames, but {num_frames} frames in clips of {frames_per_clip} need "
            f"{padded} (pad the audio to a multiple of frames_per_clip)"
        )

    guided = len(scales.pass_weights()) > 1
    if guided and audio_windows is not None and null_audio_tokens is None:
        zero_windows = torch.zeros(1, 1, *audio_windows.shape[2:], device=portrait_latent.device)  # [1, 1, W, L, D]
        with torch.no_grad():
            null_audio_tokens = audio_projection(zero_windows)  # [1, 1, M, D]
    if guided and null_audio_tokens is None:
        raise ValueError(
            "guidance needs null_audio_tokens (the audio projection of all-zero windows) when audio_tokens are "
            "given; pass them, or pass audio_windows with audio_projection"
        )

    base_seed = draw_base_seed(generator)
    return _run_clips(
        model, portrait_latent, audio, audio_projection if audio_windows is not None else None, null_audio_tokens,
        clip_plan(num_frames, frames_per_clip, overlap_frames), frames_per_clip, memory_frames, schedule, scales,
        base_seed, progress, should_stop,
    )


def _run_clips(model, portrait_latent, audio, audio_projection, null_audio_tokens, windows, frames_per_clip,
               memory_frames, schedule, scales, base_seed, progress, should_stop):
    device = portrait_latent.device
    portrait = portrait_latent.float()  # [B, C, H, W]
    batch, channels, height, width = portrait.shape
    if null_audio_tokens is not None:
        null_audio_tokens = null_audio_tokens.to(device)
    num_clips = len(windows)
    total = num_clips * schedule.steps
    done = 0
    # the latents made so far that a later clip can still need (its overlap and its memory): frames
    # made_start .. made_start + made.shape[1] - 1; the portrait stands in before frame 0
    made = portrait[:, None][:, :0]  # [B, 0, C, H, W]
    made_start = 0
    with torch.no_grad():
        for window in windows:
            clip, start, overlap = window.index, window.window_start, window.overlap
            memory = None
            if memory_frames:
                memory = torch.stack([portrait if i < 0 else made[:, i - made_start]
                                      for i in range(start - memory_frames, start)], dim=1)  # [B, K, C, H, W]
            known = made[:, start - made_start:window.new_start - made_start] if overlap else None  # [B, V, C, H, W]
            clip_audio = audio[:, start:start + frames_per_clip].to(device)
            tokens = audio_projection(clip_audio) if audio_projection is not None else clip_audio  # [B, F, M, D]
            clip_rng = clip_generator(base_seed, clip)
            plan = schedule.begin()
            noise = torch.randn(batch, frames_per_clip, channels, height, width, generator=clip_rng)  # [B, F, C, H, W]
            latents = noise.to(device) * schedule.init_noise_sigma
            if overlap:
                known_noise = torch.randn(batch, overlap, channels, height, width, generator=clip_rng).to(device)
            for step, (index, timestep) in enumerate(plan):
                if should_stop is not None and should_stop():
                    raise SamplingCancelled(
                        f"sampling stopped before step {step + 1}/{schedule.steps} of clip {clip + 1}/{num_clips}"
                    )
                if overlap:  # the overlapped frames at this step's noise level
                    latents[:, :overlap] = schedule.noised(known, known_noise, index).to(latents.dtype)
                model_input = schedule.scale_model_input(latents, index)
                timesteps = torch.full((batch,), timestep, dtype=torch.long, device=device)  # [B]
                output = guided_model_output(
                    model, model_input, timesteps, portrait, tokens, memory, scales, null_audio_tokens
                )  # [B, F, 2C, H, W]
                latents = schedule.step(output, index, latents, generator=clip_rng)
                done += 1
                if progress is not None:
                    progress(done, total)
            if overlap:
                latents[:, :overlap] = known
            # keep what the next clip needs: its overlap and the memory before it
            need = memory_frames + windows[clip + 1].overlap if clip + 1 < num_clips else 0
            made = torch.cat([made, latents[:, window.new_start - start:]], dim=1)  # frames up to start + F - 1
            drop = max(made.shape[1] - need, 0)
            made_start, made = made_start + drop, made[:, drop:]
            yield ClipLatents(index=clip, start_frame=window.new_start,
                              latents=latents[:, window.new_start - start:window.new_end - start].clone())


def _from_model_config(model, name: str, value):
    if value is not None:
        return value
    config = getattr(model, "config", None)
    found = getattr(config, name, None) if config is not None else None
    if found is None and isinstance(config, dict):
        found = config.get(name)
    if found is None:
        raise ValueError(f"{name} was not given and the model has no config.{name}; pass {name}")
    return found


def _describe(value) -> str:
    return f"shape {tuple(value.shape)}" if torch.is_tensor(value) else type(value).__name__
