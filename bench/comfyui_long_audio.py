"""Memory of the ComfyUI server for a long speech track against a short one, through the long-speech workflow.

The bundled demo model makes a talking video from 5 s and from 60 s of speech (the example speech,
repeated), each in a fresh ComfyUI server (so the peak is that run's own) running the shipped
"LetsTalk long speech to mp4" workflow (API twin: workflows/api/letstalk_long_audio_api.json) with the
streaming decoder. Printed: the server's peak RSS for each and the ratio 60 s / 5 s (target <= 1.25:
memory does not grow with the speech), and the time ratio. Sampling is cut to 2 DPM-Solver++ steps
without guidance or overlap: memory, not quality, is measured. ``--keep-mb`` sets
LETSTALK_KEEP_LATENTS_MB for the servers (default: the pack's default).

    .venv/bin/python bench/comfyui_long_audio.py [--short 5] [--long 60] [--keep-mb MB]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.comfy_harness import ComfyServer  # noqa: E402


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc (Linux only)")


def run_one(seconds: float, speech: np.ndarray, rate: int, keep_mb: str | None, work: Path) -> dict:
    env = dict(os.environ)
    if keep_mb is not None:
        env["LETSTALK_KEEP_LATENTS_MB"] = keep_mb
    with ComfyServer(work / f"base{seconds:g}", env=env) as server:
        track = np.resize(speech, int(round(seconds * rate))).astype(np.float32)
        sf.write(server.input_dir / "speech.wav", track, rate)
        (server.input_dir / "portrait.png").write_bytes((REPO / "workflows" / "examples" / "portrait.png").read_bytes())
        workflow = json.loads((REPO / "workflows" / "api" / "letstalk_long_audio_api.json").read_text())
        workflow["7"]["inputs"].update(sampler="dpmpp_2m", steps=2, audio_cfg=1.0, portrait_cfg=1.0, overlap_frames=0)
        started = time.perf_counter()
        server.client.run(workflow, timeout=3600)
        took = time.perf_counter() - started
        return {"seconds": took, "peak_rss": peak_rss(server.process.pid)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=float, default=5.0)
    parser.add_argument("--long", type=float, default=60.0)
    parser.add_argument("--keep-mb", default=None, help="LETSTALK_KEEP_LATENTS_MB for the servers")
    args = parser.parse_args()
    speech, rate = sf.read(REPO / "workflows" / "examples" / "speech.wav", dtype="float32")
    if speech.ndim > 1:
        speech = speech.mean(axis=1)
    with tempfile.TemporaryDirectory(prefix="letstalk-long-audio-") as work:
        short = run_one(args.short, speech, rate, args.keep_mb, Path(work))
        long = run_one(args.long, speech, rate, args.keep_mb, Path(work))
    ratio = long["peak_rss"] / short["peak_rss"]
    print(f"{args.short:g} s of speech: peak RSS {short['peak_rss'] / 2**20:.0f} MiB, {short['seconds']:.1f} s")
    print(f"{args.long:g} s of speech: peak RSS {long['peak_rss'] / 2**20:.0f} MiB, {long['seconds']:.1f} s")
    print(f"peak RSS ratio {args.long:g} s / {args.short:g} s: {ratio:.3f} (target <= 1.25) "
          f"{'PASS' if ratio <= 1.25 else 'FAIL'}; time ratio {long['seconds'] / short['seconds']:.2f}")
    return 0 if ratio <= 1.25 else 1


if __name__ == "__main__":
    raise SystemExit(main())
