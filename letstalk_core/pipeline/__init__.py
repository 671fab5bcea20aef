"""LetsTalkPipeline: portrait + speech -> talking video, the one path the CLI and the nodes share.

    portrait image --condition_portrait------> PortraitConditioning  latent [1, C, h, w], crop, picture, codec
    speech         --SpeechConditioning------> SpeechConditioning    features [F_padded, L, D] per clip length
    both           = Conditions (the one container of what a video is made from)
    Conditions + SamplingOptions --SampledVideo.iter_clips--> clip latents [1, f, C, h, w], clip by clip
    clip latents   --video_frames------------> frames [f, H, W, 3] 0..1 (pasted back into the picture or not)
    frames         --write_video-------------> mp4 with the speech muxed in (AAC)

Each stage is a function or class of its own, and the ComfyUI nodes call the same ones, one stage per
node (Portrait Condition, Encode Audio, Sampler, the decoders), so a checkpoint gives the same video by
every route. The video streams: one clip of frames is alive at a time, whatever the length of the speech.
"""

from ..sampling.options import DEFAULT_STEPS, SamplingOptions, recommended_options
from .conditions import (SHORT_SPEECH_SECONDS, Conditions, PortraitConditioning, SpeechConditioning,
                         condition_portrait, prepare_conditions)
from .parts import (LATENT_SCALING_BY_CHANNELS, audio_encoder_for, bundled_vae, check_audio_encoder, check_codec,
                    crop_margin, latent_scaling_factor, load_parts, model_resolution, sampling_options)
from .pipe import LetsTalkPipeline
from .video import (DEFAULT_KEEP_LATENTS_MB, SampledVideo, iter_clip_latents, iter_frames, keep_latent_bytes,
                    speech_for_frames, video_frames, write_video)

__all__ = [
    "Conditions", "DEFAULT_KEEP_LATENTS_MB", "DEFAULT_STEPS", "LATENT_SCALING_BY_CHANNELS", "LetsTalkPipeline",
    "PortraitConditioning", "SHORT_SPEECH_SECONDS", "SampledVideo", "SamplingOptions", "SpeechConditioning",
    "audio_encoder_for", "bundled_vae", "check_audio_encoder", "check_codec", "condition_portrait", "crop_margin",
    "iter_clip_latents", "iter_frames", "keep_latent_bytes", "latent_scaling_factor", "load_parts",
    "model_resolution", "prepare_conditions", "recommended_options", "sampling_options", "speech_for_frames",
    "video_frames", "write_video",
]
