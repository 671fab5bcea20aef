"""Synthetic speech with espeak-ng: varied voices, speeds, pitches and sentences.

espeak-ng is a system program (Debian/Ubuntu: ``apt-get install espeak-ng``); it is called
through ``subprocess`` and writes a wav into a temporary folder, which is read back and
resampled to 16 kHz. Sentences come from two fixed lists (training and held-out) and from
a small random grammar used for training only; held-out sentences never appear in
training tracks.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "EspeakNotFoundError",
    "SpeechStyle",
    "SpeechTrack",
    "TRAIN_SENTENCES",
    "HELDOUT_SENTENCES",
    "ENGLISH_VOICES",
    "find_espeak",
    "available_variants",
    "sample_speech_style",
    "random_sentence",
    "sentence_split",
    "synthesize_speech",
    "make_speech_track",
]

SAMPLE_RATE = 16000

INSTALL_HINT = (
    "espeak-ng is not installed (no 'espeak-ng' program on PATH). Install it with "
    "'sudo apt-get install espeak-ng' (Debian/Ubuntu), 'sudo dnf install espeak-ng' (Fedora), "
    "'brew install espeak-ng' (macOS), or the installer from "
    "https://github.com/espeak-ng/espeak-ng/releases (Windows)."
)

# English accents of espeak-ng itself (no MBROLA voices needed)
ENGLISH_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")

# voice variants that sound like ordinary speakers (no whisper, robot or effect voices)
_PREFERRED_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "Andy", "Annie", "edward", "john", "linda", "steph",
    "paul", "david", "belinda", "aunty", "Michael", "Alicia", "Andrea", "Lee", "max",
    "quincy", "travis", "zac", "adam", "benjamin",
)

TRAIN_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things from the store.",
    "We walked along the river until the sun went down.",
    "My favourite season is autumn, when the leaves turn gold.",
    "Could you open the window? It is getting warm in here.",
    "The train to the city leaves every twenty minutes.",
    "She painted the old fence a bright shade of blue.",
    "I think we should try the new restaurant on the corner.",
    "Every morning he drinks a cup of tea before work.",
    "The children laughed as the puppy chased its tail.",
    "A gentle breeze moved through the tall green grass.",
    "Remember to water the plants while I am away.",
    "The library closes early on Sundays.",
    "Our team finished the project two days ahead of schedule.",
    "He played the piano softly so the baby could sleep.",
    "The mountains looked purple in the evening light.",
    "Would you like some more soup, or are you full?",
    "The meeting has been moved to Thursday afternoon.",
    "They built a small wooden boat during the summer.",
    "Music fills the street whenever the market opens.",
    "I lost my keys again, so I had to wait outside.",
    "The weather report says it will snow tomorrow.",
    "Oranges, apples and bananas were piled on the table.",
    "Nobody expected the old clock to start ticking again.",
    "The pilot announced that we would land in ten minutes.",
    "Cats often sleep for most of the day.",
    "We need three more chairs for the guests tonight.",
    "Her voice echoed through the empty hall.",
    "Turn left at the bakery and you will see the museum.",
    "The scientist looked at the sample under the microscope.",
    "Hold the rope tightly and pull when I say go.",
    "Thank you so much for your kind words yesterday.",
    "The garden was full of roses, tulips and daisies.",
    "You can find the answer at the end of the book.",
    "Bright lights flashed across the night sky.",
    "He fixed the bicycle with nothing but a wrench.",
    "The soup smells wonderful, what did you put in it?",
    "Our neighbours are moving to a farm in the north.",
    "It took us an hour to find a parking space.",
    "The violin sounded sweet and a little sad.",
    "Who left the milk out on the kitchen counter?",
    "The ship sailed slowly into the foggy harbour.",
    "Learning a new language takes patience and practice.",
    "Wow, that was the loudest thunder I have ever heard!",
    "Please speak clearly so everyone can hear you.",
    "The baker wakes up at four to make fresh bread.",
    "Owls hunt quietly through the dark forest.",
    "Let us meet at noon beside the fountain.",
)

HELDOUT_SENTENCES = (
    "A yellow kite drifted high above the quiet beach.",
    "The professor wrote a long equation on the board.",
    "Should we take the bus or walk to the theatre?",
    "Grandmother keeps her letters in a velvet box.",
    "Two foxes crossed the frozen lake at dawn.",
    "The orchestra tuned their instruments before the show.",
    "I would rather read a novel than watch the news.",
    "Thick smoke rose from the chimney of the cottage.",
    "Maybe the parcel will arrive on Monday morning.",
    "Each student received a map and a compass.",
    "The lighthouse keeper counted the passing ships.",
    "Joyful voices sang around the warm campfire.",
    "Why does the moon look bigger near the horizon?",
    "Fresh lemonade tastes best on a hot afternoon.",
    "The engineer checked every bolt on the bridge.",
    "Quietly, the deer stepped out of the woods.",
)

# word lists of the random sentence grammar (training only)
_SUBJECTS = (
    "the farmer", "my brother", "a tired doctor", "the young singer", "our teacher", "the small robot",
    "a curious child", "the old captain", "my best friend", "the gardener", "a busy waiter", "the clever student",
    "her uncle", "the painter", "a lonely sailor", "the happy dog",
)
_VERBS = (
    "found", "carried", "painted", "opened", "watched", "cooked", "repaired", "borrowed", "dropped",
    "cleaned", "followed", "remembered", "counted", "sold", "built", "noticed",
)
_ADJECTIVES = (
    "red", "heavy", "shiny", "broken", "tiny", "strange", "wooden", "golden", "quiet", "muddy",
    "purple", "warm", "ancient", "soft", "noisy", "empty",
)
_OBJECTS = (
    "bucket", "letter", "window", "guitar", "basket", "ladder", "umbrella", "bottle", "blanket",
    "drawer", "engine", "piano", "lantern", "carpet", "bicycle", "notebook",
)
_PLACES = (
    "near the station", "in the garden", "behind the barn", "at the market", "under the bridge",
    "on the balcony", "by the river", "in the attic", "after lunch", "before sunrise", "during the storm",
    "at the harbour", "in the kitchen", "on the hill",
)
_OPENERS = ("", "", "", "yesterday ", "last night ", "this morning ", "suddenly ", "once again ")
_HELDOUT_SET = frozenset(s.lower() for s in HELDOUT_SENTENCES)


class EspeakNotFoundError(RuntimeError):
    """espeak-ng is needed for synthetic speech but is not installed."""


def find_espeak() -> str:
    """Path of the espeak-ng program; raises :class:`EspeakNotFoundError` with install steps."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakNotFoundError(INSTALL_HINT)
    return exe


