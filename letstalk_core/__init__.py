"""LetsTalk core library: model, audio, latents, sampling, video, checkpoints, training.

This package never imports ComfyUI; the node pack in ``nodes/`` is a thin adapter over it.
"""

__version__ = "0.1.0"
