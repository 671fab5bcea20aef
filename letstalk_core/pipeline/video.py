"""From conditions to a video, streamed: clip latents with the memory bank (``iter_clip_latents``,
``SampledVideo``), frames (``video_frames``) and the mp4 with the speech (``write_video``)."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..audio import AudioFeatures
from ..audio.loading import MonoAudio
from ..checkpoints import LetsTalkCheckpoint
from ..latents import LatentCodec, images_to_comfy, paste_back
from ..sampling import ClipLatents, SamplingCancelled, iter_video_clips
from ..sampling.options import SamplingOptions
from ..video import Mp4Writer
from .conditions import Conditions
from .parts import check_audio_encoder, check_codec


def iter_clip_latents(
    ckpt: LetsTalkCheckpoint,
    portrait_latent: torch.Tensor,
    audio: AudioFeatures,
    options: SamplingOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[ClipLatents]:
    """Clip after clip of latents with the memory bank; ``options`` are checked against the checkpoint
    before the first step (see :func:`sampling_options`)."""
    if not isinstance(options, SamplingOptions):
        raise ValueError(f"options must be SamplingOptions (see sampling_options), got {type(options).__name__}")
    options.check_for(ckpt)
    model = ckpt.model
    device = next(model.parameters()).device
    radius = (int(ckpt.audio_proj.config.window_size) - 1) // 2
    # kept where they are (the CPU): each clip's slice goes to the device as it is sampled (wav2vec2's windows
    # of an hour of speech are ~16 GB)
    windows = audio.windows(radius)[None]  # [1, F_padded, 2r+1, L, D]
    generator = torch.Generator(device="cpu").manual_seed(options.seed % (1 << 63))
    return iter_video_clips(
        model, portrait_latent.to(device), audio_windows=windows, audio_projection=ckpt.audio_proj,
        num_frames=audio.num_frames, frames_per_clip=ckpt.frames_per_clip, memory_frames=ckpt.memory_frames,
        sampler=options.sampler, steps=options.steps, audio_scale=options.audio_cfg,
        portrait_scale=options.portrait_cfg, guidance_supported=ckpt.supports_guidance,
        overlap_frames=options.overlap_frames, generator=generator, progress=progress, should_stop=should_stop,
    )


DEFAULT_KEEP_LATENTS_MB = 64  # a sampled video keeps its latents up to this size, else it is sampled as decoded


def keep_latent_bytes(megabytes=DEFAULT_KEEP_LATENTS_MB, name: str = "keep_latents_mb") -> int:
    """How many bytes of latents a sampled video may keep, from a number of MiB (a string is parsed: the
    nodes pass their ``LETSTALK_KEEP_LATENTS_MB`` setting); refused naming ``name`` unless a number >= 0."""
    try:
        value = float(megabytes)
    except (TypeError, ValueError):
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number of MiB >= 0 (0: always sample while decoding), got {megabytes!r}")
    return int(value * 2**20)


class SampledVideo:
    """A talking video between sampling and decoding: what the sampler node hands the decoders.

    Short videos are sampled at once (:meth:`sample`) and their clip latents kept on the CPU, so each
    decoder reuses them. A video whose latents would exceed ``keep_bytes`` is sampled lazily instead:
    :meth:`iter_clips` samples clip after clip while a decoder consumes them, nothing is kept, and a
    streaming decoder then runs in constant memory whatever the length of the speech.
    """

    def __init__(self, ckpt: LetsTalkCheckpoint, conditions: Conditions, options: SamplingOptions, *,
                 keep_bytes: int | None = None):
        if not isinstance(conditions, Conditions):
            raise ValueError(f"conditions must be Conditions (see prepare_conditions), got {type(conditions).__name__}")
        check_audio_encoder(ckpt, conditions.speech.encoder)  # the features are the ones it was trained on
        check_codec(ckpt, conditions.portrait.codec, "the portrait's VAE")
        self.checkpoint, self.conditions = ckpt, conditions
        self.options = options.replace(fps=conditions.fps).check_for(ckpt)  # the speech was framed at its fps
        self.audio = conditions.speech.features(ckpt.frames_per_clip)  # padded to whole clips
        self.speech = conditions.speech.speech  # MonoAudio: the user's track goes into the video
        config = ckpt.model.config
        side = int(config.sample_size)
        self.latent_bytes = self.audio.num_frames * int(config.in_channels) * side * side * 4  # float32 on the CPU
        self.lazy = self.latent_bytes > (keep_latent_bytes() if keep_bytes is None else keep_bytes)
        self._kept: list[ClipLatents] | None = None

    @property
    def num_frames(self) -> int:
        return self.audio.num_frames

    @property
    def fps(self) -> Fraction:
        return self.audio.fps

    @property
    def num_clips(self) -> int:
        from ..sampling import clip_plan

        return len(clip_plan(self.num_frames, self.checkpoint.frames_per_clip, self.options.overlap_frames))

    @property
    def sampled(self) -> bool:
        return self._kept is not None

    def _sample(self, progress, should_stop) -> Iterator[ClipLatents]:
        for clip in iter_clip_latents(self.checkpoint, self.conditions.portrait.latent, self.audio, self.options,
                                      progress=progress, should_stop=should_stop):
            yield ClipLatents(clip.index, clip.start_frame, clip.latents.float().cpu())

    def sample(self, *, progress=None, should_stop=None, on_clip: Callable[[ClipLatents], None] | None = None):
        """Sample every clip now and keep the latents (for a video that is not :attr:`lazy`)."""
        if self.lazy:
            raise ValueError(f"this video's latents take {self.latent_bytes / 2**20:.0f} MiB; it is sampled while "
                             "it is decoded (iter_clips), not kept")
        if self._kept is None:
            kept = []
            for clip in self._sample(progress, should_stop):
                kept.append(clip)
                if on_clip is not None:
                    on_clip(clip)
            self._kept = kept
        return self

    def iter_clips(self, *, progress=None, should_stop=None) -> Iterator[ClipLatents]:
        """The clips in order: the kept ones, or (lazy) sampled one by one as they are asked for."""
        if self._kept is not None:
            return iter(self._kept)
        if not self.lazy:
            return iter(self.sample(progress=progress, should_stop=should_stop)._kept)
        return self._sample(progress, should_stop)


def iter_frames(
    codec: LatentCodec,
    latents: Iterator[torch.Tensor] | torch.Tensor,
    *,
    paste_into: Any = None,
    crop_box=None,
    chunk_size: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[torch.Tensor]:
    """Decode latents chunk by chunk -> frames ``[n, H, W, 3]`` float 0..1 (ComfyUI IMAGE convention).

    ``latents``: ``[F, C, h, w]`` / ``[1, F, C, h, w]``, or an iterator of such (one clip each).
    ``paste_into``: the original image; with ``crop_box`` the frames are pasted back at its size.
    ``should_stop()`` is asked after each decoded chunk (it may raise, as ComfyUI's interrupt does); True stops with :class:`~letstalk_core.sampling.SamplingCancelled`.
    """
    if torch.is_tensor(latents):
        latents = [latents]
    for clip in latents:
        clip = clip.latents if isinstance(clip, ClipLatents) else clip
        for frames in codec.iter_decode(clip, chunk_size=chunk_size):  # [n, 3, H, W] in -1..1
            if should_stop is not None and should_stop():
                raise SamplingCancelled("decoding was stopped")
            frames = images_to_comfy(frames).cpu()  # [n, H, W, 3] 0..1, on the CPU whatever decoded it
            if paste_into is not None:
                frames = paste_back(frames, paste_into, crop_box)
            yield frames


def video_frames(video: SampledVideo, *, paste_back: bool | None = None, codec=None,
                 clips: Iterator[ClipLatents] | None = None, progress=None, should_stop=None) -> Iterator[torch.Tensor]:
    """The frames of a sampled video ``[n, H, W, 3]`` 0..1, clip by clip: decoded with ``codec`` (None: the
    one that encoded the portrait), pasted back into the portrait's picture when ``paste_back`` (None:
    when the picture is larger than the model's square). ``clips``: the clips as someone else iterates
    them (a node reporting progress); None: ``video.iter_clips`` (sampling a lazy video on the way)."""
    portrait = video.conditions.portrait
    codec = portrait.codec if codec is None else codec
    check_codec(video.checkpoint, codec)
    if paste_back is None:
        paste_back = portrait.is_larger
    if clips is None:
        clips = video.iter_clips(progress=progress, should_stop=should_stop)
    return iter_frames(codec, clips, paste_into=portrait.image if paste_back else None, crop_box=portrait.crop.crop_box,
                       should_stop=should_stop)


def speech_for_frames(speech: MonoAudio, num_frames: int, fps) -> tuple[torch.Tensor, int]:
    """The user's own track (its rate and channels, not the encoder's 16 kHz mono copy), trimmed or
    padded with silence to exactly ``num_frames`` video frames -> ``([C, T], rate)``."""
    from ..audio import as_fps

    track, rate = speech.original()  # [C, T]
    samples = round(num_frames / as_fps(fps) * rate)
    track = track[:, :samples]
    if track.shape[1] < samples:  # the last frame outlasts the speech
        track = torch.nn.functional.pad(track, (0, samples - track.shape[1]))
    return track, rate


def write_video(destination: str | Path | Mp4Writer, frames: Iterator[torch.Tensor], fps,
                speech: MonoAudio | None) -> Path:
    """Stream frames into an mp4 with the speech muxed in. Atomic: when anything fails (or sampling is
    cancelled) nothing is left under the output name. ``destination`` may be an unopened
    :class:`Mp4Writer` made earlier, so a bad output path is refused before any work is done."""
    writer = destination if isinstance(destination, Mp4Writer) else Mp4Writer(destination, fps=fps)
    with writer:
        if speech is not None:  # the user's own track at its own rate and channels; cut to the video at close
            track, rate = speech.original()
            writer.set_audio(track.numpy(), rate)
        for chunk in frames:
            writer.write(chunk)
    return Path(writer.path)
