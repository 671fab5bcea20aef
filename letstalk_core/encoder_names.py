"""The audio encoders chosen by name rather than by a weights path, and how the command line describes
the choice. Kept free of torch, so that argument parsing and config checks stay light."""

from __future__ import annotations

# Encoders named rather than loaded from a path; a bundle's ``audio_encoder_config["type"]`` is one of these
# (or "wav2vec2"/"whisper", whose weights the bundle carries or the user gives).
NAMED_ENCODERS = ("mel", "phones", "phones+mel")

# --audio-encoder in prepare, train, generate and evaluate
AUDIO_ENCODER_HELP = ("'mel' (log-mel bands), 'phones' (US-English phones decoded by pocketsphinx's CMU model; "
                      "speech that is not English still gets phones, the nearest English ones; silence, music and "
                      "noise give the silence phone, a closed mouth), 'phones+mel' (both), or a wav2vec2/whisper "
                      "folder or .safetensors file")


def named_encoder(value) -> str | None:
    """The canonical name when ``value`` names a weightless encoder ("mel", "phones", "phones+mel"), else None."""
    if isinstance(value, str) and value.strip().lower() in NAMED_ENCODERS:
        return value.strip().lower()
    return None
