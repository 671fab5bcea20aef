"""Loading a LetsTalk checkpoint into ComfyUI's model management."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

import comfy.model_management as mm
import comfy.model_patcher
from comfy_api.latest import io

from letstalk_core.audio import AudioEncoder
from letstalk_core.checkpoints import LetsTalkCheckpoint, load_checkpoint
from letstalk_core.latents import LatentCodec
from letstalk_core.pipeline import audio_encoder_for, bundled_vae
from letstalk_core.precision import PRECISION_CHOICES, check_precision, resolve_precision
from letstalk_core.shipped import CARTOON_CHECKPOINT, DEMO_CHECKPOINT

from .dtypes import in_comfy_dtype
from .paths import checkpoint_choices, default_checkpoint, resolve_checkpoint
from .socket_types import LetsTalkModel

log = logging.getLogger("letstalk")
# "auto" takes ComfyUI's choice for the device, with bf16 first where the device supports it (the range of
# float32, which the attention's softmax and the memory frames need more than fp16's extra mantissa bits)
AUTO_ORDER = (torch.bfloat16, torch.float16, torch.float32)


class PatchableParts(torch.nn.Module):
    """The transformer and audio projection as one module ComfyUI's ModelPatcher can move.

    ModelPatcher records the device on the module it manages (``module.device = ...``); a diffusers
    model exposes ``device`` as a read-only property, so it is kept one level down.
    """

    def __init__(self, transformer: torch.nn.Module, audio_proj: torch.nn.Module, device: torch.device):
        super().__init__()
        self.transformer = transformer
        self.audio_proj = audio_proj
        self.device = device

    def get_dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype


@dataclass
class LoadedLetsTalk:
    """What flows along a LETSTALK_MODEL wire."""

    name: str
    checkpoint: LetsTalkCheckpoint
    patcher: comfy.model_patcher.ModelPatcher
    own_vae: LatentCodec | None  # the VAE a bundle carries, if any
    _audio_encoder: AudioEncoder | None = field(default=None, init=False, repr=False)  # made when first asked for
    _told_where: bool = field(default=False, init=False, repr=False)  # the log said where ComfyUI left the weights

    def audio_encoder(self) -> AudioEncoder:
        """The audio encoder the checkpoint names (its mel bands, or the encoder bundled in it), made once."""
        if self._audio_encoder is None:
            self._audio_encoder = in_comfy_dtype(audio_encoder_for(self.checkpoint))
        return self._audio_encoder


class LoadLetsTalkModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = checkpoint_choices()
        return io.Schema(
            node_id="LoadLetsTalkModel",
            display_name="Load LetsTalk Model (talking avatar)",
            category="LetsTalk/loaders",
            description="Loads a LetsTalk checkpoint: this pack's .safetensors (possibly a bundle with its VAE "
                        "and audio encoder) or the authors' .ckpt/.pt/.pth (read safely, without running code).",
            inputs=[
                io.Combo.Input("checkpoint", options=choices, default=default_checkpoint(choices),
                               tooltip="A file in models/letstalk/ (or models/diffusion_models/); "
                                       f"{DEMO_CHECKPOINT.name} is the pack's bundled real-face demo "
                                       f"model (128 px), {CARTOON_CHECKPOINT.name} its cartoon model (64 px)."),
                io.Combo.Input("precision", options=list(PRECISION_CHOICES), default="auto",
                               tooltip="Weights dtype. auto: what ComfyUI picks for the device, bf16 first where "
                                       "the GPU has it (fp32 on a CPU). One the device cannot run falls back "
                                       "(bf16 -> fp16 -> fp32), said in the log."),
            ],
            outputs=[LetsTalkModel.Output(display_name="letstalk_model",
                                         tooltip="Into LetsTalk Portrait Condition and LetsTalk Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, checkpoint: str, precision: str) -> bool | str:
        choices = checkpoint_choices()
        if checkpoint not in choices:
            return (f"checkpoint '{checkpoint}' is not in models/letstalk/ or models/diffusion_models/; "
                    f"available: {', '.join(choices[:20]) or 'none (put a LetsTalk checkpoint there)'}")
        try:
            check_precision(precision)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, checkpoint: str, precision: str) -> io.NodeOutput:
        path = resolve_checkpoint(checkpoint)
        load_device = mm.get_torch_device()
        offload_device = mm.unet_offload_device()
        dtype, note = resolve_precision(precision, load_device,
                                        auto=mm.unet_dtype(load_device, supported_dtypes=list(AUTO_ORDER)))
        if note:
            log.warning("LetsTalk: %s", note)
        ckpt = load_checkpoint(path, dtype=dtype, device=offload_device)
        parts = PatchableParts(ckpt.model, ckpt.audio_proj, offload_device)
        patcher = comfy.model_patcher.ModelPatcher(parts, load_device=load_device, offload_device=offload_device)
        own_vae = bundled_vae(ckpt, device=mm.vae_offload_device())
        if own_vae is not None:
            in_comfy_dtype(own_vae)
        log.info("LetsTalk model %s: %s, %d frames per clip, %d memory frames, %s%s", checkpoint,
                 ckpt.model.config.variant, ckpt.frames_per_clip, ckpt.memory_frames, dtype,
                 "" if own_vae is None else f", its VAE in {own_vae.dtype}")
        return io.NodeOutput(LoadedLetsTalk(checkpoint, ckpt, patcher, own_vae))

