"""Whisper encoder features (the audio encoder of EchoMimic, Sonic and LatentSync).

Audio is cut into whisper's fixed windows (30 s for released models: ``max_source_positions`` tokens
at 50 Hz), each turned into a log-mel spectrogram by transformers' ``WhisperFeatureExtractor``
(the last window padded with silence) and encoded on its own, so memory does not grow with length.
The states of every layer (the embedding output followed by each transformer layer, the last one
after the encoder's final LayerNorm, as transformers 4.x ``hidden_states``; ``encoder_layers + 1``
in all) are resampled from 50 Hz to the video frame rate by linear interpolation at frame centres:
token ``k`` is centred at ``k / 50`` s, video frame ``j`` at ``(j + 0.5) / fps`` s.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .encoder_base import AudioEncoder
from .frames import centre_positions, lerp_rows

TOKENS_PER_SECOND = 50  # 100 Hz mel frames, halved by the second conv


class WhisperAudioEncoder(AudioEncoder):
    kind = "whisper"

    def __init__(self, encoder, feature_extractor, *, source: str = "whisper", include_embedding_layer: bool = True):
        super().__init__(source)
        self.encoder = encoder.eval()
        self.feature_extractor = feature_extractor
        self.include_embedding_layer = bool(include_embedding_layer)
        self.tokens_per_window = int(encoder.config.max_source_positions)
        self.window_samples = self.tokens_per_window * self.sample_rate // TOKENS_PER_SECOND
        if feature_extractor.n_samples != self.window_samples:
            raise ValueError(
                f"whisper feature extractor windows of {feature_extractor.n_samples} samples do not match the encoder's "
                f"{self.tokens_per_window} positions ({self.window_samples} samples)"
            )

    @property
    def num_layers(self) -> int:
        return int(self.encoder.config.encoder_layers) + (1 if self.include_embedding_layer else 0)

    @property
    def feature_dim(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def weights(self) -> torch.nn.Module:
        return self.encoder

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def _encode(self, samples: torch.Tensor, pad_samples: int, fps, num_frames: int) -> torch.Tensor:
        waveform = F.pad(samples, (0, pad_samples))  # [T]
        num_windows = max(1, math.ceil(waveform.shape[0] / self.window_samples))
        num_tokens = num_windows * self.tokens_per_window
        positions = centre_positions(TOKENS_PER_SECOND, fps, 0, num_frames, num_tokens)  # [F]
        features = torch.empty(num_frames, self.num_layers, self.feature_dim)  # [F, L, D]
        carry, done = None, 0
        for window in range(num_windows):
            piece = waveform[window * self.window_samples : (window + 1) * self.window_samples]
            states = self._window_states(piece)  # [P, L, D]
            first_token = window * self.tokens_per_window
            block, base = (states, first_token) if carry is None else (torch.cat([carry, states]), first_token - 1)
            if window == num_windows - 1:
                upto = num_frames
            else:  # frames whose right neighbour token is still in this window
                upto = int(torch.searchsorted(positions, float(first_token + self.tokens_per_window - 1)))
            if upto > done:
                features[done:upto] = lerp_rows(block, positions[done:upto], base)
                done = upto
            carry = states[-1:]
        return features

    def _window_states(self, piece: torch.Tensor) -> torch.Tensor:
        """One window of at most ``window_samples`` samples -> every layer's states ``[P, L, D]``."""
        mel = self.feature_extractor(
            piece.numpy().astype(np.float32), sampling_rate=self.sample_rate, return_tensors="pt"
        ).input_features  # [1, n_mels, 2P]
        param = next(self.encoder.parameters())
        states: list[torch.Tensor] = []
        layers = self.encoder.layers

        def keep_input(_module, args):
            states.append(args[0])

        def keep_output(_module, _inputs, output):
            states.append(output[0] if isinstance(output, tuple) else output)

        hooks = [layers[0].register_forward_pre_hook(keep_input)] if self.include_embedding_layer else []
        hooks += [layer.register_forward_hook(keep_output) for layer in layers[:-1]]
        try:
            last = self.encoder(mel.to(param.device, param.dtype)).last_hidden_state  # [1, P, D]
        finally:
            for hook in hooks:
                hook.remove()
        states.append(last)
        return torch.stack(states, dim=2)[0].float().cpu()  # [P, L, D]
