"""The error raised for a checkpoint that cannot be read."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is unsafe, of an unknown format, or does not match the model it describes.
    The message always names the file and the problem."""
