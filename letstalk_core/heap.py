"""One process-wide memory setting for CPU inference, made by the process that wants it.

:func:`keep_working_buffers_on_heap` is called once by the command line (``python -m letstalk_core``)
and the benchmarks at start, and by the ComfyUI sampler node before its first CPU sampling; the
model's ``forward`` never touches the allocator. A library user who runs many CPU forwards in a process of
their own may call it too.
"""

from __future__ import annotations

import torch

__all__ = ["keep_working_buffers_on_heap", "heap_prepared"]

# glibc's largest dynamic mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit) is 32 MiB
_PROBE_BYTES = 30 * 2**20
_prepared = False


def keep_working_buffers_on_heap() -> None:
    """Once per process: allocate and free one untouched 30 MiB buffer.

    glibc serves large allocations with mmap until a freed mmapped block raises its "dynamic"
    threshold to that block's size (at most 32 MiB); it then also returns heap memory to the system
    whenever more than twice that lies free at the top of the heap. The chunked CPU inference path's
    buffers (up to ~13 MiB for an S model) leave the threshold near 13 MiB, so the heap is trimmed and
    regrown inside every forward: ~130k minor page faults and ~0.3 s of system time per
    Litecatlong-S forward at 512 px on the 2-core test machine. After this one free the threshold is
    30 MiB and those buffers stay on the heap (0-400 faults per forward on the main thread; 6-12k in
    a worker thread, as ComfyUI runs prompts, whose malloc arena behaves a little differently); at
    most ~60 MiB of freed heap is kept. This is glibc's own adaptation, reached at once instead of
    never: no allocator setting is changed, and elsewhere (other C libraries, a threshold already
    higher or fixed by the process) it does nothing. The pages are never touched: microseconds.
    """
    global _prepared
    if not _prepared:
        _prepared = True
        torch.empty(_PROBE_BYTES, dtype=torch.uint8)  # freed at once: its free raises the threshold


def heap_prepared() -> bool:
    """Whether :func:`keep_working_buffers_on_heap` ran in this process."""
    return _prepared
