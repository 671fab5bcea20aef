"""LetsTalkSampler: model + portrait + speech -> the whole video's latents (LATENT)."""

from __future__ import annotations

import logging

import torch
from PIL import Image

import comfy.model_management as mm
import comfy.utils
from comfy.cli_args import LatentPreviewMethod, args
from comfy_api.latest import io

from letstalk_core.pipeline import DEFAULT_STEPS, iter_clip_latents
from letstalk_core.sampling import SAMPLERS

from .socket_types import LetsTalkAudio, LetsTalkModel, LetsTalkPortrait

log = logging.getLogger("letstalk")


def clip_preview(codec, clip_latents: torch.Tensor):
    """The last frame of a finished clip, decoded (one frame per clip: cheap next to sampling it), as the
    (format, image, max size) ComfyUI shows under the node; None when previews are switched off."""
    if args.preview_method == LatentPreviewMethod.NoPreviews:
        return None
    frame = next(codec.iter_decode(clip_latents[0, -1:].float(), chunk_size=1))  # [1, 3, H, W] -1..1
    pixels = frame[0].add(1).mul(127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return ("JPEG", Image.fromarray(pixels), args.preview_size)


def _stop_if_interrupted() -> bool:
    """Checked before every step: raises ComfyUI's own interrupt exception when the user cancelled."""
    mm.throw_exception_if_processing_interrupted()
    return False


class LetsTalkSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkSampler",
            display_name="LetsTalk Sampler",
            category="LetsTalk",
            description="Samples the talking video clip by clip; each clip remembers the last latents of the one "
                        "before (the memory bank), so the video has no length limit.",
            inputs=[
                LetsTalkModel.Input("letstalk_model", tooltip="From Load LetsTalk Model."),
                LetsTalkPortrait.Input("portrait", tooltip="From LetsTalk Portrait Condition."),
                LetsTalkAudio.Input("letstalk_audio", tooltip="From LetsTalk Encode Audio."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Same seed, same video."),
                io.Combo.Input("sampler", options=list(SAMPLERS), default="dpmpp_2m",
                               tooltip="ddpm: the authors' sampler (250 steps); ddim (50); dpmpp_2m (25) and "
                                       "euler: faster at fewer steps."),
                io.Int.Input("steps", default=DEFAULT_STEPS["dpmpp_2m"], min=1, max=1000,
                             tooltip="Model evaluations per clip."),
                io.Float.Input("audio_cfg", default=1.0, min=0.0, max=20.0, step=0.1,
                               tooltip="Audio guidance scale; 1 = no guidance (one model pass per step). Needs a "
                                       "checkpoint trained with condition dropout. The demo model: 3 (with 4 "
                                       "overlap frames, as in the basic workflow) reaches its lip-sync target, at "
                                       "twice the time."),
                io.Float.Input("portrait_cfg", default=1.0, min=0.0, max=20.0, step=0.1,
                               tooltip="Portrait guidance scale; 1 = no guidance. Needs a checkpoint trained "
                                       "with condition dropout."),
                io.Int.Input("overlap_frames", default=0, min=0, max=64, optional=True,
                             tooltip="Frames each clip repeats from the end of the one before and holds to it, so "
                                     "motion continues across clip boundaries (beyond the paper; 0 = the authors' "
                                     "loop). Must be below the model's frames per clip; V of F frames cost about "
                                     "F/(F-V) times the sampling time. The demo model (clips of 8): 4 keeps the "
                                     "seams within its target."),
            ],
            outputs=[io.Latent.Output(display_name="video_latent")],
        )

    @classmethod
    def validate_inputs(cls, sampler: str, steps: int) -> bool | str:
        if sampler not in SAMPLERS:
            return f"sampler '{sampler}' is not one of {', '.join(SAMPLERS)}"
        if not isinstance(steps, int) or steps < 1:
            return f"steps must be an integer >= 1, got {steps!r}"
        return True

    @classmethod
    def execute(cls, letstalk_model, portrait, letstalk_audio, seed, sampler, steps, audio_cfg,
                portrait_cfg, overlap_frames=0) -> io.NodeOutput:
        device = letstalk_model.load_to_device()
        ckpt = letstalk_model.checkpoint
        features = letstalk_audio.features(ckpt.frames_per_clip)
        bar = comfy.utils.ProgressBar(1)
        clips = iter_clip_latents(
            ckpt, portrait.portrait_latent.to(device), features, sampler=sampler, steps=steps, seed=seed,
            audio_cfg=audio_cfg, portrait_cfg=portrait_cfg, overlap_frames=overlap_frames,
            progress=lambda done, total: bar.update_absolute(done, total),
            should_stop=_stop_if_interrupted,
        )
        finished = []
        for clip in clips:
            finished.append(clip.latents.float().cpu())
            preview = clip_preview(portrait.codec, clip.latents)
            if preview is not None:
                bar.update_absolute(bar.current, bar.total, preview)
        latents = torch.cat(finished, dim=1)  # [1, F, C, h, w]
        log.info("LetsTalk: sampled %d frames (%d clips of %d, %d overlapping)", latents.shape[1], len(finished),
                 ckpt.frames_per_clip, overlap_frames)
        return io.NodeOutput({
            "samples": latents.permute(0, 2, 1, 3, 4).contiguous(),  # [1, C, F, h, w], ComfyUI's video layout
            "letstalk": {"fps": letstalk_audio.fps, "num_frames": features.num_frames,
                         "speech": letstalk_audio.speech, "portrait": portrait},
        })
