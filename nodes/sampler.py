"""LetsTalkSampler: model + portrait + speech -> the sampled video (LETSTALK_VIDEO) for the decoders."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
from PIL import Image

import comfy.model_management as mm
import comfy.utils
from comfy.cli_args import LatentPreviewMethod, args
from comfy_api.latest import io
from comfy_execution.utils import get_executing_context
from server import PromptServer

from letstalk_core.pipeline import (DEFAULT_KEEP_LATENTS_MB, Conditions, SampledVideo, keep_latent_bytes,
                                    sampling_options)
from letstalk_core.sampling import SAMPLERS
from letstalk_core.sampling.options import check_overrides

from .managed import load_to_device, ready_to_sample
from .socket_types import LetsTalkAudio, LetsTalkModel, LetsTalkPortrait, LetsTalkVideo

log = logging.getLogger("letstalk")


def clip_preview(codec, clip_latents: torch.Tensor):
    """The last frame of a finished clip, decoded (one frame per clip: cheap next to sampling it), as the
    (format, image, max size) ComfyUI shows under the node; None when previews are switched off."""
    if args.preview_method == LatentPreviewMethod.NoPreviews:
        return None
    frame = next(codec.iter_decode(clip_latents[0, -1:].float(), chunk_size=1))  # [1, 3, H, W] -1..1
    pixels = frame[0].add(1).mul(127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return ("JPEG", Image.fromarray(pixels), args.preview_size)


KEEP_LATENTS_SETTING = "LETSTALK_KEEP_LATENTS_MB"  # environment: MiB of latents a sampled video may keep
AUTO = "auto"  # the sampler choice, and -1 for the numbers: what the checkpoint recommends


def node_overrides(sampler: str, steps: int, audio_cfg: float, portrait_cfg: float, overlap_frames: int) -> dict:
    """The node's widgets as sampling-option overrides: "auto" and -1 mean the checkpoint's (None)."""
    def given(value):
        return None if value == -1 else value

    return {"sampler": None if sampler == AUTO else sampler, "steps": given(steps), "audio_cfg": given(audio_cfg),
            "portrait_cfg": given(portrait_cfg), "overlap_frames": given(overlap_frames)}


def stop_if_interrupted() -> bool:
    """Checked before every step: raises ComfyUI's own interrupt exception when the user cancelled."""
    mm.throw_exception_if_processing_interrupted()
    return False


class LetsTalkSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkSampler",
            display_name="LetsTalk Sampler (talking head)",
            category="LetsTalk",
            description="Samples the talking video clip by clip; each clip remembers the last latents of the one "
                        "before (the memory bank), so the video has no length limit.",
            inputs=[
                LetsTalkModel.Input("letstalk_model", tooltip="From Load LetsTalk Model."),
                LetsTalkPortrait.Input("portrait", tooltip="From LetsTalk Portrait Condition."),
                LetsTalkAudio.Input("letstalk_audio", tooltip="From LetsTalk Encode Audio."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Same seed, same video."),
                io.Combo.Input("sampler", options=[AUTO, *SAMPLERS], default=AUTO,
                               tooltip="auto: what the checkpoint recommends (stored in it; the node shows the "
                                       "settings it samples with when it starts). ddpm is the paper's sampler (250 "
                                       "steps, slow); ddim, dpmpp_2m and euler give good videos in fewer steps."),
                io.Int.Input("steps", default=-1, min=-1, max=1000,
                             tooltip="Model evaluations per clip; more is slower and a little cleaner. -1: the "
                                     "checkpoint's recommendation (or the chosen sampler's usual count: ddpm 250, "
                                     "ddim 50, dpmpp_2m 25, euler 50)."),
                io.Float.Input("audio_cfg", default=-1.0, min=-1.0, max=20.0, step=0.1,
                               tooltip="How strongly the lips follow the speech. 1: plain; above 1: clearer mouth "
                                       "shapes, a little less of the face, twice the time. -1: what the checkpoint "
                                       "recommends (shown on the node when it starts). Only for checkpoints trained "
                                       "with condition dropout."),
                io.Float.Input("portrait_cfg", default=-1.0, min=-1.0, max=20.0, step=0.1,
                               tooltip="How strongly the face holds to the portrait. 1: plain. -1: what the "
                                       "checkpoint recommends. Only for checkpoints trained with condition dropout."),
                io.Int.Input("overlap_frames", default=-1, min=-1, max=64, optional=True,
                             tooltip="Frames each short clip repeats from the one before, so motion flows across "
                                     "the joins between clips. 0: none (fastest); more frames cost time (4 of 8: "
                                     "twice the time). -1: what the checkpoint recommends (shown on the node when "
                                     "it starts)."),
            ],
            outputs=[LetsTalkVideo.Output(display_name="sampled_video",
                                          tooltip="The sampled video; decode it with a LetsTalk Decode Talking Video node.")],
        )

    @classmethod
    def validate_inputs(cls, sampler: str, steps: int, audio_cfg: float, portrait_cfg: float,
                        overlap_frames: int = -1) -> bool | str:
        try:  # the core's own checks; those that need the checkpoint run when it is known
            check_overrides(**node_overrides(sampler, steps, audio_cfg, portrait_cfg, overlap_frames))
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, letstalk_model, portrait, letstalk_audio, seed, sampler, steps, audio_cfg,
                portrait_cfg, overlap_frames=-1) -> io.NodeOutput:
        ckpt = letstalk_model.checkpoint
        options = sampling_options(ckpt, seed=seed, fps=letstalk_audio.fps,
                                   **node_overrides(sampler, steps, audio_cfg, portrait_cfg, overlap_frames))
        keep = keep_latent_bytes(os.environ.get(KEEP_LATENTS_SETTING, DEFAULT_KEEP_LATENTS_MB), KEEP_LATENTS_SETTING)
        # the speech's features are computed here, with the checkpoint's clip length: its encoder (wav2vec2 or
        # whisper weights) onto ComfyUI's device first, which other nodes may have offloaded it from
        load_to_device(letstalk_audio.encoder)
        video = SampledVideo(ckpt, Conditions(portrait, letstalk_audio), options, keep_bytes=keep)  # checks encoder, codec
        log.info("LetsTalk sampling: %s", video.options.describe())
        if video.lazy:
            log.info("LetsTalk: %d frames, %.0f MiB of latents: too long to keep, so the clips are sampled while the "
                     "video is decoded (the decoder shows the progress; the streaming decoder keeps memory flat)",
                     video.num_frames, video.latent_bytes / 2**20)
        else:
            ready_to_sample(letstalk_model, portrait.codec, video.options)
            report = ClipReport(video.num_clips, portrait.codec, video.options)

            def clip_done(clip) -> None:
                report.clip_done(clip)  # its preview decode may load a VAE, and ComfyUI free memory for it:
                ready_to_sample(letstalk_model, portrait.codec, video.options)  # the transformer back first

            video.sample(progress=report.progress, should_stop=stop_if_interrupted, on_clip=clip_done)
            log.info("LetsTalk: sampled %d frames (%d clips of %d, %d overlapping)", video.num_frames, video.num_clips,
                     ckpt.frames_per_clip, options.overlap_frames)
        return io.NodeOutput(NodeVideo(video, letstalk_model))


