"""LetsTalkPipeline: portrait + speech -> talking video, the one path the CLI and the nodes share.

    portrait image --condition_portrait------> PortraitConditioning  latent [1, C, h, w], crop, picture, codec
    speech         --SpeechConditioning------> SpeechConditioning    features [F_padded, L, D] per clip length
    both           = Conditions (the one container of what a video is made from)
    Conditions + SamplingOptions --SampledVideo.iter_clips--> clip latents [1, f, C, h, w], clip by clip
    clip latents   --video_frames------------> frames [f, H, W, 3] 0..1 (pasted back into the picture or not)
    frames         --write_video-------------> mp4 with the speech muxed in (AAC)

Each stage is a function or class of its own, and the ComfyUI nodes call the same ones, one stage per
node (Portrait Condition, Encode Audio, Sampler, the decoders), so a checkpoint gives the same video by
every route. The video streams: one clip of frames is alive at a time, whatever the length of the speech.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..audio import (NAMED_ENCODERS, AudioFeatures, audio_encoder_from_state_dict, encode_audio, load_audio,
                     load_audio_encoder)
from ..audio.encoder_base import AudioEncoder
from ..audio.loading import MonoAudio
from ..checkpoints import LetsTalkCheckpoint, load_checkpoint
from ..framing import DEFAULT_CROP_MARGIN
from ..latents import LatentCodec, encode_portrait, images_to_comfy, load_vae, paste_back
from ..latents.portrait import PortraitCrop
from ..sampling import ClipLatents, iter_video_clips
from ..sampling.options import DEFAULT_STEPS, SamplingOptions, recommended_options  # noqa: F401 (re-exported)
from ..video import Mp4Writer

log = logging.getLogger("letstalk")

# the checkpoints bundled with the pack: the real-face demo model (128 px, TAEF2), used when no checkpoint is
# named, and the older cartoon model (64 px, synthetic faces only), a second choice (models/README.md)
DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "letstalk-demo.safetensors"
CARTOON_CHECKPOINT = DEMO_CHECKPOINT.with_name("letstalk-cartoon64.safetensors")


# latent scaling of the VAEs the published variants were trained with, by latent channels
# (SD VAE f8c4: 0.18215; DC-AE f32c32: 0.41407), for VAEs that do not state their own
LATENT_SCALING_BY_CHANNELS = {4: 0.18215, 32: 0.41407}


def latent_scaling_factor(ckpt: LetsTalkCheckpoint) -> float:
    """The factor the checkpoint's latents were scaled by: its bundled VAE's, else its variant's."""
    if ckpt.vae_config and "scaling_factor" in ckpt.vae_config:
        return float(ckpt.vae_config["scaling_factor"])
    channels = int(ckpt.model.config.in_channels)
    if channels not in LATENT_SCALING_BY_CHANNELS:
        raise ValueError(f"checkpoint {ckpt.path} has {channels}-channel latents and no VAE of its own, so its latent "
                         f"scale is unknown; bundle its VAE (scaling_factor in the VAE config)")
    return LATENT_SCALING_BY_CHANNELS[channels]


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


def sampling_options(ckpt: LetsTalkCheckpoint, options: SamplingOptions | None = None,
                     **overrides) -> SamplingOptions:
    """``options`` (default: what ``ckpt`` recommends) with the ``overrides`` that are not None, checked
    against the checkpoint: the one way every route (CLI, pipeline, nodes, evaluate) picks its options."""
    base = options if options is not None else recommended_options(ckpt)
    if not isinstance(base, SamplingOptions):
        raise ValueError(f"options must be SamplingOptions, got {type(base).__name__}")
    return base.replace(**overrides).check_for(ckpt)


def crop_margin(ckpt: LetsTalkCheckpoint, margin: float | None = None) -> float:
    """``margin`` when given, else the face-crop margin the checkpoint's training frames had (``prepare
    --margin``), else :data:`~letstalk_core.framing.DEFAULT_CROP_MARGIN`: a portrait is framed as the model
    saw faces in training."""
    if margin is not None:
        return margin
    return DEFAULT_CROP_MARGIN if ckpt.crop_margin is None else ckpt.crop_margin


