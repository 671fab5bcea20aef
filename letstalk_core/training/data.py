"""Training data: video sources (prepared shards, the synthetic world) and clip sampling.

A *source* gives whole videos as :class:`VideoRecord` (frames or cached latents, and per-frame audio
features). :class:`ClipDataset` cuts a training sample out of a video: ``frames_per_clip`` consecutive
frames, the ``memory_frames`` frames just before them (where the clip starts too early for that, the
reference frame stands in, as at inference where the first clip's memory is the portrait), a
reference (portrait) frame drawn from outside the clip, and the audio windows of the clip's frames.
:class:`DataOrder` walks the videos in a fresh seeded permutation every epoch, so the order of a run
depends only on its seed and the position in it, which makes resuming exact.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

from ..audio import MonoAudio, encode_audio, frame_windows, named_encoder
from .prepare import SAMPLE_RATE, read_manifest

logger = logging.getLogger(__name__)


@dataclass
class VideoRecord:
    name: str
    audio_features: torch.Tensor  # [N, L, D]
    frames: Optional[torch.Tensor] = None  # [N, S, S, 3] uint8
    latents: Optional[torch.Tensor] = None  # [N, C, h, w]
    # (top, bottom, left, right) around the mouth, as fractions of the frame side; None when unknown
    mouth_box: Optional[tuple[float, float, float, float]] = None

    @property
    def num_frames(self) -> int:
        return int(self.audio_features.shape[0])


class _Cache:
    """A small least-recently-used cache (of loaded videos, or of their latents)."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.items: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int, load):
        if index in self.items:
            self.items.move_to_end(index)
            return self.items[index]
        record = load(index)
        self.items[index] = record
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return record


class PreparedSource:
    """The shards written by ``python -m letstalk_core prepare`` (pixels, or cached latents)."""

    def __init__(self, folder: str | Path, *, use_latents: bool = False, resolution: int | None = None,
                 cache_videos: int = 64, split: str = "train"):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.use_latents = bool(use_latents)
        if self.use_latents and not self.manifest.get("vae"):
            raise ValueError(f"{str(self.folder)!r} was prepared without --vae, so it has no cached latents; "
                             "prepare it again with --vae PATH or set data.use_cached_latents: false")
        if resolution is not None and self.manifest["size"] != resolution:
            raise ValueError(f"{str(self.folder)!r} holds {self.manifest['size']} px frames but the config asks for "
                             f"data.resolution {resolution}; prepare with --size {resolution} or change the config")
        # clips the split holds out are never trained on (manifests written before the split have none);
        # split="heldout" serves those alone, for measuring
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        self.entries = [entry for entry in self.manifest["videos"] if entry.get("split", "train") == split]
        if not self.entries:
            raise ValueError(f"{str(self.folder)!r} holds no prepared videos to "
                             f"{'train on' if split == 'train' else 'measure (none is held out)'} (see its "
                             "manifest's 'skipped' list and its 'split')")
        encoder = self.manifest["audio_encoder"]
        self.num_layers, self.feature_dim = int(encoder["num_layers"]), int(encoder["feature_dim"])
        self.feature_slice: slice | None = None  # a part of the cached features (see use_features_of)
        self.fps = int(self.manifest["fps"])
        self._cache = _Cache(cache_videos)

    def __len__(self) -> int:
        return len(self.entries)

    def num_frames(self, index: int) -> int:
        return int(self.entries[index]["num_frames"])

    def load(self, index: int) -> VideoRecord:
        return self._cache.get(index, self._load)

    def _load(self, index: int) -> VideoRecord:
        entry = self.entries[index]
        path = self.folder / entry["shard"]
        if not path.is_file():
            raise FileNotFoundError(f"shard {str(path)!r} of video {entry['name']!r} is missing; rerun prepare")
        with safe_open(str(path), framework="pt") as shard:
            features = shard.get_tensor("audio_features")  # [N, L, D]
            if self.feature_slice is not None:
                features = features[..., self.feature_slice].contiguous()
            mouth_box = tuple(entry["mouth_box"]) if entry.get("mouth_box") else None
            if self.use_latents:
                return VideoRecord(entry["name"], features, latents=shard.get_tensor("latents"), mouth_box=mouth_box)
            return VideoRecord(entry["name"], features, frames=shard.get_tensor("frames"), mouth_box=mouth_box)


    def use_features_of(self, asked: str) -> bool:
        """Serve the part of cached "phones+mel" features that the encoder ``asked`` ("phones" or "mel") gives
        alone: the phone distribution comes first, the log-mel bands after it (see ``PhoneAudioEncoder``).
        Returns whether the cached features hold ``asked``'s; one prepared folder then serves all three."""
        from ..audio.phones import PHONES

        prepared = named_encoder(self.manifest["audio_encoder"].get("name"))
        if prepared != "phones+mel" or asked not in ("phones", "mel"):
            return False
        self.feature_slice = slice(0, len(PHONES)) if asked == "phones" else slice(len(PHONES), None)
        self.feature_dim = len(PHONES) if asked == "phones" else self.feature_dim - len(PHONES)
        self._cache = _Cache(self._cache.capacity)
        return True


