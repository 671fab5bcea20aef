"""A phonetic speech encoder: which US-English phone is spoken, per video frame (``"phones"``).

Speech (16 kHz mono) is decoded into phones with the CMU US-English acoustic model that ships inside the
``pocketsphinx`` wheel (5.x, BSD-2-Clause), in its phone-loop ("allphone") mode with the bundled phonetic
language model ``en-us-phone.lm.bin``. Speech that is not English still gets phones: the nearest English
ones. Silence, music and noise come out as the silence phone ``SIL``, which the model learns as a closed
mouth (pocketsphinx's noise phone ``+NSN+`` is counted as ``SIL``; its "spoken noise" ``+SPN+``, speech it
cannot name, keeps a column of its own, ``SPN``).

The soft distribution. The phone-loop search keeps no lattice, so there are no posteriors to read; the
distribution is made from the decoded segments, in three steps:

1. every 10 ms decoder frame is one-hot on the phone of the segment that holds it (``[T, P]``);
2. those rows are smoothed in time with a normalised Hann window of ``boundary_ms`` (default 50 ms), so
   that around a boundary the two phones cross-fade over a few 10 ms frames: the decoder's boundaries are
   only as exact as its frames, and the lips move into a phone before it is heard;
3. each video frame gets the time average of that curve over its own span ``[j/fps, (j+1)/fps)``
   (exactly, from the running integral), so a 30 ms ``P`` inside a 40 ms frame gives that frame
   three quarters ``P``; nothing between two frame centres is lost, at 25 or 29.97 fps alike.

Every row sums to 1. Feature layout ``[F, 1, P]`` with ``P = len(PHONES)`` (41: ``SIL``, the 39 CMU
phones, ``SPN``); ``"phones+mel"`` appends the 80 log-mel features of :class:`MelAudioEncoder` in the same
layer (``[F, 1, 121]``), so the two front ends can be compared in training.

With a transcript (``generate --text``, the Encode Speech node's ``transcript``; :meth:`PhoneAudioEncoder.
with_transcript`), the phones come from forced alignment instead: the words, looked up in the CMU dictionary
that ships with the model, are aligned to the speech in two passes (words, then phones), so every phone said is
there and only where it is said; a transcript that cannot be aligned falls back to the phone loop, with a
warning. Words must be English words of the dictionary (digits 0-9 are spelled out); others are refused by name.

Decoding settings: the language-model weight is 2 (pocketsphinx's default is 6.5), so that the sounds,
not the phone statistics, decide (at 6.5 stops inside words are often swallowed into neighbouring vowels);
and a seeded noise floor at -60 dBFS is added before decoding, because the acoustic model was trained on
recordings that always have one: exact digital zeros (synthesised or gated speech) give the cepstral
mean normalisation impossible log energies, and the stops next to them were decoded as other phones.
The decoder costs about 0.05 s of CPU per second of speech (one core; ``bench/audio.py --phones-only``).
"""

from __future__ import annotations

import logging
import math
import os
from functools import cached_property

import numpy as np
import torch

from .encoder_base import AudioEncoder
from .mel import MelAudioEncoder

log = logging.getLogger(__name__)

SILENCE = "SIL"
SPOKEN_NOISE = "SPN"
# The CI phones of pocketsphinx's en-us model (the CMU dictionary's 39 ARPAbet phones), silence first.
PHONES = (SILENCE, "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH",
          "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW",
          "V", "W", "Y", "Z", "ZH", SPOKEN_NOISE)
PHONE_INDEX = {phone: i for i, phone in enumerate(PHONES)}
# the decoder's own names for the filler phones -> ours
_FILLERS = {"+NSN+": SILENCE, "+SPN+": SPOKEN_NOISE, "SIL": SILENCE}
LIP_PHONES = ("P", "B", "M")  # the lips close: what a talking face must show

