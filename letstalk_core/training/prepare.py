"""Preparation of real talking-head videos for training: ``python -m letstalk_core prepare``.

For every video under ``--videos`` (mp4, mov, mkv, avi, webm; searched recursively):

1. decode the frames with ffmpeg (imageio-ffmpeg), resampled to ``fps`` by ffmpeg's ``fps`` filter;
2. find one stable square face crop for the whole video: faces are detected (MTCNN, as for portraits)
   on about one frame per second, the crop is centred on the median face centre and sized from the
   largest face (``margin`` of the face size added on every side); a video where no face is found is
   skipped and reported, or centre-cropped when ``on_no_face="center"``;
3. crop and resize every frame to ``size`` x ``size`` (uint8);
4. extract the speech as 16 kHz mono and encode it with the audio encoder (``"mel"``, ``"phones"``,
   ``"phones+mel"`` or a wav2vec2/whisper folder/file) to per-frame features ``[N, L, D]``;
5. optionally encode the frames with a VAE (``vae``) to latents ``[N, C, h, w]``.

Each video becomes one shard ``shards/<index>.safetensors`` (``frames``, ``audio_features``, ``audio``,
optionally ``latents``); ``manifest.json`` lists the shards, the videos that were skipped and why, and the
split: which clips are held out of training (``split`` on each entry, the rule in ``manifest["split"]``).
Crops stay inside the picture (black letterbox bars are found and left out); a picture smaller than
``size``, a silent track or no audio track skips the video with its reason.
Broken or face-less videos are reported, never fatal. The manifest is rewritten after every video, so
an interrupted run resumes where it stopped: a rerun skips videos already in the manifest (and tries
the skipped ones again).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors.torch import save_file

from ..files import atomic_write, atomic_write_text
from ..framing import DEFAULT_CROP_MARGIN
from ..video import iter_video_frames

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv")
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
SAMPLE_RATE = 16_000
ON_NO_FACE = ("skip", "center")
DETECTION_FPS = 1  # frames per second looked at by the face detector
MAX_DETECTION_FRAMES = 16
MIN_CLIPS_TO_HOLD_OUT = 4  # a folder of fewer clips is one long recording or a handful: all of it trains
SILENCE_PEAK = 10 ** (-60 / 20)  # a track whose loudest sample stays under -60 dBFS holds no speech


class VideoSkipped(Exception):
    """A video that cannot be prepared (broken, no face, no audio, too short); the message says why."""


@dataclass
class PrepareReport:
    prepared: list[str] = field(default_factory=list)  # newly prepared in this run
    already: list[str] = field(default_factory=list)  # found in the manifest from an earlier run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (video, reason)
    manifest_path: Optional[Path] = None
    seconds: float = 0.0  # wall time of the videos looked at in this run (prepared or skipped)
    heldout: list[str] = field(default_factory=list)  # the clips the split holds out of training

    @property
    def clips_per_minute(self) -> Optional[float]:
        """Videos prepared per minute of wall time in this run (None when none was prepared)."""
        return len(self.prepared) * 60.0 / self.seconds if self.prepared and self.seconds > 0 else None

    def summary(self) -> str:
        speed = self.clips_per_minute
        lines = [f"prepared {len(self.prepared)} video(s)"
                 + (f" in {self.seconds / 60:.1f} min ({speed:.1f} clips per minute)" if speed else "")
                 + f", {len(self.already)} already in the manifest, skipped {len(self.skipped)}; "
                 f"{len(self.heldout)} held out of training (manifest 'split')"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


# ---- manifest ------------------------------------------------------------------------------------
def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The manifest of a prepared folder (FileNotFoundError when the folder has none)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: {str(out_dir)!r} is not a folder written by "
                                "`python -m letstalk_core prepare`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"manifest {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION or "videos" not in manifest:
        raise ValueError(f"manifest {str(path)!r} is not a version-{MANIFEST_VERSION} prepare manifest")
    return manifest


def _write_json_atomic(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, indent=1))


def _save_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    atomic_write(path, lambda temporary: save_file({k: v.contiguous() for k, v in tensors.items()}, temporary,
                                                   metadata=metadata))


# ---- decoding and cropping -----------------------------------------------------------------------
def stable_crop_box(path: Path, detector, *, margin: float, on_no_face: str, size: int, min_probability: float = 0.9):
    """One square crop box for the whole video (inside its picture area), whether it comes from a detected face,
    and the mouth's box in it (fractions top, bottom, left, right; None without landmarks)."""
    from ..latents import center_crop_box, detect_face_landmarks, face_crop_box, mouth_box_in_crop

    frames = [frame for chunk in iter_video_frames(path, 32, fps=DETECTION_FPS) for frame in chunk]
    if not frames:  # shorter than one detection interval (ffmpeg's fps filter then gives none): its own frames
        frames = [frame for chunk in iter_video_frames(path, 32) for frame in chunk]
    if not frames:
        raise VideoSkipped("no decodable video frames")
    if len(frames) > MAX_DETECTION_FRAMES:
        picks = np.linspace(0, len(frames) - 1, MAX_DETECTION_FRAMES).round().astype(int)
        frames = [frames[i] for i in picks]
    height, width = frames[0].shape[:2]
    top, bottom, left, right = picture_area(frames)
    if min(bottom - top, right - left) < size:
        raise VideoSkipped(f"picture is {right - left}x{bottom - top} px (without black borders), smaller than the "
                           f"{size} px crop the model needs; use footage of at least {size}x{size} px")
    boxes, landmarks = [], []
    if detector is not None and detector != "none":
        for frame in frames:
            face = detect_face_landmarks(torch.from_numpy(frame).float() / 255.0, detector=detector,
                                         min_probability=min_probability)
            if face is not None:
                boxes.append(face[0])
                if face[1] is not None:
                    landmarks.append(face[1])
    area = (bottom - top, right - left)
    if not boxes:
        if on_no_face == "skip":
            raise VideoSkipped(f"no face found in {len(frames)} sampled frame(s) "
                               "(use on_no_face='center' / --on-no-face center to centre-crop instead)")
        x0, y0, x1, y1 = center_crop_box(area)
        return (x0 + left, y0 + top, x1 + left, y1 + top), False, None
    centre_x = statistics.median((b[0] + b[2]) / 2 for b in boxes) - left
    centre_y = statistics.median((b[1] + b[3]) / 2 for b in boxes) - top
    side = max(max(b[2] - b[0], b[3] - b[1]) for b in boxes)  # the largest face, so head motion stays inside
    face = (centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2)
    # the square stays inside the picture: letterbox or pillarbox bars never enter the crop
    x0, y0, x1, y1 = face_crop_box(face, area, margin=margin, fit="shift")
    crop_box = (x0 + left, y0 + top, x1 + left, y1 + top)
    return crop_box, True, mouth_box_in_crop(np.stack(landmarks), crop_box) if landmarks else None