@functools.lru_cache(maxsize=1)
def available_variants() -> tuple[str, ...]:
    """The ordinary-speaker voice variants this espeak-ng installation has (e.g. m1..m8, f1..f5)."""
    result = subprocess.run([find_espeak(), "--voices=variant"], capture_output=True, text=True)
    present = set()
    for line in result.stdout.splitlines()[1:]:
        for column in line.split():
            if column.startswith("!v/"):
                present.add(column[3:])
    variants = tuple(v for v in _PREFERRED_VARIANTS if v in present)
    if not variants:
        raise EspeakNotFoundError(
            f"espeak-ng at {find_espeak()} lists none of the voice variants {_PREFERRED_VARIANTS[:13]}; "
            "its data files (espeak-ng-data) seem incomplete; reinstall espeak-ng"
        )
    return variants


@dataclass(frozen=True)
class SpeechStyle:
    """One speaker: accent voice, variant, speed (words per minute), pitch (0..99), word gap."""

    voice: str = "en-us"
    variant: str = "m3"
    speed: int = 160
    pitch: int = 50
    word_gap: int = 0

    def __post_init__(self):
        if self.voice not in ENGLISH_VOICES:
            raise ValueError(f"voice {self.voice!r} is not one of {ENGLISH_VOICES}")
        if not 80 <= self.speed <= 450:
            raise ValueError(f"speed {self.speed} words per minute is outside espeak-ng's 80..450")
        if not 0 <= self.pitch <= 99:
            raise ValueError(f"pitch {self.pitch} is outside espeak-ng's 0..99")
        if not 0 <= self.word_gap <= 20:
            raise ValueError(f"word_gap {self.word_gap} is outside 0..20 (units of 10 ms)")

    @property
    def voice_name(self) -> str:
        return f"{self.voice}+{self.variant}"


def sample_speech_style(rng: np.random.Generator) -> SpeechStyle:
    """A random speaker: accent, variant, speed 130-210 wpm, pitch 25-80."""
    variants = available_variants()
    return SpeechStyle(
        voice=str(rng.choice(ENGLISH_VOICES)),
        variant=str(variants[rng.integers(len(variants))]),
        speed=int(rng.integers(130, 211)),
        pitch=int(rng.integers(25, 81)),
        word_gap=int(rng.choice([0, 0, 0, 1, 2])),
    )


def random_sentence(rng: np.random.Generator) -> str:
    """A random sentence from a small grammar; never one of :data:`HELDOUT_SENTENCES`."""
    while True:
        subject = str(rng.choice(_SUBJECTS))
        verb = str(rng.choice(_VERBS))
        thing = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_OBJECTS)}"
        place = str(rng.choice(_PLACES))
        form = int(rng.integers(4))
        if form == 0:
            text = f"{rng.choice(_OPENERS)}{subject} {verb} {thing} {place}."
        elif form == 1:
            text = f"Did {subject} really see {thing} {place}?"
        elif form == 2:
            other = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_OBJECTS)}"
            text = f"{subject} {verb} {thing}, and then {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {other}."
        else:
            text = f"I never knew that {subject} {verb} {thing} {place}!"
        text = text[0].upper() + text[1:]
        if text.lower() not in _HELDOUT_SET:
            return text


