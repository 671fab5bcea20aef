"""Evaluation of a checkpoint on held-out synthetic identities and speech: lip sync, identity, seams, drift.

For each held-out identity (seeds >= 1_000_000, never seen in training) the portrait is rendered with a
closed mouth and animated with held-out speech (espeak-ng saying sentences training never says) or the
user's audio files. Then:

* lip sync: Pearson correlation between the mouth opening measured on the generated frames
  (:class:`~.metrics.MouthMeter`) and the renderer's ground truth for the same audio; next to it the
  ceiling (the renderer's own frames for that audio, measured the same way, raw and through the VAE)
  and the floor (frames generated for ANOTHER clip's audio against this audio's ground truth);
* identity: colour and structure error of the generated frames against the portrait (and, for
  reference, of the renderer's own frames: pose and mouth motion alone give that much);
* seams: frame-to-frame change across clip boundaries against the change inside clips;
* drift: identity error over the last seconds of a long video against the first seconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..sampling import clip_plan
from ..video.timing import frame_count
from .metrics import MouthMeter, as_frames, drift_ratio, frame_changes, identity_errors, pearson, seam_ratio

__all__ = ["TARGETS", "SAMPLER_TABLE", "EvalSample", "identity_seeds", "heldout_speech", "heldout_samples",
           "evaluate_checkpoint", "sampler_table", "checks", "format_report"]

FPS = 25
SAMPLE_RATE = 16_000
HELDOUT_IDENTITY_START = 1_000_000
# metric -> (comparison, threshold)
TARGETS = {"sync": (">=", 0.7), "sync_floor": ("<=", 0.2), "seam_ratio": ("<=", 1.5), "drift_ratio": ("<=", 1.2)}
SAMPLER_TABLE = (("ddpm", 250), ("ddim", 50), ("dpmpp_2m", 25), ("dpmpp_2m", 10))

Progress = Callable[[int, int], None]


@dataclass
class EvalSample:
    """One held-out identity with its speech and the ground-truth mouth opening per frame."""

    identity_seed: int
    speech: np.ndarray  # [S] float32 at SAMPLE_RATE
    source: str  # what the speech is, for the report
    truth: np.ndarray = field(repr=False, default=None)  # [F] opening 0..1

    @property
    def num_frames(self) -> int:
        return int(self.truth.shape[0])


def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_seconds(name: str, value, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a number of seconds >= {minimum:g}, got {value!r}")
    return float(value)


def identity_seeds(identities) -> list[int]:
    """A count (held-out seeds drawn reproducibly) or explicit held-out seeds -> list of seeds."""
    from ..training.synthetic.dataset import sample_identity_seeds

    if isinstance(identities, (int, np.integer)) and not isinstance(identities, bool):
        return sample_identity_seeds("heldout", _check_count("identities", identities), seed=0)
    seeds = list(identities)
    if not seeds:
        raise ValueError("identities must be a count >= 1 or a non-empty list of held-out identity seeds")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not HELDOUT_IDENTITY_START <= seed < 2**31 - 1:
            raise ValueError(f"identity seed {seed!r} is not a held-out identity; held-out seeds are ints "
                             f"{HELDOUT_IDENTITY_START}..{2**31 - 2} (training uses the ones below)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"identity seeds {seeds} repeat; give each identity once")
    return [int(s) for s in seeds]


def heldout_speech(seconds: float, seed: int) -> np.ndarray:
    """``seconds`` of held-out espeak-ng speech (``[S]`` float32, 16 kHz) that starts on the first word."""
    from ..training.synthetic.speech import make_speech_track

    track = make_speech_track(seconds + 0.6, seed=seed, split="heldout", sample_rate=SAMPLE_RATE)
    start = max(0, int((track.segments[0][0] - 0.04) * SAMPLE_RATE)) if track.segments else 0
    speech = track.audio[start:start + int(round(seconds * SAMPLE_RATE))]
    return np.ascontiguousarray(speech, dtype=np.float32)


def _load_speech(path, seconds: Optional[float]) -> np.ndarray:
    from ..audio import load_audio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {str(path)!r} does not exist")
    samples = load_audio(path, target_sample_rate=SAMPLE_RATE).samples.numpy()  # [S]
    if seconds is not None:
        samples = samples[:int(round(seconds * SAMPLE_RATE))]
    return np.ascontiguousarray(samples, dtype=np.float32)


def _with_truth(sample: EvalSample) -> EvalSample:
    from ..training.synthetic.animator import mouth_opening_from_audio

    sample.truth = mouth_opening_from_audio(sample.speech, SAMPLE_RATE, FPS)
    if sample.num_frames < 3:
        raise ValueError(f"{sample.source} gives {sample.num_frames} video frames; lip sync needs at least 3 "
                         f"({3 / FPS:.2f} s of speech)")
    return sample


def heldout_samples(identities=4, seconds: float = 4.0, audio: Sequence[str | Path] | None = None) -> list[EvalSample]:
    """Held-out identities paired with held-out speech of ``seconds`` each, or with the ``audio`` files
    in turn (each cut to ``seconds`` when given)."""
    seeds = identity_seeds(identities)
    samples = []
    for index, seed in enumerate(seeds):
        if audio:
            path = audio[index % len(audio)]
            speech, source = _load_speech(path, seconds), f"audio file {Path(path).name}"
        else:
            speech, source = heldout_speech(seconds, seed=index), f"held-out speech #{index}"
        samples.append(_with_truth(EvalSample(identity_seed=seed, speech=speech, source=source)))
    return samples


# ------------------------------------------------------------------------------------------ generation
class _StepCounter:
    """Turns per-video ``progress(done, total)`` into one running count over the whole evaluation."""

    def __init__(self, progress: Optional[Progress], total: int):
        self.progress, self.total, self.done, self.base = progress, total, 0, 0

    def video(self) -> Callable[[int, int], None]:
        self.base = self.done

        def step(done: int, total: int) -> None:
            self.done = self.base + done
            if self.progress is not None:
                self.progress(self.done, self.total)

        return step


def _portrait(identity_seed: int, size: int) -> np.ndarray:
    from ..training.synthetic.face import FacePose, render_face, sample_identity

    return render_face(sample_identity(identity_seed), FacePose(), size)  # [R, R, 3] uint8


def _generate(pipe, portrait: np.ndarray, speech: np.ndarray, options, *, counter: _StepCounter,
              on_chunk: Optional[Callable[[torch.Tensor], None]] = None,
              keep: bool = True) -> tuple[Optional[torch.Tensor], float]:
    """Generate the video for ``speech`` (16 kHz) with ``options`` (:class:`SamplingOptions`, its fps
    too); returns (frames ``[F, H, W, 3]`` or None, seconds taken)."""
    started = time.perf_counter()
    conditions = pipe.prepare(portrait, torch.from_numpy(speech), fps=options.fps, crop=False,
                              sample_rate=SAMPLE_RATE)
    kept = []
    for chunk in pipe.iter_frames(conditions, options, progress=counter.video()):
        chunk = chunk.float().cpu()  # [n, H, W, 3]
        if on_chunk is not None:
            on_chunk(chunk)
        if keep:
            kept.append(chunk)
    return (torch.cat(kept) if keep else None), time.perf_counter() - started


def _render(identity_seed: int, speech: np.ndarray, size: int, num_frames: int, motion_seed: int) -> torch.Tensor:
    """The renderer's own frames for this speech (ground-truth animation), ``[F, H, W, 3]`` in 0..1."""
    from ..training.synthetic.animator import animate_face
    from ..training.synthetic.face import render_face, sample_identity

    identity = sample_identity(identity_seed)
    motion = animate_face(speech, SAMPLE_RATE, FPS, seed=motion_seed, num_frames=num_frames)
    return as_frames(np.stack([render_face(identity, motion.pose(i), size) for i in range(num_frames)]))


