"""Audio conditioning benchmark: wav2vec2-base-sized encoder (random weights) on speech-like audio.

Prints, measured in this run on this machine:
* real-time factor (seconds of compute per second of audio) of our encoding (chunked, aligned to 25 fps)
  next to the model's own plain forward (one pass at 50 Hz, all hidden states) and the Hallo-style single
  pass (interpolated to 25 fps, no chunking), and their ratios;
* peak resident memory while encoding, in fresh subprocesses, for 10 s and 60 s of audio (and 120 s for ours),
  and the working memory: that peak less the memory before encoding and less the output tensor, which
  holds the result and so must grow with the audio (an hour of a base model at 25 fps is 3.3 GB);
* the "phones" encoder: seconds of pocketsphinx phone decoding per second of speech (target <= 0.1, i.e.
  1 s per 10 s of speech), and of the whole phones encoder, next to the mel encoder on the same audio, on
  the speech-like signal and, when ``../shared/footage/grid`` is there, on real speech (GRID sentences).

Usage: .venv/bin/python bench/audio.py [--seconds 60] [--repeats 3] [--threads N] [--phones-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from letstalk_core.audio import Wav2Vec2AudioEncoder, load_audio, load_audio_encoder  # noqa: E402

GRID = Path(__file__).resolve().parents[1].parent / "shared" / "footage" / "grid" / "s1"

SR = 16_000


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    envelope = np.abs(np.sin(2 * np.pi * 3.1 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.13 * t))
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voice = np.sin(2 * np.pi * np.cumsum(pitch) / SR) + 0.4 * np.sin(4 * np.pi * np.cumsum(pitch) / SR)
    return (envelope * (0.3 * voice + 0.05 * rng.standard_normal(t.shape))).astype(np.float32)


def base_model():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    return Wav2Vec2Model(Wav2Vec2Config()).eval()  # wav2vec2-base sizes: 12 x 768, group-norm CNN


def run(mode: str, model, audio) -> torch.Tensor:
    if mode == "ours":
        return Wav2Vec2AudioEncoder(model).encode(audio, 25)  # [F, 12, 768]
    if mode == "single_pass":
        return Wav2Vec2AudioEncoder(model, chunk_seconds=1e9).encode(audio, 25)
    with torch.inference_mode():  # plain: the model's own forward on the same samples
        out = model(audio.samples[None], output_hidden_states=True)
    return torch.stack(out.hidden_states[1:], dim=2)[0]  # [N, 12, 768] at 50 Hz


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(mode: str, seconds: float) -> None:
    model = base_model()
    audio = load_audio(speech_like(seconds), SR)
    # Reset the peak-RSS mark (Linux clear_refs "5") so that the peak belongs to the encoding alone.
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mib("VmRSS")
    features = run(mode, model, audio)
    peak = _status_mib("VmHWM")
    print(json.dumps({"before_mib": before, "peak_mib": peak,
                      "output_mib": features.numel() * features.element_size() / 2**20}))


def grid_speech(max_seconds: float):
    """Real speech: GRID sentences joined end to end, up to ``max_seconds``; None without the footage."""
    clips = sorted(GRID.glob("*.mpg")) if GRID.is_dir() else []
    pieces, total = [], 0.0
    for clip in clips:
        audio = load_audio(clip)
        pieces.append(audio.samples)
        total += audio.seconds
        if total >= max_seconds:
            break
    return load_audio(torch.cat(pieces).numpy(), SR) if pieces else None


def best_of(repeats: int, function) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds (this process, all threads) of ``repeats`` calls: on a shared
    machine the CPU time is the one that does not grow with the others' load."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return min(walls), min(cpus)


def phones_cost(seconds: float, repeats: int, wav2vec2_rtf: float | None = None) -> None:
    """Seconds of compute per second of speech: the phone decoder, the phones encoder, the mel encoder."""
    phones, mel = load_audio_encoder("phones"), load_audio_encoder("mel")
    phones.encode(load_audio(speech_like(2.0), SR), 25)  # warm-up (loads the acoustic model)
    inputs = [("speech-like", load_audio(speech_like(seconds), SR))]
    real = grid_speech(seconds)
    if real is not None:
        inputs.append((f"GRID s1 ({real.seconds:.0f} s of real speech)", real))
    else:
        print(f"(no real speech: {GRID} is not there; the speech-like signal only)")
    for name, audio in inputs:
        decode, decode_cpu = (t / audio.seconds for t in best_of(repeats, lambda: phones.decoder.segments(audio.samples)))
        encode, encode_cpu = (t / audio.seconds for t in best_of(repeats, lambda: phones.encode(audio, 25)))
        mel_rtf, mel_cpu = (t / audio.seconds for t in best_of(repeats, lambda: mel.encode(audio, 25)))
        print(f"phones on {name}: decoding {decode:.4f} s wall ({decode_cpu:.4f} s CPU) per s of speech = "
              f"{10 * decode:.2f} s wall / {10 * decode_cpu:.2f} s CPU per 10 s (target <= 1); whole encoder "
              f"{encode:.4f} wall ({encode_cpu:.4f} CPU); mel encoder {mel_rtf:.4f} wall ({mel_cpu:.4f} CPU): "
              f"phones / mel = {encode / mel_rtf:.1f} wall, {encode_cpu / mel_cpu:.1f} CPU"
              + ("" if wav2vec2_rtf is None else f"; phones / wav2vec2-base (ours above) = {encode / wav2vec2_rtf:.3f} wall"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", choices=["ours", "single_pass", "plain"])
    parser.add_argument("--phones-only", action="store_true", help="only the phones encoder's cost (and mel's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.seconds)
        return
    if args.phones_only:
        phones_cost(args.seconds, args.repeats)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; timings are noisy on a shared CPU")
    model = base_model()
    audio = load_audio(speech_like(args.seconds), SR)
    run("ours", model, load_audio(speech_like(2.0), SR))  # warm-up
    times = {"plain": [], "ours": [], "single_pass": []}
    for _ in range(args.repeats):  # interleaved, so load from other processes hits every mode alike
        for mode in times:
            start = time.perf_counter()
            run(mode, model, audio)
            times[mode].append(time.perf_counter() - start)
    best = {mode: min(values) for mode, values in times.items()}
    median = {mode: float(np.median(values)) for mode, values in times.items()}
    for mode in times:
        print(f"{mode:12s} real-time factor best {best[mode] / args.seconds:.4f}, median {median[mode] / args.seconds:.4f}"
              f" over {args.repeats} runs")
    print(f"ours / plain forward       = {best['ours'] / best['plain']:.3f} best, {median['ours'] / median['plain']:.3f} median"
          "  (target <= 1.15)")
    print(f"ours / single pass (Hallo) = {best['ours'] / best['single_pass']:.3f} best, "
          f"{median['ours'] / median['single_pass']:.3f} median")
    phones_cost(args.seconds, args.repeats, wav2vec2_rtf=best["ours"] / args.seconds)

    print("peak RSS in fresh subprocesses (MiB): mode, seconds, RSS before encoding, peak while encoding, output tensor")
    peaks = {}
    for mode, lengths in (("ours", (10.0, 60.0, 120.0)), ("plain", (10.0, 60.0))):
        for seconds in lengths:
            command = [sys.executable, __file__, "--child", mode, "--seconds", str(seconds), "--threads", str(args.threads)]
            # A fixed mmap threshold: glibc otherwise raises it after each large free and keeps freed
            # tensors in its heap, so the peak RSS of identical runs varied by 100 MiB (165..258 MiB at
            # 60 s); with it, freed tensors go back to the system and the peak follows live memory.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
            result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            info = json.loads(result.stdout.strip().splitlines()[-1])
            peaks[mode, seconds] = info
            print(f"  {mode:6s} {seconds:4.0f} s  {info['before_mib']:8.0f} {info['peak_mib']:8.0f} {info['output_mib']:8.1f}")
    working = {key: info["peak_mib"] - info["before_mib"] - info["output_mib"] for key, info in peaks.items()}
    for mode in ("ours", "plain"):
        print(f"{mode}: working memory (extra peak less the output tensor) {working[mode, 10.0]:.0f} MiB at 10 s, "
              f"{working[mode, 60.0]:.0f} MiB at 60 s: ratio 60 s / 10 s = {working[mode, 60.0] / working[mode, 10.0]:.2f}")
    print(f"ours: working memory at 120 s {working['ours', 120.0]:.0f} MiB; "
          f"target: 60 s / 10 s <= 1.15 (flat), the output [F, L, D] itself grows with the audio by nature")

if __name__ == "__main__":
    main()
