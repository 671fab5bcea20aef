"""The pack's weights under ComfyUI's model management: the transformer (see model.py), the VAE a bundle
carries and the audio encoder (wav2vec2 / whisper) are each wrapped in a ModelPatcher once, and loaded
onto ComfyUI's device (offloading other models when memory is short) right before a node uses them, so
ComfyUI can offload them again and ``/free`` unloads them like its own models. A native VAE from Load
VAE and ComfyUI's own audio encoder are managed by ComfyUI already; the log-mel encoder has no weights.
"""

from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
import comfy.model_patcher

from letstalk_core.audio import AudioEncoder
from letstalk_core.latents import LatentCodec

from .model import LoadedLetsTalk

log = logging.getLogger("letstalk")


class LetsTalkVAE(torch.nn.Module):
    """A bundle's VAE as ComfyUI's ModelPatcher moves it (the patcher records ``device`` on the module it
    manages, which a diffusers model exposes read-only, so the codec is kept one level down)."""

    def __init__(self, codec: LatentCodec, device: torch.device):
        super().__init__()
        self.codec = codec
        self.device = device


class LetsTalkAudioEncoderWeights(torch.nn.Module):
    """The network of a wav2vec2 or whisper encoder, for ComfyUI's ModelPatcher."""

    def __init__(self, network: torch.nn.Module, device: torch.device):
        super().__init__()
        self.network = network
        self.device = device


def patcher_for(part) -> comfy.model_patcher.ModelPatcher | None:
    """The ModelPatcher over ``part``'s weights (a LoadedLetsTalk's own, made when it loaded; a codec's or
    an encoder's, made here once per object); None for what ComfyUI manages already or what has no weights."""
    if isinstance(part, LoadedLetsTalk):
        return part.patcher  # made when it loaded
    if isinstance(part, LatentCodec):
        holder, load_device, offload_device = LetsTalkVAE, mm.vae_device(), mm.vae_offload_device()
        module = part
    elif isinstance(part, AudioEncoder) and part.weights is not None:
        holder, load_device = LetsTalkAudioEncoderWeights, mm.text_encoder_device()
        offload_device, module = mm.text_encoder_offload_device(), part.weights
    else:
        return None
    if part.device_manager is None:  # the place the core keeps for it
        current = next(module.parameters()).device
        part.device_manager = comfy.model_patcher.ModelPatcher(holder(module, current), load_device=load_device,
                                                               offload_device=offload_device)
    return part.device_manager


def load_to_device(*parts, memory_required: int = 0) -> None:
    """Ask ComfyUI to load these parts (a LoadedLetsTalk, a codec, an audio encoder) together, so that
    loading one does not offload another the same node needs, with ``memory_required`` bytes free beside them
    for the work (ComfyUI offloads other models for it). Always whole: the pack's modules are plain torch
    layers without ComfyUI's weight casting, so a model left half on the CPU could not run; a part that does
    not fit fails loudly instead (CUDA out of memory)."""
    patchers = [patcher for patcher in map(patcher_for, parts) if patcher is not None]
    if patchers:
        mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)


def sampling_memory(checkpoint, options) -> int:
    """A generous estimate of the activation memory of one sampling step, in bytes: every model pass of the
    step (1, and one more per guidance scale other than 1) over the clip and memory frames, each token's
    hidden state about 16 times over (attention inputs and outputs, the MLP's 4x, the modulations)."""
    config = checkpoint.model.config
    passes = 1 + (options.audio_cfg != 1.0) + (options.portrait_cfg != 1.0)
    tokens = (int(config.sample_size) // int(config.patch_size)) ** 2
    frames = int(checkpoint.frames_per_clip) + int(checkpoint.memory_frames) + 1  # + the portrait
    width = int(config.hidden_size)
    element = next(checkpoint.model.parameters()).element_size()
    return passes * frames * 2 * tokens * width * element * 16


def ready_to_sample(model, codec, options=None) -> None:
    """Load the transformer with the codec (which decodes one frame per clip for the preview) and, before
    the first sampling on a CPU, make the process's one heap adaptation for CPU inference
    (:func:`letstalk_core.heap.keep_working_buffers_on_heap`). It is made here, at the first sampling,
    not when ComfyUI starts: made at start, POST /free no longer gave back the memory of a model loaded
    later (tests/comfyui/test_memory.py: 961 MiB before the load, 1690 after /free; made here, it passes)."""
    load_to_device(model, codec,
                   memory_required=0 if options is None else sampling_memory(model.checkpoint, options))
    placed = next(model.checkpoint.model.parameters()).device
    if placed.type != model.patcher.load_device.type and not model._told_where:
        # e.g. ComfyUI started with --novram: it keeps the weights on the CPU, and the pack runs there
        log.warning("LetsTalk: ComfyUI keeps the model on %s rather than %s (--novram or --cpu?), so it samples "
                    "there, far slower than on the GPU", placed, model.patcher.load_device)
        model._told_where = True
    if model.patcher.load_device.type == "cpu":
        from letstalk_core.heap import keep_working_buffers_on_heap

        keep_working_buffers_on_heap()
