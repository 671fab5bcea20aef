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

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..checks import check_int
from ..video.timing import frame_count
from .common import (SAMPLE_RATE, Progress, StepCounter, checks, clip_count, clip_starts, codec_round_trip, make_video,
                     nanmean, pooled_seams)
from .metrics import MouthMeter, as_frames, drift_ratio, frame_changes, identity_errors, pearson, seam_ratio

__all__ = ["TARGETS", "SAMPLER_TABLE", "EvalSample", "identity_seeds", "heldout_speech", "heldout_samples",
           "evaluate_checkpoint", "sampler_table", "checks", "format_report"]

FPS = 25
HELDOUT_IDENTITY_START = 1_000_000
# metric -> (comparison, threshold)
TARGETS = {"sync": (">=", 0.7), "sync_floor": ("<=", 0.2), "seam_ratio": ("<=", 1.5), "drift_ratio": ("<=", 1.2)}
SAMPLER_TABLE = (("ddpm", 250), ("ddim", 50), ("dpmpp_2m", 25), ("dpmpp_2m", 10))


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


def _check_seconds(name: str, value, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a number of seconds >= {minimum:g}, got {value!r}")
    return float(value)


def identity_seeds(identities) -> list[int]:
    """A count (held-out seeds drawn reproducibly) or explicit held-out seeds -> list of seeds."""
    from ..training.synthetic.dataset import sample_identity_seeds

    if isinstance(identities, (int, np.integer)):  # a bool too: check_int refuses it by name
        return sample_identity_seeds("heldout", check_int("identities", identities, 1), seed=0)
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


# ------------------------------------------------------------------------------------------ one evaluation
def _portrait(identity_seed: int, size: int) -> np.ndarray:
    from ..training.synthetic.face import FacePose, render_face, sample_identity

    return render_face(sample_identity(identity_seed), FacePose(), size)  # [R, R, 3] uint8


def _render(identity_seed: int, speech: np.ndarray, size: int, num_frames: int, motion_seed: int) -> torch.Tensor:
    """The renderer's own frames for this speech (ground-truth animation), ``[F, H, W, 3]`` in 0..1."""
    from ..training.synthetic.animator import animate_face
    from ..training.synthetic.face import render_face, sample_identity

    identity = sample_identity(identity_seed)
    motion = animate_face(speech, SAMPLE_RATE, FPS, seed=motion_seed, num_frames=num_frames)
    return as_frames(np.stack([render_face(identity, motion.pose(i), size) for i in range(num_frames)]))


@dataclass
class _Evaluation:
    """What every step of one evaluation uses: the model, the held-out samples, the sampling options
    (the checkpoint's recommendation where the caller said nothing) and the running step count."""

    pipe: Any  # LetsTalkPipeline
    samples: list[EvalSample]
    options: Any  # SamplingOptions
    counter: StepCounter
    log: Callable[[str], None]

    @property
    def size(self) -> int:
        return self.pipe.resolution

    @functools.cached_property
    def through_codec(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return codec_round_trip(self.pipe.vae)

    @property
    def frames_per_clip(self) -> int:
        return int(self.pipe.checkpoint.frames_per_clip)

    def clip_count(self, num_frames: int) -> int:
        return clip_count(num_frames, self.frames_per_clip, self.options.overlap_frames)

    def clip_starts(self, num_frames: int) -> list[int]:
        return clip_starts(num_frames, self.frames_per_clip, self.options.overlap_frames)


def _floor_partners(samples: list[EvalSample]) -> list[Optional[int]]:
    """For each sample, another sample with different speech whose video serves as its floor; None where
    no sample has other speech (a video with fresh held-out speech is then made for it)."""
    partners: list[Optional[int]] = []
    for i, sample in enumerate(samples):
        others = [j for j in range(1, len(samples)) if samples[(i + j) % len(samples)].source != sample.source]
        partners.append((i + others[0]) % len(samples) if others else None)
    return partners


def _drift_frames(drift_seconds: float) -> int:
    return frame_count(int(round(drift_seconds * SAMPLE_RATE)), SAMPLE_RATE, FPS) if drift_seconds else 0


def _set_up(checkpoint, *, identities, seconds, audio, sampler, steps, seed, audio_cfg, portrait_cfg, overlap_frames,
            runs: list[tuple[str, int]], drift_seconds: float, vae, audio_encoder, device, progress,
            log) -> _Evaluation:
    """The samples, the loaded model and the options, and a step counter over everything the evaluation
    will make: each sample once per run in ``runs`` (the checkpoint's options first), the extra floor
    videos, and the drift video."""
    from ..pipeline import LetsTalkPipeline

    samples = heldout_samples(identities, seconds, audio)  # a missing speech file is refused before the model loads
    pipe = checkpoint if isinstance(checkpoint, LetsTalkPipeline) else LetsTalkPipeline.from_pretrained(
        checkpoint, vae=vae, audio_encoder=audio_encoder, device=device)
    if getattr(pipe.checkpoint, "trained_on_real_footage", None):
        raise ValueError(f"{str(pipe.checkpoint.path)!r} was trained on real footage, and this evaluation makes "
                         "synthetic cartoon faces (the project's renderer) that it never saw: its numbers would say "
                         "nothing. Evaluate it on real clips instead: `evaluate --videos FOLDER`, a folder of "
                         "talking-face videos or one written by `prepare` (its held-out clips; models/README.md names "
                         "the demo model's). The synthetic evaluation is for models trained on the synthetic world, "
                         "such as models/letstalk-cartoon64.safetensors")
    options = pipe.options(sampler=sampler, steps=steps, seed=seed, audio_cfg=audio_cfg, portrait_cfg=portrait_cfg,
                           overlap_frames=overlap_frames, fps=FPS)
    run = _Evaluation(pipe, samples, options, StepCounter(progress, 0), log)
    runs = [(options.sampler, options.steps)] + runs
    extra_floor = [i for i, partner in enumerate(_floor_partners(samples)) if partner is None]
    total = sum(run.clip_count(s.num_frames) for s in samples) * sum(r[1] for r in runs)
    total += sum(run.clip_count(samples[i].num_frames) for i in extra_floor) * options.steps
    drift_frames = _drift_frames(drift_seconds)
    total += (run.clip_count(drift_frames) if drift_frames else 0) * options.steps
    run.counter.total = total
    if progress is not None:
        progress(0, total)
    return run


def _calibrate_meters(run: _Evaluation) -> tuple[list[MouthMeter], list[MouthMeter]]:
    """Per sample, the mouth meter for frames through the model's codec, and the one for raw frames."""
    run.log(f"meters: calibrating the mouth measurement for {len(run.samples)} identities at {run.size} px")
    meters = [MouthMeter.for_identity(s.identity_seed, run.size, through=run.through_codec) for s in run.samples]
    raw_meters = [MouthMeter.for_identity(s.identity_seed, run.size) for s in run.samples]
    return meters, raw_meters


def _renderer_reference(run: _Evaluation, meters: list[MouthMeter], raw_meters: list[MouthMeter]) -> dict[str, list]:
    """The renderer's own frames for each sample's speech: the ceiling of lip sync (raw, and through
    the codec) and the reference for identity and seams."""
    reference: dict[str, list] = {"ceiling": [], "ceiling_vae": [], "errors": [], "seams": []}
    for index, sample in enumerate(run.samples):
        rendered = _render(sample.identity_seed, sample.speech, run.size, sample.num_frames, motion_seed=index)
        reference["ceiling"].append(pearson(raw_meters[index].measure(rendered), sample.truth))
        reference["ceiling_vae"].append(pearson(meters[index].measure(run.through_codec(rendered)), sample.truth))
        reference["errors"].append(identity_errors(rendered, _portrait(sample.identity_seed, run.size)))
        reference["seams"].append(seam_ratio(frame_changes(rendered), run.frames_per_clip,
                                             run.clip_starts(sample.num_frames)))
    return reference


def _sync_run(run: _Evaluation, meters: list[MouthMeter], options) -> dict[str, Any]:
    """Generate every sample once (sample i with seed ``options.seed + i``); sync, identity and seam numbers."""
    per_sample, videos, seconds, clips, frames_made = [], [], 0.0, 0, 0
    for index, sample in enumerate(run.samples):
        portrait = _portrait(sample.identity_seed, run.size)
        frames, took = make_video(run.pipe, portrait, sample.speech, options.replace(seed=options.seed + index),
                                  counter=run.counter)
        seconds += took
        clips += clip_count(frames.shape[0], run.frames_per_clip, options.overlap_frames)
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
                       "clip_starts": clip_starts(frames.shape[0], run.frames_per_clip, options.overlap_frames)})
    seams = [seam_ratio(v["changes"], run.frames_per_clip, v["clip_starts"]) for v in videos]
    return {"per_sample": per_sample, "videos": videos, "seconds": seconds, "clips": clips, "seams": seams,
            "sync": nanmean(s["sync"] for s in per_sample),
            "colour_error": nanmean(s["colour_error"] for s in per_sample),
            "structure_error": nanmean(s["structure_error"] for s in per_sample),
            "identity_error": nanmean(s["identity_error"] for s in per_sample),
            "seconds_per_clip": seconds / max(clips, 1),
            "seconds_per_video_second": seconds / max(frames_made / FPS, 1e-9)}