class SyntheticSource:
    """The synthetic talking-face world: videos of a folder written by ``generate_dataset`` (mp4 +
    JSON), or, without a folder, videos rendered on the fly (no compression) from seeded identities."""

    def __init__(self, encoder, *, resolution: int, fps: int = 25, folder: str | Path | None = None,
                 num_videos: int = 64, seconds: float = 4.0, seed: int = 0, cache_videos: int = 512):
        from .synthetic import sample_identity_seeds

        self.encoder = encoder
        self.resolution, self.fps, self.seconds = int(resolution), int(fps), float(seconds)
        self.num_layers, self.feature_dim = encoder.num_layers, encoder.feature_dim
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            if not self.folder.is_dir():
                raise FileNotFoundError(f"synthetic video folder {str(self.folder)!r} not found")
            self.videos = sorted(self.folder.glob("*.mp4"))
            if not self.videos:
                raise ValueError(f"synthetic video folder {str(self.folder)!r} holds no .mp4 files "
                                 "(make some with `python -m letstalk_core.training.synthetic OUT_DIR`)")
            self.names = [p.name for p in self.videos]
        else:
            self.identities = sample_identity_seeds("train", num_videos, seed)
            self.motion_seeds = [int(s) for s in np.random.default_rng([seed, 0x5EED]).integers(0, 2**31 - 1, num_videos)]
            self.names = [f"synthetic identity {i}" for i in self.identities]
        self._cache = _Cache(cache_videos)

    def __len__(self) -> int:
        return len(self.names)

    def num_frames(self, index: int) -> int:
        return self.load(index).num_frames

    def load(self, index: int) -> VideoRecord:
        return self._cache.get(index, self._load_folder if self.folder is not None else self._render)

    def _features(self, samples: np.ndarray, sample_rate: int, name: str) -> torch.Tensor:
        speech = MonoAudio(samples=torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)),
                           sample_rate=sample_rate, source=name)
        return encode_audio(speech, self.encoder, fps=self.fps).features  # [Na, L, D]

    def _record(self, name: str, frames: torch.Tensor, features: torch.Tensor, identity=None) -> VideoRecord:
        """``identity``: the rendered FaceIdentity, when known, for the renderer's mouth box."""
        from .synthetic import mouth_box_fraction

        count = min(int(frames.shape[0]), int(features.shape[0]))
        box = mouth_box_fraction(identity) if identity is not None else None
        return VideoRecord(name, features[:count].float(), frames=frames[:count], mouth_box=box)

    def _load_folder(self, index: int) -> VideoRecord:
        from ..video import decode_audio, read_video_frames
        from .synthetic import sample_identity

        path = self.videos[index]
        frames = torch.from_numpy(read_video_frames(path))  # [N, H, W, 3] uint8
        sidecar = path.with_suffix(".json")
        identity_seed = None
        if sidecar.is_file():
            info = json.loads(sidecar.read_text())
            identity_seed = info.get("identity_seed")
            fps = info.get("fps", str(self.fps))
            if str(fps) != str(self.fps):
                raise ValueError(f"synthetic video {path.name} has {fps} fps, the config asks for data.fps {self.fps}")
        if frames.shape[1] != self.resolution or frames.shape[2] != self.resolution:
            pixels = frames.permute(0, 3, 1, 2).float()  # [N, 3, H, W]
            pixels = F.interpolate(pixels, size=(self.resolution, self.resolution), mode="bicubic", antialias=True)
            frames = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        samples, _ = decode_audio(path, SAMPLE_RATE, mono=True)  # [S, 1]
        identity = sample_identity(int(identity_seed)) if identity_seed is not None else None
        return self._record(path.name, frames, self._features(samples[:, 0], SAMPLE_RATE, f"audio of {path.name}"),
                            identity)

    def _render(self, index: int) -> VideoRecord:
        from .synthetic import animate_face, make_speech_track, render_face, sample_identity

        identity = sample_identity(self.identities[index])
        track = make_speech_track(self.seconds, seed=self.motion_seeds[index], split="train")
        features = self._features(track.audio, track.sample_rate, self.names[index])  # [N, L, D]
        motion = animate_face(track.audio, track.sample_rate, self.fps, seed=self.motion_seeds[index],
                              num_frames=int(features.shape[0]))
        frames = np.stack([render_face(identity, motion.pose(i), self.resolution) for i in range(len(motion))])
        return self._record(self.names[index], torch.from_numpy(frames), features, identity)  # frames [N, S, S, 3]


