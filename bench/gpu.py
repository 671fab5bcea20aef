"""The pack on a GPU (not a test; ``scripts/gpu_check.sh`` runs it): per model, the transformer's time per forward
and peak GPU memory, and for the shipped demo model seconds of compute per second of video with its recommended
sampling, in bf16 (and fp32 for the forward, as a ratio).

    python bench/gpu.py [--device cuda] [--json results.json] [--seconds 10]

Models: the shipped demo model (128 px, TAEF2 latents 32x16x16, clips of 8) and the authors' S and B sizes of
VDTcatlong at 256 px (latents 4x32x32), 16 frames, 2 memory frames, batch 1 (random weights: speed does not
depend on them). The S/B rows are the per-GPU half of a multi-GPU estimate: one process, one GPU, one forward.
The authors' own code cannot be run here (it is not public in a form this project may carry), so the forward
is compared with this GPU's bf16 matmul rate in the same run instead: the share of it the forward reaches.

``--device cpu`` runs the same code on the CPU with the smallest settings (a check that the bench itself works;
its numbers say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from letstalk_core.model import LetsTalkTransformer, transformer_config  # noqa: E402

DEMO = REPO / "models" / "letstalk-demo.safetensors"
SPEECH = REPO / "workflows" / "examples" / "speech.wav"
PORTRAIT = REPO / "workflows" / "examples" / "portrait.png"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def time_forward(model, inputs, device, repeats: int) -> float:
    with torch.no_grad():
        model(*inputs)  # warm-up (kernels chosen, memory pooled)
        synchronize(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(*inputs)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def forward_rows(device: torch.device, quick: bool) -> list[dict]:
    from letstalk_core.checkpoints import load_checkpoint

    rows = []
    models = [("demo (128 px)", None)]
    if not quick:
        models += [(f"VDTcatlong-{size} (256 px)", size) for size in ("S", "B")]
    for name, size in models:
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            if size is None:
                model = load_checkpoint(DEMO, dtype=dtype, device=device).model.eval()
                frames, memory, side, tokens = 8, 2, 16, 8
            else:
                config = transformer_config(variant="vdt_long", size=size, in_channels=4, sample_size=32,
                                            frames_per_clip=16, memory_frames=2)
                model = LetsTalkTransformer(**config).to(device, dtype).eval()
                frames, memory, side, tokens = 16, 2, 32, 32
            c, audio_dim = int(model.config.in_channels), int(model.config.audio_dim)
            frames = min(frames, 4) if quick else frames
            inputs = (torch.randn(1, frames, c, side, side, device=device, dtype=dtype), torch.tensor([500], device=device),
                      torch.randn(1, c, side, side, device=device, dtype=dtype),
                      torch.randn(1, frames, tokens, audio_dim, device=device, dtype=dtype),
                      torch.randn(1, memory, c, side, side, device=device, dtype=dtype))
            peak_reset(device)
            seconds = time_forward(model, inputs, device, 2 if quick else 10)
            rows.append({"model": name, "dtype": str(dtype).replace("torch.", ""), "frames": frames,
                         "ms_per_forward": seconds * 1000, "peak_mib": peak_mib(device)})
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def video_row(device: torch.device, seconds: float) -> dict:
    """Seconds of compute per second of video with the demo model's recommended sampling, in bf16 on ``device``."""
    import soundfile as sf

    from letstalk_core.pipeline import LetsTalkPipeline

    speech, rate = sf.read(SPEECH, dtype="float32")
    repeats = int(np.ceil(seconds * rate / len(speech)))
    speech = torch.from_numpy(np.tile(speech, repeats)[: int(seconds * rate)])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = LetsTalkPipeline.from_pretrained(DEMO, device=device, dtype=dtype)
    options = pipe.options()
    pipe(PORTRAIT, speech[: rate], sample_rate=rate, steps=2)  # warm-up
    synchronize(device)
    peak_reset(device)
    start = time.perf_counter()
    frames = pipe(PORTRAIT, speech, sample_rate=rate)
    synchronize(device)
    took = time.perf_counter() - start
    return {"model": "demo (128 px)", "dtype": str(dtype).replace("torch.", ""), "sampling": options.describe(),
            "video_seconds": frames.shape[0] / float(options.fps), "seconds_per_video_second":
            took / (frames.shape[0] / float(options.fps)), "peak_mib": peak_mib(device)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=10.0, help="speech length for seconds per second of video")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU here (give --device cpu to check the bench itself)", file=sys.stderr)
        return 2
    quick = device.type == "cpu"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (a check of the bench only)"
    rate = matmul_tflops(device, torch.bfloat16 if device.type == "cuda" else torch.float32, 8192 if not quick else 512)
    print(f"device: {name}; torch {torch.__version__}; matmul {rate:.1f} TFLOP/s "
          f"({'bf16' if device.type == 'cuda' else 'fp32'})", flush=True)
    rows = forward_rows(device, quick)
    for row in rows:
        peak = "" if row["peak_mib"] is None else f", peak {row['peak_mib']:.0f} MiB"
        print(f"{row['model']:>24} {row['dtype']:>8}: {row['ms_per_forward']:.2f} ms per forward of "
              f"{row['frames']} frames{peak}", flush=True)
    for model in dict.fromkeys(row["model"] for row in rows):
        fp32, bf16 = (next(r["ms_per_forward"] for r in rows if r["model"] == model and r["dtype"] == d)
                      for d in ("float32", "bfloat16"))
        print(f"{model:>24}: bf16 takes {bf16 / fp32:.2f}x the time of fp32", flush=True)
    video = video_row(device, 1.0 if quick else args.seconds)
    peak = "" if video["peak_mib"] is None else f", peak {video['peak_mib']:.0f} MiB"
    print(f"{video['model']} in {video['dtype']} ({video['sampling']}): {video['seconds_per_video_second']:.2f} s "
          f"per second of video over {video['video_seconds']:.1f} s{peak}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "matmul_tflops": rate,
                                         "forward": rows, "video": video}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
