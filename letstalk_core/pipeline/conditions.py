"""What a video is made from: the portrait (``condition_portrait`` -> ``PortraitConditioning``) and the
speech (``SpeechConditioning``), together ``Conditions``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

from ..audio import AudioFeatures, encode_audio, load_audio
from ..audio.encoder_base import AudioEncoder
from ..audio.loading import MonoAudio
from ..checkpoints import LetsTalkCheckpoint
from ..latents import encode_portrait
from ..latents.portrait import PortraitCrop
from .parts import check_codec, crop_margin, model_resolution

log = logging.getLogger("letstalk")


SHORT_SPEECH_SECONDS = 0.5  # shorter speech still runs, with a warning: about one syllable


class SpeechConditioning:
    """Speech with the encoder that turns it into features; the features for a clip length are computed
    once, when first asked for (padding to whole clips depends on the model's ``frames_per_clip``)."""

    def __init__(self, audio: Any, encoder: AudioEncoder, fps: float | Fraction = 25, *,
                 sample_rate: int | None = None):
        from ..audio import as_fps
        from ..audio.conditioning import speech_frame_count

        self.speech = audio if isinstance(audio, MonoAudio) else load_audio(audio, sample_rate,
                                                                             target_sample_rate=encoder.sample_rate)
        self.encoder = encoder
        self.fps = as_fps(fps)
        self.num_frames = speech_frame_count(self.speech, self.fps)
        self._features: dict[int | None, AudioFeatures] = {}
        self.warning = None  # a line for whoever shows it (the node), also logged
        if self.speech.seconds < SHORT_SPEECH_SECONDS:
            self.warning = (f"{self.speech.source} lasts only {self.speech.seconds:.2f} s, so the video will be "
                            f"{self.num_frames} frames long; a mouth that moves with words needs at least "
                            f"{SHORT_SPEECH_SECONDS:g} s of speech")
            log.warning(self.warning)

    def features(self, frames_per_clip: int | None = None) -> AudioFeatures:
        if frames_per_clip not in self._features:
            self._features[frames_per_clip] = encode_audio(self.speech, self.encoder, fps=self.fps,
                                                           frames_per_clip=frames_per_clip)
        return self._features[frames_per_clip]


@dataclass(frozen=True)
class PortraitConditioning:
    """The portrait as the model sees it: the latent of the face crop, the crop itself, the picture it was
    cut from (the face is pasted back into it) and the codec that encoded it (which decodes the video
    unless another VAE is named)."""

    latent: torch.Tensor  # [1, C, h, w]
    crop: PortraitCrop
    image: Any = field(repr=False)
    codec: Any = field(repr=False)

    @property
    def is_larger(self) -> bool:
        """The picture is larger than the model's square: by default the face is pasted back into it."""
        return max(self.crop.image_size) > self.crop.resolution


@dataclass(frozen=True)
class Conditions:
    """The one container of what a video is made from: the portrait and the speech (the two inputs of
    the sampler node; what :meth:`LetsTalkPipeline.prepare` returns)."""

    portrait: PortraitConditioning
    speech: SpeechConditioning

    def __post_init__(self):
        if not isinstance(self.portrait, PortraitConditioning):
            raise ValueError(f"portrait: expected a PortraitConditioning (condition_portrait, LetsTalk Portrait "
                             f"Condition), got {type(self.portrait).__name__}")
        if not isinstance(self.speech, SpeechConditioning):
            raise ValueError(f"speech: expected a SpeechConditioning (LetsTalk Encode Audio), got "
                             f"{type(self.speech).__name__}")

    @property
    def num_frames(self) -> int:
        return self.speech.num_frames

    @property
    def fps(self) -> Fraction:
        return self.speech.fps

    @property
    def portrait_is_larger(self) -> bool:
        return self.portrait.is_larger


def condition_portrait(ckpt: LetsTalkCheckpoint, codec, image: Any, *, crop: bool = True, margin: float | None = None,
                       on_no_face: str = "center", name: str = "image") -> PortraitConditioning:
    """Any picture -> the face crop at the model's resolution (MTCNN, or the centre square when ``crop`` is
    False or no face is found and ``on_no_face`` is "center"), framed with ``margin`` (None: the
    checkpoint's training margin), and its latent through ``codec`` (checked against the checkpoint)."""
    check_codec(ckpt, codec)
    latent, portrait = encode_portrait(codec, image, model_resolution(ckpt, codec), margin=crop_margin(ckpt, margin),
                                       on_no_face=on_no_face, detector="mtcnn" if crop else "none", name=name)
    return PortraitConditioning(latent, portrait, image, codec)  # latent [1, C, h, w]


def prepare_conditions(ckpt: LetsTalkCheckpoint, codec, encoder: AudioEncoder, image: Any, audio: Any, *,
                       fps: float | Fraction = 25, crop: bool = True, margin: float | None = None,
                       on_no_face: str = "center", sample_rate: int | None = None) -> Conditions:
    """The portrait (:func:`condition_portrait`) and the speech (:class:`SpeechConditioning`) of a video."""
    return Conditions(condition_portrait(ckpt, codec, image, crop=crop, margin=margin, on_no_face=on_no_face),
                      SpeechConditioning(audio, encoder, fps, sample_rate=sample_rate))
