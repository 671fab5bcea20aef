"""How much of the head a face crop shows where neither the caller nor a checkpoint says. Kept free of
torch, so that the command lines can show it in their help without loading anything."""

from __future__ import annotations

# Fraction of the face size added on every side of the face box (0.5: the crop is twice the face). What
# `prepare` crops training frames with unless told otherwise, and what a portrait is framed with (by the
# pipeline, the nodes and `evaluate --videos`) for a checkpoint that does not record the margin of its
# training frames; a checkpoint that records it is framed with its own (``pipeline.crop_margin``).
DEFAULT_CROP_MARGIN = 0.5
