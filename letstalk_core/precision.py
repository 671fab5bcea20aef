"""The weights' precision by name (``generate --precision``, the loader node's widget): ``auto``, ``fp32``,
``bf16``, ``fp16``, and what a device can run.

``auto`` is float32 on a CPU (bf16 runs there too, a little faster, and fp16 about three times slower than
float32 on this project's 2-core machine) and on a GPU bf16 where the GPU supports it, else fp16. A named
precision the device cannot run falls back, bf16 -> fp16 -> fp32, with a note saying so, instead of a crash.
The names are importable without torch (argument parsing stays light); torch is imported where a dtype is made.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

PRECISION_NAMES = ("fp32", "bf16", "fp16")
PRECISION_CHOICES = ("auto", *PRECISION_NAMES)
PRECISION_HELP = ("weights precision: auto (fp32 on a CPU; on a GPU bf16 where supported, else fp16), fp32, bf16 or "
                  "fp16; one the device cannot run falls back (bf16 -> fp16 -> fp32) with a line saying so")
_FALLBACK = {"bf16": ("fp16", "fp32"), "fp16": ("fp32",), "fp32": ()}


def dtype_of(name: str) -> "torch.dtype":
    """The torch dtype of a precision name (fp32, bf16, fp16)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def precision_name(dtype: "torch.dtype") -> str:
    return next((name for name in PRECISION_NAMES if dtype_of(name) == dtype), str(dtype))


@lru_cache(maxsize=None)
def _runs(dtype: "torch.dtype", device: str) -> bool:
    """Whether ``device`` computes what the model does (a linear layer, layer norm, softmax, a convolution)
    in ``dtype``, with finite results."""
    import torch

    try:
        x = torch.linspace(-1.0, 1.0, 64, device=device).view(4, 16).to(dtype)
        y = torch.nn.functional.linear(x, x)  # [4, 4]
        y = torch.nn.functional.layer_norm(y, (4,)).softmax(dim=-1)
        z = torch.nn.functional.conv2d(x.view(1, 1, 4, 16), x[:1, :9].reshape(1, 1, 3, 3).contiguous(), padding=1)
        return bool(torch.isfinite(y.float()).all()) and bool(torch.isfinite(z.float()).all())
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def device_runs(dtype: "torch.dtype", device) -> bool:
    """Whether ``device`` can run the model in ``dtype`` (tried once per device and dtype)."""
    import torch

    return _runs(dtype, str(torch.device(device)))


def check_precision(name) -> str:
    """``name`` when it is one of :data:`PRECISION_CHOICES`, else a ValueError naming the choices."""
    if not isinstance(name, str) or name.strip().lower() not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {name!r}")
    return name.strip().lower()


def auto_dtype(device) -> "torch.dtype":
    """``auto``: float32 on a CPU; on CUDA bf16 where supported, else fp16."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_precision(name, device="cpu", auto: Optional["torch.dtype"] = None) -> tuple["torch.dtype", Optional[str]]:
    """The dtype to load the weights in for precision ``name`` on ``device``, and a note when a named precision
    could not run there and another was taken (None otherwise). ``auto``: the dtype "auto" means (default
    :func:`auto_dtype`; ComfyUI passes its own choice)."""
    import torch

    name = check_precision(name)
    wanted = (auto or auto_dtype(device)) if name == "auto" else dtype_of(name)
    if device_runs(wanted, device):
        return wanted, None
    for fallback in _FALLBACK.get(precision_name(wanted), ("bf16", "fp16", "fp32")):  # e.g. ComfyUI's fp8 flags
        if device_runs(dtype_of(fallback), device):
            return dtype_of(fallback), (f"precision {name} ({precision_name(wanted)}) cannot run on "
                                        f"{torch.device(device)}; using {fallback} instead")
    raise RuntimeError(f"{torch.device(device)} runs none of fp32, bf16, fp16")
