"""``python -m letstalk_core evaluate``: lip sync, identity, seams and drift on held-out identities."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..encoder_names import AUDIO_ENCODER_HELP
from ..files import atomic_write_text
from ..framing import DEFAULT_CROP_MARGIN


def _identities(text: str):
    """``4`` (a count of held-out identities) or ``1000003,1000017`` (held-out identity seeds)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--identities: expected a count (e.g. 4) or comma-separated held-out "
                                         f"identity seeds (e.g. 1000003,1000017), got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("--identities: empty")
    if len(values) == 1 and "," not in text and values[0] < 1_000_000:
        return values[0]
    return values


def add_parser(subparsers) -> None:
    from ..pipeline.cli import add_sampling_arguments

    parser = subparsers.add_parser(
        "evaluate", help="measure lip sync, identity, seams and drift on held-out synthetic identities, or on real "
                         "footage with --videos",
        description="Measure a checkpoint. With --videos (models trained on real footage, such as the shipped demo "
                    "model): each held-out clip's first frame and its own speech make a video that is compared with "
                    "the real one. Without it (models trained on the project's synthetic world, such as "
                    "models/letstalk-cartoon64.safetensors; a real-face model is refused): talking videos of "
                    "held-out synthetic identities with held-out speech (espeak-ng) or the given audio. Either way it "
                    "prints lip sync (with its floor and ceiling), identity or structure error, seam ratio and, for "
                    "the synthetic world, drift, next to their targets.",
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: the shipped demo model, models/letstalk-demo.safetensors)")
    parser.add_argument("--videos", type=Path, default=None,
                        help="evaluate on real footage instead: a folder of talking-face videos, or a folder written "
                             "by `prepare` (its held-out clips); each clip's first frame is the portrait, its own "
                             "speech the audio, and the made video is compared with the real one")
    parser.add_argument("--max-clips", type=int, default=None, help="with --videos: evaluate at most this many clips")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="with --videos: evaluate only the clips whose names match this pattern (shell wildcards, "
                             "e.g. 'grid/s1-more/*'); may be given several times")
    parser.add_argument("--margin", type=float, default=None,
                        help="with a folder of videos: the face crop's margin, as `prepare --margin` (default: the "
                             "margin the checkpoint's training frames had, as generate frames a portrait, else "
                             f"{DEFAULT_CROP_MARGIN:g})")
    parser.add_argument("--audio", nargs="+", default=None,
                        help="speech files to use instead of held-out espeak-ng speech (paired with identities in turn)")
    parser.add_argument("--identities", type=_identities, default=4,
                        help="how many held-out identities (default 4), or their seeds, e.g. 1000003,1000017")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="seconds of speech per identity (default 4; longer --audio files are cut to this)")
    parser.add_argument("--drift-seconds", type=float, default=60.0,
                        help="length of the long video for the drift ratio (default 60; 0 skips it)")
    parser.add_argument("--drift-window", type=float, default=5.0,
                        help="seconds compared at the start and the end of the long video (default 5)")
    parser.add_argument("--sampler-table", action="store_true",
                        help="also compare DDPM 250, DDIM 50, DPM-Solver++ 25 and 10 (slow)")
    add_sampling_arguments(parser, with_fps=False)
    parser.add_argument("--vae", default=None, help="VAE file or folder (default: the one in the checkpoint)")
    parser.add_argument("--audio-encoder", default=None, help=AUDIO_ENCODER_HELP + " (default: the checkpoint's)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _json_safe(value):
    """NaN/inf -> null, numpy scalars -> Python numbers, so the file is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(result: dict, path: Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise FileNotFoundError(f"--json: folder {str(path.parent)!r} does not exist")
    return atomic_write_text(path, json.dumps(_json_safe(result), indent=1, allow_nan=False))


def run(args) -> int:
    from tqdm import tqdm

    from ..pipeline.cli import sampling_overrides
    from ..training.synthetic.speech import EspeakNotFoundError
    from .real import evaluate_videos, format_real_report
    from ..shipped import checkpoint_or_demo
    from .runner import evaluate_checkpoint, format_report

    if args.json is not None and not Path(args.json).parent.is_dir():
        raise FileNotFoundError(f"--json: folder {str(Path(args.json).parent)!r} does not exist")
    bar = None if args.no_progress else tqdm(total=None, unit="step", dynamic_ncols=True, desc="evaluate")

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def log(message: str) -> None:
        if bar is not None:
            bar.set_description(message.split(":")[0])
        else:
            print(message, flush=True)

    try:
        if args.videos is not None:
            result = evaluate_videos(
                args.videos, checkpoint_or_demo(args.checkpoint), **sampling_overrides(args), max_clips=args.max_clips,
                only=args.only, margin=args.margin,
                vae=args.vae, audio_encoder=args.audio_encoder, progress=None if bar is None else progress, log=log)
            report = format_real_report(result)
        else:
            result = evaluate_checkpoint(
                checkpoint_or_demo(args.checkpoint), identities=args.identities, seconds=args.seconds, audio=args.audio,
                drift_seconds=args.drift_seconds, drift_window=args.drift_window,
                with_sampler_table=args.sampler_table, vae=args.vae, audio_encoder=args.audio_encoder,
                **sampling_overrides(args), progress=None if bar is None else progress, log=log,
            )
            report = format_report(result)
    except EspeakNotFoundError as error:
        print(f"error: held-out speech needs espeak-ng: {error} Or pass your own speech with --audio.", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    print(report)
    if args.json is not None:
        print(f"wrote {write_json(result, args.json)}")
    return 0
