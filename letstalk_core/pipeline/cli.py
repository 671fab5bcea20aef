"""``python -m letstalk_core generate``: portrait + speech -> talking mp4."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..encoder_names import AUDIO_ENCODER_HELP
from ..precision import PRECISION_CHOICES, PRECISION_HELP


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="make a talking video from a portrait and a speech track",
        description="Portrait + speech -> talking mp4 with the speech muxed in. Without --checkpoint the "
                    "shipped demo model is used (models/letstalk-demo.safetensors: the few real people it was "
                    "trained on, see models/README.md).",
    )
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="LetsTalk checkpoint (.safetensors of this project, or the authors' .ckpt/.pt/.pth)")
    parser.add_argument("--image", required=True, help="portrait image (any size; RGB, RGBA or greyscale)")
    parser.add_argument("--audio", required=True, help="speech: wav, flac, mp3, m4a or a video's audio track")
    parser.add_argument("--out", required=True, type=Path, help="output .mp4")
    parser.add_argument("--vae", default=None, help="VAE file or folder (default: the one in the checkpoint)")
    parser.add_argument("--audio-encoder", default=None,
                        help=AUDIO_ENCODER_HELP + " (default: the checkpoint's)")
    parser.add_argument("--text", default=None,
                        help="the words spoken, for a model whose speech encoder is 'phones' or 'phones+mel': the "
                             "phones then come from aligning these words to the speech (every P, B and M where it is "
                             "said) instead of from the sound alone; English words of the CMU dictionary, digits "
                             "spelled out for you")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    parser.add_argument("--device", default="auto",
                        help="where to run: auto (the first CUDA GPU when there is one, else the CPU), cpu, cuda, "
                             "cuda:N")
    add_sampling_arguments(parser)
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True,
                        help="crop the face (face detection when installed, else the centre square)")
    parser.add_argument("--paste-back", action=argparse.BooleanOptionalAction, default=None,
                        help="paste the talking face back into the whole portrait, with a soft edge (the video is "
                             "the portrait's size); by default when the portrait is larger than the model's square. "
                             "--no-paste-back keeps the model's square crop")
    parser.set_defaults(func=run)


def add_sampling_arguments(parser, *, with_fps: bool = True) -> None:
    """The sampling options every command that makes videos takes; left out, each is the checkpoint's
    recommendation (``letstalk_core.sampling.options``)."""
    group = parser.add_argument_group(
        "sampling", "left out, each is what the checkpoint recommends (stored in the bundle; the authors' loop "
                    "for the authors' checkpoints)")
    group.add_argument("--sampler", default=None, help="ddpm, ddim, dpmpp_2m or euler")
    group.add_argument("--steps", type=int, default=None,
                       help="model evaluations per clip (with another --sampler than the checkpoint's: ddpm 250, "
                            "ddim 50, dpmpp_2m 25, euler 50)")
    group.add_argument("--seed", type=int, default=None, help="same seed, same video (default 0)")
    if with_fps:
        group.add_argument("--fps", type=float, default=None, help="video frame rate (default: the training videos')")
    group.add_argument("--audio-cfg", type=float, default=None,
                       help="audio guidance scale: how strongly the lips follow the speech (1 = none; above 1 "
                            "costs a second model pass per step)")
    group.add_argument("--portrait-cfg", type=float, default=None,
                       help="portrait guidance scale: how strongly the face holds to the portrait (1 = none)")
    group.add_argument("--overlap-frames", type=int, default=None,
                       help="frames each clip repeats from the one before, held to it, for smoother clip "
                            "boundaries (0 = none, the authors' loop; more costs time: with 8 frames per clip, "
                            "4 of overlap take twice as long)")


def sampling_overrides(args) -> dict:
    """The sampling options given on the command line (None where left out)."""
    given = {"sampler": args.sampler, "steps": args.steps, "seed": args.seed, "audio_cfg": args.audio_cfg,
             "portrait_cfg": args.portrait_cfg, "overlap_frames": args.overlap_frames}
    if hasattr(args, "fps"):
        given["fps"] = args.fps
    return given


def run_device(name: str) -> "torch.device":
    """``--device``: auto (CUDA when there is a GPU, else the CPU) or a torch device name."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA GPU that torch can use; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def run(args) -> int:
    import time

    from tqdm import tqdm

    from ..shipped import checkpoint_or_demo
    from . import LetsTalkPipeline

    from ..precision import precision_name, resolve_precision
    from ..sampling.options import check_overrides

    check_overrides(**sampling_overrides(args))  # before the model loads
    device = run_device(args.device)
    dtype, note = resolve_precision(args.precision, device)
    if note:
        print(f"note: {note}", flush=True)
    pipe = LetsTalkPipeline.from_pretrained(checkpoint_or_demo(args.checkpoint), vae=args.vae,
                                            audio_encoder=args.audio_encoder, device=device, dtype=dtype)
    if args.text is not None:
        if not hasattr(pipe.audio_encoder, "with_transcript"):
            raise ValueError(f"--text: this model's speech encoder is {pipe.audio_encoder.kind!r}, which does not "
                             "read words; a transcript helps models trained with 'phones' or 'phones+mel' only "
                             "(leave --text out)")
        pipe.audio_encoder = pipe.audio_encoder.with_transcript(args.text)
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

    options = pipe.options(**sampling_overrides(args))
    print(f"sampling: {options.describe()}; weights in {precision_name(dtype)} on {device}", flush=True)
    steps_per_clip.append(options.steps)
    try:
        out = pipe(args.image, args.audio, out=args.out, options=options, crop=args.crop, paste_back=args.paste_back,
                   progress=progress)
    finally:
        bar.close()
    print(f"{out} ({time.monotonic() - started:.1f} s)")
    return 0
