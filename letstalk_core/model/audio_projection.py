"""Audio projection: a window of audio-encoder hidden states per video frame -> M audio tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class AudioProjection(ModelMixin, ConfigMixin):
    """Per frame, flattens ``window_size x num_layers x feature_dim`` features and maps them through
    Linear-ReLU-Linear-ReLU-Linear to ``num_tokens`` tokens of ``output_dim``, then LayerNorm.

    ``input_features`` is ``num_layers * feature_dim`` (``num_layers``/``feature_dim`` may be None when
    only their product is known, e.g. for an imported checkpoint of an unusual encoder).
    """

    @register_to_config
    def __init__(
        self,
        window_size: int = 5,
        input_features: int = 12 * 768,
        num_layers: int | None = 12,
        feature_dim: int | None = 768,
        intermediate_dim: int = 512,
        num_tokens: int = 32,
        output_dim: int = 768,
    ):
        super().__init__()
        for name, value in (("window_size", window_size), ("input_features", input_features),
                            ("intermediate_dim", intermediate_dim), ("num_tokens", num_tokens),
                            ("output_dim", output_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"AudioProjection {name} must be a positive integer, got {value!r}")
        if num_layers is not None and feature_dim is not None and num_layers * feature_dim != input_features:
            raise ValueError(
                f"AudioProjection input_features={input_features} does not equal num_layers x feature_dim "
                f"= {num_layers} x {feature_dim}"
            )
        self.input_proj = nn.Linear(window_size * input_features, intermediate_dim)
        self.hidden_proj = nn.Linear(intermediate_dim, intermediate_dim)
        self.token_proj = nn.Linear(intermediate_dim, num_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows ``[B, F, window, L, D]`` -> audio tokens ``[B, F, M, Dout]``."""
        cfg = self.config
        if windows.ndim != 5 or windows.shape[2] != cfg.window_size or windows.shape[3] * windows.shape[4] != cfg.input_features:
            expected_l = cfg.num_layers if cfg.num_layers is not None else "L"
            expected_d = cfg.feature_dim if cfg.feature_dim is not None else "D"
            raise ValueError(
                f"audio windows must be [B, F, {cfg.window_size}, {expected_l}, {expected_d}] with L x D = "
                f"{cfg.input_features}; got shape {tuple(windows.shape)}"
            )
        batch, frames = windows.shape[:2]
        x = windows.to(self.input_proj.weight.dtype).reshape(batch * frames, -1)  # [B*F, window*L*D]
        x = F.relu(self.input_proj(x))
        x = F.relu(self.hidden_proj(x))
        tokens = self.token_proj(x).view(batch * frames, cfg.num_tokens, cfg.output_dim)  # [B*F, M, Dout]
        return self.norm(tokens).view(batch, frames, cfg.num_tokens, cfg.output_dim)
