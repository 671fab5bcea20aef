"""Audio conditioning: speech in any form -> per-video-frame encoder features -> windows.

``load_audio`` (mono 16 kHz), ``load_audio_encoder`` ("mel", "phones", "phones+mel", wav2vec2 or whisper from local files),
``encode_audio`` (features padded to whole clips, with the true frame count), ``frame_windows``.
"""

from .conditioning import AudioFeatures, encode_audio
from .encoder_base import AudioEncoder
from .encoders import (
    audio_encoder_from_state_dict,
    infer_wav2vec2_config,
    infer_whisper_config,
    NAMED_ENCODERS,
    load_audio_encoder,
    named_encoder,
    wav2vec2_encoder_from_state_dict,
    wav2vec2_state_dict,
    whisper_encoder_state_dict,
)
from ..video.timing import frame_count  # the one frame count, for audio and video
from .frames import as_fps, frame_windows, padded_frame_count
from .loading import MonoAudio, load_audio, normalize_loudness
from .mel import MelAudioEncoder
from .phones import PhoneAudioEncoder
from .wav2vec2 import Wav2Vec2AudioEncoder
from .whisper import WhisperAudioEncoder

__all__ = [
    "AudioEncoder", "AudioFeatures", "audio_encoder_from_state_dict", "MelAudioEncoder", "MonoAudio", "NAMED_ENCODERS", "PhoneAudioEncoder",
    "Wav2Vec2AudioEncoder", "WhisperAudioEncoder",
    "as_fps", "encode_audio", "frame_count", "frame_windows",
    "infer_wav2vec2_config", "infer_whisper_config", "load_audio", "load_audio_encoder", "named_encoder", "normalize_loudness",
    "padded_frame_count", "wav2vec2_encoder_from_state_dict", "wav2vec2_state_dict", "whisper_encoder_state_dict",
]
