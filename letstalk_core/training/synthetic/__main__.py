"""``python -m letstalk_core.training.synthetic OUT_DIR``: write a synthetic talking-head dataset."""

from __future__ import annotations

import argparse
import sys

from .dataset import SPLITS, generate_dataset
from .speech import EspeakNotFoundError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m letstalk_core.training.synthetic",
        description="Render synthetic talking-head videos (mp4 with speech) and JSON sidecars.",
    )
    parser.add_argument("out_dir", help="folder for the videos (created if missing)")
    parser.add_argument("--num-videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each video")
    parser.add_argument("--fps", default="25", help="frame rate, e.g. 25, 29.97 or 30000/1001")
    parser.add_argument("--size", type=int, default=128, help="frame width and height in pixels")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def report(done: int, total: int) -> None:
        print(f"\r{done}/{total} videos", end="" if done < total else "\n", file=sys.stderr, flush=True)

    try:
        paths = generate_dataset(
            args.out_dir, args.num_videos, args.seconds, args.fps, args.size, args.split, args.seed, progress=report
        )
    except (ValueError, TypeError, OSError, EspeakNotFoundError) as err:
        parser.error(str(err))
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
