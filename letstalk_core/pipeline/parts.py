"""A checkpoint and what it needs beside it: its VAE, its audio encoder, its sampling options and the
framing of its portraits, each checked against the checkpoint (``load_parts`` brings them together)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..audio import NAMED_ENCODERS, audio_encoder_from_state_dict, load_audio_encoder
from ..audio.encoder_base import AudioEncoder
from ..checkpoints import LetsTalkCheckpoint, load_checkpoint
from ..framing import DEFAULT_CROP_MARGIN
from ..latents import LatentCodec, load_vae
from ..sampling.options import SamplingOptions, recommended_options


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


def load_parts(
    checkpoint: str | Path | LetsTalkCheckpoint,
    *,
    vae: str | Path | LatentCodec | None = None,
    audio_encoder: str | Path | AudioEncoder | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[LetsTalkCheckpoint, LatentCodec, AudioEncoder]:
    """The checkpoint with the VAE and audio encoder it needs, checked against each other.

    ``vae``/``audio_encoder`` default to the ones a bundle carries; a checkpoint without them (the
    authors' files) needs them named.
    """
    if checkpoint is None:
        raise ValueError("checkpoint: give a LetsTalk checkpoint (a file, or a loaded LetsTalkCheckpoint); the "
                         "models the pack ships are letstalk_core.shipped.DEMO_CHECKPOINT and CARTOON_CHECKPOINT")
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


def crop_margin(ckpt: LetsTalkCheckpoint, margin: float | None = None) -> float:
    """``margin`` when given, else the face-crop margin the checkpoint's training frames had (``prepare
    --margin``), else :data:`~letstalk_core.framing.DEFAULT_CROP_MARGIN`: a portrait is framed as the model
    saw faces in training."""
    if margin is not None:
        return margin
    return DEFAULT_CROP_MARGIN if ckpt.crop_margin is None else ckpt.crop_margin


def sampling_options(ckpt: LetsTalkCheckpoint, options: SamplingOptions | None = None,
                     **overrides) -> SamplingOptions:
    """``options`` (default: what ``ckpt`` recommends) with the ``overrides`` that are not None, checked
    against the checkpoint: the one way every route (CLI, pipeline, nodes, evaluate) picks its options."""
    base = options if options is not None else recommended_options(ckpt)
    if not isinstance(base, SamplingOptions):
        raise ValueError(f"options must be SamplingOptions, got {type(base).__name__}")
    return base.replace(**overrides).check_for(ckpt)
