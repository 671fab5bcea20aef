"""Checkpoints: the safe importer of the authors' files and the project's safetensors format."""

from .errors import CheckpointError
from .native import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LetsTalkCheckpoint,
    convert_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .official import load_official_checkpoint

__all__ = [
    "CheckpointError",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LetsTalkCheckpoint",
    "convert_checkpoint",
    "load_checkpoint",
    "load_official_checkpoint",
    "save_checkpoint",
]