FRAME_SECONDS = 0.01  # the decoder's frame step (100 frames per second)
LANGUAGE_WEIGHT = 2.0
NOISE_FLOOR_DBFS = -60.0
PHONE_LM = "en-us-phone.lm.bin"
DICTIONARY = "cmudict-en-us.dict"
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def transcript_words(text) -> list[str]:
    """``text`` as the aligner's words: lower case, punctuation dropped (apostrophes kept), digits spelled."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"transcript must be the words spoken, as text, got {text!r}")
    cleaned = "".join(ch if ch.isalpha() or ch == "'" else (f" {_DIGITS[int(ch)]} " if ch.isdigit() else " ")
                      for ch in text.lower())
    words = [word.strip("'") for word in cleaned.split() if word.strip("'")]
    if not words:
        raise ValueError(f"transcript {text!r} holds no words")
    return words


def _pocketsphinx():
    try:
        import pocketsphinx
    except ImportError as error:  # a clear message instead of a bare ModuleNotFoundError
        raise ImportError("the 'phones' audio encoder needs pocketsphinx (pip install pocketsphinx==5.1.1, "
                          "see requirements.txt)") from error
    return pocketsphinx


class PhoneDecoder:
    """pocketsphinx's phone loop over the bundled CMU US-English model: 16 kHz mono -> phone segments."""

    def __init__(self, *, language_weight: float = LANGUAGE_WEIGHT, noise_floor_dbfs: float | None = NOISE_FLOOR_DBFS,
                 seed: int = 0):
        if not (isinstance(language_weight, (int, float)) and math.isfinite(language_weight) and language_weight > 0):
            raise ValueError(f"language_weight must be a positive number (pocketsphinx lw), got {language_weight!r}")
        self.language_weight = float(language_weight)
        self.noise_floor_dbfs = noise_floor_dbfs
        self.seed = int(seed)

    @cached_property
    def _decoder(self):
        pocketsphinx = _pocketsphinx()
        model = pocketsphinx.get_model_path()
        phone_lm = os.path.join(model, "en-us", PHONE_LM)
        acoustic = os.path.join(model, "en-us", "en-us")
        for path in (phone_lm, acoustic):
            if not os.path.exists(path):
                raise FileNotFoundError(f"pocketsphinx's bundled US-English model lacks {path}; reinstall "
                                        "pocketsphinx==5.1.1 (the wheel carries the model)")
        return pocketsphinx.Decoder(hmm=acoustic, allphone=phone_lm, lm=None, dict=None, lw=self.language_weight,
                                    samprate=16_000, loglevel="ERROR")

    @cached_property
    def _aligner(self):
        pocketsphinx = _pocketsphinx()
        model = os.path.join(pocketsphinx.get_model_path(), "en-us")
        return pocketsphinx.Decoder(hmm=os.path.join(model, "en-us"), dict=os.path.join(model, DICTIONARY), lm=None,
                                    samprate=16_000, loglevel="ERROR")

    @cached_property
    def dictionary(self) -> frozenset[str]:
        """The words the aligner knows (the CMU dictionary bundled with the model)."""
        path = os.path.join(_pocketsphinx().get_model_path(), "en-us", DICTIONARY)
        with open(path, encoding="utf-8") as handle:
            return frozenset(line.split(" ", 1)[0].split("(", 1)[0] for line in handle if line.strip())

    def _pcm(self, samples: torch.Tensor) -> bytes:
        audio = samples.detach().to(torch.float32).cpu().numpy().astype(np.float64)
        if self.noise_floor_dbfs is not None:
            rng = np.random.default_rng(self.seed)
            audio = audio + rng.standard_normal(audio.shape[0]) * 10.0 ** (self.noise_floor_dbfs / 20.0)
        return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()

    def check_transcript(self, text) -> list[str]:
        """The transcript's words, or a ValueError naming those the dictionary does not hold."""
        words = transcript_words(text)
        unknown = sorted({word for word in words if word not in self.dictionary})
        if unknown:
            raise ValueError(f"transcript: {', '.join(repr(w) for w in unknown[:10])} "
                             f"{'is' if len(unknown) == 1 else 'are'} not in the CMU US-English dictionary the "
                             "aligner uses; write such words as they sound in English words, or leave the "
                             "transcript out (the phones are then decoded from the sound alone)")
        return words

    def aligned_segments(self, samples: torch.Tensor, text: str) -> list[tuple[str, int, int]]:
        """Like :meth:`segments`, from forced alignment of ``text`` to the speech (words, then phones).
        Raises RuntimeError when pocketsphinx cannot align them."""
        words = self.check_transcript(text)
        pcm, aligner = self._pcm(samples), self._aligner
        aligner.reinit_feat()
        aligner.set_align_text(" ".join(words))
        aligner.start_utt()
        aligner.process_raw(pcm, full_utt=True)
        aligner.end_utt()
        aligner.set_alignment()
        aligner.start_utt()
        aligner.process_raw(pcm, full_utt=True)
        aligner.end_utt()
        alignment = aligner.get_alignment()
        phones = [] if alignment is None else list(alignment.phones())
        if not phones:
            raise RuntimeError("pocketsphinx found no alignment of the transcript to the speech")
        found = []
        for phone in phones:
            name = _FILLERS.get(phone.name, phone.name)
            found.append((name if name in PHONE_INDEX else SILENCE, int(phone.start),
                          int(phone.start) + int(phone.duration) - 1))
        return found

    def segments(self, samples: torch.Tensor) -> list[tuple[str, int, int]]:
        """``samples [T]`` (float, 16 kHz, -1..1) -> ``[(phone, first_frame, last_frame), ...]`` in 10 ms
        frames (inclusive), phones named as in :data:`PHONES`."""
        pcm = self._pcm(samples)
        decoder = self._decoder
        # a fresh front end per call: the cepstral mean (and noise estimate) would otherwise carry over from
        # the previous utterance, and the same speech would decode differently the second time
        decoder.reinit_feat()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        found = []
        for segment in decoder.seg():
            name = _FILLERS.get(segment.word, segment.word)
            if name not in PHONE_INDEX:
                log.warning("pocketsphinx gave an unknown phone %r; counted as silence", segment.word)
                name = SILENCE
            found.append((name, int(segment.start_frame), int(segment.end_frame)))
        return found


