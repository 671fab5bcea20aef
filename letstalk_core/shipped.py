"""The models this repository ships in its ``models/`` folder, for the entry points that offer them: the
command line's defaults (``generate`` and ``evaluate`` without ``--checkpoint``) and the ComfyUI nodes'
model list. The library's functions take the checkpoint they are given and never look here. No torch
import, so the command line's help and the nodes' path registration stay light.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
# the real-face demo model (128 px, TAEF2), the default where no checkpoint is named, and the older cartoon
# model (64 px, synthetic faces only), a second choice (models/README.md)
DEMO_CHECKPOINT = SHIPPED_MODELS_DIR / "letstalk-demo.safetensors"
CARTOON_CHECKPOINT = SHIPPED_MODELS_DIR / "letstalk-cartoon64.safetensors"


def checkpoint_or_demo(checkpoint: str | Path | None) -> str | Path:
    """``checkpoint`` when one is named, else the shipped demo model (refused when it is missing)."""
    if checkpoint is not None:
        return checkpoint
    if not DEMO_CHECKPOINT.is_file():
        raise FileNotFoundError(f"no checkpoint given and the shipped demo model {DEMO_CHECKPOINT} is missing "
                                "(restore it with git, or name one with --checkpoint)")
    return DEMO_CHECKPOINT