def load_parts(
    checkpoint: str | Path | LetsTalkCheckpoint | None = None,
    *,
    vae: str | Path | LatentCodec | None = None,
    audio_encoder: str | Path | AudioEncoder | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[LetsTalkCheckpoint, LatentCodec, AudioEncoder]:
    """The checkpoint with the VAE and audio encoder it needs, checked against each other.

    ``vae``/``audio_encoder`` default to the ones a bundle carries; a checkpoint without them (the
    authors' files) needs them named. ``checkpoint`` None is the bundled demo model.
    """
    if checkpoint is None:
        if not DEMO_CHECKPOINT.is_file():
            raise FileNotFoundError(f"no checkpoint given and the bundled demo model {DEMO_CHECKPOINT} is missing")
        checkpoint = DEMO_CHECKPOINT
    ckpt = checkpoint if isinstance(checkpoint, LetsTalkCheckpoint) else load_checkpoint(checkpoint, device=device,
                                                                                      dtype=dtype)
    name = str(ckpt.path)
    channels = int(ckpt.model.config.in_channels)

    if isinstance(vae, LatentCodec):
        codec = vae
    elif vae is not None:
        codec = load_vae(vae, device=device, expected_latent_channels=channels)
    elif ckpt.vae_state_dict:
        codec = bundled_vae(ckpt, device=device)
    else:
        raise ValueError(f"checkpoint {name} carries no VAE; name one (e.g. --vae vae-ft-mse-840000-ema-pruned"
                         ".safetensors for the vdt variants, a DC-AE f32c32 for lite)")
    check_codec(ckpt, codec)

    encoder = audio_encoder_for(ckpt, audio_encoder, device=device)
    return ckpt, codec, encoder


def bundled_vae(ckpt: LetsTalkCheckpoint, *, device: str | torch.device = "cpu") -> LatentCodec | None:
    """The VAE a bundle carries, as a codec on ``device``; None when the checkpoint carries none."""
    if not ckpt.vae_state_dict:
        return None
    return load_vae(ckpt.vae_state_dict, config=ckpt.vae_config, device=device)


def audio_encoder_for(ckpt: LetsTalkCheckpoint, audio_encoder: str | Path | AudioEncoder | None = None, *,
                      device: str | torch.device = "cpu") -> AudioEncoder:
    """The audio encoder to use with ``ckpt``, checked against it: ``audio_encoder`` when given (a loaded
    encoder, 'mel', 'phones', 'phones+mel' or a path), else the one the checkpoint names (a weightless one by
    its name, mel bands with their count, or the encoder bundled in it)."""
    name = str(ckpt.path)
    if isinstance(audio_encoder, AudioEncoder):
        encoder = audio_encoder
    elif audio_encoder is not None:
        encoder = load_audio_encoder(audio_encoder, device=device)
    elif ckpt.audio_encoder_config is not None:
        spec = dict(ckpt.audio_encoder_config)
        kind = spec.pop("type", None)
        if kind in NAMED_ENCODERS:
            encoder = load_audio_encoder(kind, n_mels=int(spec.get("n_mels", 80)))
        elif ckpt.audio_encoder_state_dict:
            encoder = audio_encoder_from_state_dict(ckpt.audio_encoder_state_dict, kind, config=spec.get("config"),
                                                    source=f"the audio encoder bundled in {name}", device=device)
        else:
            raise ValueError(f"checkpoint {name} names a {kind!r} audio encoder but carries no weights for it; "
                             "pass the encoder (a Hugging Face folder or .safetensors) explicitly")
    else:
        raise ValueError(f"checkpoint {name} does not say which audio encoder it was trained with; name one "
                         "(e.g. --audio-encoder path/to/wav2vec2-base-960h)")
    check_audio_encoder(ckpt, encoder)
    return encoder


def check_audio_encoder(ckpt: LetsTalkCheckpoint, encoder: AudioEncoder) -> None:
    """Refuse an audio encoder whose features are not the ones the checkpoint's audio projection takes: of
    another kind than the one the checkpoint records (named both ways, even where the widths agree), or
    of another width."""
    name = str(ckpt.path)
    recorded = (ckpt.audio_encoder_config or {}).get("type")
    given = getattr(encoder, "kind", "")
    if recorded and given and recorded != "unknown" and recorded != given:
        raise ValueError(
            f"checkpoint {name} was trained with the {recorded!r} audio encoder but was given {given!r} "
            f"({encoder.source}); its features mean other things even where the widths agree. Use "
            f"{recorded!r} (e.g. --audio-encoder {recorded}"
            + (")" if recorded in NAMED_ENCODERS else " with its weights)")
        )
    projection = ckpt.audio_proj.config
    if projection.num_layers is not None and projection.feature_dim is not None:
        encoder.check_compatible(int(projection.num_layers), int(projection.feature_dim),
                                 expected_by=f"checkpoint {name}")
    elif encoder.num_layers * encoder.feature_dim != projection.input_features:
        raise ValueError(
            f"audio encoder {encoder.source} gives {encoder.num_layers} layers x {encoder.feature_dim} features "
            f"= {encoder.num_layers * encoder.feature_dim} per frame, but checkpoint {name} expects "
            f"{projection.input_features}; use the encoder the checkpoint was trained with"
        )


def check_codec(ckpt: LetsTalkCheckpoint, codec, what: str = "the VAE") -> None:
    """Refuse a VAE whose latents are not the ones the checkpoint was trained on, naming both counts."""
    channels = int(ckpt.model.config.in_channels)
    if codec.latent_channels != channels:
        raise ValueError(f"{what} makes {codec.latent_channels}-channel latents but checkpoint {ckpt.path} expects "
                         f"{channels}; use the VAE the checkpoint was trained with")


def model_resolution(ckpt: LetsTalkCheckpoint, codec: LatentCodec) -> int:
    """Pixel side of the square the model was trained at: latent sample size x VAE downscale."""
    return int(ckpt.model.config.sample_size) * int(codec.downscale_factor)


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
    windows = audio.windows(radius)[None].to(device)  # [1, F_padded, 2r+1, L, D]
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
) -> Iterator[torch.Tensor]:
    """Decode latents chunk by chunk -> frames ``[n, H, W, 3]`` float 0..1 (ComfyUI IMAGE convention).

    ``latents``: ``[F, C, h, w]`` / ``[1, F, C, h, w]``, or an iterator of such (one clip each).
    ``paste_into``: the original image; with ``crop_box`` the frames are pasted back at its size.
    """
    if torch.is_tensor(latents):
        latents = [latents]
    for clip in latents:
        clip = clip.latents if isinstance(clip, ClipLatents) else clip
        for frames in codec.iter_decode(clip, chunk_size=chunk_size):  # [n, 3, H, W] in -1..1
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
    return iter_frames(codec, clips, paste_into=portrait.image if paste_back else None, crop_box=portrait.crop.crop_box)


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


class LetsTalkPipeline:
    """A loaded checkpoint with its VAE and audio encoder; call it with an image and speech.

        pipe = LetsTalkPipeline.from_pretrained("letstalk-demo.safetensors")
        pipe("portrait.png", "speech.wav", out="talking.mp4")  # the sampling the checkpoint recommends
        pipe("portrait.png", "speech.wav", out="fast.mp4", sampler="dpmpp_2m", steps=15)  # overrides
    """

    def __init__(self, checkpoint: LetsTalkCheckpoint, vae: LatentCodec, audio_encoder: AudioEncoder):
        self.checkpoint = checkpoint
        self.vae = vae
        self.audio_encoder = audio_encoder

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path | None = None, *, vae=None, audio_encoder=None,
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
