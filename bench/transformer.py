"""Speed of one LetsTalk transformer forward on this machine's CPU (not a test).

Times one float32 forward under torch.no_grad of
  * VDTcatlong-S/2 at 256 px (latent 4x32x32), 16 frames, 2 memory frames, batch 1
  * Litecatlong-S at 512 px (latent 32x16x16), 16 frames, 2 memory frames, batch 1
counts the FLOPs analytically (matmuls, attention, convolutions; elementwise work not counted) and
prints the achieved GFLOP/s as a fraction of the machine's own float32 matmul rate, measured in the
same run with a large torch.mm. Peak memory is the resident-set growth during the forward.
Also checks that the same code still matches the authors' fixture outputs, and times the model's other
``inference_path``, "blocks" (the same block code on the whole batch, unchunked), against the chunked one
in adjacent pairs: the ratio says whether the chunked switch still wins on this machine.

    .venv/bin/python bench/transformer.py [--repeats 3] [--threads N]

The forward runs the model's inference path: chunks of ~2048 tokens (small enough that glibc reuses
the working buffers instead of mapping fresh pages for each block, once
``keep_working_buffers_on_heap`` ran first, as the command line and the ComfyUI sampler node do) and, for float32 on the CPU,
oneDNN linears with the bias fused in. Compare ``--threads 1`` with the default: on a shared machine
each parallel region can wait for a busy core, so more threads is not always faster.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from letstalk_core.heap import keep_working_buffers_on_heap  # noqa: E402
from letstalk_core.model import LetsTalkTransformer, transformer_config  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "official_letstalk"  # the ground truth committed with the tests


def forward_flops(config: dict, batch: int, frames: int, memory_frames: int, height: int, width: int,
                  audio_tokens: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward."""
    d, p, c = config["hidden_size"], config["patch_size"], config["in_channels"]
    ff = int(d * config["mlp_ratio"])
    da = config["audio_dim"]
    n = (height // p) * (width // p)
    t = memory_frames + frames
    joint = 2 * n
    video = frames * n
    per_block = 2 * d * 6 * d  # modulation
    # temporal attention over t frames at n positions: qkv, scores + weighted sum, out, temporal_out
    per_block += 2 * t * n * d * 3 * d + 4 * n * t * t * d + 2 * 2 * t * n * d * d
    # audio cross-attention: q, k and v of the audio tokens, scores + weighted sum, out
    per_block += 2 * video * d * d + 2 * 2 * frames * audio_tokens * da * d + 4 * video * audio_tokens * d
    per_block += 2 * video * d * d
    # spatial attention over 2n tokens per frame
    per_block += 2 * frames * joint * d * 3 * d + 2 * frames * joint * d * d
    if config["variant"] == "lite":
        head = config["linear_head_dim"]
        per_block += 2 * 2 * frames * joint * d * head + 2 * frames * joint * d  # kv, numerator, denominator
        per_block += 2 * video * d * 2 * ff + 2 * video * 2 * ff * 9 + 2 * video * ff * d  # GLUMBConv
    else:
        per_block += 4 * frames * joint * joint * d  # softmax scores + weighted sum
        per_block += 2 * 2 * frames * joint * d * ff  # MLP on video and portrait tokens
    total = config["depth"] * per_block
    total += 2 * (frames + memory_frames + 1) * n * c * p * p * d  # patch embedding
    total += 2 * 256 * d + 2 * d * d + 2 * d * 2 * d  # timestep embedding, final modulation
    total += 2 * video * d * p * p * 2 * c  # final projection
    return batch * total


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 torch.mm GFLOP/s on this machine."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


class PeakMemory:
    """Peak resident-set growth (bytes) while the block runs, sampled every 2 ms."""

    def __init__(self):
        self.process = psutil.Process()
        self.peak = 0

    def __enter__(self):
        self.base = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss - self.base)