@dataclass
class ClipSample:
    clip: torch.Tensor  # [F, 3, S, S] pixels in -1..1, or latents [F, C, h, w]
    portrait: torch.Tensor  # [3, S, S] or [C, h, w]
    memory: torch.Tensor  # [K, 3, S, S] or [K, C, h, w]
    audio_windows: torch.Tensor  # [F, 2r+1, L, D]
    video: str
    video_index: int
    start: int
    reference_index: int
    mouth_box: Optional[tuple[float, float, float, float]] = None  # fractions (top, bottom, left, right)


def _as_pixels(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [n, 3, S, S] in -1..1


class ClipDataset:
    """Training clips from a source (see the module docstring)."""

    def __init__(self, source, *, frames_per_clip: int, memory_frames: int, window_radius: int = 2,
                 use_latents: bool = False):
        self.source = source
        self.frames_per_clip, self.memory_frames = int(frames_per_clip), int(memory_frames)
        self.window_radius = int(window_radius)
        self.use_latents = bool(use_latents)
        if len(source) == 0:
            raise ValueError("the training data source holds no videos")

    def __len__(self) -> int:
        return len(self.source)

    def sample(self, index: int, generator: torch.Generator) -> ClipSample:
        record = self.source.load(index)
        count, clip_length = record.num_frames, self.frames_per_clip
        if count <= clip_length:
            raise ValueError(f"video {record.name!r} has {count} frames; training needs more than frames_per_clip="
                             f"{clip_length} (a reference frame must come from outside the clip)")
        start = int(torch.randint(0, count - clip_length + 1, (1,), generator=generator))
        # the reference frame comes from outside the clip and, where possible, outside its memory frames
        outside = [i for i in range(count) if i < start - self.memory_frames or i >= start + clip_length]
        if not outside:
            outside = [i for i in range(count) if i < start or i >= start + clip_length]
        reference = outside[int(torch.randint(0, len(outside), (1,), generator=generator))]
        data = record.latents if self.use_latents else record.frames
        convert = (lambda x: x.float()) if self.use_latents else _as_pixels
        clip = convert(data[start:start + clip_length])  # [F, ...]
        portrait = convert(data[reference:reference + 1])  # [1, ...]
        memory_indices = list(range(start - self.memory_frames, start))
        memory = torch.cat([portrait if i < 0 else convert(data[i:i + 1]) for i in memory_indices], dim=0) \
            if memory_indices else clip[:0]  # [K, ...]
        windows = frame_windows(record.audio_features, self.window_radius)[start:start + clip_length]  # [F, 2r+1, L, D]
        return ClipSample(clip=clip, portrait=portrait[0], memory=memory, audio_windows=windows.float(),
                          video=record.name, video_index=index, start=start, reference_index=reference,
                          mouth_box=record.mouth_box)


def collate(samples: list[ClipSample]) -> dict[str, torch.Tensor]:
    return {
        "clip": torch.stack([s.clip for s in samples]),  # [B, F, ...]
        "portrait": torch.stack([s.portrait for s in samples]),  # [B, ...]
        "memory": torch.stack([s.memory for s in samples]),  # [B, K, ...]
        "audio_windows": torch.stack([s.audio_windows for s in samples]),  # [B, F, 2r+1, L, D]
        # (top, bottom, left, right) fractions; NaN where a video does not know its mouth
        "mouth_box": torch.tensor([s.mouth_box if s.mouth_box is not None else (math.nan,) * 4 for s in samples],
                                  dtype=torch.float32),  # [B, 4]
    }


def mouth_weights(mouth_box: torch.Tensor, height: int, width: int, weight: float) -> torch.Tensor:
    """Loss weights ``[B, 1, 1, height, width]`` on a latent grid: ``1 + weight`` for latents that overlap
    the mouth box (``[B, 4]`` fractions top, bottom, left, right; NaN rows: no box), 1 elsewhere."""
    rows = (torch.arange(height, dtype=torch.float32) + 0.5) / height  # latent centres, [h]
    cols = (torch.arange(width, dtype=torch.float32) + 0.5) / width  # [w]
    half_h, half_w = 0.5 / height, 0.5 / width  # a latent overlaps the box when its cell does
    top, bottom, left, right = (mouth_box[:, i, None] for i in range(4))  # each [B, 1]
    in_rows = (rows + half_h > top) & (rows - half_h < bottom)  # [B, h] (False for NaN)
    in_cols = (cols + half_w > left) & (cols - half_w < right)  # [B, w]
    inside = (in_rows[:, :, None] & in_cols[:, None, :]).float()  # [B, h, w]
    return (1.0 + weight * inside)[:, None, None]  # [B, 1, 1, h, w]


class DataOrder:
    """Video index for every position of a run: epoch ``e`` is a permutation drawn from ``(seed, e)``."""

    def __init__(self, num_items: int, seed: int):
        if num_items < 1:
            raise ValueError(f"DataOrder needs at least one item, got {num_items}")
        self.num_items, self.seed = int(num_items), int(seed)
        self._epoch, self._permutation = -1, None

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.num_items)
        if epoch != self._epoch:
            generator = torch.Generator()
            generator.manual_seed(self.seed * 65_537 + epoch)
            self._epoch, self._permutation = epoch, torch.randperm(self.num_items, generator=generator)
        return int(self._permutation[offset])


