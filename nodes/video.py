"""LetsTalkDecodeVideo: LATENT -> IMAGE frames, the speech as AUDIO, and the frame rate."""

from __future__ import annotations

import logging
import os
import uuid

import torch

import folder_paths
from comfy_api.latest import InputImpl, io

from letstalk_core.pipeline import iter_frames, speech_for_frames, write_video

log = logging.getLogger("letstalk")

from .comfy_vae import ComfyVAECodec


def letstalk_info(latent: dict) -> dict:
    info = latent.get("letstalk") if isinstance(latent, dict) else None
    if not info:
        raise ValueError("video_latent: this LATENT does not come from LetsTalk Sampler (it lacks the frame rate, "
                         "the speech and the portrait); connect the sampler's output")
    return info


def decoded_frames(video_latent: dict, info: dict, paste_back: bool, vae):
    """Frames ``[n, H, W, 3]`` 0..1, decoded a few at a time with the portrait's codec or ``vae``."""
    portrait = info["portrait"]
    codec = portrait.codec
    if vae is not None:
        codec = ComfyVAECodec(vae, getattr(portrait.codec, "scaling_factor", 1.0),
                              getattr(portrait.codec, "shift_factor", 0.0))
    latents = video_latent["samples"].permute(0, 2, 1, 3, 4)  # [1, F, C, h, w]
    if latents.shape[2] != codec.latent_channels:
        raise ValueError(f"vae: it decodes {codec.latent_channels}-channel latents but the video has "
                         f"{latents.shape[2]}")
    return iter_frames(codec, latents[0], paste_into=portrait.original_image if paste_back else None,
                       crop_box=portrait.crop.crop_box)


class DecodeVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkDecodeVideo",
            display_name="LetsTalk Decode Video",
            category="LetsTalk",
            description="Decodes the sampled latents to frames, and gives the speech (trimmed to the frames) and "
                        "the frame rate, ready for Create Video -> Save Video.",
            inputs=[
                io.Latent.Input("video_latent", tooltip="From LetsTalk Sampler."),
                io.Boolean.Input("paste_back", default=True,
                                 tooltip="On: the talking face is blended back into your whole picture (the video "
                                         "has the picture's size). Off: only the square the model animates."),
                io.Vae.Input("vae", optional=True,
                             tooltip="A VAE from Load VAE; leave empty to decode with the VAE the portrait was "
                                     "encoded with."),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The video's frames, into Create Video."),
                io.Audio.Output(display_name="audio",
                                tooltip="Your speech, cut to the video's length, into Create Video."),
                io.Float.Output(display_name="fps", tooltip="The video's frame rate, into Create Video."),
            ],
        )

    @classmethod
    def execute(cls, video_latent, paste_back, vae=None) -> io.NodeOutput:
        info = letstalk_info(video_latent)
        frames = torch.cat(list(decoded_frames(video_latent, info, paste_back, vae)), dim=0)  # [F, H, W, 3] 0..1
        speech, fps = info["speech"], info["fps"]
        track, rate = speech_for_frames(speech, frames.shape[0], fps)  # [C, T]: the speech as it came in
        audio = {"waveform": track[None].float(), "sample_rate": rate}
        return io.NodeOutput(frames, audio, float(fps))


class DecodeVideoToFile(io.ComfyNode):
    """The streaming sibling of DecodeVideo for long speech: frames go straight into an mp4."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkDecodeVideoToFile",
            display_name="LetsTalk Decode Video (streaming, long audio)",
            category="LetsTalk",
            description="Decodes the latents a few frames at a time straight into an mp4 with the speech muxed in, "
                        "so even an hour of speech never holds its frames in memory. Gives a VIDEO for Save Video.",
            inputs=[
                io.Latent.Input("video_latent", tooltip="From LetsTalk Sampler."),
                io.Boolean.Input("paste_back", default=True,
                                 tooltip="On: the talking face is blended back into your whole picture (the video "
                                         "has the picture's size). Off: only the square the model animates."),
                io.Vae.Input("vae", optional=True,
                             tooltip="A VAE from Load VAE; leave empty to decode with the portrait's VAE."),
            ],
            outputs=[io.Video.Output(display_name="video",
                                     tooltip="The finished mp4 with your speech, into Save Video.")],
        )

    @classmethod
    def execute(cls, video_latent, paste_back, vae=None) -> io.NodeOutput:
        info = letstalk_info(video_latent)
        folder = os.path.join(folder_paths.get_temp_directory(), "letstalk")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"letstalk_{uuid.uuid4().hex}.mp4")
        write_video(path, decoded_frames(video_latent, info, paste_back, vae), info["fps"], info["speech"])
        log.info("LetsTalk: streamed %d frames into %s", info["num_frames"], path)
        return io.NodeOutput(InputImpl.VideoFromFile(path))
