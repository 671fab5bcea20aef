"""``python -m letstalk_core generate``: portrait + speech -> talking mp4."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="make a talking video from a portrait and a speech track",
        description="Portrait + speech -> talking mp4 with the speech muxed in. Without --checkpoint the "
                    "bundled demo model is used (it animates the synthetic faces it was trained on).",
    )
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="LetsTalk checkpoint (.safetensors of this project, or the authors' .ckpt/.pt/.pth)")
    parser.add_argument("--image", required=True, help="portrait image (any size; RGB, RGBA or greyscale)")
    parser.add_argument("--audio", required=True, help="speech: wav, flac, mp3, m4a or a video's audio track")
    parser.add_argument("--out", required=True, type=Path, help="output .mp4")
    parser.add_argument("--vae", default=None, help="VAE file or folder (default: the one in the checkpoint)")
    parser.add_argument("--audio-encoder", default=None,
                        help="'mel', a wav2vec2/whisper folder or .safetensors (default: the checkpoint's)")
    parser.add_argument("--sampler", default="ddpm", help="ddpm, ddim, dpmpp_2m or euler (default ddpm)")
    parser.add_argument("--steps", type=int, default=None,
                        help="model evaluations per clip (default: ddpm 250, ddim 50, dpmpp_2m 25, euler 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--audio-cfg", type=float, default=1.0, help="audio guidance scale (1 = none)")
    parser.add_argument("--portrait-cfg", type=float, default=1.0, help="portrait guidance scale (1 = none)")
    parser.add_argument("--overlap-frames", type=int, default=0,
                        help="frames each clip repeats from the one before, held to it, for smoother clip "
                             "boundaries (0 = the authors' loop; V frames of overlap in clips of F take about "
                             "F/(F-V) times as long)")
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True,
                        help="crop the face (face detection when installed, else the centre square)")
    parser.add_argument("--paste-back", action="store_true",
                        help="paste the animated crop back into the full image (output at its size)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import time

    from tqdm import tqdm

    from . import LetsTalkPipeline

    pipe = LetsTalkPipeline.from_pretrained(args.checkpoint, vae=args.vae, audio_encoder=args.audio_encoder)
    bar = tqdm(total=None, unit="step", dynamic_ncols=True)
    steps_per_clip: list[int] = []
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        per_clip = steps_per_clip[0] if steps_per_clip else None
        if per_clip:
            bar.set_description(f"clip {min((done - 1) // per_clip + 1, total // per_clip)}/{total // per_clip}")
        bar.update(done - bar.n)

    from ..pipeline import DEFAULT_STEPS

    steps_per_clip.append(args.steps or DEFAULT_STEPS.get(args.sampler, 0))
    try:
        out = pipe(args.image, args.audio, out=args.out, fps=args.fps, crop=args.crop, paste_back=args.paste_back,
                   sampler=args.sampler, steps=args.steps, seed=args.seed, audio_cfg=args.audio_cfg,
                   portrait_cfg=args.portrait_cfg, overlap_frames=args.overlap_frames, progress=progress)
    finally:
        bar.close()
    print(f"{out} ({time.monotonic() - started:.1f} s)")
    return 0
