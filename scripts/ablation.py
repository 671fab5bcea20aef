"""Which speech front end and which audio recipe make the lips follow the words: the same data, split and
training budget for each, measured on held-out sentences (issue #34, the model card's ablation table).

Arms are ``FRONT_END/RECIPE``: front ends ``mel``, ``phones``, ``phones+mel`` (one ``prepare --audio-encoder
phones+mel`` folder serves all three); recipes ``today`` (the ``personal`` preset as it is: the audio projection
frozen at its random initialisation) and ``listening`` (the projection trained, with the listening objective of
``letstalk_core/training/listening.py`` and its pretraining).

    # minutes: how much of the mouth's motion each front end can explain, through the projection alone
    python scripts/ablation.py listen --data runs/footage128-phones
    # hours: train every arm (resumable: run it again to go on), then evaluate and print the table
    python scripts/ablation.py train --data runs/footage128-phones --out runs/ablation --steps 2000
    python scripts/ablation.py evaluate --data runs/footage128-phones --out runs/ablation --only 'grid/s1*'
    python scripts/ablation.py table --out runs/ablation

Every number is written to JSON beside the runs (``listen.json``, ``ARM/evaluate.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FRONT_ENDS = ("mel", "phones", "phones+mel")
RECIPES = {
    "today": {},
    "listening": {"training": {"audio_projection_learning_rate": None},
                  "recipe": {"audio_mouth_loss_weight": 1.0, "audio_mouth_pretrain_steps": 300}},
}
ARMS = [f"{front}/{recipe}" for front in FRONT_ENDS for recipe in RECIPES]


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict):
            _merge(base.setdefault(key, {}), value)
        else:
            base[key] = value
    return base


def arm_config(arm: str, data: Path, out: Path, steps: int):
    """The ``personal`` preset with the arm's front end and recipe, ``steps`` steps, into ``out/ARM``."""
    from letstalk_core.training.config import load_preset

    front, recipe = arm.split("/")
    overrides = _merge({"name": f"ablation-{front}-{recipe}", "output_dir": str(arm_dir(out, arm)),
                        "data": {"path": str(data)}, "audio": {"encoder": front},
                        "vae": {"path": str(REPO / "models" / "taef2")},
                        "training": {"max_steps": steps, "save_every": max(1, steps // 4)}},
                       json.loads(json.dumps(RECIPES[recipe])))
    return load_preset("personal", overrides, base_dir=REPO)


def arm_dir(out: Path, arm: str) -> Path:
    return out / arm.replace("/", "-").replace("+", "_")


def listen(args) -> dict:
    """Per front end: the projection and head trained on the listening objective alone (``--steps``), then the
    share of the mouth's motion they leave unexplained on the training clips and on the held-out ones."""
    import torch

    from letstalk_core.training.data import ClipDataset, PreparedSource
    from letstalk_core.training.listening import audio_mouth_loss
    from letstalk_core.training.trainer import TransformerTrainer

    results = {}
    for front in args.front_ends:
        config = arm_config(f"{front}/listening", args.data, args.scratch, 1)
        trainer = TransformerTrainer(config, show_progress=False)
        curve = trainer.pretrain_listening(args.steps)
        source = PreparedSource(args.data, use_latents=True, split="heldout")
        source.use_features_of(front)
        dataset = ClipDataset(source, frames_per_clip=config.model.frames_per_clip,
                              memory_frames=config.model.memory_frames, window_radius=config.audio.window_radius,
                              use_latents=True)
        trainer.audio_proj.eval(), trainer.mouth_head.eval()
        losses = []
        with torch.no_grad():
            for index in range(len(dataset)):
                for draw in range(args.draws):
                    sample = dataset.sample(index, torch.Generator().manual_seed(index * 1009 + draw))
                    if sample.mouth_box is None:
                        continue
                    tokens = trainer.audio_proj(sample.audio_windows[None])
                    box = torch.tensor([sample.mouth_box], dtype=torch.float32)
                    losses.append(float(audio_mouth_loss(trainer.mouth_head, tokens, sample.clip[None], box,
                                                         torch.ones(1, dtype=torch.bool))))
        results[front] = {"steps": args.steps, "train_unexplained": sum(curve[-20:]) / len(curve[-20:]),
                          "heldout_unexplained": sum(losses) / len(losses), "heldout_clips": len(dataset),
                          "heldout_windows": len(losses)}
        print(f"{front:>11}: unexplained share of the mouth's motion, train {results[front]['train_unexplained']:.3f}, "
              f"held out {results[front]['heldout_unexplained']:.3f} ({len(dataset)} clips)", flush=True)
    args.scratch.mkdir(parents=True, exist_ok=True)
    path = args.scratch / "listen.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")
    return results


def train(args) -> None:
    from letstalk_core.training.trainer import TRANSFORMER_STATE, train as run_training

    for arm in args.arms:
        config = arm_config(arm, args.data, args.out, args.steps)
        resume = (arm_dir(args.out, arm) / TRANSFORMER_STATE).is_file()
        print(f"[ablation] {arm}: {'resuming' if resume else 'training'} to step {args.steps}", flush=True)
        run_training(config, resume=resume, show_progress=not args.no_progress)


def evaluate(args) -> None:
    from letstalk_core.evaluation.cli import write_json
    from letstalk_core.evaluation.real import evaluate_videos, format_real_report

    for arm in args.arms:
        folder = arm_dir(args.out, arm)
        checkpoint = folder / "letstalk.safetensors"
        if not checkpoint.is_file():
            print(f"[ablation] {arm}: no {checkpoint} yet (train it first); skipped", flush=True)
            continue
        result = evaluate_videos(args.data, checkpoint, max_clips=args.max_clips, only=args.only,
                                 steps=args.sampling_steps, audio_cfg=args.audio_cfg)
        write_json(result, folder / "evaluate.json")
        print(f"[ablation] {arm}\n{format_real_report(result)}", flush=True)


def table(args) -> str:
    """The evaluated arms as a markdown table (the model card's), with each run's last probe at t=500."""
    from safetensors import safe_open

    rows = ["| front end | recipe | steps | lip sync | floor | above floor | structure error | seams "
            "| audio over the mouth (t=500) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for arm in args.arms:
        folder = arm_dir(args.out, arm)
        if not (folder / "evaluate.json").is_file():
            continue
        m = json.loads((folder / "evaluate.json").read_text())["metrics"]
        with safe_open(str(folder / "letstalk.safetensors"), framework="pt") as bundle:
            step = json.loads(bundle.metadata()["training"])["step"]
        front, recipe = arm.split("/")
        rows.append(f"| {front} | {recipe} | {step} | {m['sync']:.3f} | {m['sync_floor']:.3f} | "
                    f"{m['sync_above_floor']:.3f} | {m['structure_error']:.3f} | {m['seam_ratio']:.2f} | "
                    f"{_last_probe(folder)} |")
    text = "\n".join(rows)
    print(text)
    return text


def _last_probe(folder: Path, timestep: int = 500) -> str:
    """The last "audio swapped over the mouth" ratio of the run's probes.jsonl at ``timestep``."""
    path = folder / "probes.jsonl"
    if not path.is_file():
        return ""
    probes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    probes = [p for p in probes if p.get("timestep") == timestep and "own_mouth" in p]
    if not probes:
        return ""
    ratio = probes[-1]["audio_swapped_mouth"] / probes[-1]["own_mouth"]
    return f"x{ratio:.3f}" if math.isfinite(ratio) else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, data=True):
        if data:
            p.add_argument("--data", type=Path, required=True,
                           help="a folder written by `prepare --audio-encoder phones+mel --vae models/taef2 --size 128`")
        p.add_argument("--out", type=Path, default=REPO / "runs" / "ablation", help="one folder per arm in here")
        p.add_argument("--arms", type=lambda text: [a.strip() for a in text.split(",") if a.strip()], default=ARMS,
                       help=f"comma-separated, of {', '.join(ARMS)} (default: all)")

    p = sub.add_parser("listen", help="the projection alone on the listening objective, per front end (minutes)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--scratch", type=Path, default=REPO / "runs" / "ablation", help="where listen.json goes")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--draws", type=int, default=4, help="clips drawn from each held-out video")
    p.add_argument("--front-ends", type=lambda text: text.split(","), default=list(FRONT_ENDS))
    p.set_defaults(func=listen)
    p = sub.add_parser("train", help="train the arms (resumable)")
    common(p)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=train)
    p = sub.add_parser("evaluate", help="evaluate --videos on the held-out clips, per arm")
    common(p)
    p.add_argument("--max-clips", type=int, default=10)
    p.add_argument("--only", action="append", default=[], help="clip-name patterns, e.g. 'grid/s1*'")
    p.add_argument("--sampling-steps", type=int, default=None, help="default: the checkpoint's recommendation")
    p.add_argument("--audio-cfg", type=float, default=None, help="default: the checkpoint's recommendation")
    p.set_defaults(func=evaluate)
    p = sub.add_parser("table", help="the results as a markdown table")
    common(p, data=False)
    p.set_defaults(func=table)
    args = parser.parse_args(argv)
    for arm in getattr(args, "arms", []):
        if arm not in ARMS:
            parser.error(f"--arms: {arm!r} is not one of {', '.join(ARMS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