def picture_area(frames: list[np.ndarray], threshold: float = 20.0) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the picture inside black letterbox/pillarbox bars.

    A row (column) at an edge belongs to a bar when its brightest pixel stays below ``threshold`` (of 255) in
    every sampled frame; only edge bars are trimmed, so a dark background inside the picture is kept.
    """
    brightest = np.max(np.stack([frame.max(axis=2) for frame in frames]), axis=0).astype(np.float32)  # [H, W]
    rows = np.flatnonzero(brightest.max(axis=1) >= threshold)
    cols = np.flatnonzero(brightest.max(axis=0) >= threshold)
    if rows.size == 0 or cols.size == 0:
        raise VideoSkipped("every sampled frame is black")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop_frames(path: Path, crop_box, size: int, fps: float) -> torch.Tensor:
    """All frames of the video at ``fps``, cropped to ``crop_box`` and resized -> uint8 ``[N, size, size, 3]``."""
    from ..latents import crop_and_resize

    out = []
    for chunk in iter_video_frames(path, 32, fps=fps):
        for frame in chunk:
            pixels = crop_and_resize(torch.from_numpy(frame).float() / 255.0, crop_box, size)  # [1, 3, S, S] -1..1
            out.append(((pixels[0].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8))
    if not out:
        raise VideoSkipped("no decodable video frames")
    return torch.stack(out)  # [N, S, S, 3]


# ---- one video -----------------------------------------------------------------------------------
def prepare_video(path: Path, *, fps: int, size: int, encoder, codec, detector, margin: float, on_no_face: str,
                  min_frames: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of one shard and its manifest entry; raises :class:`VideoSkipped` for unusable videos."""
    from ..audio import MonoAudio, encode_audio
    from ..video import decode_audio

    try:
        samples, _ = decode_audio(path, SAMPLE_RATE, mono=True)  # [S, 1]
    except ValueError as error:
        if "no streams" in str(error):
            raise VideoSkipped(f"broken file: ffmpeg finds no streams in it ({error})") from None
        raise VideoSkipped(f"no audio: {error}") from None
    except RuntimeError as error:
        raise VideoSkipped(f"broken file: {str(error).strip().splitlines()[-1]}") from None
    speech = MonoAudio(samples=torch.from_numpy(samples[:, 0]).contiguous(), sample_rate=SAMPLE_RATE,
                       source=f"audio of {path.name}")
    if speech.num_samples * fps < SAMPLE_RATE:
        raise VideoSkipped(f"audio track shorter than one frame ({speech.seconds * 1000:.0f} ms)")
    peak = float(speech.samples.abs().max())
    if peak < SILENCE_PEAK:
        raise VideoSkipped(f"silent audio track (peak {20 * math.log10(max(peak, 1e-12)):.0f} dBFS): "
                           "nothing for the mouth to follow")
    try:
        crop_box, face_detected, mouth_box = stable_crop_box(path, detector, margin=margin, on_no_face=on_no_face,
                                                             size=size)
        frames = crop_frames(path, crop_box, size, fps)  # [N, S, S, 3]
    except (RuntimeError, OSError, StopIteration) as error:
        raise VideoSkipped(f"broken file: {str(error).strip().splitlines()[-1] if str(error) else type(error).__name__}") from None
    features = encode_audio(speech, encoder, fps=fps)  # AudioFeatures, [Na, L, D]
    num_frames = min(int(frames.shape[0]), features.num_frames)
    if num_frames < min_frames:
        raise VideoSkipped(f"only {num_frames} frame(s) with both video and audio at {fps} fps; "
                           f"at least {min_frames} are needed")
    frames = frames[:num_frames]
    tensors = {
        "frames": frames,  # [N, S, S, 3] uint8
        "audio_features": features.features[:num_frames].float(),  # [N, L, D]
        "audio": speech.samples[: math.ceil(num_frames * SAMPLE_RATE / fps)].float(),  # [T] 16 kHz mono
    }
    if codec is not None:
        pixels = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [N, 3, S, S] in -1..1
        tensors["latents"] = codec.encode(pixels).float().cpu()  # [N, C, h, w]
    entry = {
        "num_frames": num_frames,
        "crop_box": [int(v) for v in crop_box],
        "face_detected": bool(face_detected),
        # where the mouth is in the crop (fractions top, bottom, left, right, from the face landmarks), for
        # training's mouth-weighted loss and evaluation's lip-sync measure; None where no landmarks were found
        "mouth_box": None if mouth_box is None else [round(v, 4) for v in mouth_box],
    }
    return tensors, entry


