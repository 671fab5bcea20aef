"""Training speed on 1 and on 2 processes of this machine (torchrun, gloo on CPUs), same global batch.

Each run trains the same small model on the synthetic world for a few steps; the steps after the first
two are timed. Printed: steps and clips per second for each process count, the ratio 2 / 1 (ideal 2.0
with twice the hardware; on one 2-core CPU the two processes share the same cores, so about 1.0 is the
honest expectation), the gradient size every step all-reduces, and how long gloo took to all-reduce it
between the two processes. A third run trains on 2 processes with ``training.fsdp`` (weights, gradients
and AdamW state sharded: each block's weights all-gathered for its forward and backward, its gradient
reduce-scattered) and prints its speed against the 2-process DDP run.

    .venv/bin/python bench/training_scale.py [--steps 12] [--batch 8] [--hidden 128] [--depth 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import json, resource, sys, time
import torch
import torch.distributed as dist
from letstalk_core.training.config import load_config
from letstalk_core.training.trainer import TransformerTrainer

trainer = TransformerTrainer(load_config(sys.argv[1]), show_progress=False)
acc = trainer.accelerator
times, peaks = [], []  # peak RSS up to each step: the steps, not the final save's gathering of whole copies
trainer.train(on_step=lambda step, loss: (times.append(time.perf_counter()),
                                          peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
parameters = sum(p.numel() for p in trainer._parameters())
held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in trainer._parameters())
allreduce = None
if acc.num_processes > 1:
    gradient = torch.ones(parameters)
    dist.all_reduce(gradient)
    start = time.perf_counter()
    for _ in range(5):
        dist.all_reduce(gradient)
    allreduce = (time.perf_counter() - start) / 5
if acc.is_main_process:
    timed = times[2:]
    print("RESULT " + json.dumps({"steps_per_second": (len(timed) - 1) / (timed[-1] - timed[0]),
                                  "parameters": parameters, "allreduce_seconds": allreduce, "held": held,
                                  "peak_rss_mb": peaks[-1] / 1024,
                                  "processes": acc.num_processes}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(processes: int, config: Path, driver: Path) -> dict:
    threads = max(1, (os.cpu_count() or 2) // processes)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(driver), str(config)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{processes} processes failed:\n{result.stderr[-3000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "threads": threads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8, help="global batch (clips per step over all processes)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()
    if args.steps < 5 or args.batch % 2:
        raise SystemExit("--steps must be at least 5 and --batch even")
    with tempfile.TemporaryDirectory(prefix="letstalk-training-scale-") as work:
        work = Path(work)
        driver = work / "driver.py"
        driver.write_text(DRIVER)
        sys.path.insert(0, str(REPO))
        from letstalk_core.latents import build_vae, load_shipped_config, save_vae

        vae = save_vae(build_vae(load_shipped_config("demo_vae_f4"), kind="demo_vae", seed=0),
                       work / "vae.safetensors")  # random weights: the timing is what counts
        results = {}
        for processes, fsdp in ((1, False), (2, False), (2, True)):
            config = {
                "name": "scale", "seed": 0, "output_dir": str(work / f"out{processes}{fsdp}"), "stages": ["transformer"],
                "data": {"source": "synthetic", "resolution": 64, "synthetic": {"num_videos": 4, "seconds": 2.0}},
                "model": {"hidden_size": args.hidden, "depth": args.depth, "num_heads": 2, "patch_size": 2,
                          "frames_per_clip": 8, "memory_frames": 2},
                "vae": {"path": str(vae)},
                "training": {"max_steps": args.steps, "batch_size": args.batch, "save_every": 10**6, "fsdp": fsdp},
            }
            path = work / f"scale{processes}{fsdp}.yaml"
            path.write_text(yaml.safe_dump(config))
            results[processes, fsdp] = run(processes, path, driver)
    one, two, sharded = results[1, False], results[2, False], results[2, True]
    for (processes, fsdp), r in results.items():
        print(f"{processes} process(es){' sharded (fsdp)' if fsdp else ''} x {r['threads']} threads: "
              f"{r['steps_per_second']:.2f} steps/s, {r['steps_per_second'] * args.batch:.1f} clips/s "
              f"(global batch {args.batch}); the main process holds {r['held']:,} parameters, its peak RSS over "
              f"the steps {r['peak_rss_mb']:.0f} MB")
    print(f"ratio 2 / 1 processes: {two['steps_per_second'] / one['steps_per_second']:.2f}x "
          f"(ideal 2.0 with twice the hardware; these processes share {os.cpu_count()} cores)")
    megabytes = one["parameters"] * 4 / 2**20
    print(f"gradient all-reduced every step: {one['parameters']:,} parameters = {megabytes:.1f} MB fp32; gloo "
          f"between the 2 processes: {two['allreduce_seconds'] * 1000:.1f} ms per all-reduce "
          f"({two['allreduce_seconds'] * two['steps_per_second'] * 100:.0f}% of a 2-process step)")
    print(f"ratio 2 sharded (fsdp) / 2 DDP processes: {sharded['steps_per_second'] / two['steps_per_second']:.2f}x "
          f"(each sharded process holds half the weights and AdamW state and gathers each block's weights "
          f"twice a step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