def phone_frames(segments: list[tuple[str, int, int]], num_steps: int) -> torch.Tensor:
    """Segments -> one-hot rows ``[num_steps, P]`` per 10 ms step; steps no segment covers are silence."""
    onehot = torch.zeros(num_steps, len(PHONES))  # [T, P]
    onehot[:, PHONE_INDEX[SILENCE]] = 1.0
    for phone, first, last in segments:
        first, stop = max(0, first), min(num_steps, last + 1)
        if stop > first:
            onehot[first:stop] = 0.0
            onehot[first:stop, PHONE_INDEX[phone]] = 1.0
    return onehot


def smooth_boundaries(onehot: torch.Tensor, width_steps: int) -> torch.Tensor:
    """``[T, P]`` rows convolved in time with a normalised Hann window of ``width_steps`` (odd) steps;
    the ends are extended with the first/last row, so rows still sum to 1."""
    if width_steps <= 1:
        return onehot
    window = torch.hann_window(width_steps + 2, periodic=False, dtype=onehot.dtype)[1:-1]  # no zero taps
    window = window / window.sum()
    half = width_steps // 2
    padded = torch.cat([onehot[:1].expand(half, -1), onehot, onehot[-1:].expand(half, -1)])  # [T + 2h, P]
    # [P, 1, T + 2h] conv [1, 1, W] -> [P, 1, T]
    return torch.nn.functional.conv1d(padded.T[:, None], window.view(1, 1, -1))[:, 0].T.contiguous()


def frame_averages(steps: torch.Tensor, step_seconds: float, fps, num_frames: int) -> torch.Tensor:
    """Time averages of a piecewise-constant ``steps [T, P]`` (step k spans ``[k, k+1) * step_seconds``)
    over video frames ``[j/fps, (j+1)/fps)``, j < ``num_frames`` -> ``[num_frames, P]``. Time past the
    last step counts as the last step."""
    fps = float(fps)
    num_steps = steps.shape[0]
    integral = torch.cat([torch.zeros(1, steps.shape[1], dtype=torch.float64),
                          steps.to(torch.float64).cumsum(0)])  # [T + 1, P]: integral up to step k, in steps

    def integral_at(position: torch.Tensor) -> torch.Tensor:  # position in steps, any real >= 0
        inside = position.clamp(0, num_steps)
        whole = inside.floor().long().clamp(max=num_steps - 1)
        value = integral[whole] + (inside - whole)[:, None] * steps.to(torch.float64)[whole]
        beyond = (position - num_steps).clamp_min(0)[:, None] * steps.to(torch.float64)[-1:]
        return value + beyond

    edges = torch.arange(num_frames + 1, dtype=torch.float64) / fps / step_seconds  # [F + 1], in steps
    totals = integral_at(edges)  # [F + 1, P]
    return ((totals[1:] - totals[:-1]) / (edges[1:] - edges[:-1])[:, None]).to(torch.float32)


