"""LetsTalkDecodeVideo: the sampled video -> IMAGE frames, the speech as AUDIO, and the frame rate; its
streaming sibling writes an mp4 clip by clip."""

from __future__ import annotations

import logging
import os
import uuid

import torch

import folder_paths
from comfy_api.latest import InputImpl, io

from letstalk_core.pipeline import check_codec, speech_for_frames, video_frames, write_video

log = logging.getLogger("letstalk")

from .comfy_vae import ComfyVAECodec
from .managed import load_to_device
from .sampler import NodeVideo, stop_if_interrupted
from .socket_types import LetsTalkVideo


def decoded_frames(sampled_video: NodeVideo, paste_back: bool, vae):
    """Frames ``[n, H, W, 3]`` 0..1, clip by clip, with the portrait's codec or ``vae`` (a lazy video is
    sampled on the way)."""
    if not isinstance(sampled_video, NodeVideo):
        raise ValueError(f"sampled_video: expected LetsTalk Sampler's output, got {type(sampled_video).__name__}")
    own = sampled_video.video.conditions.portrait.codec
    codec = None
    if vae is not None:
        codec = ComfyVAECodec(vae, getattr(own, "scaling_factor", 1.0), getattr(own, "shift_factor", 0.0))
        check_codec(sampled_video.video.checkpoint, codec, what="vae: the VAE")  # before a lazy video is sampled
    load_to_device(own if codec is None else codec)
    return video_frames(sampled_video.video, paste_back=paste_back, codec=codec, clips=sampled_video.iter_clips(),
                        should_stop=stop_if_interrupted)  # Cancel stops decoding too, within a chunk


def decoder_inputs() -> list:
    """The inputs both decoders take."""
    return [
        LetsTalkVideo.Input("sampled_video", tooltip="From LetsTalk Sampler."),
        io.Boolean.Input("paste_back", default=True,
                         tooltip="On: the talking face is blended back into your whole picture (the video has the "
                                 "picture's size). Off: only the square the model animates."),
        io.Vae.Input("vae", optional=True,
                     tooltip="A VAE from Load VAE; leave empty to decode with the VAE the portrait was encoded with."),
    ]


class DecodeVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkDecodeVideo",
            display_name="LetsTalk Decode Talking Video",
            category="LetsTalk",
            description="Decodes the sampled video to frames, and gives the speech (trimmed to the frames) and "
                        "the frame rate, ready for Create Video -> Save Video.",
            inputs=decoder_inputs(),
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The video's frames, into Create Video."),
                io.Audio.Output(display_name="audio",
                                tooltip="Your speech, cut to the video's length, into Create Video."),
                io.Float.Output(display_name="fps", tooltip="The video's frame rate, into Create Video."),
            ],
        )

    @classmethod
    def execute(cls, sampled_video, paste_back, vae=None) -> io.NodeOutput:
        frames = torch.cat(list(decoded_frames(sampled_video, paste_back, vae)), dim=0)  # [F, H, W, 3] 0..1
        video = sampled_video.video
        track, rate = speech_for_frames(video.speech, frames.shape[0], video.fps)  # [C, T]: the speech as it came in
        audio = {"waveform": track[None].float(), "sample_rate": rate}
        return io.NodeOutput(frames, audio, float(video.fps))


class DecodeVideoToFile(io.ComfyNode):
    """The streaming sibling of DecodeVideo for long speech: frames go straight into an mp4."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkDecodeVideoToFile",
            display_name="LetsTalk Decode Talking Video (streaming, long audio)",
            category="LetsTalk",
            description="Decodes the latents a few frames at a time straight into an mp4 with the speech muxed in, "
                        "so even an hour of speech never holds its frames in memory. Gives a VIDEO for Save Video.",
            inputs=decoder_inputs(),
            outputs=[io.Video.Output(display_name="video",
                                     tooltip="The finished mp4 with your speech, into Save Video.")],
        )

    @classmethod
    def execute(cls, sampled_video, paste_back, vae=None) -> io.NodeOutput:
        folder = os.path.join(folder_paths.get_temp_directory(), "letstalk")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"letstalk_{uuid.uuid4().hex}.mp4")
        frames = decoded_frames(sampled_video, paste_back, vae)  # refuses another input first
        video = sampled_video.video
        write_video(path, frames, video.fps, video.speech)
        log.info("LetsTalk: streamed %d frames into %s", video.num_frames, path)
        return io.NodeOutput(InputImpl.VideoFromFile(path))
