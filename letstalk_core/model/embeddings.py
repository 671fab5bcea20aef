"""Fixed sin-cos position tables (MAE/DiT style), computed for any grid or length."""

from __future__ import annotations

import torch


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos table of ``positions`` (any shape, flattened): ``[P, embed_dim]`` in float64,
    sines in the first half, cosines in the second."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # [D/2]
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # [P, D/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # [P, D]


def spatial_table(embed_dim: int, grid_height: int, grid_width: int) -> torch.Tensor:
    """2D table for a ``grid_height x grid_width`` token grid in row-major token order:
    ``[grid_height * grid_width, embed_dim]`` float64. The first half of the channels encodes the
    column index, the second half the row index (the layout of the MAE/DiT table, so a square grid
    gives exactly the table stored in the authors' checkpoints)."""
    if embed_dim % 4:
        raise ValueError(f"2D sin-cos embedding width must be a multiple of 4, got {embed_dim}")
    rows = torch.arange(grid_height, dtype=torch.float64)[:, None].expand(grid_height, grid_width)
    cols = torch.arange(grid_width, dtype=torch.float64)[None, :].expand(grid_height, grid_width)
    return torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)


def temporal_table(embed_dim: int, length: int) -> torch.Tensor:
    """1D table over frame indices ``0..length-1``: ``[length, embed_dim]`` float64."""
    return sincos_1d(embed_dim, torch.arange(length, dtype=torch.float64))
