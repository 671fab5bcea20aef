"""Audio nodes: load an audio encoder, and turn native AUDIO into LetsTalk audio features."""

from __future__ import annotations

import logging
import weakref

from comfy_api.latest import io
from server import PromptServer

from letstalk_core.audio import NAMED_ENCODERS, AudioEncoder, load_audio_encoder, wav2vec2_encoder_from_state_dict
from letstalk_core.pipeline import SpeechConditioning

from .paths import audio_encoder_choices, resolve_audio_encoder
from .dtypes import in_comfy_dtype
from .managed import load_to_device
from .model import LoadedLetsTalk
from .socket_types import LetsTalkAudio, LetsTalkAudioEncoder, LetsTalkModel

log = logging.getLogger("letstalk")


class LoadLetsTalkAudioEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadLetsTalkAudioEncoder",
            display_name="Load LetsTalk Audio Encoder",
            category="LetsTalk/loaders",
            description="Loads the speech encoder whose features a LetsTalk checkpoint was trained on.",
            inputs=[
                io.Combo.Input(
                    "encoder_name", options=audio_encoder_choices(), default="mel",
                    tooltip="'mel' is a weightless log-mel filterbank (the demo model's encoder); 'phones' "
                            "gives US-English phones (pocketsphinx's CMU model; speech that is not English gets "
                            "the nearest English ones; silence, music and noise a closed mouth), 'phones+mel' "
                            "both; other entries are wav2vec2 or whisper weights in models/audio_encoders/ (a "
                            "single .safetensors or a Hugging Face folder). Use the one the checkpoint was "
                            "trained with.",
                ),
            ],
            outputs=[LetsTalkAudioEncoder.Output(display_name="audio_encoder",
                                                    tooltip="Into LetsTalk Encode Audio.")],
        )

    @classmethod
    def validate_inputs(cls, encoder_name: str) -> bool | str:
        choices = audio_encoder_choices()
        if encoder_name not in choices:
            return (f"encoder_name: '{encoder_name}' is none of {', '.join(NAMED_ENCODERS)} and no file in "
                    f"models/audio_encoders/; available: {', '.join(choices[:20])}")
        return True

    @classmethod
    def execute(cls, encoder_name: str) -> io.NodeOutput:
        encoder = in_comfy_dtype(load_audio_encoder(resolve_audio_encoder(encoder_name)))
        log.info("LetsTalk audio encoder %s: %d layers x %d features", encoder_name, encoder.num_layers,
                 encoder.feature_dim)
        return io.NodeOutput(encoder)


def as_letstalk_encoder(encoder) -> AudioEncoder:
    """Our encoders pass through; a LetsTalk model gives the encoder its checkpoint names (bundled or mel
    with its band count); ComfyUI's native AUDIO_ENCODER is converted when it is a wav2vec2."""
    if isinstance(encoder, AudioEncoder):
        return encoder
    if isinstance(encoder, LoadedLetsTalk):
        return encoder.audio_encoder()
    model = getattr(encoder, "model", None)
    if model is None or not hasattr(encoder, "get_sd"):
        raise ValueError(f"audio_encoder: expected Load LetsTalk Audio Encoder's output or ComfyUI's AUDIO_ENCODER, "
                         f"got {type(encoder).__name__}")
    if type(model).__name__ != "Wav2Vec2Model":
        raise ValueError(f"audio_encoder: ComfyUI's Load Audio Encoder gave a {type(model).__name__}; only its "
                         "wav2vec2 models are accepted here. Load whisper with Load LetsTalk Audio Encoder.")
    converted = _CONVERTED.get(encoder)
    if converted is None:
        state_dict = {key: value.float() for key, value in encoder.get_sd().items()}
        converted = in_comfy_dtype(wav2vec2_encoder_from_state_dict(state_dict,
                                                                     source="ComfyUI audio encoder (wav2vec2)"))
        _CONVERTED[encoder] = converted
    return converted


# ComfyUI's loaded wav2vec2 -> its conversion, made once per loaded encoder and gone with it
_CONVERTED: "weakref.WeakKeyDictionary[object, AudioEncoder]" = weakref.WeakKeyDictionary()


class EncodeAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkEncodeAudio",
            display_name="LetsTalk Encode Speech (lipsync)",
            category="LetsTalk",
            description="Speech -> LetsTalk audio conditioning (encoder features per video frame), and the number "
                        "of video frames the speech spans.",
            inputs=[
                io.Audio.Input("audio", tooltip="The speech track (any sample rate, mono or stereo)."),
                io.MultiType.Input("audio_encoder", types=[LetsTalkAudioEncoder, io.AudioEncoder, LetsTalkModel],
                                   tooltip="The model itself (Load LetsTalk Model: the encoder its checkpoint was "
                                           "trained with, bundled or named in it), Load LetsTalk Audio Encoder, or "
                                           "a wav2vec2 from ComfyUI's own Load Audio Encoder."),
                io.Float.Input("fps", default=25.0, min=1.0, max=120.0, step=0.001,
                               tooltip="Video frame rate; the video has ceil(seconds x fps) frames. "
                                       "25 is what the official models were trained with."),
                io.String.Input("transcript", optional=True, force_input=True,
                                tooltip="The words spoken (optional; English), from a text node such as String "
                                        "(Multiline). For models that hear phones ('phones' or 'phones+mel' "
                                        "encoders): the phones are then aligned to these words, so every P, B and "
                                        "M closes the lips where it is said. Other encoders ignore it."),
            ],
            outputs=[
                LetsTalkAudio.Output(display_name="letstalk_audio",
                                     tooltip="The speech, ready for LetsTalk Sampler."),
                io.Int.Output(display_name="frame_count",
                              tooltip="How many video frames the speech lasts (its seconds x fps, rounded up)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, audio: dict, audio_encoder, fps: float, transcript: str = "") -> io.NodeOutput:
        encoder = as_letstalk_encoder(audio_encoder)
        notes = []
        if transcript and transcript.strip():
            if hasattr(encoder, "with_transcript"):
                encoder = encoder.with_transcript(transcript)  # words outside the dictionary refused by name
            else:
                notes.append(f"LetsTalk: the transcript is ignored: this speech encoder ({encoder.kind}) does not "
                             "read words; only 'phones' and 'phones+mel' models use it")
                log.warning(notes[-1])
        load_to_device(encoder)
        speech = SpeechConditioning(audio, encoder, fps)
        if speech.warning is not None:  # logged by the core; shown on this node too
            notes.append(f"LetsTalk: {speech.warning}")
        if notes:
            PromptServer.instance.send_progress_text("\n".join(notes), cls.hidden.unique_id)
        return io.NodeOutput(speech, speech.num_frames)
