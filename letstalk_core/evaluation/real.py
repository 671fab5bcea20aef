"""Evaluation on real footage: ``python -m letstalk_core evaluate --videos DIR``.

Each clip is a real recording of a person speaking. The model gets the clip's first frame (face-cropped
as ``prepare`` crops it) as the portrait and the clip's own speech; the video it makes is compared with
the real one:

* lip sync: the mouth opening over time in the made video against the real video, each measured by
  :class:`~.metrics.MouthMeter` (anchored on the mouth box from the face landmarks of ``prepare``, head
  motion aligned away, the first frame as reference) and compared by :func:`~.metrics.sync_correlation`
  (15-frame moving average removed, best lag within +-2 frames). Beside it the ceiling (the real video
  through the model's codec against the real video) and the floor (a video made from the same portrait
  with ANOTHER clip's speech, against this clip's real mouth);
* structure error: 1 - SSIM of each made frame against the real frame at the same time, beside the
  codec's own (the real frames through the codec);
* seams: frame-to-frame change across clip boundaries against the change inside clips;
* seconds of compute per second of video.

``DIR`` is either a folder written by ``prepare`` (its held-out clips are used, or all of them when it
holds none out; the crop size must be the model's) or a folder of videos, which is prepared on the fly
into a temporary folder with the model's size.
"""

from __future__ import annotations

import fnmatch
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..framing import DEFAULT_CROP_MARGIN
from .common import StepCounter, checks, clip_count, clip_starts, codec_round_trip, make_video, nanmean, pooled_seams
from .metrics import MouthMeter, frame_changes, seam_ratio, structure_error, sync_correlation

__all__ = ["RealClip", "REAL_TARGETS", "load_real_clips", "evaluate_videos", "format_real_report"]

# metric -> (comparison, threshold): the targets on held-out real clips of training identities
REAL_TARGETS = {"sync": (">=", 0.6), "sync_above_floor": (">=", 0.25), "seam_ratio": ("<=", 1.5)}
MIN_FRAMES = 16  # the lip-sync measure removes a 15-frame moving average


@dataclass
class RealClip:
    name: str
    frames: torch.Tensor  # [N, S, S, 3] float 0..1, the real video cropped as the model sees it
    speech: np.ndarray  # [T] float32, 16 kHz mono
    fps: int
    mouth_box: tuple[int, int, int, int]  # top, bottom, left, right in pixels of the crop


def load_real_clips(folder: Path, size: int, *, margin: float = DEFAULT_CROP_MARGIN, fps: int = 25,
                    work_dir: Optional[Path] = None, log: Callable[[str], None] = lambda message: None
                    ) -> tuple[list[RealClip], list[tuple[str, str]]]:
    """The clips to evaluate and the ones left out with why: a ``prepare`` folder's held-out clips (at the
    frame rate they were prepared at), or every video of a plain folder (prepared into ``work_dir`` first,
    at ``fps``)."""
    from safetensors import safe_open

    from ..training.prepare import MANIFEST_NAME, prepare_dataset, read_manifest

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--videos: folder {str(folder)!r} not found (give a folder of talking-face videos, "
                                "or a folder written by `prepare`)")
    left_out: list[tuple[str, str]] = []
    if not (folder / MANIFEST_NAME).is_file():
        if work_dir is None:
            raise ValueError("a folder of videos needs work_dir, where it is prepared")
        log(f"preparing the videos in {folder} at {size} px")
        report = prepare_dataset(folder, work_dir, size=size, fps=fps, margin=margin, holdout_fraction=0.0)
        left_out += report.skipped
        folder = Path(work_dir)
    manifest = read_manifest(folder)
    if not left_out:  # a prepare folder given as it is: what its run skipped
        left_out += [(entry["name"], entry["reason"]) for entry in manifest.get("skipped", [])]
    if manifest["size"] != size:
        raise ValueError(f"--videos: {str(folder)!r} was prepared at {manifest['size']} px but the model makes "
                         f"{size} px videos; prepare it again with --size {size}, or give the folder of videos")
    entries = manifest["videos"]
    heldout = [entry for entry in entries if entry.get("split") == "heldout"]
    clips = []
    for entry in heldout or entries:
        if not entry.get("mouth_box"):
            left_out.append((entry["name"], "no face landmarks were found, so the mouth cannot be measured"))
            continue
        if entry["num_frames"] < MIN_FRAMES:
            left_out.append((entry["name"], f"{entry['num_frames']} frames; the lip-sync measure needs {MIN_FRAMES}"))
            continue
        with safe_open(str(folder / entry["shard"]), framework="pt") as shard:
            frames = shard.get_tensor("frames").float() / 255.0  # [N, S, S, 3]
            speech = shard.get_tensor("audio").numpy().astype(np.float32)  # [T] 16 kHz
        top, bottom, left, right = entry["mouth_box"]
        box = (int(top * size), int(math.ceil(bottom * size)), int(left * size), int(math.ceil(right * size)))
        clips.append(RealClip(entry["name"], frames, speech, int(manifest["fps"]), box))
    return clips, left_out


