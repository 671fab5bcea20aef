"""The dtypes ComfyUI picks for the parts it manages, applied to the pack's VAE and speech encoders."""

from __future__ import annotations

import torch

import comfy.model_management as mm

from letstalk_core.audio import AudioEncoder
from letstalk_core.latents import LatentCodec


def in_comfy_dtype(part):
    """``part`` (a codec, an audio encoder with weights) in the dtype ComfyUI picks for such a model on its device:
    ``vae_dtype`` for a VAE (bf16 where the GPU has it, or as --bf16-vae/--fp16-vae say), ``text_encoder_dtype``
    for a speech encoder on a GPU (on a CPU, where ComfyUI would take fp16 for text encoders and fp16 runs about
    three times slower, float32). Returns ``part``, moved in place."""
    if isinstance(part, LatentCodec):
        dtype = mm.vae_dtype(mm.vae_device(), allowed_dtypes=[torch.bfloat16])
        if dtype != part.dtype:
            part.to(dtype=dtype)
    elif isinstance(part, AudioEncoder) and part.weights is not None:
        device = mm.text_encoder_device()
        dtype = torch.float32 if device.type == "cpu" else mm.text_encoder_dtype(device)
        if dtype != next(part.weights.parameters()).dtype:
            part.weights.to(dtype=dtype)
    return part
