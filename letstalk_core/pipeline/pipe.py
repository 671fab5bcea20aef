"""``LetsTalkPipeline``: the stages of the package in one object, for Python and the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from ..audio.encoder_base import AudioEncoder
from ..checkpoints import LetsTalkCheckpoint
from ..latents import LatentCodec
from ..sampling.options import SamplingOptions
from ..video import Mp4Writer
from .conditions import Conditions, prepare_conditions
from .parts import crop_margin, load_parts, model_resolution, sampling_options
from .video import SampledVideo, video_frames, write_video


class LetsTalkPipeline:
    """A loaded checkpoint with its VAE and audio encoder; call it with an image and speech.

        pipe = LetsTalkPipeline.from_pretrained("my_letstalk.safetensors")  # or letstalk_core.shipped.DEMO_CHECKPOINT
        pipe("portrait.png", "speech.wav", out="talking.mp4")  # the sampling the checkpoint recommends
        pipe("portrait.png", "speech.wav", out="fast.mp4", sampler="dpmpp_2m", steps=15)  # overrides
    """

    def __init__(self, checkpoint: LetsTalkCheckpoint, vae: LatentCodec, audio_encoder: AudioEncoder):
        self.checkpoint = checkpoint
        self.vae = vae
        self.audio_encoder = audio_encoder

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, *, vae=None, audio_encoder=None,
                        device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> "LetsTalkPipeline":
        return cls(*load_parts(checkpoint, vae=vae, audio_encoder=audio_encoder, device=device, dtype=dtype))

    @property
    def resolution(self) -> int:
        return model_resolution(self.checkpoint, self.vae)

    @property
    def crop_margin(self) -> float:
        """The face-crop margin the checkpoint was trained with (``prepare --margin``), else
        :data:`~letstalk_core.framing.DEFAULT_CROP_MARGIN`."""
        return crop_margin(self.checkpoint)

    def options(self, options: SamplingOptions | None = None, **overrides) -> SamplingOptions:
        """The checkpoint's recommended sampling options (or ``options``) with ``overrides`` not None."""
        return sampling_options(self.checkpoint, options, **overrides)

    def prepare(self, image, audio, *, fps=None, crop=True, margin=None, on_no_face="center",
                sample_rate=None) -> Conditions:
        """``fps`` None: the checkpoint's; ``margin`` None: :attr:`crop_margin`, so a portrait is framed
        as the training frames were."""
        fps = self.options(fps=fps).fps
        return prepare_conditions(self.checkpoint, self.vae, self.audio_encoder, image, audio, fps=fps, crop=crop,
                                  margin=margin, on_no_face=on_no_face, sample_rate=sample_rate)

    def sampled_video(self, conditions: Conditions, options: SamplingOptions | None = None,
                      **overrides) -> SampledVideo:
        """The video of ``conditions``, sampled clip by clip as it is read (nothing kept); options as in
        :meth:`iter_frames`."""
        return SampledVideo(self.checkpoint, conditions, self.options(options, **overrides), keep_bytes=0)

    def iter_frames(self, conditions: Conditions, options: SamplingOptions | None = None, *,
                    paste_back: bool | None = None, progress=None, should_stop=None,
                    **overrides) -> Iterator[torch.Tensor]:
        """Frames ``[n, H, W, 3]`` 0..1, decoded as each clip finishes; ``num_frames`` in all. Sampling
        options: ``options`` (default: the checkpoint's) with ``overrides`` (sampler, steps, seed,
        audio_cfg, portrait_cfg, overlap_frames; None keeps the default). ``paste_back``: the face
        pasted back into the whole picture (frames at its size); None: when the picture is larger than
        the model's square (:attr:`Conditions.portrait_is_larger`); False: the model's square crop."""
        video = self.sampled_video(conditions, options, **overrides)
        return video_frames(video, paste_back=paste_back, progress=progress, should_stop=should_stop)

    def __call__(self, image, audio, *, out: str | Path | None = None, options: SamplingOptions | None = None,
                 crop: bool = True, paste_back: bool | None = None, margin: float | None = None,
                 on_no_face: str = "center", progress=None, should_stop=None, sample_rate: int | None = None,
                 **overrides):
        """With ``out``: stream into that mp4 (speech muxed) and return its path; without: all frames
        ``[F, H, W, 3]`` float 0..1. Sampling options as in :meth:`iter_frames` (``fps`` too)."""
        options = self.options(options, **overrides)  # refused before any work
        writer = Mp4Writer(out, fps=options.fps) if out is not None else None  # a bad path, too
        conditions = self.prepare(image, audio, fps=options.fps, crop=crop, margin=margin, on_no_face=on_no_face,
                                  sample_rate=sample_rate)
        frames = self.iter_frames(conditions, options, paste_back=paste_back, progress=progress,
                                  should_stop=should_stop)
        if out is None:
            return torch.cat(list(frames), dim=0)
        return write_video(writer, frames, conditions.fps, conditions.speech.speech)