def _vae_round_trip(codec) -> Callable[[torch.Tensor], torch.Tensor]:
    from ..latents import images_to_comfy
    from ..latents.codecs import images_from_comfy

    def through(frames: torch.Tensor) -> torch.Tensor:
        latents = codec.encode(images_from_comfy(frames))  # [N, C, h, w]
        return images_to_comfy(codec.decode(latents))  # [N, H, W, 3]

    return through


def _nanmean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _clips(num_frames: int, frames_per_clip: int, overlap_frames: int = 0) -> int:
    return len(clip_plan(num_frames, frames_per_clip, overlap_frames))


def _clip_starts(num_frames: int, frames_per_clip: int, overlap_frames: int) -> list[int]:
    """The first new frame of every clip after the first (where the seams are)."""
    return [window.new_start for window in clip_plan(num_frames, frames_per_clip, overlap_frames)[1:]]


def _sync_run(pipe, samples: list[EvalSample], meters: list[MouthMeter], options, *,
              counter: _StepCounter) -> dict[str, Any]:
    """Generate every sample once (sample i with seed ``options.seed + i``); sync, identity and seam numbers."""
    frames_per_clip = int(pipe.checkpoint.frames_per_clip)
    overlap = options.overlap_frames
    per_sample, videos, seconds, clips, frames_made = [], [], 0.0, 0, 0
    for index, sample in enumerate(samples):
        portrait = _portrait(sample.identity_seed, pipe.resolution)
        frames, took = _generate(pipe, portrait, sample.speech, options.replace(seed=options.seed + index),
                                 counter=counter)
        seconds += took
        clips += _clips(frames.shape[0], frames_per_clip, overlap)
        frames_made += frames.shape[0]
        measured = meters[index].measure(frames)
        errors = identity_errors(frames, portrait)
        changes = frame_changes(frames)
        per_sample.append({
            "identity_seed": sample.identity_seed, "speech": sample.source, "frames": int(frames.shape[0]),
            "sync": pearson(measured, sample.truth[:measured.shape[0]]),
            "colour_error": float(errors["colour"].mean()), "structure_error": float(errors["structure"].mean()),
            "identity_error": float(errors["identity"].mean()),
        })
        videos.append({"measured": measured, "changes": changes,
                       "clip_starts": _clip_starts(frames.shape[0], frames_per_clip, overlap)})
    seams = [seam_ratio(v["changes"], frames_per_clip, v["clip_starts"]) for v in videos]
    return {"per_sample": per_sample, "videos": videos, "seconds": seconds, "clips": clips, "seams": seams,
            "sync": _nanmean(s["sync"] for s in per_sample),
            "colour_error": _nanmean(s["colour_error"] for s in per_sample),
            "structure_error": _nanmean(s["structure_error"] for s in per_sample),
            "identity_error": _nanmean(s["identity_error"] for s in per_sample),
            "seconds_per_clip": seconds / max(clips, 1),
            "seconds_per_video_second": seconds / max(frames_made / FPS, 1e-9)}


