"""An auxiliary training objective that makes the audio tokens explain the mouth (``recipe.audio_mouth_loss_weight``).

Beyond the authors' recipe. The denoising loss alone lets a small model on a little footage ignore the speech:
most of what it must predict (face, hair, background) comes from the portrait and the noisy latents, and the
audio tokens start out as noise (a random projection behind a cross-attention opened from zero). This objective
asks the audio stream, per video frame, to predict how the mouth moves:

- the target: the clean latents inside the mouth box (from ``prepare``'s face landmarks), pooled to a small grid
  (:data:`MOUTH_GRID` cells of all latent channels) by bilinear sampling over the box, with each clip's mean over
  its frames removed, so that only the motion is left (who the person is cannot be heard);
- the prediction: a linear map of the frame's audio tokens (``[M, D]`` flattened), its clip mean removed alike;
- the loss: the squared error, divided by the targets' variance over the batch, so that 1 means "explains
  nothing" and 0 "explains all", whatever the codec's latent scale; samples without a mouth box or whose audio
  was dropped (condition dropout) do not count.

Its gradient reaches the audio projection (trained, not frozen, when this is on) and the head; the head is a
training companion only, kept in the resumable state, never in the bundle. The transformer then meets audio
tokens that already carry the mouth's motion, and the mouth-weighted denoising loss teaches it to use them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MOUTH_GRID = (2, 3)  # rows x columns of the pooled mouth box: open/closed, and the corners


def mouth_grid(latents: torch.Tensor, mouth_box: torch.Tensor, grid: tuple[int, int] = MOUTH_GRID) -> torch.Tensor:
    """The latents inside each clip's mouth box, bilinearly pooled to ``grid``: ``[B, F, C, h, w]`` and
    ``mouth_box [B, 4]`` (fractions top, bottom, left, right) -> ``[B, F, C * rows * cols]``."""
    batch, frames, channels, height, width = latents.shape
    top, bottom, left, right = (mouth_box[:, i].to(latents) for i in range(4))  # each [B]
    rows, cols = grid
    # cell centres of the pooled grid inside the box, in grid_sample's -1..1 coordinates (align_corners=False)
    fy = (torch.arange(rows, dtype=latents.dtype, device=latents.device) + 0.5) / rows  # [rows]
    fx = (torch.arange(cols, dtype=latents.dtype, device=latents.device) + 0.5) / cols  # [cols]
    y = (top[:, None] + (bottom - top)[:, None] * fy) * 2 - 1  # [B, rows]
    x = (left[:, None] + (right - left)[:, None] * fx) * 2 - 1  # [B, cols]
    where = torch.stack([x[:, None, :].expand(-1, rows, -1), y[:, :, None].expand(-1, -1, cols)], dim=-1)  # [B, r, c, 2]
    where = where[:, None].expand(-1, frames, -1, -1, -1).reshape(batch * frames, rows, cols, 2)
    pooled = F.grid_sample(latents.reshape(batch * frames, channels, height, width), where, mode="bilinear",
                           padding_mode="border", align_corners=False)  # [B*F, C, rows, cols]
    return pooled.reshape(batch, frames, channels * rows * cols)


class AudioMouthHead(nn.Module):
    """A frame's audio tokens ``[B, F, M, D]`` -> its predicted mouth grid ``[B, F, K]`` (one linear map)."""

    def __init__(self, num_tokens: int, token_dim: int, target_dim: int):
        super().__init__()
        self.proj = nn.Linear(num_tokens * token_dim, target_dim)
        nn.init.zeros_(self.proj.bias)

    def forward(self, audio_tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(audio_tokens.flatten(2).to(self.proj.weight.dtype))


def audio_mouth_loss(head: AudioMouthHead, audio_tokens: torch.Tensor, latents: torch.Tensor,
                     mouth_box: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The objective of the module docstring, a scalar (0 when no sample counts).

    ``audio_tokens [B, F, M, D]``; ``latents [B, F, C, h, w]`` (clean); ``mouth_box [B, 4]`` (NaN rows: unknown);
    ``keep [B]`` bool, the samples whose audio was not dropped."""
    counts = keep.to(latents.device) & ~torch.isnan(mouth_box).any(dim=1).to(latents.device)  # [B]
    if latents.shape[1] < 2 or not bool(counts.any()):
        # zero, with every parameter in the graph (each process's backward the same)
        return audio_tokens.sum() * 0.0 + sum(p.sum() for p in head.parameters()) * 0.0
    target = mouth_grid(latents[counts].float().detach(), mouth_box[counts].to(latents.device))  # [b, F, K]
    target = target - target.mean(dim=1, keepdim=True)
    predicted = head(audio_tokens[counts]).float()  # [b, F, K]
    predicted = predicted - predicted.mean(dim=1, keepdim=True)
    return ((predicted - target) ** 2).mean() / target.pow(2).mean().clamp_min(1e-8)