@dataclass
class NodeVideo:
    """What flows along a LETSTALK_VIDEO wire: the core's sampled (or still to be sampled) video, with its
    conditions, and the loaded model, moved to the device by ComfyUI when a lazy video is sampled."""

    video: SampledVideo
    model: object

    def iter_clips(self):
        """The clips; a lazy video is sampled here, clip by clip, with progress on the calling node."""
        if self.video.sampled or not self.video.lazy:
            return self.video.iter_clips()
        report = ClipReport(self.video.num_clips, self.video.conditions.portrait.codec, self.video.options)

        def clips():
            source = self.video.iter_clips(progress=report.progress, should_stop=stop_if_interrupted)
            while True:
                # the decoder between two clips may have loaded its VAE and ComfyUI evicted the transformer
                # for it (certain with --disable-smart-memory): loaded again before each clip is sampled
                ready_to_sample(self.model, self.video.conditions.portrait.codec, self.video.options)
                clip = next(source, None)
                if clip is None:
                    return
                report.clip_done(clip)
                yield clip

        return clips()


class ClipReport:
    """Progress for the node that samples: the bar over all steps; per clip, "clip n of N" with the time left as
    text on the node (ComfyUI's progress text) and as a terminal line; and the clip's last frame as a preview
    (when previews are on)."""

    def __init__(self, total_clips: int, codec, options=None):
        self.bar = comfy.utils.ProgressBar(1)
        self.total, self.codec, self.done, self.started = total_clips, codec, 0, time.monotonic()
        context = get_executing_context()
        self.node_id = None if context is None else context.node_id
        # the settings the -1/auto inputs resolved to (the checkpoint's recommendation), said where they apply
        settings = "" if options is None else (f" ({options.sampler} {options.steps} steps, audio guidance "
                                               f"{options.audio_cfg:g}, {options.overlap_frames} overlap frames)")
        self.show(f"sampling clip 1 of {self.total}{settings}...")

    def show(self, text: str) -> None:
        """``text`` on the node that samples, beside its progress bar."""
        if self.node_id is not None and getattr(PromptServer, "instance", None) is not None:
            PromptServer.instance.send_progress_text(text, self.node_id)

    def progress(self, done: int, total: int) -> None:
        self.bar.update_absolute(done, total)

    def clip_done(self, clip) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        log.info("LetsTalk: clip %d/%d done, %.0f s so far, about %.0f s left", self.done, self.total, elapsed, left)
        if self.done < self.total:
            self.show(f"clip {self.done} of {self.total} done, {elapsed:.0f} s so far, about {left:.0f} s left")
        else:
            self.show(f"all {self.total} clips sampled in {elapsed:.0f} s")
        preview = clip_preview(self.codec, clip.latents)
        if preview is not None:
            self.bar.update_absolute(self.bar.current, self.bar.total, preview)
