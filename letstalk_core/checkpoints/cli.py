"""``python -m letstalk_core convert IN OUT.safetensors``: checkpoint conversion."""

from __future__ import annotations

import argparse

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint (the authors' .ckpt/.pt/.pth or a LetsTalk .safetensors) to the project format",
        description="Convert a LetsTalk checkpoint into the project's single-file .safetensors format.",
    )
    parser.add_argument("input", help="checkpoint to read (.ckpt/.pt/.pth of the authors' code, or .safetensors)")
    parser.add_argument("output", help="file to write; must end in .safetensors")
    parser.add_argument("--no-ema", action="store_true", help="take the raw weights instead of the EMA weights")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads, needed only when the width is not an official size")
    parser.add_argument("--memory-frames", type=int, default=None, help="memory frames of a long variant (default 2)")
    parser.add_argument("--frames-per-clip", type=int, default=None, help="frames per clip the model was trained on")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="store the weights in this dtype")
    group = parser.add_argument_group(
        "recommended sampling", "store these as the checkpoint's recommended sampling options, the defaults of "
                                "generate, evaluate and the sampler node (left out: kept as they are; the authors' "
                                "loop for the authors' checkpoints)")
    group.add_argument("--sampler", default=None, help="ddpm, ddim, dpmpp_2m or euler")
    group.add_argument("--steps", type=int, default=None, help="model evaluations per clip")
    group.add_argument("--audio-cfg", type=float, default=None, help="audio guidance scale (1 = none)")
    group.add_argument("--portrait-cfg", type=float, default=None, help="portrait guidance scale (1 = none)")
    group.add_argument("--overlap-frames", type=int, default=None, help="frames of overlap between clips (0 = none)")
    parser.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    import torch

    from .native import convert_checkpoint

    dtype = getattr(torch, args.dtype) if args.dtype else None
    path = convert_checkpoint(args.input, args.output, use_ema=not args.no_ema, num_heads=args.num_heads,
                              memory_frames=args.memory_frames, frames_per_clip=args.frames_per_clip, dtype=dtype,
                              sampling={"sampler": args.sampler, "steps": args.steps, "audio_cfg": args.audio_cfg,
                                        "portrait_cfg": args.portrait_cfg, "overlap_frames": args.overlap_frames})
    print(f"wrote {path}")
    return 0