def bench_model(name: str, config: dict, height: int, width: int, frames: int, memory_frames: int,
                repeats: int) -> None:
    """Alternates a matmul-rate measurement with each timed forward, so that both see the same load
    on this shared machine; the ratio of each pair is reported."""
    torch.manual_seed(0)
    model = LetsTalkTransformer(**config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # the official init zeroes some layers; use generic weights
            parameter.normal_(0, 0.02)
    c = config["in_channels"]
    latents = torch.randn(1, frames, c, height, width)  # [B, F, C, H, W]
    timestep = torch.tensor([500])  # [B]
    portrait = torch.randn(1, c, height, width)  # [B, C, H, W]
    audio = torch.randn(1, frames, 32, config["audio_dim"])  # [B, F, M, Da]
    memory = torch.randn(1, memory_frames, c, height, width)  # [B, K, C, H, W]
    flops = forward_flops(config, 1, frames, memory_frames, height, width, 32)
    times, rates, faults = [], [], []
    with torch.no_grad():
        model(latents, timestep, portrait, audio, memory)  # warm-up
        with PeakMemory() as memory_probe:
            for _ in range(repeats):
                rates.append(matmul_rate(repeats=3))
                faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                model(latents, timestep, portrait, audio, memory)
                times.append(time.perf_counter() - start)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
    ratios = sorted(flops / t / 1e9 / r for t, r in zip(times, rates))
    best = min(times)
    path_ratios = []  # "blocks" / "chunked" forward time, adjacent pairs
    with torch.no_grad():
        for _ in range(repeats):
            times_by_path = {}
            for path in ("blocks", "chunked"):
                model.inference_path = path
                start = time.perf_counter()
                model(latents, timestep, portrait, audio, memory)
                times_by_path[path] = time.perf_counter() - start
            path_ratios.append(times_by_path["blocks"] / times_by_path["chunked"])
    model.inference_path = "auto"
    path_ratios.sort()
    print(f"{name}: {flops / 1e9:.1f} GFLOP; forward best {best:.2f} s / median {sorted(times)[len(times) // 2]:.2f} s "
          f"of {repeats} = {flops / best / 1e9:.1f} GFLOP/s; matmul best {max(rates):.1f} GFLOP/s")
    print(f"  achieved / matmul rate: best forward vs best matmul {flops / best / 1e9 / max(rates):.2f}; "
          f"per adjacent pair median {ratios[len(ratios) // 2]:.2f}, max {ratios[-1]:.2f}; "
          f"peak memory +{memory_probe.peak / 2**20:.0f} MiB; minor page faults per forward: median "
          f"{sorted(faults)[len(faults) // 2]}")
    print(f"  inference_path 'blocks' / 'chunked' forward time per adjacent pair: median "
          f"{path_ratios[len(path_ratios) // 2]:.2f}, min {path_ratios[0]:.2f} (above 1: chunked is faster here)")


def fixture_check() -> None:
    """The benchmarked code path must still reproduce the authors' outputs."""
    from safetensors.torch import load_file

    from letstalk_core.checkpoints import load_official_checkpoint

    fixtures = FIXTURES
    for variant, heads in (("VDTcatlong", 4), ("Litecatlong", 2)):
        model, _, _ = load_official_checkpoint(fixtures / f"{variant}.ckpt", num_heads=heads)
        io = load_file(fixtures / f"{variant}_io.safetensors")
        with torch.no_grad():
            out = model(io["x"], io["t"], io["ref_latent"], io["audio_tokens"], io["motion"])
        print(f"fixture {variant}: max abs error vs the authors' output {(out - io['out_ema']).abs().max().item():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_working_buffers_on_heap()  # as the command line does at start
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
          "(shared machine: timings are noisy)")
    fixture_check()
    bench_model("VDTcatlong-S/2 256px (latent 4x32x32, 16+2 frames)", transformer_config("vdt_long", "S"),
                32, 32, 16, 2, args.repeats)
    bench_model("Litecatlong-S 512px (latent 32x16x16, 16+2 frames)", transformer_config("lite", "S"),
                16, 16, 16, 2, args.repeats)


if __name__ == "__main__":
    main()