def _floors(run: _Evaluation, main: dict[str, Any], meters: list[MouthMeter]) -> list[float]:
    """Per sample, the lip sync of a video made for OTHER speech against this sample's ground truth: the
    partner sample's video from ``main``, or a video of this identity with fresh held-out speech."""
    floors = []
    for i, (sample, partner) in enumerate(zip(run.samples, _floor_partners(run.samples))):
        if partner is None:
            other = heldout_speech(sample.num_frames / FPS, seed=10_000 + i)
            frames, _ = make_video(run.pipe, _portrait(sample.identity_seed, run.size), other,
                                   run.options.replace(seed=run.options.seed + 10_000 + i), counter=run.counter)
            measured = meters[i].measure(frames)
        else:
            measured = main["videos"][partner]["measured"]
        length = min(measured.shape[0], sample.num_frames)
        floors.append(pearson(measured[:length], sample.truth[:length]) if length >= 3 else float("nan"))
    return floors


def _drift(run: _Evaluation, audio, drift_seconds: float, drift_window: float) -> dict[str, float]:
    """Identity error over the last ``drift_window`` seconds of a ``drift_seconds`` video of the first
    identity against its first seconds, and the seams of that long video (NaN when ``drift_seconds`` is 0)."""
    if not drift_seconds:
        return {"drift_ratio": float("nan"), "drift_first_error": float("nan"), "drift_last_error": float("nan"),
                "seam_ratio_long": float("nan")}
    identity_seed = run.samples[0].identity_seed
    run.log(f"drift: generating {drift_seconds:g} s for identity {identity_seed}")
    speech = (np.resize(_load_speech(audio[0], None), int(round(drift_seconds * SAMPLE_RATE))).astype(np.float32)
              if audio else heldout_speech(drift_seconds, seed=20_000))
    portrait = _portrait(identity_seed, run.size)
    per_frame: list[torch.Tensor] = []
    changes: list[torch.Tensor] = []
    last: list[Optional[torch.Tensor]] = [None]

    def on_chunk(chunk: torch.Tensor) -> None:
        per_frame.append(identity_errors(chunk, portrait)["identity"])
        changes.append(frame_changes(chunk, previous=last[0]))
        last[0] = chunk[-1]

    make_video(run.pipe, portrait, speech, run.options.replace(seed=run.options.seed + 20_000), counter=run.counter,
               on_chunk=on_chunk, keep=False)
    errors = torch.cat(per_frame)  # [F]
    drift = drift_ratio(errors, FPS, drift_window)
    long_seams = seam_ratio(torch.cat(changes), run.frames_per_clip, run.clip_starts(int(errors.shape[0])))
    return {"drift_ratio": drift["ratio"], "drift_first_error": drift["first"], "drift_last_error": drift["last"],
            "seam_ratio_long": long_seams["ratio"]}