def find_videos(videos_dir: Path) -> list[Path]:
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos folder {str(videos_dir)!r} not found (give a folder of talking-head videos)")
    return sorted(p for p in videos_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _encoder_description(name: str, encoder) -> dict:
    return {"name": name, "source": encoder.source, "num_layers": encoder.num_layers, "feature_dim": encoder.feature_dim,
            **({"n_mels": encoder.n_mels} if getattr(encoder, "kind", None) == "mel" else {})}


def prepare_dataset(
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fps: int = 25,
    size: int = 256,
    audio_encoder: str = "mel",
    vae: str | os.PathLike | None = None,
    on_no_face: str = "skip",
    detector: Any = "mtcnn",
    margin: float = DEFAULT_CROP_MARGIN,
    min_frames: int = 2,
    holdout_fraction: float = 0.25,
    hold_out: tuple[str, ...] | list[str] = (),
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> PrepareReport:
    """Prepare every video under ``videos_dir`` into ``out_dir`` (see the module docstring).

    ``detector``: "mtcnn", "none" (centre crop for all, needs ``on_no_face="center"``) or a callable
    ``uint8 [H, W, 3] -> [((x0, y0, x1, y1), probability), ...]``. ``holdout_fraction``: the share of each
    folder's clips held out of training (see :func:`split_clips`); ``hold_out``: patterns of clip names
    (relative to ``videos_dir``, shell wildcards: ``grid/s1/bbbs7a.mpg``, ``*/lbax4n.*``) held out as well,
    for clips an evaluation must not have trained on. ``progress(done, total, name)`` is called after each
    video.
    """
    from ..audio import load_audio_encoder
    from ..latents import load_vae

    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps must be a positive integer frame rate, got {fps!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"size must be an integer >= 8 and a multiple of 8 (the VAE downscale), got {size!r}")
    if isinstance(holdout_fraction, bool) or not isinstance(holdout_fraction, (int, float)) or not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be a number in [0, 1) (the share of each folder's clips kept out of "
                         f"training), got {holdout_fraction!r}")
    if on_no_face not in ON_NO_FACE:
        raise ValueError(f"on_no_face must be one of {list(ON_NO_FACE)}, got {on_no_face!r}")
    hold_out = check_hold_out(hold_out)
    if (detector is None or detector == "none") and on_no_face == "skip":
        raise ValueError("detector 'none' finds no faces, so every video would be skipped; pass on_no_face='center'")
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    videos = find_videos(videos_dir)
    names = [video.relative_to(videos_dir).as_posix() for video in videos]
    for pattern in hold_out:  # a pattern that names no video is a typo, said before hours of work
        if not fnmatch.filter(names, pattern):
            raise ValueError(f"hold_out pattern {pattern!r} matches no video under {str(videos_dir)!r} (patterns "
                             "are clip names relative to that folder, with shell wildcards, e.g. 'grid/s1/bbbs7a.mpg' "
                             "or '*/lbax4n.*')")
    encoder = load_audio_encoder(audio_encoder)
    codec = load_vae(vae) if vae is not None else None
    settings = {
        "fps": fps, "size": size, "audio_sample_rate": SAMPLE_RATE,
        "audio_encoder": _encoder_description(str(audio_encoder), encoder),
        "vae": None if vae is None else str(Path(vae).resolve()),
        "latent_channels": None if codec is None else codec.latent_channels,
        "scaling_factor": None if codec is None else codec.scaling_factor,
        "on_no_face": on_no_face, "margin": margin,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "shards").mkdir(exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.exists():
        manifest = read_manifest(out_dir)
        for key in ("fps", "size", "audio_encoder", "vae"):
            if manifest.get(key) != settings[key]:
                raise ValueError(f"{str(out_dir)!r} was prepared with {key}={manifest.get(key)!r}, this run asks for "
                                 f"{settings[key]!r}; use another --out folder or the same settings to resume")
    else:
        manifest = {"version": MANIFEST_VERSION, **settings, "videos": [], "skipped": []}
    done = {entry["name"] for entry in manifest["videos"] if (out_dir / entry["shard"]).is_file()}
    manifest["videos"] = [entry for entry in manifest["videos"] if entry["name"] in done]
    manifest["skipped"] = []
    report = PrepareReport(manifest_path=manifest_path)
    next_index = max((int(Path(e["shard"]).stem) for e in manifest["videos"]), default=-1) + 1
    for position, (video, name) in enumerate(zip(videos, names)):
        if name in done:
            report.already.append(name)
        else:
            started = time.perf_counter()
            try:
                tensors, entry = prepare_video(video, fps=fps, size=size, encoder=encoder, codec=codec,
                                               detector=detector, margin=margin, on_no_face=on_no_face,
                                               min_frames=min_frames)
            except VideoSkipped as reason:
                logger.warning("skipping %s: %s", name, reason)
                report.skipped.append((name, str(reason)))
                manifest["skipped"].append({"name": name, "reason": str(reason)})
            else:
                shard = f"shards/{next_index:06d}.safetensors"
                next_index += 1
                _save_shard(out_dir / shard, tensors, {"video": name, "fps": str(fps)})
                manifest["videos"].append({"name": name, "shard": shard, **entry})
                report.prepared.append(name)
            _write_json_atomic(manifest_path, manifest)
            report.seconds += time.perf_counter() - started
        if progress is not None:
            progress(position + 1, len(videos), name)
    heldout = split_clips([entry["name"] for entry in manifest["videos"]], holdout_fraction, hold_out)
    for entry in manifest["videos"]:
        entry["split"] = "heldout" if entry["name"] in heldout else "train"
    manifest["split"] = {"holdout_fraction": holdout_fraction, "hold_out": list(hold_out), "rule": SPLIT_RULE,
                         "heldout": sorted(heldout)}
    _write_json_atomic(manifest_path, manifest)
    report.heldout = sorted(heldout)
    return report


def check_hold_out(hold_out) -> tuple[str, ...]:
    """``hold_out`` as a tuple of non-empty pattern strings, or a ValueError naming it."""
    if isinstance(hold_out, str):
        hold_out = (hold_out,)
    if not isinstance(hold_out, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in hold_out):
        raise ValueError(f"hold_out must be a list of clip-name patterns (e.g. ['grid/s1/bbbs7a.mpg', '*/lbax4n.*']), "
                         f"got {hold_out!r}")
    return tuple(p.strip() for p in hold_out)


SPLIT_RULE = ("clips are grouped by the folder they are in (one speaker or one recording session); in every folder "
              f"of at least {MIN_CLIPS_TO_HOLD_OUT} prepared clips, round(holdout_fraction x clips) of them, those "
              "whose names have the smallest SHA-1, are held out: the trainer never reads them, evaluation uses them. "
              "Clips named by a hold_out pattern (--hold-out) are held out as well. One sentence per clip (as GRID and "
              "most corpora record them) makes this a split by sentence.")


def split_clips(names: list[str], holdout_fraction: float, hold_out: tuple[str, ...] = ()) -> set[str]:
    """The clip names held out of training: per folder, by the rule in :data:`SPLIT_RULE` (deterministic, so a
    rerun over the same clips gives the same split), and every name a ``hold_out`` pattern matches."""
    folders: dict[str, list[str]] = {}
    for name in names:
        folders.setdefault(name.rpartition("/")[0], []).append(name)
    heldout: set[str] = set()
    for clips in folders.values():
        if len(clips) >= MIN_CLIPS_TO_HOLD_OUT:
            count = round(holdout_fraction * len(clips))
            heldout.update(sorted(clips, key=lambda n: hashlib.sha1(n.encode("utf-8")).hexdigest())[:count])
    for pattern in hold_out:
        heldout.update(fnmatch.filter(names, pattern))
    return heldout
