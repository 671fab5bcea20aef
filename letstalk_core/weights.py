"""Reading a weight file: the one way the package opens safetensors and torch files.

``.safetensors`` through safetensors (tensors and the string metadata); ``.pt``, ``.pth``, ``.ckpt`` and
``.bin`` through ``torch.load(weights_only=True)``, so a pickle that would run code is refused, never
executed. Every error names the file, what it was read as, and what is accepted. Low layer: imports
nothing from the package.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["TORCH_SUFFIXES", "WEIGHT_SUFFIXES", "WeightFileError", "read_safetensors", "read_torch_file", "read_weights"]

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES


class WeightFileError(ValueError):
    """A weight file is missing pieces, damaged, of an unknown kind, or would run code when unpickled."""


def read_weights(path: str | os.PathLike, what: str = "weight file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A flat state dict and its metadata: ``({name: tensor}, {key: str})`` (torch files have no metadata).

    A torch file may hold the state dict itself or ``{"state_dict": {...}}`` (as Lightning writes).
    ``what`` names the file in messages (``"VAE file"``, ``"audio encoder file"``).
    """
    path = _existing(path, what)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path, what)
    if suffix not in TORCH_SUFFIXES:
        raise WeightFileError(f"{what} '{path}' has the unsupported file type '{path.suffix}'; accepted: "
                              f"{', '.join(WEIGHT_SUFFIXES)}")
    payload = read_torch_file(path, what)
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload:
        raise WeightFileError(f"{what} '{path}' holds a {type(payload).__name__}, not a state dict of tensors "
                              "(or a dict with one under 'state_dict')")
    bad = [key for key, value in payload.items() if not isinstance(key, str) or not torch.is_tensor(value)]
    if bad:
        raise WeightFileError(f"{what} '{path}' is not a flat state dict of tensors: {len(bad)} entries are not "
                              f"(e.g. {bad[:3]})")
    return dict(payload), {}


def read_safetensors(path: str | os.PathLike, what: str = "weight file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a safetensors file (whatever its name) and its string metadata."""
    from safetensors import safe_open

    path = _existing(path, what)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise WeightFileError(f"{what} '{path}' is not a readable safetensors file ({_first_line(error)})") from None
    return state, metadata


def read_torch_file(path: str | os.PathLike, what: str = "weight file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, whatever the file holds (tensors, containers,
    plain values), with errors that name the file: the reader of the authors' checkpoints and of the
    trainer's own state files."""
    path = _existing(path, what)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightFileError(
            f"{what} '{path}': refused to load: the pickle references code or objects that are not plain tensors "
            f"and containers, and loading it could run code ({_first_line(error)}). Only weights-only files are "
            "accepted") from None
    except Exception as error:  # a truncated or foreign file: zip, EOF and runtime errors alike
        raise WeightFileError(f"{what} '{path}' is not a readable torch file ({_first_line(error)}); accepted: "
                              f"{', '.join(WEIGHT_SUFFIXES)} files of tensors") from None


def _existing(path: str | os.PathLike, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    if path.is_dir():
        raise WeightFileError(f"{what} '{path}' is a folder; give the weight file itself")
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
