"""Memory and time of a long video against a short one: both should be linear in length at most.

The same demo-sized random model makes a talking video from 5 s and from 60 s of speech, each in a
fresh subprocess (so peak RSS is that run's own), streaming into an mp4. Printed side by side: the
peak-RSS ratio 60 s / 5 s (target <= 1.25: memory does not grow with the audio) and the time ratio
(target <= 13: linear, 12x the audio plus fixed costs).

    .venv/bin/python bench/long_video.py [--short 5] [--long 60] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_one(checkpoint: str, portrait: str, speech: str, out: str, steps: int) -> None:
    """In the child: generate, then print the wall time and this process's peak RSS as JSON."""
    from letstalk_core.pipeline import LetsTalkPipeline
    from letstalk_core.video import probe

    start = time.perf_counter()
    pipe = LetsTalkPipeline.from_pretrained(checkpoint)
    pipe(portrait, speech, out=out, sampler="dpmpp_2m", steps=steps, seed=0)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "frames": probe(out).frame_count}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=float, default=5.0)
    parser.add_argument("--long", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=4, help="dpmpp_2m steps per clip")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        checkpoint, portrait, speech, out, steps = args.child
        run_one(checkpoint, portrait, speech, out, int(steps))
        return 0

    from tests.helpers import make_demo_sized_bundle, write_portrait, write_speechlike

    results = {}
    with tempfile.TemporaryDirectory(prefix="letstalk-long-") as tmp:
        root = Path(tmp)
        checkpoint = make_demo_sized_bundle(root / "demo_sized.safetensors")
        portrait = write_portrait(root / "portrait.png", size=192)
        for label, seconds in (("short", args.short), ("long", args.long)):
            speech = write_speechlike(root / f"{label}.wav", seconds)
            child = subprocess.run([sys.executable, __file__, "--child", str(checkpoint), str(portrait), str(speech),
                                    str(root / f"{label}.mp4"), str(args.steps)],
                                   capture_output=True, text=True, cwd=REPO)
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                return 1
            results[label] = json.loads(child.stdout.strip().splitlines()[-1])

    short, long = results["short"], results["long"]
    print(f"demo-sized random model, dpmpp_2m {args.steps} steps per clip, streamed to mp4")
    print(f"{'':10} {args.short:>8g} s {args.long:>8g} s {'ratio':>7}  target")
    print(f"{'frames':10} {short['frames']:>10} {long['frames']:>10} {long['frames'] / short['frames']:7.2f}")
    print(f"{'peak RSS':10} {short['peak_rss'] / 2**20:8.0f}Mi {long['peak_rss'] / 2**20:8.0f}Mi "
          f"{long['peak_rss'] / short['peak_rss']:7.3f}  <= 1.25")
    print(f"{'time':10} {short['seconds']:9.1f}s {long['seconds']:9.1f}s {long['seconds'] / short['seconds']:7.2f}  <= 13")
    return 0


if __name__ == "__main__":
    sys.exit(main())