def _metrics(main: dict[str, Any], floors: list[float], reference: dict[str, list],
             meters: list[MouthMeter]) -> dict[str, Any]:
    """The evaluation's numbers from the model's videos, the floors and the renderer's reference."""
    seams, reference_seams = pooled_seams(main["seams"]), pooled_seams(reference["seams"])
    errors = reference["errors"]
    return {
        "sync": main["sync"], "sync_floor": nanmean(floors), "sync_ceiling": nanmean(reference["ceiling"]),
        "sync_ceiling_vae": nanmean(reference["ceiling_vae"]),
        "meter_calibration_r": nanmean(m.calibration_r for m in meters),
        "colour_error": main["colour_error"], "structure_error": main["structure_error"],
        "identity_error": main["identity_error"],
        "renderer_colour_error": nanmean(float(e["colour"].mean()) for e in errors),
        "renderer_structure_error": nanmean(float(e["structure"].mean()) for e in errors),
        "renderer_identity_error": nanmean(float(e["identity"].mean()) for e in errors),
        "seam_ratio": seams["ratio"], "seam_boundary_change": seams["boundary"], "seam_inside_change": seams["inside"],
        "seam_boundaries": seams["boundaries"], "renderer_seam_ratio": reference_seams["ratio"],
        "seconds_per_clip": main["seconds_per_clip"], "seconds_per_video_second": main["seconds_per_video_second"],
    }