def _pooled_seams(seams: list[dict]) -> dict[str, float]:
    with_boundaries = [s for s in seams if s["boundaries"]]
    if not with_boundaries:
        return {"boundary": float("nan"), "inside": float("nan"), "ratio": float("nan"), "boundaries": 0}
    boundary = _nanmean(s["boundary"] for s in with_boundaries)
    inside = _nanmean(s["inside"] for s in with_boundaries)
    return {"boundary": boundary, "inside": inside, "ratio": boundary / max(inside, 1e-8),
            "boundaries": sum(s["boundaries"] for s in with_boundaries)}


def evaluate_checkpoint(
    checkpoint=None,
    *,
    identities=4,
    seconds: float = 4.0,
    audio: Sequence[str | Path] | None = None,
    sampler: Optional[str] = None,
    steps: Optional[int] = None,
    seed: Optional[int] = None,
    drift_seconds: float = 60.0,
    drift_window: float = 5.0,
    with_sampler_table: bool = False,
    sampler_settings: Sequence[tuple[str, int]] = SAMPLER_TABLE,
    vae=None,
    audio_encoder=None,
    audio_cfg: Optional[float] = None,
    portrait_cfg: Optional[float] = None,
    overlap_frames: Optional[int] = None,
    device: str = "cpu",
    progress: Optional[Progress] = None,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (path, loaded ``LetsTalkPipeline``, or None for the bundled demo model).

    Returns a dict: ``settings``, ``metrics`` (the numbers), ``checks`` (each target with pass/fail),
    ``samples`` (per identity) and, with ``with_sampler_table``, ``sampler_table``. ``drift_seconds``
    0 skips the drift video. ``progress(done, total)`` counts model steps over the whole evaluation.
    The sampling options (``sampler``, ``steps``, ``seed``, guidance scales ``audio_cfg``/``portrait_cfg``,
    ``overlap_frames``) are the checkpoint's recommendation where None, as for ``generate``; with overlap,
    seams are counted where each clip's new frames begin.
    """
    from ..pipeline import LetsTalkPipeline
    from ..sampling.options import SamplingOptions, check_overrides
    check_overrides(sampler=sampler, steps=steps, seed=seed, audio_cfg=audio_cfg, portrait_cfg=portrait_cfg,
                    overlap_frames=overlap_frames)  # before the model loads
    seconds = _check_seconds("seconds", seconds, 3 / FPS)
    drift_window = _check_seconds("drift_window", drift_window, 1 / FPS)
    drift_seconds = 0.0 if not drift_seconds else _check_seconds("drift_seconds", drift_seconds, 2 * drift_window)
    for name, steps_of in sampler_settings:
        try:
            SamplingOptions(sampler=name, steps=steps_of)
        except ValueError as error:
            raise ValueError(f"sampler table: {error}") from None
    log = log or (lambda message: None)

    samples = heldout_samples(identities, seconds, audio)
    pipe = checkpoint if isinstance(checkpoint, LetsTalkPipeline) else LetsTalkPipeline.from_pretrained(
        checkpoint, vae=vae, audio_encoder=audio_encoder, device=device)
    size = pipe.resolution
    frames_per_clip = int(pipe.checkpoint.frames_per_clip)
    options = pipe.options(sampler=sampler, steps=steps, seed=seed, audio_cfg=audio_cfg, portrait_cfg=portrait_cfg,
                           overlap_frames=overlap_frames, fps=FPS)
    sampler, steps, seed, overlap_frames = options.sampler, options.steps, options.seed, options.overlap_frames

    # the floor: sample i's ground truth against the video made for another sample's speech; when no
    # other sample has different speech, a video of identity i with fresh held-out speech is made
    floor_partner: list[Optional[int]] = []
    for i, sample in enumerate(samples):
        others = [j for j in range(1, len(samples)) if samples[(i + j) % len(samples)].source != sample.source]
        floor_partner.append((i + others[0]) % len(samples) if others else None)
    extra_floor = [i for i, partner in enumerate(floor_partner) if partner is None]

    runs = [(sampler, steps)] + ([tuple(s) for s in sampler_settings] if with_sampler_table else [])
    total = sum(_clips(s.num_frames, frames_per_clip, overlap_frames) for s in samples) * sum(r[1] for r in runs)
    total += sum(_clips(samples[i].num_frames, frames_per_clip, overlap_frames) for i in extra_floor) * steps
    drift_frames = frame_count(int(round(drift_seconds * SAMPLE_RATE)), SAMPLE_RATE, FPS) if drift_seconds else 0
    total += (_clips(drift_frames, frames_per_clip, overlap_frames) if drift_frames else 0) * steps
    counter = _StepCounter(progress, total)
    if progress is not None:
        progress(0, total)

    log(f"meters: calibrating the mouth measurement for {len(samples)} identities at {size} px")
    through_vae = _vae_round_trip(pipe.vae)
    meters = [MouthMeter.for_identity(s.identity_seed, size, through=through_vae) for s in samples]
    raw_meters = [MouthMeter.for_identity(s.identity_seed, size) for s in samples]

    # the renderer's own frames: the ceiling of lip sync and the reference for identity and seams
    ceiling, ceiling_vae, renderer_errors, renderer_seams = [], [], [], []
    for index, sample in enumerate(samples):
        rendered = _render(sample.identity_seed, sample.speech, size, sample.num_frames, motion_seed=index)
        ceiling.append(pearson(raw_meters[index].measure(rendered), sample.truth))
        ceiling_vae.append(pearson(meters[index].measure(through_vae(rendered)), sample.truth))
        renderer_errors.append(identity_errors(rendered, _portrait(sample.identity_seed, size)))
        renderer_seams.append(seam_ratio(frame_changes(rendered), frames_per_clip,
                                         _clip_starts(sample.num_frames, frames_per_clip, overlap_frames)))

    log(f"lip sync: generating {len(samples)} videos with {sampler} {steps}")
    main = _sync_run(pipe, samples, meters, options, counter=counter)

    floors = []
    for i, sample in enumerate(samples):
        partner = floor_partner[i]
        if partner is None:
            other = heldout_speech(sample.num_frames / FPS, seed=10_000 + i)
            frames, _ = _generate(pipe, _portrait(sample.identity_seed, size), other,
                                  options.replace(seed=seed + 10_000 + i), counter=counter)
            measured = meters[i].measure(frames)
        else:
            measured = main["videos"][partner]["measured"]
        length = min(measured.shape[0], sample.num_frames)
        floors.append(pearson(measured[:length], sample.truth[:length]) if length >= 3 else float("nan"))
        main["per_sample"][i]["sync_floor"] = floors[-1]
        main["per_sample"][i]["sync_ceiling"] = ceiling[i]
        main["per_sample"][i]["sync_ceiling_vae"] = ceiling_vae[i]
        main["per_sample"][i]["meter_calibration_r"] = meters[i].calibration_r

    seams = _pooled_seams(main["seams"])
    reference_seams = _pooled_seams(renderer_seams)
    metrics: dict[str, Any] = {
        "sync": main["sync"], "sync_floor": _nanmean(floors), "sync_ceiling": _nanmean(ceiling),
        "sync_ceiling_vae": _nanmean(ceiling_vae),
        "meter_calibration_r": _nanmean(m.calibration_r for m in meters),
        "colour_error": main["colour_error"], "structure_error": main["structure_error"],
        "identity_error": main["identity_error"],
        "renderer_colour_error": _nanmean(float(e["colour"].mean()) for e in renderer_errors),
        "renderer_structure_error": _nanmean(float(e["structure"].mean()) for e in renderer_errors),
        "renderer_identity_error": _nanmean(float(e["identity"].mean()) for e in renderer_errors),
        "seam_ratio": seams["ratio"], "seam_boundary_change": seams["boundary"], "seam_inside_change": seams["inside"],
        "seam_boundaries": seams["boundaries"], "renderer_seam_ratio": reference_seams["ratio"],
        "seconds_per_clip": main["seconds_per_clip"], "seconds_per_video_second": main["seconds_per_video_second"],
    }

    if drift_seconds:
        log(f"drift: generating {drift_seconds:g} s for identity {samples[0].identity_seed}")
        speech = (np.resize(_load_speech(audio[0], None), int(round(drift_seconds * SAMPLE_RATE))).astype(np.float32)
                  if audio else heldout_speech(drift_seconds, seed=20_000))
        portrait = _portrait(samples[0].identity_seed, size)
        per_frame: list[torch.Tensor] = []
        drift_changes: list[torch.Tensor] = []
        last: list[Optional[torch.Tensor]] = [None]

        def on_chunk(chunk: torch.Tensor) -> None:
            per_frame.append(identity_errors(chunk, portrait)["identity"])
            drift_changes.append(frame_changes(chunk, previous=last[0]))
            last[0] = chunk[-1]

        _generate(pipe, portrait, speech, options.replace(seed=seed + 20_000), counter=counter, on_chunk=on_chunk,
                  keep=False)
        errors = torch.cat(per_frame)  # [F]
        drift = drift_ratio(errors, FPS, drift_window)
        metrics.update(drift_ratio=drift["ratio"], drift_first_error=drift["first"], drift_last_error=drift["last"])
        long_seams = seam_ratio(torch.cat(drift_changes), frames_per_clip,
                                _clip_starts(int(errors.shape[0]), frames_per_clip, overlap_frames))
        metrics["seam_ratio_long"] = long_seams["ratio"]
    else:
        metrics.update(drift_ratio=float("nan"), drift_first_error=float("nan"), drift_last_error=float("nan"),
                       seam_ratio_long=float("nan"))

    result: dict[str, Any] = {
        "checkpoint": str(getattr(pipe.checkpoint, "path", checkpoint)),
        "settings": {"identities": [s.identity_seed for s in samples], "speech": [s.source for s in samples],
                     "seconds": seconds, "fps": FPS, "resolution": size, "frames_per_clip": frames_per_clip,
                     "sampler": sampler, "steps": steps, "seed": seed, "drift_seconds": drift_seconds,
                     "drift_window": drift_window, "audio_cfg": options.audio_cfg,
                     "portrait_cfg": options.portrait_cfg, "overlap_frames": overlap_frames},
        "metrics": metrics,
        "checks": checks(metrics),
        "samples": main["per_sample"],
    }
    if with_sampler_table:
        rows = []
        for name, steps_of in sampler_settings:
            log(f"sampler table: {name} {steps_of}")
            run = _sync_run(pipe, samples, meters, options.replace(sampler=name, steps=int(steps_of)),
                            counter=counter)
            rows.append({"sampler": name, "steps": int(steps_of), "sync": run["sync"],
                         "colour_error": run["colour_error"], "structure_error": run["structure_error"],
                         "identity_error": run["identity_error"], "seconds_per_clip": run["seconds_per_clip"],
                         "seconds_per_video_second": run["seconds_per_video_second"]})
        result["sampler_table"] = rows
    return result


def sampler_table(checkpoint=None, **kwargs) -> list[dict[str, Any]]:
    """Only the sampler table (quality and time per clip against sampler and steps)."""
    return evaluate_checkpoint(checkpoint, with_sampler_table=True, drift_seconds=0, **kwargs)["sampler_table"]


def checks(metrics: dict[str, Any], targets: dict[str, tuple[str, float]] = TARGETS) -> dict[str, dict[str, Any]]:
    """Each target: the value, the target as text and whether it passes (False when not measured)."""
    out = {}
    for name, (comparison, threshold) in targets.items():
        value = metrics.get(name, float("nan"))
        measured = value is not None and not math.isnan(value)
        passed = measured and (value >= threshold if comparison == ">=" else value <= threshold)
        out[name] = {"value": value, "target": f"{comparison} {threshold:g}", "pass": bool(passed),
                     "measured": bool(measured)}
    return out


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_report(result: dict[str, Any]) -> str:
    """The evaluation as text tables: metrics with references, targets and pass/fail; the sampler table."""
    m, c, s = result["metrics"], result["checks"], result["settings"]
    mark = {True: "PASS", False: "FAIL"}

    def verdict(name: str) -> str:
        return mark[c[name]["pass"]] if c[name]["measured"] else "n/a"

    lines = [
        f"checkpoint {result['checkpoint']}",
        f"{len(s['identities'])} held-out identities x {s['seconds']:g} s at {s['resolution']} px, "
        f"{s['sampler']} {s['steps']} steps, clips of {s['frames_per_clip']} frames"
        + (f", guidance audio {s['audio_cfg']:g} portrait {s['portrait_cfg']:g}"
           if (s.get("audio_cfg", 1), s.get("portrait_cfg", 1)) != (1, 1) else "")
        + (f", {s['overlap_frames']} frames of overlap" if s.get("overlap_frames") else ""),
        "",
        f"{'metric':<30}{'model':>10}{'reference':>12}{'target':>10}{'':>7}",
        f"{'lip sync (Pearson r)':<30}{_fmt(m['sync']):>10}{'':>12}{c['sync']['target']:>10}{verdict('sync'):>7}",
        f"{'  floor (other speech)':<30}{_fmt(m['sync_floor']):>10}{'':>12}{c['sync_floor']['target']:>10}"
        f"{verdict('sync_floor'):>7}",
        f"{'  ceiling (renderer)':<30}{'':>10}{_fmt(m['sync_ceiling']):>12}",
        f"{'  ceiling (renderer via VAE)':<30}{'':>10}{_fmt(m['sync_ceiling_vae']):>12}",
        f"{'  meter calibration r':<30}{'':>10}{_fmt(m['meter_calibration_r']):>12}",
        f"{'colour error (4x4 means)':<30}{_fmt(m['colour_error'], 4):>10}{_fmt(m['renderer_colour_error'], 4):>12}",
        f"{'structure error (1-SSIM)':<30}{_fmt(m['structure_error'], 4):>10}"
        f"{_fmt(m['renderer_structure_error'], 4):>12}",
        f"{'seam ratio (boundary/inside)':<30}{_fmt(m['seam_ratio']):>10}{_fmt(m['renderer_seam_ratio']):>12}"
        f"{c['seam_ratio']['target']:>10}{verdict('seam_ratio'):>7}",
        f"{'  in the long video':<30}{_fmt(m.get('seam_ratio_long')):>10}",
        f"{'drift ratio (last/first)':<30}{_fmt(m['drift_ratio']):>10}{'':>12}{c['drift_ratio']['target']:>10}"
        f"{verdict('drift_ratio'):>7}",
        f"{'time per clip (s)':<30}{_fmt(m['seconds_per_clip'], 2):>10}",
        f"{'time per second of video (s)':<30}{_fmt(m.get('seconds_per_video_second'), 2):>10}",
        "",
        "reference: the renderer's own frames for the same speech (the best a model can do).",
    ]
    if s.get("drift_seconds"):
        lines.append(f"drift: identity error of the last {s['drift_window']:g} s of a {s['drift_seconds']:g} s video "
                     f"({_fmt(m['drift_last_error'], 4)}) over the first ({_fmt(m['drift_first_error'], 4)}).")
    if "sampler_table" in result:
        lines += ["", f"{'sampler':<12}{'steps':>6}{'lip sync':>10}{'identity err':>14}{'s / clip':>10}"
                      f"{'s / video s':>13}"]
        for row in result["sampler_table"]:
            lines.append(f"{row['sampler']:<12}{row['steps']:>6}{_fmt(row['sync']):>10}"
                         f"{_fmt(row['identity_error'], 4):>14}{_fmt(row['seconds_per_clip'], 2):>10}"
                         f"{_fmt(row.get('seconds_per_video_second'), 2):>13}")
    return "\n".join(lines)