def build_source(config, encoder):
    """The source a :class:`~.config.TrainConfig` names."""
    d = config.data
    if d.source == "prepared":
        source = PreparedSource(d.path, use_latents=d.use_cached_latents,
                                resolution=None if d.use_cached_latents else d.resolution,
                                cache_videos=d.cache_videos)
        if source.fps != d.fps:
            raise ValueError(f"{d.path!r} was prepared at {source.fps} fps, the config asks for data.fps {d.fps}")
        prepared_with = named_encoder(source.manifest["audio_encoder"].get("name"))
        asked = named_encoder(config.audio.encoder)
        if (prepared_with or asked) and prepared_with != asked and not source.use_features_of(asked):
            # e.g. phones vs mel, even at equal widths (phones+mel data serves either part alone)
            raise ValueError(f"{d.path!r} was prepared with the audio encoder "
                             f"{source.manifest['audio_encoder']['name']!r} but audio.encoder is "
                             f"{config.audio.encoder!r}; prepare again with --audio-encoder {config.audio.encoder} "
                             "or train with the encoder the data was prepared with")
        if (source.num_layers, source.feature_dim) != (encoder.num_layers, encoder.feature_dim):
            raise ValueError(f"{d.path!r} holds audio features of {source.num_layers} x {source.feature_dim} "
                             f"(encoder {source.manifest['audio_encoder']['name']!r}) but audio.encoder "
                             f"{config.audio.encoder!r} gives {encoder.num_layers} x {encoder.feature_dim}")
        return source
    s = d.synthetic
    return SyntheticSource(encoder, resolution=d.resolution, fps=d.fps, folder=d.path, num_videos=s.num_videos,
                           seconds=s.seconds, seed=s.seed, cache_videos=d.cache_videos)
