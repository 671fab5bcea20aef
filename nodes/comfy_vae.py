"""ComfyUI's native VAE (from VAELoader) behind the core's codec interface.

The core works on scaled latents (``(z - shift) * scale``) and images ``[N, 3, H, W]`` in -1..1; a
native ``comfy.sd.VAE`` encodes ``[N, H, W, 3]`` 0..1 pictures to raw latents. This adapter converts
both ways so the same portrait and decode code runs with either kind of VAE.
"""

from __future__ import annotations

from typing import Iterator

import torch


class ComfyVAECodec:
    kind = "comfy_vae"

    def __init__(self, vae, scaling_factor: float, shift_factor: float = 0.0, chunk_size: int = 8):
        for attribute in ("encode", "decode", "latent_channels"):
            if not hasattr(vae, attribute):
                raise ValueError(f"vae: expected a ComfyUI VAE (from Load VAE), got {type(vae).__name__}")
        self.vae = vae
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.chunk_size = int(chunk_size)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.latent_channels)

    @property
    def downscale_factor(self) -> int:
        ratio = getattr(self.vae, "downscale_ratio", 8)
        if not isinstance(ratio, int):
            raise ValueError(f"vae: a VAE with downscale ratio {ratio!r} is a video VAE; LetsTalk needs an image VAE "
                             "(SD vae-ft-mse for the vdt variants, DC-AE f32c32 for lite)")
        return ratio

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        f = self.downscale_factor
        if height % f or width % f:
            raise ValueError(f"image size {width}x{height} is not a multiple of the VAE's factor {f}")
        return height // f, width // f

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in -1..1 -> scaled latents ``[N, C, h, w]`` float32."""
        pixels = images.add(1.0).mul(0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)  # [N, H, W, 3] 0..1
        raw = self.vae.encode(pixels)  # [N, C, h, w]
        return (raw.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def iter_decode(self, latents: torch.Tensor, *, chunk_size: int | None = None) -> Iterator[torch.Tensor]:
        """Scaled latents ``[N, C, h, w]`` or ``[B, F, C, h, w]`` -> ``[n, 3, H, W]`` in -1..1, chunk by chunk."""
        flat = latents.reshape(-1, *latents.shape[-3:])  # [N, C, h, w]
        if flat.shape[1] != self.latent_channels:
            raise ValueError(f"latents have {flat.shape[1]} channels but the VAE decodes {self.latent_channels}")
        step = chunk_size or self.chunk_size
        for start in range(0, flat.shape[0], step):
            raw = flat[start:start + step].float() / self.scaling_factor + self.shift_factor
            images = self.vae.decode(raw)  # [n, H, W, 3] 0..1
            images = images.reshape(-1, *images.shape[-3:])
            yield images.float().mul(2.0).sub(1.0).permute(0, 3, 1, 2)  # [n, 3, H, W] -1..1
