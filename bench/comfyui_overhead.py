"""What running LetsTalk through ComfyUI costs over calling LetsTalkPipeline directly.

The same job (same random checkpoint, portrait, speech, sampler, steps and seed) runs in one process
through ``LetsTalkPipeline`` and through a real ComfyUI's HTTP API (the bundled basic workflow), and
the script prints the time ratio ComfyUI / pipeline, cold (model loaded from disk inside the timed
part) and warm (model loaded and conditions encoded, a new seed: what ComfyUI reruns). Target: within 1.05x.

    .venv/bin/python bench/comfyui_overhead.py [--seconds 4] [--steps 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from letstalk_core.pipeline import LetsTalkPipeline, write_video  # noqa: E402
from letstalk_core.video import probe  # noqa: E402
from scripts.comfy_harness import ComfyServer  # noqa: E402
from tests.helpers import make_demo_sized_bundle, write_portrait, write_speechlike  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="speech length")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="warm runs of each, the best is kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="letstalk-bench-") as tmp:
        root = Path(tmp)
        base = root / "comfy"
        (base / "models" / "letstalk").mkdir(parents=True)
        (base / "input").mkdir(parents=True)
        checkpoint = make_demo_sized_bundle(base / "models" / "letstalk" / "bench.safetensors")
        portrait = write_portrait(base / "input" / "portrait.png", size=192)
        speech = write_speechlike(base / "input" / "speech.wav", args.seconds)
        options = dict(sampler="dpmpp_2m", steps=args.steps)

        # --- pipeline, in this process -------------------------------------------------------------
        start = time.perf_counter()
        pipe = LetsTalkPipeline.from_pretrained(checkpoint)
        pipe(portrait, speech, out=root / "pipe_cold.mp4", seed=0, **options)
        pipe_cold = time.perf_counter() - start
        # warm: like a ComfyUI rerun with a new seed, the conditions are already encoded
        conditions = pipe.prepare(portrait, speech)
        pipe_warm = float("inf")
        for i in range(args.repeats):
            start = time.perf_counter()
            write_video(root / f"pipe_{i}.mp4", pipe.iter_frames(conditions, seed=i + 1, **options), conditions.fps,
                        conditions.speech.speech)
            pipe_warm = min(pipe_warm, time.perf_counter() - start)
        frames = probe(root / "pipe_cold.mp4").frame_count
        del pipe

        # --- the same through ComfyUI's API ----------------------------------------------------------
        workflow = json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text())
        workflow["3"]["inputs"]["checkpoint"] = "bench.safetensors"
        workflow["7"]["inputs"].update(options)
        with ComfyServer(base, output_dir=root / "out") as server:
            client = server.client
            start = time.perf_counter()
            client.run(copy.deepcopy(workflow), timeout=3600)
            comfy_cold = time.perf_counter() - start
            comfy_warm = float("inf")
            for i in range(args.repeats):
                prompt = copy.deepcopy(workflow)
                prompt["7"]["inputs"]["seed"] = i + 1
                start = time.perf_counter()
                client.run(prompt, timeout=3600)
                comfy_warm = min(comfy_warm, time.perf_counter() - start)

    print(f"job: {args.seconds:g} s of speech -> {frames} frames at 128 px, {options['sampler']} "
          f"{options['steps']} steps per clip (demo-sized random model)")
    print(f"{'':8} {'pipeline':>10} {'ComfyUI':>10} {'ratio':>7}")
    print(f"{'cold':8} {pipe_cold:9.2f}s {comfy_cold:9.2f}s {comfy_cold / pipe_cold:7.3f}")
    print(f"{'warm':8} {pipe_warm:9.2f}s {comfy_warm:9.2f}s {comfy_warm / pipe_warm:7.3f}   (target <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
