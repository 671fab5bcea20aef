"""wav2vec 2.0 features the official way (Hallo, and LetsTalk after it).

1. Feature-extractor normalisation: zero mean, unit variance over the whole utterance
   (``(x - mean) / sqrt(var + 1e-7)``, as ``Wav2Vec2FeatureExtractor(do_normalize=True)``).
2. Silence padding (for whole clips) is appended *after* normalisation, as zeros, like Hallo.
3. The CNN feature encoder runs at 50 Hz; its features are linearly interpolated with aligned
   end points (``F.interpolate(mode="linear", align_corners=True)``) to the number of video frames.
4. Feature projection and the transformer encoder then run at the video frame rate; the output of
   every transformer layer is kept (``hidden_states[1:]`` of transformers 4.x, the version the
   official code ran on): L = 12 for base models, 24 for large. For pre-LN ("stable layer norm")
   models the last layer's state is taken after the encoder's final LayerNorm, as transformers 4.x did.

Long audio runs in chunks of ``chunk_seconds`` of video frames, each with ``context_seconds`` of
extra frames on both sides that are encoded and then dropped; the CNN runs in 5 s pieces and its
frames in the overlap of two chunks are computed once. The
normalisation statistics, and for group-norm CNNs (base models) the first conv layer's per-channel
GroupNorm statistics, are measured over the whole utterance first, so everything up to the
transformer input equals one single pass (to float rounding, ~1e-6). Only the transformer sees a
bounded context (positional conv over 128 frames = 5.1 s at 25 fps, attention over the chunk), so
chunked features differ slightly from one pass over everything: on 70 s of speech-like audio with a
tiny random model (30 s chunks, 5 s context), 0.12 % relative L2 and 0.005 at most on features of
mean magnitude 0.8 (tests assert < 1 % and < 0.05); not measured with trained weights, which this
project cannot download. Memory is bounded by one chunk, plus the
``[F, L, D]`` output itself (an hour at 25 fps of a base model: 3.3 GB in float32).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .encoder_base import AudioEncoder
from .frames import align_corners_positions, chunk_ranges, lerp_rows

# Input windows of the first conv gathered per step when measuring group-norm statistics (bounds memory).
_STATS_STEP_FRAMES = 1_000_000
# CNN output frames (50 Hz) computed per piece: 5 s, about 100 MB of activations for base models.
_CNN_STEP_FRAMES = 250


class Wav2Vec2AudioEncoder(AudioEncoder):
    kind = "wav2vec2"

    def __init__(
        self,
        model,
        *,
        source: str = "wav2vec2",
        normalize_waveform: bool = True,
        chunk_seconds: float = 30.0,
        context_seconds: float = 5.0,
    ):
        super().__init__(source)
        if chunk_seconds <= 0 or context_seconds < 0:
            raise ValueError(
                f"chunk_seconds must be > 0 and context_seconds >= 0, got {chunk_seconds} and {context_seconds}"
            )
        self.model = model.eval()
        self.normalize_waveform = bool(normalize_waveform)
        self.chunk_seconds = float(chunk_seconds)
        self.context_seconds = float(context_seconds)
        config = model.config
        self._stride = math.prod(config.conv_stride)
        receptive = 1
        for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            receptive = (receptive - 1) * stride + kernel
        self._receptive_field = receptive  # 400 samples for every released wav2vec2
        self._group_norm = config.feat_extract_norm == "group"
        self._stable_layer_norm = bool(config.do_stable_layer_norm)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def weights(self) -> torch.nn.Module:
        return self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _cnn_frames(self, num_samples: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(num_samples))

    def _encode(self, samples: torch.Tensor, pad_samples: int, fps, num_frames: int) -> torch.Tensor:
        waveform = samples.to(torch.float64)
        if self.normalize_waveform:
            mean, var = waveform.mean(), waveform.var(unbiased=False)
            waveform = (waveform - mean) / torch.sqrt(var + 1e-7)
        # Silence after normalisation (Hallo pads the normalised input with zeros); at least one CNN frame.
        pad_samples = max(pad_samples, self._receptive_field - waveform.shape[0])
        waveform = F.pad(waveform, (0, pad_samples)).to(torch.float32)  # [T]
        num_cnn_frames = self._cnn_frames(waveform.shape[0])

        chunk_frames = max(1, round(self.chunk_seconds * float(fps)))
        context_frames = math.ceil(self.context_seconds * float(fps))
        chunks = chunk_ranges(num_frames, chunk_frames)
        # GroupNorm CNNs (base models) normalise the first conv over the whole utterance: measure it once.
        conv0_stats = self._conv0_statistics(waveform) if self._group_norm else None

        features = torch.empty(num_frames, self.num_layers, self.feature_dim)  # [F, L, D]
        cached, cached_first = None, 0  # CNN frames of the previous chunk, reused for the overlap
        for start, stop in chunks:
            lo, hi = max(0, start - context_frames), min(num_frames, stop + context_frames)
            positions = align_corners_positions(num_cnn_frames, num_frames, lo, hi)  # [hi - lo]
            first = int(positions[0].floor())
            last = min(int(positions[-1].ceil()), num_cnn_frames - 1)
            cached_last = cached_first + (cached.shape[0] if cached is not None else 0) - 1
            if cached is not None and cached_first <= first <= cached_last:
                fresh = self._cnn_features(waveform, cached_last + 1, last, conv0_stats) if last > cached_last else None
                cnn = cached[first - cached_first :] if fresh is None else torch.cat([cached[first - cached_first :], fresh])
            else:
                cnn = self._cnn_features(waveform, first, last, conv0_stats)  # [last - first + 1, C]
            cached, cached_first = cnn, first
            frame_inputs = lerp_rows(cnn, positions, first)  # [hi - lo, C]
            self._transformer_layers(frame_inputs, features[start:stop], start - lo)
        return features

    def _cnn_features(self, waveform: torch.Tensor, first: int, last: int, conv0_stats) -> torch.Tensor:
        """CNN frames ``first..last`` of ``waveform [T]`` -> ``[last - first + 1, C]``.

        Each CNN frame sees only its own receptive field, so the frames are computed in short pieces
        (bounded memory, same values); ``conv0_stats`` is the utterance-wide GroupNorm (mean, var) or None.
        """
        extractor = self.model.feature_extractor
        first_layer, *rest = extractor.conv_layers
        pieces = []
        for begin in range(first, last + 1, _CNN_STEP_FRAMES):
            end = min(begin + _CNN_STEP_FRAMES - 1, last)
            samples = waveform[begin * self._stride : end * self._stride + self._receptive_field]
            hidden = samples.to(self.device, self.dtype)[None, None]  # [1, 1, T_piece]
            if conv0_stats is None:
                hidden = extractor(hidden[:, 0])  # [1, C, n]
            else:
                hidden = first_layer.conv(hidden)  # [1, C, T0]
                mean, var = (s.to(self.device, self.dtype) for s in conv0_stats)
                norm = first_layer.layer_norm  # GroupNorm with one channel per group: per-channel over time
                hidden = F.batch_norm(hidden, mean, var, norm.weight, norm.bias, training=False, eps=norm.eps)
                hidden = first_layer.activation(hidden)
                for layer in rest:
                    hidden = layer(hidden)
            if hidden.shape[-1] != end - begin + 1:
                raise RuntimeError(f"CNN gave {hidden.shape[-1]} frames for samples meant to give {end - begin + 1}")
            pieces.append(hidden[0].transpose(0, 1))  # [n, C]
        return torch.cat(pieces)

    def _conv0_statistics(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and variance of the first conv's output over the whole utterance.

        The first conv is linear in its input windows, so its output moments follow from the first and
        second moments of the (k-sample) input windows: mean_c = w_c . m + b_c and
        E[y_c^2] = w_c^T S w_c + 2 b_c w_c . m + b_c^2, with m the mean window and S = E[x x^T] (k x k),
        gathered in float64 without ever materialising the 512-channel output of a long utterance.
        """
        conv = self.model.feature_extractor.conv_layers[0].conv
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        windows = waveform.unfold(0, kernel, stride)  # [M0, k], a view
        window_sum = torch.zeros(kernel, dtype=torch.float64)
        window_outer = torch.zeros(kernel, kernel, dtype=torch.float64)
        for begin in range(0, windows.shape[0], _STATS_STEP_FRAMES):
            block = windows[begin : begin + _STATS_STEP_FRAMES].double()  # [n, k]
            window_sum += block.sum(dim=0)
            window_outer += block.T @ block
        count = windows.shape[0]
        mean_window, second_moment = window_sum / count, window_outer / count  # [k], [k, k]
        weight = conv.weight.detach().double().cpu().reshape(conv.out_channels, kernel)  # [C, k]
        bias = conv.bias.detach().double().cpu() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
        mean = weight @ mean_window + bias  # [C]
        square = ((weight @ second_moment) * weight).sum(dim=1) + 2 * bias * (weight @ mean_window) + bias.square()
        var = (square - mean.square()).clamp_min(0)
        return mean.float(), var.float()

    def _transformer_layers(self, frame_inputs: torch.Tensor, out: torch.Tensor, offset: int = 0) -> None:
        """Feature projection + transformer on ``frame_inputs [N, C]``; rows ``offset .. offset + len(out)`` of
        every layer's output are written into ``out [n, L, D]`` as each layer finishes (no copy of all layers
        is held, so a chunk's memory does not grow with the layer count)."""
        projected, _ = self.model.feature_projection(frame_inputs[None].to(self.dtype))  # [1, N, D]
        rows = slice(offset, offset + out.shape[0])
        done = 0

        def keep(_module, _inputs, output):
            nonlocal done
            hidden = output[0] if isinstance(output, tuple) else output  # [1, N, D]
            out[:, done] = hidden[0, rows]
            done += 1

        hooks = [layer.register_forward_hook(keep) for layer in self.model.encoder.layers]
        try:
            last = self.model.encoder(projected).last_hidden_state  # [1, N, D]
        finally:
            for hook in hooks:
                hook.remove()
        if done != self.num_layers:
            raise RuntimeError(f"expected {self.num_layers} transformer layer outputs, got {done}")
        if self._stable_layer_norm:
            out[:, -1] = last[0, rows]  # transformers 4.x: the last hidden state after the final LayerNorm
