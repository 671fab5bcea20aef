"""Latent codecs: one small interface over the VAEs LetsTalk runs in.

A :class:`LatentCodec` wraps a diffusers autoencoder (``AutoencoderKL`` for the SD VAE and the demo
VAE, ``AutoencoderDC`` for DC-AE, ``AutoencoderTiny`` with pooled blocks for TAEF2) and hides its scale and shift, so the rest of the project only sees

* ``encode(images) -> latents`` and ``decode(latents) -> images``;
* images as float tensors ``[N, 3, H, W]`` with values in ``[-1, 1]`` (the diffusers convention);
* latents already multiplied by the scaling factor (and shifted where the VAE has a shift), i.e. the
  numbers the diffusion transformer sees.

Both methods also take a video batch ``[B, F, ...]`` and give back the same leading dims; both work in
chunks of frames so that a long clip never needs more than ``chunk_size`` frames of activations at once.
:func:`images_from_comfy` and :func:`images_to_comfy` convert from and to ComfyUI's IMAGE convention
``[N, H, W, 3]`` float in ``[0, 1]``.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Optional, Union

import torch
from torch import nn

__all__ = [
    "LatentCodec",
    "images_from_comfy",
    "images_to_comfy",
    "check_latent_channels",
]

CODEC_KINDS = ("sd_vae", "dc_ae", "demo_vae", "taef2")


def images_from_comfy(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[N, H, W, 3]`` (float, 0..1) -> codec images ``[N, 3, H, W]`` (float, -1..1).

    A fourth (alpha) channel is refused here: composite it first (see ``portrait.load_image``).
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor [N, H, W, 3] in ComfyUI's IMAGE convention, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images: expected ComfyUI IMAGE shape [N, H, W, 3] (or [H, W, 3]), got {list(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"images: expected a float tensor with values in 0..1, got dtype {images.dtype}")
    return images.permute(0, 3, 1, 2).mul(2.0).sub(1.0).contiguous()  # [N, 3, H, W]


def images_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """Codec images ``[..., 3, H, W]`` (-1..1) -> ComfyUI IMAGE ``[N, H, W, 3]`` float32 clamped to 0..1.

    Leading dims (e.g. ``[B, F]``) are flattened into N, as ComfyUI keeps a video as a flat batch.
    """
    if not isinstance(images, torch.Tensor) or images.dim() < 3 or images.shape[-3] != 3:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor [..., 3, H, W] with values in -1..1, got {shape}")
    flat = images.reshape(-1, *images.shape[-3:])  # [N, 3, H, W]
    return flat.float().add(1.0).mul(0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()  # [N, H, W, 3]


def check_latent_channels(latent_channels: int, expected: int, *, vae_name: str = "the VAE", model_name: str = "the model") -> None:
    """Refuse a VAE whose latent channel count differs from what a checkpoint expects, naming both numbers."""
    if int(latent_channels) != int(expected):
        raise ValueError(
            f"latent channel mismatch: {vae_name} encodes to {int(latent_channels)} channels but {model_name} "
            f"expects {int(expected)} (in_channels). Use the VAE the model was trained with "
            f"(4 channels: SD VAE or the demo VAE; 32 channels: DC-AE f32c32 or TAEF2)."
        )


def config_downscale_factor(config: Mapping[str, Any]) -> int:
    """Pixels per latent along a side for a diffusers VAE config (AutoencoderKL or DC-AE)."""
    blocks = config.get("encoder_block_out_channels") or config.get("block_out_channels")
    if not blocks:
        raise ValueError("VAE config has neither block_out_channels nor encoder_block_out_channels")
    return 2 ** (len(blocks) - 1)


class LatentCodec(nn.Module):
    """A VAE behind ``encode``/``decode`` with its scale and shift applied inside.

    Args:
        vae: a diffusers ``AutoencoderKL``, ``AutoencoderDC`` or (TAEF2) ``AutoencoderTiny``.
        kind: ``"sd_vae"``, ``"dc_ae"``, ``"demo_vae"`` or ``"taef2"`` (what the VAE is, for messages and saving).
        scaling_factor / shift_factor: override the values in the VAE's config. Latents are
            ``(z - shift) * scale`` where ``z`` is the VAE's raw latent.
        chunk_size: default number of frames per encoder/decoder call.

    ``encode``/``decode`` run without gradients and the wrapped VAE is frozen in eval mode; a trainer that
    fits the demo VAE trains ``codec.vae`` itself (``codec.vae.train().requires_grad_(True)``) and saves
    it with ``save_vae``.
    """

    def __init__(
        self,
        vae: nn.Module,
        kind: str,
        *,
        scaling_factor: Optional[float] = None,
        shift_factor: Optional[float] = None,
        chunk_size: int = 8,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderDC, AutoencoderKL, AutoencoderTiny

        from .taef2 import has_midblock_pool

        if not isinstance(vae, (AutoencoderKL, AutoencoderDC, AutoencoderTiny)):
            raise TypeError(f"vae: expected a diffusers AutoencoderKL, AutoencoderDC or AutoencoderTiny, got {type(vae).__name__}")
        if kind not in CODEC_KINDS:
            raise ValueError(f"kind: expected one of {CODEC_KINDS}, got {kind!r}")
        if kind == "dc_ae" and not isinstance(vae, AutoencoderDC):
            raise ValueError(f"kind 'dc_ae' needs an AutoencoderDC, got {type(vae).__name__}")
        if (kind == "taef2") != (isinstance(vae, AutoencoderTiny) and has_midblock_pool(vae)):
            raise ValueError(f"kind {kind!r} does not fit a {type(vae).__name__}: TAEF2 (kind 'taef2') is an "
                             "AutoencoderTiny with pooled innermost blocks (latents/taef2.py), and only it")
        if kind in ("sd_vae", "demo_vae") and not isinstance(vae, AutoencoderKL):
            raise ValueError(f"kind {kind!r} needs an AutoencoderKL, got {type(vae).__name__}")
        self.vae = vae.eval()
        self.vae.requires_grad_(False)
        self.kind = kind
        config = vae.config
        scale = scaling_factor if scaling_factor is not None else config.get("scaling_factor", 1.0)
        shift = shift_factor if shift_factor is not None else config.get("shift_factor", None)
        self.scaling_factor = float(scale)
        self.shift_factor = float(shift) if shift is not None else 0.0
        if not math.isfinite(self.scaling_factor) or self.scaling_factor <= 0:
            raise ValueError(f"scaling_factor must be a positive finite number, got {self.scaling_factor}")
        self.chunk_size = _check_chunk_size(chunk_size)
        # kept here by an application that moves the weights between devices (the ComfyUI nodes: the
        # ModelPatcher they wrap around them), so it lives and dies with the codec
        self.device_manager = None

    # ------------------------------------------------------------------ properties
    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downscale_factor(self) -> int:
        return config_downscale_factor(dict(self.vae.config))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def config(self) -> dict:
        """The diffusers config of the wrapped VAE as a plain dict (with ``_class_name``)."""
        cfg = dict(self.vae.config)
        cfg["_class_name"] = type(self.vae).__name__
        return {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent ``(h, w)`` for an image of ``height x width``; refuses sizes the VAE cannot take."""
        f = self.downscale_factor
        if height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the {self.kind} downscale factor {f}; "
                f"resize or crop to a multiple of {f} (e.g. {max(f, height // f * f)}x{max(f, width // f * f)})"
            )
        return height // f, width // f

    # ------------------------------------------------------------------ encode
    @torch.no_grad()
    def encode(
        self,
        images: torch.Tensor,
        *,
        chunk_size: Optional[int] = None,
        sample: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Images ``[N, 3, H, W]`` or ``[B, F, 3, H, W]`` in -1..1 -> scaled latents ``[N|B,F, C, H/f, W/f]``.

        ``sample=False`` takes the mean of the KL posterior (deterministic); ``sample=True`` draws from it
        with ``generator`` (DC-AE and TAEF2 are deterministic either way). Output is float32 on the codec's device.
        """
        flat, lead = self._flatten(images, 3, "images")
        self.latent_size(flat.shape[-2], flat.shape[-1])
        step = _check_chunk_size(chunk_size) if chunk_size is not None else self.chunk_size
        out = []
        for start in range(0, flat.shape[0], step):
            chunk = flat[start : start + step].to(device=self.device, dtype=self.dtype)
            if self.kind == "dc_ae":
                raw = self.vae.encode(chunk).latent
            elif self.kind == "taef2":
                raw = self.vae.encode(chunk).latents
            else:
                dist = self.vae.encode(chunk).latent_dist
                raw = dist.sample(generator=generator) if sample else dist.mode()
            out.append(((raw.float() - self.shift_factor) * self.scaling_factor))
        latents = torch.cat(out, dim=0)  # [N, C, h, w]
        return latents.reshape(*lead, *latents.shape[1:])

    # ------------------------------------------------------------------ decode
    @torch.no_grad()
    def iter_decode(self, latents: torch.Tensor, *, chunk_size: Optional[int] = None) -> Iterator[torch.Tensor]:
        """Yield decoded frames ``[n, 3, H, W]`` (float32, -1..1, not clamped) ``chunk_size`` frames at a time.

        ``latents`` is ``[N, C, h, w]`` or ``[B, F, C, h, w]``; the frames come in flattened order.
        Only one chunk's activations are alive at a time, so memory stays bounded for any clip length.
        """
        flat, _ = self._flatten(latents, self.latent_channels, "latents")
        step = _check_chunk_size(chunk_size) if chunk_size is not None else self.chunk_size
        for start in range(0, flat.shape[0], step):
            chunk = flat[start : start + step].to(device=self.device, dtype=torch.float32)
            raw = chunk / self.scaling_factor + self.shift_factor
            yield self.vae.decode(raw.to(self.dtype)).sample.float()  # [n, 3, H, W]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, chunk_size: Optional[int] = None) -> torch.Tensor:
        """Scaled latents ``[N, C, h, w]`` or ``[B, F, C, h, w]`` -> images ``[N|B,F, 3, H, W]`` (float32, -1..1)."""
        _, lead = self._flatten(latents, self.latent_channels, "latents")
        frames = torch.cat(list(self.iter_decode(latents, chunk_size=chunk_size)), dim=0)  # [N, 3, H, W]
        return frames.reshape(*lead, *frames.shape[1:])

    # ------------------------------------------------------------------ helpers
    def _flatten(self, x: torch.Tensor, channels: int, name: str) -> tuple[torch.Tensor, tuple[int, ...]]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (4, 5) or x.shape[-3] != channels:
            raise ValueError(
                f"{name}: expected shape [N, {channels}, H, W] or [B, F, {channels}, H, W] for this {self.kind} "
                f"({self.latent_channels} latent channels), got {list(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor, got dtype {x.dtype}")
        if x.shape[:-3].numel() == 0:
            raise ValueError(f"{name}: got an empty batch {list(x.shape)}")
        return x.reshape(-1, *x.shape[-3:]), tuple(x.shape[:-3])

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, latent_channels={self.latent_channels}, downscale_factor={self.downscale_factor}, "
            f"scaling_factor={self.scaling_factor}, shift_factor={self.shift_factor}"
        )


def _check_chunk_size(chunk_size: Union[int, None]) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer number of frames, got {chunk_size!r}")
    return chunk_size