class PhoneAudioEncoder(AudioEncoder):
    """``"phones"``: a soft US-English phone distribution per video frame, ``[F, 1, 41]`` (see the module
    docstring for how it is made); with ``with_mel`` (``"phones+mel"``) the log-mel bands follow in the
    same layer, ``[F, 1, 41 + n_mels]``."""

    def __init__(self, *, with_mel: bool = False, n_mels: int = 80, boundary_ms: float = 50.0,
                 language_weight: float = LANGUAGE_WEIGHT):
        if not (isinstance(boundary_ms, (int, float)) and math.isfinite(boundary_ms) and boundary_ms >= 0):
            raise ValueError(f"boundary_ms must be a number of milliseconds >= 0, got {boundary_ms!r}")
        self.mel = MelAudioEncoder(n_mels=n_mels) if with_mel else None
        self.kind = "phones+mel" if with_mel else "phones"
        super().__init__("CMU US-English phones (pocketsphinx)" + (f" + log-mel ({n_mels} bands)" if with_mel else ""))
        steps = int(round(boundary_ms / 1000.0 / FRAME_SECONDS))
        self.boundary_steps = steps + (1 - steps % 2) if steps > 1 else 1  # odd, so the window is centred
        self.decoder = PhoneDecoder(language_weight=language_weight)
        self.transcript: str | None = None  # the words spoken, when known (with_transcript)

    def with_transcript(self, text: str | None) -> "PhoneAudioEncoder":
        """This encoder for speech whose words are ``text`` (None or blank: decoded from the sound alone): the
        phones come from forced alignment (see the module docstring). A copy sharing the decoders; words the
        dictionary lacks are refused here, before any speech is encoded."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.device_manager = None
        if text is None or not str(text).strip():
            copy.transcript = None
        else:
            self.decoder.check_transcript(text)
            copy.transcript = str(text)
            copy.source = f"{self.source}, aligned to a transcript"
        return copy

    @property
    def n_mels(self) -> int:
        return 0 if self.mel is None else self.mel.n_mels

    @property
    def num_layers(self) -> int:
        return 1

    @property
    def feature_dim(self) -> int:
        return len(PHONES) + self.n_mels

    def phone_steps(self, samples: torch.Tensor, pad_samples: int = 0) -> torch.Tensor:
        """The smoothed phone distribution per 10 ms step, ``[T, P]``; ``pad_samples`` of silence after."""
        hop = round(self.sample_rate * FRAME_SECONDS)
        num_steps = -(-(samples.shape[0] + pad_samples) // hop)
        segments = None
        if self.transcript is not None:
            try:
                segments = self.decoder.aligned_segments(samples, self.transcript)
            except RuntimeError as error:
                log.warning("the transcript could not be aligned to the speech (%s); the phones are decoded from "
                            "the sound alone", error)
        if segments is None:
            segments = self.decoder.segments(samples)
        onehot = phone_frames(segments, num_steps)  # appended silence stays SIL
        return smooth_boundaries(onehot, self.boundary_steps)

    def _encode(self, samples: torch.Tensor, pad_samples: int, fps, num_frames: int) -> torch.Tensor:
        steps = self.phone_steps(samples, pad_samples)  # [T, P]
        phones = frame_averages(steps, FRAME_SECONDS, fps, num_frames)[:, None]  # [F, 1, P]
        if self.mel is None:
            return phones
        mel = self.mel._encode(samples, pad_samples, fps, num_frames)  # [F, 1, n_mels]
        return torch.cat([phones, mel], dim=-1)  # [F, 1, P + n_mels]