def evaluate_videos(
    videos: str | Path,
    checkpoint,
    *,
    sampler: Optional[str] = None,
    steps: Optional[int] = None,
    seed: Optional[int] = None,
    audio_cfg: Optional[float] = None,
    portrait_cfg: Optional[float] = None,
    overlap_frames: Optional[int] = None,
    max_clips: Optional[int] = None,
    only: Sequence[str] = (),
    margin: Optional[float] = None,
    vae=None,
    audio_encoder=None,
    device: str = "cpu",
    progress: Optional[Callable[[int, int], None]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (path or ``LetsTalkPipeline``) on real clips.

    A folder of videos is face-cropped with ``margin`` (None: the margin the checkpoint's training frames
    had, as the pipeline frames a portrait, see ``pipeline.crop_margin``). ``only``: clip-name patterns (shell
    wildcards, e.g. ``grid/s1-more/*``); the clips that match none are left out (before ``max_clips``).

    Returns ``settings``, ``metrics``, ``checks`` (each target with pass/fail), ``clips`` (per clip) and
    ``left_out`` (clips not evaluated, with the reason). Raises ValueError when no clip can be evaluated.
    """
    from ..pipeline import LetsTalkPipeline, crop_margin
    from ..sampling.options import check_overrides

    check_overrides(sampler=sampler, steps=steps, seed=seed, audio_cfg=audio_cfg, portrait_cfg=portrait_cfg,
                    overlap_frames=overlap_frames)  # before the model loads
    if max_clips is not None and (isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 1):
        raise ValueError(f"max_clips must be a positive integer, got {max_clips!r}")
    if isinstance(only, str) or not all(isinstance(pattern, str) and pattern for pattern in only):
        raise ValueError(f"only must be a list of clip-name patterns (e.g. ['grid/s1-more/*']), got {only!r}")
    log = log or (lambda message: None)
    pipe = checkpoint if isinstance(checkpoint, LetsTalkPipeline) else LetsTalkPipeline.from_pretrained(
        checkpoint, vae=vae, audio_encoder=audio_encoder, device=device)
    size, frames_per_clip = pipe.resolution, int(pipe.checkpoint.frames_per_clip)
    options = pipe.options(sampler=sampler, steps=steps, seed=seed, audio_cfg=audio_cfg, portrait_cfg=portrait_cfg,
                           overlap_frames=overlap_frames)  # the checkpoint's recommendation where None
    overlap_frames, steps = options.overlap_frames, options.steps
    margin = crop_margin(pipe.checkpoint, margin)

    with tempfile.TemporaryDirectory(prefix="letstalk-evaluate-") as work:
        clips, left_out = load_real_clips(Path(videos), size, margin=margin, fps=round(options.fps),
                                          work_dir=Path(work) / "prepared", log=log)
    if only:
        left_out += [(clip.name, "matches no --only pattern") for clip in clips
                     if not any(fnmatch.fnmatchcase(clip.name, pattern) for pattern in only)]
        clips = [clip for clip in clips if any(fnmatch.fnmatchcase(clip.name, pattern) for pattern in only)]
    if max_clips is not None:
        clips = clips[:max_clips]
    if not clips:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in left_out) or "the folder holds no video"
        raise ValueError(f"--videos: no clip of {str(videos)!r} can be evaluated ({reasons})")
    if len({clip.fps for clip in clips}) != 1:
        raise ValueError("--videos: the clips were prepared at different frame rates")
    fps = clips[0].fps
    options = options.replace(fps=fps)

    through_codec = codec_round_trip(pipe.vae)
    videos_per_clip = 2 if len(clips) > 1 else 1  # its own speech, and another clip's for the floor
    total = videos_per_clip * steps * sum(clip_count(clip.frames.shape[0], frames_per_clip, overlap_frames)
                                          for clip in clips)
    counter = StepCounter(progress, total)
    results, seams, made_seconds, made_frames = [], [], 0.0, 0
    for index, clip in enumerate(clips):
        portrait = (clip.frames[0] * 255.0).round().to(torch.uint8).numpy()  # [S, S, 3]: the clip's first frame
        meter = MouthMeter(clip.frames[0], clip.mouth_box)
        real_mouth = meter.raw(clip.frames)
        log(f"clip {index + 1}/{len(clips)} {clip.name}: its own speech")
        made, took = make_video(pipe, portrait, clip.speech, options.replace(seed=options.seed + index),
                               counter=counter)
        made_seconds, made_frames = made_seconds + took, made_frames + made.shape[0]
        # the floor: the same portrait with the next clip's speech (another sentence), against this clip's mouth
        partner = clips[(index + 1) % len(clips)] if len(clips) > 1 else None
        if partner is not None:
            log(f"clip {index + 1}/{len(clips)} {clip.name}: the speech of {partner.name} (the floor)")
            other, _ = make_video(pipe, portrait, partner.speech, options.replace(seed=options.seed + index),
                                 counter=counter)
            floor = sync_correlation(meter.raw(other), real_mouth)
        else:
            floor = float("nan")
        length = min(made.shape[0], clip.frames.shape[0])
        real_through_codec = through_codec(clip.frames)
        seams.append(seam_ratio(frame_changes(made), frames_per_clip,
                                clip_starts(made.shape[0], frames_per_clip, overlap_frames)))
        results.append({
            "clip": clip.name, "frames": int(length),
            "sync": sync_correlation(meter.raw(made[:length]), real_mouth[:length]),
            "sync_floor": floor,
            "sync_ceiling": sync_correlation(meter.raw(real_through_codec), real_mouth),
            "structure_error": float(structure_error(made[:length], clip.frames[:length]).mean()),
            "codec_structure_error": float(structure_error(real_through_codec, clip.frames).mean()),
            "seam_ratio": seams[-1]["ratio"], "seam_boundaries": seams[-1]["boundaries"],
        })
    metrics = {
        "sync": nanmean(r["sync"] for r in results),
        "sync_floor": nanmean(r["sync_floor"] for r in results),
        "sync_ceiling": nanmean(r["sync_ceiling"] for r in results),
        "structure_error": nanmean(r["structure_error"] for r in results),
        "codec_structure_error": nanmean(r["codec_structure_error"] for r in results),
        "seam_ratio": pooled_seams(seams)["ratio"],
        "seconds_per_video_second": made_seconds / max(made_frames / fps, 1e-9),
    }
    metrics["sync_above_floor"] = metrics["sync"] - metrics["sync_floor"]
    return {
        "checkpoint": str(getattr(pipe.checkpoint, "path", checkpoint)),
        "settings": {"videos": str(videos), "clips": [c.name for c in clips], "resolution": size, "fps": fps,
                     "frames_per_clip": frames_per_clip, "sampler": options.sampler, "steps": steps,
                     "seed": options.seed, "audio_cfg": options.audio_cfg, "portrait_cfg": options.portrait_cfg,
                     "overlap_frames": overlap_frames},
        "metrics": metrics, "checks": checks(metrics, REAL_TARGETS), "clips": results,
        "left_out": [{"name": name, "reason": reason} for name, reason in left_out],
    }


def format_real_report(result: dict[str, Any]) -> str:
    """The real-footage evaluation as a text table: per clip, then the means beside the targets."""
    def fmt(value) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    s, m, c = result["settings"], result["metrics"], result["checks"]
    lines = [f"checkpoint {result['checkpoint']}",
             f"{len(s['clips'])} real clip(s) from {s['videos']} at {s['resolution']} px, {s['sampler']} {s['steps']} "
             f"steps, clips of {s['frames_per_clip']} frames, overlap {s['overlap_frames']}, guidance audio "
             f"{s['audio_cfg']:g} portrait {s['portrait_cfg']:g}",
             "", f"{'clip':<34} {'sync':>6} {'floor':>6} {'ceiling':>7} {'struct':>6} {'codec':>6} {'seams':>6}"]
    for r in result["clips"]:
        lines.append(f"{r['clip'][-34:]:<34} {fmt(r['sync']):>6} {fmt(r['sync_floor']):>6} {fmt(r['sync_ceiling']):>7} "
                     f"{fmt(r['structure_error']):>6} {fmt(r['codec_structure_error']):>6} {fmt(r['seam_ratio']):>6}")
    mark = {True: "PASS", False: "FAIL"}

    def verdict(name: str) -> str:
        return mark[c[name]["pass"]] if c[name]["measured"] else "n/a"

    lines += ["",
              f"lip sync against the real video   {fmt(m['sync'])}  (ceiling, the real video through the codec: "
              f"{fmt(m['sync_ceiling'])}; floor, another clip's speech: {fmt(m['sync_floor'])})  "
              f"target {c['sync']['target']}: {verdict('sync')}",
              f"lip sync above its floor          {fmt(m['sync_above_floor'])}  target {c['sync_above_floor']['target']}: "
              f"{verdict('sync_above_floor')}",
              f"structure error (1 - SSIM)        {fmt(m['structure_error'])}  (the codec's own: "
              f"{fmt(m['codec_structure_error'])})",
              f"seams: boundary / inside change   {fmt(m['seam_ratio'])}  target {c['seam_ratio']['target']}: "
              f"{verdict('seam_ratio')}",
              f"seconds per second of video       {fmt(m['seconds_per_video_second'])}"]
    lines += [f"left out {item['name']}: {item['reason']}" for item in result["left_out"]]
    return "\n".join(lines)