def sentence_split(text: str) -> str:
    """``"heldout"`` for the held-out evaluation sentences, ``"train"`` for everything else."""
    return "heldout" if text.strip().lower() in _HELDOUT_SET else "train"


def synthesize_speech(text: str, style: SpeechStyle = SpeechStyle(), sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak ``text`` with espeak-ng; returns mono float32 samples ``[S]`` at ``sample_rate``."""
    import soundfile
    import soxr

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if not isinstance(style, SpeechStyle):
        raise TypeError(f"style must be a SpeechStyle, got {type(style).__name__}")
    exe = find_espeak()
    with tempfile.TemporaryDirectory(prefix="letstalk_espeak_") as folder:
        wav = Path(folder) / "speech.wav"
        cmd = [
            exe, "-v", style.voice_name, "-s", str(style.speed), "-p", str(style.pitch),
            "-g", str(style.word_gap), "-w", str(wav), "--stdin",
        ]
        result = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True)
        if result.returncode != 0 or not wav.exists():
            raise RuntimeError(
                f"espeak-ng failed (exit code {result.returncode}) for voice {style.voice_name!r}: "
                + result.stderr.decode(errors="replace").strip()
            )
        samples, rate = soundfile.read(str(wav), dtype="float32", always_2d=False)  # [S]
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if rate != sample_rate:
        samples = soxr.resample(samples, rate, sample_rate)  # [S'] at sample_rate
    return np.ascontiguousarray(samples, dtype=np.float32)


@dataclass(frozen=True)
class SpeechTrack:
    """A speech recording made of sentences separated by pauses."""

    audio: np.ndarray  # [S] float32
    sample_rate: int
    style: SpeechStyle
    sentences: tuple[str, ...]
    segments: tuple[tuple[float, float], ...] = field(default=())  # (start_s, end_s) of each sentence

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / self.sample_rate

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def make_speech_track(
    seconds: float,
    seed: int,
    split: str = "train",
    sample_rate: int = SAMPLE_RATE,
    style: Optional[SpeechStyle] = None,
    sentences: Optional[Sequence[str]] = None,
) -> SpeechTrack:
    """Exactly ``seconds`` of speech: a random speaker says sentences with pauses between them.

    ``split="train"`` mixes :data:`TRAIN_SENTENCES` with random grammar sentences;
    ``split="heldout"`` uses :data:`HELDOUT_SENTENCES` only. ``sentences`` overrides the
    choice (they must belong to ``split``). The track starts with 0.1-0.5 s of silence;
    pauses are 0.2-0.8 s; the end is cut with a 10 ms fade.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if not (isinstance(seconds, (int, float)) and 0.2 <= seconds <= 600):
        raise ValueError(f"seconds must be a number in 0.2..600, got {seconds!r}")
    if sentences is not None:
        wrong = [s for s in sentences if sentence_split(s) != split]
        if wrong:
            raise ValueError(f"sentences {wrong!r} do not belong to the {split!r} split")
        if not sentences:
            raise ValueError("sentences must not be empty (or pass None to pick them at random)")
    rng = np.random.default_rng([int(seed), 0x5BEE])
    style = style or sample_speech_style(rng)
    total = int(round(seconds * sample_rate))
    pieces = [np.zeros(int(rng.uniform(0.1, 0.5) * sample_rate), np.float32)]
    length = pieces[0].shape[0]
    spoken, segments = [], []
    index = 0
    while length < total:
        if sentences is not None:
            text = sentences[index % len(sentences)]
        elif split == "heldout":
            text = HELDOUT_SENTENCES[rng.integers(len(HELDOUT_SENTENCES))]
        elif rng.uniform() < 0.5:
            text = TRAIN_SENTENCES[rng.integers(len(TRAIN_SENTENCES))]
        else:
            text = random_sentence(rng)
        index += 1
        voice = synthesize_speech(text, style, sample_rate)
        voice = voice * np.float32(rng.uniform(0.5, 0.95) / max(float(np.abs(voice).max()), 1e-6))
        spoken.append(text)
        segments.append((length / sample_rate, min(length + voice.shape[0], total) / sample_rate))
        pieces.append(voice)
        length += voice.shape[0]
        pause = np.zeros(int(rng.uniform(0.2, 0.8) * sample_rate), np.float32)
        pieces.append(pause)
        length += pause.shape[0]
    audio = np.concatenate(pieces)[:total].copy()  # [S]
    fade = min(total, int(0.01 * sample_rate))
    audio[total - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return SpeechTrack(audio=audio, sample_rate=sample_rate, style=style, sentences=tuple(spoken), segments=tuple(segments))
