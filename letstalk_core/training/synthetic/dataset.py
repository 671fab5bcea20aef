"""Talking-head videos of the synthetic world: mp4 with speech, plus a JSON sidecar each.

Train and held-out data are kept apart by seed: identity seeds below
:data:`HELDOUT_IDENTITY_START` are training identities, seeds from it on are held-out
(evaluation only); held-out videos also say only :data:`~.speech.HELDOUT_SENTENCES`,
which training videos never say.

The folder written by :func:`generate_dataset` holds ``<split>_<index>.mp4`` (H.264 video
with an AAC speech track, the form the ``prepare`` command reads) and
``<split>_<index>.json`` with the identity seed, the text, the speaker, the ground-truth
mouth opening per frame and the rest of the pose per frame (so any frame can be re-rendered).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ...files import atomic_write_text
from ...video.timing import as_fps, frame_count
from ...video.writer import Mp4Writer
from .animator import animate_face
from .face import render_face, sample_identity
from .speech import find_espeak, make_speech_track

__all__ = [
    "HELDOUT_IDENTITY_START",
    "SPLITS",
    "identity_split",
    "sample_identity_seeds",
    "generate_talking_video",
    "generate_dataset",
]

HELDOUT_IDENTITY_START = 1_000_000
_IDENTITY_SEED_END = 2**31 - 1
SPLITS = ("train", "heldout")
SIDECAR_VERSION = 1


def identity_split(identity_seed: int) -> str:
    """``"train"`` for identity seeds 0..999_999, ``"heldout"`` for 1_000_000 and above."""
    if isinstance(identity_seed, bool) or not isinstance(identity_seed, (int, np.integer)):
        raise TypeError(f"identity_seed must be an int, got {type(identity_seed).__name__}")
    if not 0 <= identity_seed <= _IDENTITY_SEED_END:
        raise ValueError(f"identity_seed must be in 0..{_IDENTITY_SEED_END}, got {identity_seed}")
    return "heldout" if identity_seed >= HELDOUT_IDENTITY_START else "train"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def sample_identity_seeds(split: str, count: int, seed: int = 0) -> list[int]:
    """``count`` distinct identity seeds of ``split``, drawn reproducibly from ``seed``."""
    _check_split(split)
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    rng = np.random.default_rng([int(seed), 0x1D5])
    low, high = (0, HELDOUT_IDENTITY_START) if split == "train" else (HELDOUT_IDENTITY_START, 2 * HELDOUT_IDENTITY_START)
    seeds: list[int] = []
    seen = set()
    while len(seeds) < count:
        value = int(rng.integers(low, high))
        if value not in seen:
            seen.add(value)
            seeds.append(value)
    return seeds


def generate_talking_video(
    out_path: Union[str, os.PathLike],
    identity_seed: int,
    seconds: float = 4.0,
    fps=25,
    size: int = 128,
    seed: int = 0,
    split: Optional[str] = None,
    preset: str = "veryfast",
) -> dict:
    """Render one talking-head mp4 and its JSON sidecar (same name, ``.json``).

    ``split`` defaults to the identity's split and must agree with it. ``seed`` picks the
    speaker, the sentences, blinks and head motion. Returns the sidecar dict.
    """
    split = identity_split(identity_seed) if split is None else _check_split(split)
    if identity_split(identity_seed) != split:
        raise ValueError(
            f"identity_seed {identity_seed} belongs to the {identity_split(identity_seed)!r} split, not {split!r}; "
            f"held-out identities are seeds >= {HELDOUT_IDENTITY_START}"
        )
    out_path = Path(out_path)
    fps_exact = as_fps(fps)
    identity = sample_identity(int(identity_seed))
    track = make_speech_track(seconds, seed=seed, split=split)
    num_frames = frame_count(track.audio.shape[0], track.sample_rate, fps_exact)
    motion = animate_face(track.audio, track.sample_rate, fps_exact, seed=seed, num_frames=num_frames)
    with Mp4Writer(out_path, fps_exact, audio=track.audio, sample_rate=track.sample_rate, preset=preset) as writer:
        chunk = []
        for index in range(num_frames):
            chunk.append(render_face(identity, motion.pose(index), size))  # [size, size, 3]
            if len(chunk) == 16 or index == num_frames - 1:
                writer.write(np.stack(chunk))  # [<=16, size, size, 3]
                chunk = []
    sidecar = {
        "version": SIDECAR_VERSION,
        "video": out_path.name,
        "split": split,
        "identity_seed": int(identity_seed),
        "seed": int(seed),
        "fps": str(fps_exact),
        "num_frames": num_frames,
        "size": size,
        "sample_rate": track.sample_rate,
        "seconds": track.seconds,
        "text": track.text,
        "sentences": list(track.sentences),
        "sentence_segments": [list(segment) for segment in track.segments],
        "speaker": {
            "voice": track.style.voice,
            "variant": track.style.variant,
            "speed": track.style.speed,
            "pitch": track.style.pitch,
            "word_gap": track.style.word_gap,
        },
        "mouth_open": [round(float(v), 5) for v in motion.mouth_open],
        "mouth_width": [round(float(v), 5) for v in motion.mouth_width],
        "blink": [round(float(v), 5) for v in motion.blink],
        "head_dx": [round(float(v), 6) for v in motion.head_dx],
        "head_dy": [round(float(v), 6) for v in motion.head_dy],
        "head_roll": [round(float(v), 6) for v in motion.head_roll],
        "brow_raise": [round(float(v), 5) for v in motion.brow_raise],
    }
    sidecar_path = out_path.with_suffix(".json")
    atomic_write_text(sidecar_path, json.dumps(sidecar, indent=1))
    return sidecar


def generate_dataset(
    out_dir: Union[str, os.PathLike],
    num_videos: int,
    seconds: float = 4.0,
    fps=25,
    size: int = 128,
    split: str = "train",
    seed: int = 0,
    progress=None,
) -> list[Path]:
    """Write ``num_videos`` talking-head videos of ``split`` into ``out_dir`` (created if missing).

    Identities, speakers and sentences are drawn reproducibly from ``seed``. ``progress``,
    if given, is called as ``progress(done, total)``. Returns the mp4 paths.
    """
    _check_split(split)
    if not isinstance(num_videos, int) or num_videos < 1:
        raise ValueError(f"num_videos must be a positive int, got {num_videos!r}")
    if not isinstance(size, int) or not 16 <= size <= 2048:
        raise ValueError(f"size must be an int in 16..2048 pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    as_fps(fps)
    find_espeak()  # fail before creating anything when speech cannot be made
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    identities = sample_identity_seeds(split, num_videos, seed)
    motion_seeds = np.random.default_rng([seed, 0x5EED]).integers(0, 2**31 - 1, size=num_videos)
    paths = []
    for index, (identity_seed, motion_seed) in enumerate(zip(identities, motion_seeds)):
        path = out / f"{split}_{index:05d}.mp4"
        generate_talking_video(path, identity_seed, seconds, fps, size, int(motion_seed), split)
        paths.append(path)
        if progress is not None:
            progress(index + 1, num_videos)
    return paths
