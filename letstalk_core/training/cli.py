"""``python -m letstalk_core prepare ...`` and ``python -m letstalk_core train ...``."""

from __future__ import annotations

import argparse

from ..encoder_names import AUDIO_ENCODER_HELP, named_encoder
from ..framing import DEFAULT_CROP_MARGIN


def add_parser(subparsers) -> None:
    prepare = subparsers.add_parser(
        "prepare", help="prepare talking-head videos for training (face crop, 16 kHz audio features, latents)",
        description="Decode every video under --videos, resample it to --fps, crop one stable square around the "
                    "face, resize to --size, extract 16 kHz mono speech and cache audio features (and, with --vae, "
                    "VAE latents) as safetensors shards with a manifest. Broken or face-less videos are skipped and "
                    "reported; a rerun resumes, skipping videos already in the manifest.")
    prepare.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    prepare.add_argument("--out", required=True, help="output folder (manifest.json + shards/)")
    prepare.add_argument("--fps", type=int, default=25, help="frame rate to resample to (default 25)")
    prepare.add_argument("--size", type=int, default=256, help="side of the square face crop in pixels (default 256)")
    prepare.add_argument("--audio-encoder", default="mel", help=AUDIO_ENCODER_HELP + " (default mel)")
    prepare.add_argument("--vae", default=None, help="also cache latents of this VAE (folder or file)")
    prepare.add_argument("--on-no-face", choices=("skip", "center"), default="skip",
                         help="what to do when no face is found: skip the video (default) or centre-crop it")
    prepare.add_argument("--no-face-detection", action="store_true",
                         help="do not detect faces; centre-crop every video (implies --on-no-face center)")
    prepare.add_argument("--margin", type=float, default=DEFAULT_CROP_MARGIN,
                         help="fraction of the face size added on every side of the face box "
                              f"(default {DEFAULT_CROP_MARGIN:g}; the checkpoint records it, and inference frames "
                              "portraits alike)")
    prepare.add_argument("--holdout-fraction", type=float, default=0.25,
                         help="share of each folder's clips held out of training for evaluation (default 0.25; "
                              "folders of fewer than 4 clips are all trained on); the manifest records the split")
    prepare.add_argument("--hold-out", action="append", default=[], metavar="PATTERN",
                         help="also hold out the clips this name pattern matches (relative to --videos, shell "
                              "wildcards, e.g. 'grid/s1/bbbs7a.mpg' or '*/lbax4n.*'); may be given several times. "
                              "A rerun with other patterns rewrites the split without preparing anything again")
    prepare.set_defaults(func=run_prepare)

    train = subparsers.add_parser(
        "train", help="train a LetsTalk model (and the demo VAE) from a YAML config or a preset",
        description="Train with Hugging Face accelerate: runs on a CPU or one GPU as is, and on several processes "
                    "with `torchrun --nproc_per_node N -m letstalk_core train ...` or `accelerate launch "
                    "--multi_gpu --num_processes N -m letstalk_core train ...` (training.batch_size is the global "
                    "batch).")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML training config")
    source.add_argument("--preset", help="a shipped preset (demo, personal, S, B, L, XL)")
    train.add_argument("--resume", action="store_true", help="continue from the training state in the output folder")
    train.add_argument("--out", help="override output_dir")
    train.add_argument("--data", help="override data.path")
    train.add_argument("--vae", help="override vae.path")
    train.add_argument("--audio-encoder", help="override audio.encoder: " + AUDIO_ENCODER_HELP)
    train.add_argument("--max-steps", type=int, help="override training.max_steps")
    train.add_argument("--batch-size", type=int,
                       help="override training.batch_size: the global batch, clips per step over all processes "
                            "(a multiple of the number of processes)")
    train.add_argument("--init-from", help="override training.init_from: start from this checkpoint's weights "
                                           "(fine-tuning; the model section must match it)")
    train.add_argument("--stages", help="override stages, comma-separated (vae,transformer)")
    train.add_argument("--fsdp", action="store_true",
                       help="set training.fsdp: shard the transformer's weights, gradients and optimiser state over "
                            "the processes (FSDP2) instead of a whole copy on each")
    train.set_defaults(func=run_train)


def run_prepare(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .prepare import prepare_dataset

    bar = tqdm(desc="prepare", unit="video")

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.update(done - bar.n)
        bar.set_postfix_str(name[-40:])

    try:
        report = prepare_dataset(
            args.videos, args.out, fps=args.fps, size=args.size, audio_encoder=args.audio_encoder, vae=args.vae,
            on_no_face="center" if args.no_face_detection else args.on_no_face,
            detector="none" if args.no_face_detection else "mtcnn", margin=args.margin,
            holdout_fraction=args.holdout_fraction, hold_out=args.hold_out, progress=progress)
    finally:
        bar.close()
    print(report.summary())
    print(f"manifest: {report.manifest_path}")
    return 0 if (report.prepared or report.already) else 1


def _overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    if args.out:
        overrides["output_dir"] = args.out
    if args.data:
        overrides.setdefault("data", {})["path"] = args.data
    if args.vae:
        overrides.setdefault("vae", {})["path"] = args.vae
    if args.audio_encoder:
        overrides.setdefault("audio", {})["encoder"] = args.audio_encoder
    if args.max_steps is not None:
        overrides.setdefault("training", {})["max_steps"] = args.max_steps
    if args.batch_size is not None:
        overrides.setdefault("training", {})["batch_size"] = args.batch_size
    if args.init_from:
        overrides.setdefault("training", {})["init_from"] = args.init_from
    if args.fsdp:
        overrides.setdefault("training", {})["fsdp"] = True
    if args.stages:
        overrides["stages"] = [s.strip() for s in args.stages.split(",") if s.strip()]
    return overrides


def run_train(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from .config import load_config, load_preset
    from .trainer import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = _overrides(args)
    if args.config:
        # command-line paths are relative to the working directory, not to the config file
        for section, key in (("data", "path"), ("vae", "path"), ("audio", "encoder"), ("training", "init_from")):
            value = overrides.get(section, {}).get(key)
            if value and not named_encoder(value):
                overrides[section][key] = str(Path(value).resolve())
        if "output_dir" in overrides:
            overrides["output_dir"] = str(Path(overrides["output_dir"]).resolve())
        config = load_config(args.config, overrides)
    else:
        config = load_preset(args.preset, overrides)
    path = train(config, resume=args.resume)
    if path is not None:  # the main process's; the others of a run on several processes write nothing
        print(f"checkpoint: {path}")
    return 0
