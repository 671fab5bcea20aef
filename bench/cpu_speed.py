"""Speed against quality on this CPU (issue #35): the shipped model's recommended settings and faster ones, side by
side in one run on the same held-out real clips: seconds of compute per second of video, lip sync (and its floor),
structure error, seams. A faster setting counts only where lip sync and structure error move by at most 0.02.

    python bench/cpu_speed.py --videos runs/footage128-phones --only 'grid/s1*' --max-clips 5 \
        [--settings fp32:25,bf16:25,bf16:15] [--checkpoint models/letstalk-demo.safetensors] [--json OUT]

A setting is PRECISION:STEPS (the checkpoint's sampler and guidance otherwise); the first is the reference.
The ratio printed is each setting's seconds per second of video over the reference's (below 1: faster).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_settings(text: str) -> list[tuple[str, int]]:
    settings = []
    for item in text.split(","):
        precision, _, steps = item.strip().partition(":")
        if precision not in ("fp32", "bf16", "fp16") or not steps.isdigit() or int(steps) < 1:
            raise argparse.ArgumentTypeError(f"a setting is PRECISION:STEPS (fp32|bf16|fp16, steps >= 1), got {item!r}")
        settings.append((precision, int(steps)))
    return settings


def main(argv=None) -> int:
    from letstalk_core.evaluation.real import evaluate_videos
    from letstalk_core.pipeline import LetsTalkPipeline
    from letstalk_core.precision import dtype_of
    from letstalk_core.shipped import DEMO_CHECKPOINT

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, required=True, help="a prepare folder (its held-out clips) or videos")
    parser.add_argument("--only", action="append", default=[], help="clip-name patterns, e.g. 'grid/s1*'")
    parser.add_argument("--max-clips", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--settings", type=parse_settings, default=parse_settings("fp32:25,bf16:25,bf16:15"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    rows = []
    for precision, steps in args.settings:
        pipe = LetsTalkPipeline.from_pretrained(args.checkpoint, dtype=dtype_of(precision))
        result = evaluate_videos(args.videos, pipe, steps=steps, max_clips=args.max_clips, only=args.only)
        m = result["metrics"]
        rows.append({"precision": precision, "steps": steps, "sampling": result["settings"], **{
            key: m[key] for key in ("seconds_per_video_second", "sync", "sync_floor", "structure_error", "seam_ratio")}})
        print(f"{precision}:{steps}: {m['seconds_per_video_second']:.2f} s per second of video, lip sync "
              f"{m['sync']:.3f} (floor {m['sync_floor']:.3f}), structure error {m['structure_error']:.3f}, "
              f"seams {m['seam_ratio']:.2f}", flush=True)
    reference = rows[0]
    print(f"\n| setting | s per s of video | ratio | lip sync | change | structure error | change | seams |\n"
          f"|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['precision']}:{row['steps']} | {row['seconds_per_video_second']:.2f} | "
              f"{row['seconds_per_video_second'] / reference['seconds_per_video_second']:.2f} | {row['sync']:.3f} | "
              f"{row['sync'] - reference['sync']:+.3f} | {row['structure_error']:.3f} | "
              f"{row['structure_error'] - reference['structure_error']:+.3f} | {row['seam_ratio']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
