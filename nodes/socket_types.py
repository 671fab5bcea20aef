"""The pack's own ComfyUI socket types."""

from comfy_api.latest import io

LetsTalkAudioEncoder = io.Custom("LETSTALK_AUDIO_ENCODER")
LetsTalkAudio = io.Custom("LETSTALK_AUDIO")
LetsTalkModel = io.Custom("LETSTALK_MODEL")
LetsTalkPortrait = io.Custom("LETSTALK_PORTRAIT")
LetsTalkVideo = io.Custom("LETSTALK_VIDEO")  # a SampledVideo (with its portrait): the sampler -> the decoders