def _per_sample(main: dict[str, Any], floors: list[float], reference: dict[str, list],
                meters: list[MouthMeter]) -> list[dict[str, Any]]:
    """The report's row per identity: its numbers with its floor, ceilings and meter calibration."""
    return [{**row, "sync_floor": floor, "sync_ceiling": ceiling, "sync_ceiling_vae": ceiling_vae,
             "meter_calibration_r": meter.calibration_r}
            for row, floor, ceiling, ceiling_vae, meter in zip(main["per_sample"], floors, reference["ceiling"],
                                                                reference["ceiling_vae"], meters)]


def _sampler_rows(run: _Evaluation, meters: list[MouthMeter], sampler_settings) -> list[dict[str, Any]]:
    """Quality and time against sampler and steps: every sample made again with each setting."""
    rows = []
    for name, steps_of in sampler_settings:
        run.log(f"sampler table: {name} {steps_of}")
        made = _sync_run(run, meters, run.options.replace(sampler=name, steps=int(steps_of)))
        rows.append({"sampler": name, "steps": int(steps_of), "sync": made["sync"],
                     "colour_error": made["colour_error"], "structure_error": made["structure_error"],
                     "identity_error": made["identity_error"], "seconds_per_clip": made["seconds_per_clip"],
                     "seconds_per_video_second": made["seconds_per_video_second"]})
    return rows


def evaluate_checkpoint(
    checkpoint,
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
    """Evaluate a checkpoint (path or loaded ``LetsTalkPipeline``).

    Returns a dict: ``settings``, ``metrics`` (the numbers), ``checks`` (each target with pass/fail),
    ``samples`` (per identity) and, with ``with_sampler_table``, ``sampler_table``. ``drift_seconds``
    0 skips the drift video. ``progress(done, total)`` counts model steps over the whole evaluation.
    The sampling options (``sampler``, ``steps``, ``seed``, guidance scales ``audio_cfg``/``portrait_cfg``,
    ``overlap_frames``) are the checkpoint's recommendation where None, as for ``generate``; with overlap,
    seams are counted where each clip's new frames begin.
    """
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

    run = _set_up(checkpoint, identities=identities, seconds=seconds, audio=audio, sampler=sampler, steps=steps,
                  seed=seed, audio_cfg=audio_cfg, portrait_cfg=portrait_cfg, overlap_frames=overlap_frames,
                  runs=[tuple(s) for s in sampler_settings] if with_sampler_table else [],
                  drift_seconds=drift_seconds, vae=vae, audio_encoder=audio_encoder, device=device,
                  progress=progress, log=log or (lambda message: None))
    meters, raw_meters = _calibrate_meters(run)
    reference = _renderer_reference(run, meters, raw_meters)
    run.log(f"lip sync: generating {len(run.samples)} videos with {run.options.sampler} {run.options.steps}")
    main = _sync_run(run, meters, run.options)
    floors = _floors(run, main, meters)
    metrics = _metrics(main, floors, reference, meters)
    metrics.update(_drift(run, audio, drift_seconds, drift_window))

    options = run.options
    result: dict[str, Any] = {
        "checkpoint": str(getattr(run.pipe.checkpoint, "path", checkpoint)),
        "settings": {"identities": [s.identity_seed for s in run.samples], "speech": [s.source for s in run.samples],
                     "seconds": seconds, "fps": FPS, "resolution": run.size, "frames_per_clip": run.frames_per_clip,
                     "sampler": options.sampler, "steps": options.steps, "seed": options.seed,
                     "drift_seconds": drift_seconds, "drift_window": drift_window, "audio_cfg": options.audio_cfg,
                     "portrait_cfg": options.portrait_cfg, "overlap_frames": options.overlap_frames},
        "metrics": metrics,
        "checks": checks(metrics, TARGETS),
        "samples": _per_sample(main, floors, reference, meters),
    }
    if with_sampler_table:
        result["sampler_table"] = _sampler_rows(run, meters, sampler_settings)
    return result


def sampler_table(checkpoint, **kwargs) -> list[dict[str, Any]]:
    """Only the sampler table (quality and time per clip against sampler and steps)."""
    return evaluate_checkpoint(checkpoint, with_sampler_table=True, drift_seconds=0, **kwargs)["sampler_table"]


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
