"""TAEF2: the tiny autoencoder distilled for the FLUX.2 latent space (MIT, madebyollin/taesd), as a codec.

RGB at 1/8 of the size -> 32 latent channels, 30-33 dB PSNR on a real face at 128 px, 2.7 MB per half.
The network is diffusers' :class:`~diffusers.AutoencoderTiny` (the TAESD family: residual blocks of three
3x3 convs, stride-2 downsampling, nearest upsampling, a ``tanh(x/3)*3`` clamp in front of the decoder)
with one addition that diffusers lacks: in the three innermost blocks of the encoder and of the decoder,
a residual branch (1x1 conv to 4x the channels, GroupNorm with 4 groups, ReLU, 1x1 conv back) is added to
the block's input before the block runs. :class:`PooledTinyBlock` is that block; :func:`build_tiny_autoencoder`
puts six of them in place.

The published files (``taef2_encoder.pth``, ``taef2_decoder.pth``) are fp16 state dicts of plain
``nn.Sequential`` networks, keyed ``0.weight``, ``1.conv.0.weight``, ``13.pool.3.weight``, ...;
:func:`read_taef2_files` reads them (``torch.load(weights_only=True)``) and renames the keys to the
``AutoencoderTiny`` layout (``encoder.layers.N.`` and, since ``DecoderTiny`` clamps inside ``forward``
rather than in a layer of its own, ``decoder.layers.N-1.``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from diffusers.models.autoencoders.vae import AutoencoderTinyBlock
from torch import nn

from ..weights import read_torch_file

__all__ = [
    "TAEF2_FILES",
    "PooledTinyBlock",
    "build_tiny_autoencoder",
    "has_midblock_pool",
    "is_tiny_autoencoder_state",
    "read_taef2_files",
    "taef2_files_in",
]

TAEF2_FILES = ("taef2_encoder.pth", "taef2_decoder.pth")
# The config (configs/taef2.json) is diffusers' AutoencoderTiny's plus this project's key "midblock_pool":
# the innermost blocks carry the pool branch. Its scaling factor is 1: the raw latents of 128 px crops of
# real faces already have a standard deviation near 1 (0.96 on a GRID frame; tests/core/test_taef2.py).
MIDBLOCK_POOL_KEY = "midblock_pool"
# the three innermost blocks: encoder.layers 11-13 (after the third stride-2 conv) and decoder.layers 2-4
# (the first three blocks after the input conv and its ReLU)
ENCODER_POOLED_LAYERS = (11, 12, 13)
DECODER_POOLED_LAYERS = (2, 3, 4)

_FILE_KEY = re.compile(r"^(\d+)\.(.+)$")


class PooledTinyBlock(AutoencoderTinyBlock):
    """diffusers' ``AutoencoderTinyBlock`` with TAEF2's branch in front: ``block(x + pool(x))``.

    ``pool`` is 1x1 conv (C -> 4C, no bias), GroupNorm(4, 4C), ReLU, 1x1 conv (4C -> C, no bias); its
    GroupNorm pools statistics over the whole image, which a stack of 3x3 convs cannot see.
    """

    def __init__(self, channels: int, act_fn: str = "relu") -> None:
        super().__init__(channels, channels, act_fn)
        wide = 4 * channels
        self.pool = nn.Sequential(
            nn.Conv2d(channels, wide, 1, bias=False),
            nn.GroupNorm(4, wide),
            nn.ReLU(),
            nn.Conv2d(wide, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C, H, W]
        return super().forward(x + self.pool(x))


def build_tiny_autoencoder(config: Mapping[str, Any]):
    """An ``AutoencoderTiny`` from its diffusers config (random weights; load a state dict next), with
    TAEF2's pooled innermost blocks when the config says ``midblock_pool: true`` (configs/taef2.json)."""
    from diffusers import AutoencoderTiny

    config = dict(config)
    pooled = bool(config.pop(MIDBLOCK_POOL_KEY, False))
    # AutoencoderTiny records block_out_channels itself (from encoder_block_out_channels), not as an argument
    vae = AutoencoderTiny.from_config({k: v for k, v in config.items() if not k.startswith("_") and k != "block_out_channels"})
    if pooled:
        act = vae.config.act_fn
        for index in ENCODER_POOLED_LAYERS:
            vae.encoder.layers[index] = PooledTinyBlock(vae.config.encoder_block_out_channels[-1], act)
        for index in DECODER_POOLED_LAYERS:
            vae.decoder.layers[index] = PooledTinyBlock(vae.config.decoder_block_out_channels[0], act)
    return vae


def has_midblock_pool(vae: nn.Module) -> bool:
    """Whether an ``AutoencoderTiny`` carries TAEF2's pooled blocks (so its config must say so when saved)."""
    return any(isinstance(module, PooledTinyBlock) for module in vae.modules())


def is_tiny_autoencoder_state(keys) -> bool:
    """Whether state-dict keys are an ``AutoencoderTiny`` (``encoder.layers.N...``/``decoder.layers.N...``)."""
    keys = set(keys)
    return "encoder.layers.0.weight" in keys and any(k.startswith("decoder.layers.") for k in keys)


def taef2_files_in(path: Union[str, os.PathLike]) -> Optional[tuple[Path, Path]]:
    """``(encoder, decoder)`` paths when ``path`` is a folder holding both TAEF2 files or one of the two
    files (its sibling is looked up beside it); None when ``path`` is not about TAEF2 at all."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.is_dir() and path.name not in TAEF2_FILES:
        return None
    encoder, decoder = (folder / name for name in TAEF2_FILES)
    if path.is_dir() and not (encoder.exists() or decoder.exists()):
        return None
    missing = [p.name for p in (encoder, decoder) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"TAEF2 needs both {TAEF2_FILES[0]} and {TAEF2_FILES[1]} in {str(folder)!r}; missing: {', '.join(missing)}"
        )
    return encoder, decoder


def read_taef2_files(encoder_path: Union[str, os.PathLike], decoder_path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """The two published state dicts as one float32 ``AutoencoderTiny`` state dict (``encoder.layers...``,
    ``decoder.layers...``); read by :func:`letstalk_core.weights.read_torch_file` (``weights_only=True``), so a
    file that would run code is refused."""
    state: dict[str, torch.Tensor] = {}
    for part, path, offset in (("encoder", encoder_path, 0), ("decoder", decoder_path, -1)):
        tensors = read_torch_file(path, f"TAEF2 {part}")
        if not isinstance(tensors, Mapping) or not tensors:
            raise ValueError(f"{path}: expected the TAEF2 {part}'s state dict, got {type(tensors).__name__}")
        for key, tensor in tensors.items():
            match = _FILE_KEY.match(key) if isinstance(key, str) else None
            if match is None or not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{path}: {key!r} is not a key of a TAEF2 {part} ('0.weight', '1.conv.0.weight', ...)")
            index = int(match.group(1)) + offset
            if index < 0:
                raise ValueError(f"{path}: {key!r}: the decoder's layer 0 is its parameter-free clamp")
            state[f"{part}.layers.{index}.{match.group(2)}"] = tensor.float()
    return state
