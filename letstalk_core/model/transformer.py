"""The LetsTalk diffusion transformer: one class for the ``vdt``, ``vdt_long`` and ``lite`` variants.

Per block: temporal attention over [memory frames, clip frames] at every spatial position, audio
cross-attention per frame, spatial attention over each frame's video + portrait tokens (softmax for
``vdt*``, ReLU linear attention for ``lite``), then a feed-forward (MLP on video and portrait tokens
for ``vdt*``; GLUMBConv on the video tokens only for ``lite``). Adaptive LayerNorm modulation from
the timestep. See ``shared/LETSTALK.md`` for the exact description.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .attention import (AudioCrossAttention, LinearAttention, SpatialAttention, TemporalAttention, apply_linear,
                        fold_modulation, linear, modulated_linear, per_sample_linear)
from .configs import VARIANTS
from .embeddings import spatial_table, temporal_table


_GELU_K1 = 2 * math.sqrt(2 / math.pi)
_GELU_K3 = _GELU_K1 * 0.044715


def gelu_tanh_(x: torch.Tensor, rows_per_pass: int = 1024) -> torch.Tensor:
    """Tanh-approximate GELU in place, for inference on a contiguous ``[..., H]`` tensor.

    float32 uses the identity ``0.5 (1 + tanh(u)) = sigmoid(2u)``: ``x * sigmoid(2 sqrt(2/pi)
    (x + 0.044715 x^3))`` is the same function, and the CPU's vectorised sigmoid is much cheaper
    than its tanh; row blocks of ``rows_per_pass`` keep the temporary in cache across the passes.
    Other dtypes and devices (and non-contiguous tensors) use ``torch.nn.functional.gelu``'s kernel.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous() or x.numel() == 0:
        return torch.ops.aten.gelu_(x, approximate="tanh")
    rows = x.view(-1, x.shape[-1])  # [R, H]
    scratch = torch.empty(min(rows_per_pass, rows.shape[0]), rows.shape[1], dtype=x.dtype, device=x.device)
    for start in range(0, rows.shape[0], rows_per_pass):
        block = rows[start:start + rows_per_pass]  # [r, H]
        inner = scratch[:block.shape[0]]
        torch.mul(block, block, out=inner)  # x^2
        inner.mul_(_GELU_K3).add_(_GELU_K1).mul_(block)  # 2u = k1 x + k3 x^3
        block.mul_(torch.sigmoid_(inner))
    return x


def _even_chunk(total: int, target: int) -> int:
    """Chunk length that splits ``total`` items into equal pieces of at most ``max(1, target)``."""
    pieces = -(-total // max(1, target))
    return -(-total // pieces)


class FeedForward(nn.Module):
    """Token-wise MLP (fc, tanh-GELU, fc) of the ``vdt`` variants."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc_in = nn.Linear(dim, hidden_dim)
        self.fc_out = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None, scale: torch.Tensor | None = None
                ) -> torch.Tensor:
        """x ``[B, ..., D]``, optionally modulated by per-sample shift/scale ``[B, D]``."""
        return self.activate_and_project(modulated_linear(x, self.fc_in, shift, scale))  # [B, ..., D]

    def activate_and_project(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden ``[..., H]``: output of ``fc_in`` (possibly with folded modulation; overwritten at
        inference) -> ``[..., D]``."""
        if hidden.requires_grad:
            hidden = F.gelu(hidden, approximate="tanh")
        else:  # inference: in place, which spares allocating (and page-faulting) another large buffer
            hidden = gelu_tanh_(hidden)
        return apply_linear(self.fc_out, hidden)


class GatedConvFeedForward(nn.Module):
    """GLUMBConv (Mix-FFN) of the ``lite`` variant on a 2D token map: pointwise expansion to
    value+gate with SiLU, 3x3 depthwise conv, value * SiLU(gate), pointwise projection back."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.expand = nn.Linear(dim, 2 * hidden_dim, bias=True)
        self.depthwise = nn.Conv2d(2 * hidden_dim, 2 * hidden_dim, 3, padding=1, groups=2 * hidden_dim, bias=True)
        self.project = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], shift: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, F, N, D]`` with N = grid height x width in row-major order, optionally modulated by
        per-sample shift/scale ``[B, D]`` -> ``[B*F, N, D]``."""
        return self.mix_and_project(modulated_linear(x, self.expand, shift, scale), grid)

    def mix_and_project(self, y: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """y ``[..., N, 2H]``: output of ``expand`` (possibly with folded modulation; overwritten at
        inference) -> ``[S, N, D]`` with S the product of the leading dimensions."""
        tokens, channels = y.shape[-2], y.shape[-1]
        seqs = y.numel() // (tokens * channels)
        height, width = grid
        y = F.silu(y, inplace=not y.requires_grad)  # in place at inference
        y = y.reshape(seqs, height, width, channels).permute(0, 3, 1, 2)  # [S, 2H, h, w], channels-last memory
        y = self.depthwise(y)
        value, gate = y.chunk(2, dim=1)  # each [S, H, h, w]
        if y.requires_grad:
            y = value * F.silu(gate)
        else:
            y = value.mul_(F.silu(gate, inplace=True))
        y = y.permute(0, 2, 3, 1).reshape(seqs, tokens, channels // 2)  # [S, N, H]
        return self.project(y)


class LetsTalkBlock(nn.Module):
    def __init__(self, variant: str, dim: int, num_heads: int, audio_dim: int, mlp_ratio: float, linear_head_dim: int):
        super().__init__()
        self.variant = variant
        self.modulation = nn.Linear(dim, 6 * dim)  # applied to SiLU(timestep embedding)
        self.temporal_norm = nn.LayerNorm(dim)
        self.temporal_attn = TemporalAttention(dim, num_heads)
        self.temporal_out = nn.Linear(dim, dim)
        self.audio_attn = AudioCrossAttention(dim, audio_dim, num_heads)
        hidden_dim = int(round(dim * mlp_ratio, 6))  # truncation as in the official code, robust to float error
        if variant == "lite":
            self.spatial_attn = LinearAttention(dim, head_dim=linear_head_dim)
            self.feed_forward = GatedConvFeedForward(dim, hidden_dim)
        else:
            self.spatial_attn = SpatialAttention(dim, num_heads)
            self.feed_forward = FeedForward(dim, hidden_dim)

    def forward(
        self,
        state: torch.Tensor,  # [B, K+F, 2N, D]
        time_features: torch.Tensor,  # [B, D], SiLU of the timestep embedding
        audio_tokens: torch.Tensor,  # [B*F, M, Da]
        grid: tuple[int, int],
        memory_frames: int,
        rows_per_chunk: int | None = None,
    ) -> torch.Tensor:
        """The block on the packed tokens of ``LetsTalkTransformer``: frame t of ``state`` holds its
        video tokens (memory tokens for t < K) in ``[:N]`` and, for clip frames, the portrait tokens in
        ``[N:]`` (unused, zero, in the memory frames). Returns the updated tokens ``[B, K+F, 2N, D]``.

        Each step reads its tokens and adds its residual to them: without autograd in place (the
        result is ``state`` itself); with autograd on a copy of ``state``, each step reading a copy
        of its tokens, since autograd keeps what a step read. Without autograd, ``rows_per_chunk``
        (None: no chunks, the whole batch at once) runs each sample alone, the temporal step on chunks
        of spatial positions and the per-frame steps (audio, spatial attention, feed-forward) on
        chunks of frames, each about ``rows_per_chunk`` tokens: the working buffers stay small, at the
        price of more, smaller operations (``LetsTalkTransformer.inference_path``).
        """
        batch, length, joint, dim = state.shape
        tokens, frames = joint // 2, length - memory_frames
        modulation = self.modulation(time_features).view(batch, 6, dim)
        shift_attn, scale_attn, gate_attn, shift_ff, scale_ff, gate_ff = modulation.unbind(1)  # each [B, D]
        gate_attn, gate_ff = gate_attn[:, None, None], gate_ff[:, None, None]  # [B, 1, 1, D]
        attn_weight, attn_bias = fold_modulation(self.spatial_attn.to_qkv, shift_attn, scale_attn)  # [B, 3D, D], [B, 3D]
        lite = self.variant == "lite"
        ff_weight, ff_bias = fold_modulation(self.feed_forward.expand if lite else self.feed_forward.fc_in,
                                             shift_ff, scale_ff)  # [B, H', D], [B, H']
        keys, values = self.audio_attn.keys_values(audio_tokens)  # each [B*F, h, M, d]
        autograd = torch.is_grad_enabled()
        if autograd:
            state = state.clone()  # the caller's tensor stays as it was (gradient checkpointing reruns on it)
        if autograd or rows_per_chunk is None:
            samples, positions_per_chunk, frames_per_chunk = [slice(0, batch)], tokens, frames
        else:
            samples = [slice(b, b + 1) for b in range(batch)]
            positions_per_chunk = _even_chunk(tokens, rows_per_chunk // length)
            frames_per_chunk = _even_chunk(frames, rows_per_chunk // joint)

        def read(where) -> torch.Tensor:
            return state[where].clone() if autograd else state[where]

        def add(where, update, gate=None) -> None:
            target = state[where]
            target.add_(update) if gate is None else target.addcmul_(gate, update)

        for sample in samples:
            # 1. temporal attention at each spatial position over [memory, clip] frames; the only step
            # that updates the memory tokens
            for start in range(0, tokens, positions_per_chunk):
                where = (sample, slice(None), slice(start, min(tokens, start + positions_per_chunk)))  # [b, T, n, D]
                normed = self.temporal_norm(read(where))
                add(where, self._temporal_projection(self.temporal_attn.attend(normed)))
            for start in range(0, frames, frames_per_chunk):
                stop = min(frames, start + frames_per_chunk)
                clip = (sample, slice(memory_frames + start, memory_frames + stop))  # [b, c, 2N, D]
                video = (*clip, slice(0, tokens))  # [b, c, N, D]
                seqs = slice(sample.start * frames + start, (sample.stop - 1) * frames + stop)  # b*c of B*F
                # 2. audio cross-attention, per frame
                normed = F.layer_norm(read(video), (dim,), eps=1e-6)  # [b, c, N, D]
                attended = self.audio_attn.attend(normed.flatten(0, 1), keys[seqs], values[seqs])  # [b*c, N, D]
                add(video, attended.view(normed.shape))
                # 3. spatial attention over each frame's video + portrait tokens
                normed = F.layer_norm(read(clip), (dim,), eps=1e-6)  # [b, c, 2N, D]
                qkv = per_sample_linear(normed, attn_weight[sample], attn_bias[sample])  # [b, c, 2N, 3D]
                attended = self.spatial_attn.attend_projected(qkv.flatten(0, 1))  # [b*c, 2N, D]
                add(clip, attended.view(normed.shape), gate_attn[sample])
                # 4. feed-forward: GLUMBConv on the video tokens (lite), else an MLP on video and portrait
                where = video if lite else clip
                normed = F.layer_norm(read(where), (dim,), eps=1e-6)  # [b, c, L, D]
                hidden = per_sample_linear(normed, ff_weight[sample], ff_bias[sample]).flatten(0, 1)  # [b*c, L, H']
                if lite:
                    update = self.feed_forward.mix_and_project(hidden, grid)
                else:
                    update = self.feed_forward.activate_and_project(hidden)
                add(where, update.view(normed.shape), gate_ff[sample])
        return state

    def _temporal_projection(self, attended: torch.Tensor) -> torch.Tensor:
        """``temporal_out(temporal_attn.to_out(attended))``; without autograd as one merged linear map."""
        if torch.is_grad_enabled():
            return self.temporal_out(self.temporal_attn.to_out(attended))
        return linear(attended, *self.merged_temporal_projection())

    def merged_temporal_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``temporal_out(temporal_attn.to_out(x))`` as one linear map (weight ``[D, D]``, bias ``[D]``),
        for inference. Computed from the current weights and cached; the cache is rebuilt
        when any of the four tensors is replaced or changed in place (moved, cast, loaded, trained)."""
        parts = (self.temporal_out.weight, self.temporal_out.bias, self.temporal_attn.to_out.weight,
                 self.temporal_attn.to_out.bias)
        # inference tensors (weights made under torch.inference_mode, as ComfyUI loads models) keep no
        # version counter, so an in-place change could not be seen: merge them afresh on every call
        # (a D x D product, negligible next to a forward)
        key = None if any(t.is_inference() for t in parts) else tuple(
            (t.data_ptr(), t._version, t.dtype, t.device) for t in parts)
        cached = getattr(self, "_merged_temporal", None)
        if key is None or cached is None or cached[0] != key:
            # float64, so that the rounded result does not depend on summation order (the memory
            # alignment of the weights may change the kernel): equal weights give equal outputs
            outer_w, outer_b, inner_w, inner_b = (t.detach().double() for t in parts)
            weight = (outer_w @ inner_w).to(parts[0].dtype)  # [D, D]
            bias = (outer_w @ inner_b + outer_b).to(parts[1].dtype)  # [D]
            cached = (key, weight, bias)
            if key is not None:
                self._merged_temporal = cached
        return cached[1], cached[2]


class LetsTalkTransformer(ModelMixin, ConfigMixin):
    """LetsTalk latent diffusion transformer (``vdt``, ``vdt_long`` or ``lite``).

    ``sample_size`` and ``frames_per_clip`` record the trained latent size and clip length; the model
    runs at any latent height/width divisible by ``patch_size`` and any clip/memory length (position
    tables are computed for the actual grid and length; at the trained size they equal the stored ones).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        variant: str = "vdt_long",
        in_channels: int = 4,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        audio_dim: int = 768,
        sample_size: int = 32,
        frames_per_clip: int = 16,
        memory_frames: int = 2,
        learn_sigma: bool = True,
        linear_head_dim: int = 32,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not known; accepted: {', '.join(VARIANTS)}")
        for name, value in (("in_channels", in_channels), ("patch_size", patch_size), ("hidden_size", hidden_size),
                            ("depth", depth), ("num_heads", num_heads), ("audio_dim", audio_dim),
                            ("sample_size", sample_size), ("frames_per_clip", frames_per_clip)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LetsTalkTransformer {name} must be a positive integer, got {value!r}")
        if not isinstance(memory_frames, int) or memory_frames < 0:
            raise ValueError(f"memory_frames must be a non-negative integer, got {memory_frames!r}")
        if variant == "vdt" and memory_frames:
            raise ValueError(f"variant 'vdt' has no memory frames; got memory_frames={memory_frames} (use 0)")
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be a multiple of 4 for the 2D position table, got {hidden_size}")
        if sample_size % patch_size:
            raise ValueError(f"sample_size {sample_size} is not divisible by patch_size {patch_size}")
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.gradient_checkpointing = False

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embed = TimestepEmbedding(256, hidden_size)
        self.blocks = nn.ModuleList(
            [LetsTalkBlock(variant, hidden_size, num_heads, audio_dim, mlp_ratio, linear_head_dim) for _ in range(depth)]
        )
        self.final_modulation = nn.Linear(hidden_size, 2 * hidden_size)
        self.final_proj = nn.Linear(hidden_size, patch_size * patch_size * self.out_channels)
        self._table_cache: dict[tuple, torch.Tensor] = {}
        # tokens per chunk of the chunked inference path (see rows_per_chunk); None: 2048
        self.inference_chunk_rows: int | None = None
        self._inference_path = "auto"

    # ---- how a forward without autograd runs -----------------------------------------------------
    INFERENCE_PATHS = ("auto", "chunked", "blocks")

    @property
    def inference_path(self) -> str:
        """How a forward without autograd runs the blocks (the same code either way, updating the packed
        tokens in place): ``"chunked"``, one sample at a time in chunks of about ``inference_chunk_rows``
        tokens (``bench/transformer.py``: faster on a CPU); ``"blocks"``, each block on the whole batch
        at once, as training runs it (same numbers to float rounding); ``"auto"`` (default), chunked on
        a CPU and blocks elsewhere, until a GPU benchmark says the chunked path wins there too. A
        runtime choice, not saved with the weights."""
        return self._inference_path

    @inference_path.setter
    def inference_path(self, path: str) -> None:
        if path not in self.INFERENCE_PATHS:
            raise ValueError(f"inference_path must be one of {', '.join(self.INFERENCE_PATHS)}; got {path!r}")
        self._inference_path = path

    def runs_chunked(self, device: torch.device) -> bool:
        """Whether a forward without autograd on ``device`` takes the chunked in-place path."""
        if self._inference_path == "auto":
            return torch.device(device).type == "cpu"
        return self._inference_path == "chunked"

    # ---- initialisation for training -------------------------------------------------------------
    @torch.no_grad()
    def initialize_weights(
        self, generator: torch.Generator | None = None, *, zero_audio_attention: bool = False
    ) -> "LetsTalkTransformer":
        """Re-initialise every weight the way the DiT/VDT family (which the authors' code builds on) does
        before training, in place; returns the model.

        Every Linear gets a Xavier-uniform weight and a zero bias; the patch embedding likewise, as the
        Linear it is; the timestep MLP normal(0, 0.02); and the adaLN-Zero part: every block's modulation
        and the final layer's modulation and projection start at zero. So a fresh model predicts zero,
        its spatial attention and feed-forward start closed (gate 0) and open as training needs them,
        while the ungated temporal attention and audio cross-attention are live from the first step.
        The depthwise conv of ``lite`` keeps PyTorch's default. Loading weights replaces all of this;
        the constructor itself keeps PyTorch's defaults (a random model with non-zero outputs).

        ``zero_audio_attention`` (beyond the authors' recipe) also zeroes every block's audio
        cross-attention output projection, as PixArt-alpha does for its text cross-attention and
        ControlNet for its conditioning path: the speech then adds nothing at the first step, and the
        audio projection receives no gradient until that output has grown along what helps the loss,
        instead of first learning to suppress the random signal a live path injects."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
        weight = self.patch_embed.weight  # fans of the Linear it is (out, in * p * p), not of a conv
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1), generator=generator)
        self.patch_embed.bias.zero_()
        for layer in (self.timestep_embed.linear_1, self.timestep_embed.linear_2):
            layer.weight.normal_(0.0, 0.02, generator=generator)
        for block in self.blocks:
            block.modulation.weight.zero_()
            block.modulation.bias.zero_()
            if zero_audio_attention:
                block.audio_attn.to_out.weight.zero_()
                block.audio_attn.to_out.bias.zero_()
        for layer in (self.final_modulation, self.final_proj):
            layer.weight.zero_()
            layer.bias.zero_()
        return self

    # ---- position tables -------------------------------------------------------------------------
    def spatial_position_table(self, grid_height: int, grid_width: int, *, device=None, dtype=None) -> torch.Tensor:
        """``[grid_height * grid_width, hidden]`` sin-cos table for a token grid."""
        key = ("spatial", grid_height, grid_width, device, dtype)
        if key not in self._table_cache:
            table = spatial_table(self.config.hidden_size, grid_height, grid_width)
            self._table_cache[key] = table.to(device=device, dtype=dtype or torch.float32)
        return self._table_cache[key]

    def temporal_position_table(self, length: int, *, device=None, dtype=None) -> torch.Tensor:
        """``[length, hidden]`` sin-cos table over frame indices (memory frames first, then the clip)."""
        key = ("temporal", length, device, dtype)
        if key not in self._table_cache:
            table = temporal_table(self.config.hidden_size, length)
            self._table_cache[key] = table.to(device=device, dtype=dtype or torch.float32)
        return self._table_cache[key]

    # ---- helpers ---------------------------------------------------------------------------------
    def _embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[S, C, H, W]`` -> tokens ``[S, N, D]`` (patch embedding as one matmul)."""
        seqs, channels, height, width = images.shape
        p = self.config.patch_size
        patches = images.view(seqs, channels, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(seqs, (height // p) * (width // p), channels * p * p)  # [S, N, C*p*p]
        weight = self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1)
        return F.linear(patches, weight, self.patch_embed.bias)

    def _check_inputs(self, latents, timestep, portrait_latents, audio_tokens, memory_latents):
        cfg = self.config
        if not torch.is_tensor(latents) or latents.ndim != 5:
            raise ValueError(f"latents must be a [B, F, C, H, W] tensor; got {_shape(latents)}")
        batch, frames, channels, height, width = latents.shape
        if channels != cfg.in_channels:
            raise ValueError(f"latents have {channels} channels; this model takes {cfg.in_channels}")
        p = cfg.patch_size
        if height % p or width % p:
            raise ValueError(f"latent height and width must be divisible by the patch size {p}; got {height}x{width}")
        if not torch.is_tensor(timestep) or timestep.shape != (batch,):
            raise ValueError(f"timestep must be a [B]={batch} tensor on the 0..999 scale; got {_shape(timestep)}")
        if not torch.is_tensor(portrait_latents) or tuple(portrait_latents.shape) not in (
            (batch, channels, height, width), (batch, frames, channels, height, width)):
            raise ValueError(
                f"portrait_latents must be [B, C, H, W]=[{batch}, {channels}, {height}, {width}] or "
                f"[B, F, C, H, W]; got {_shape(portrait_latents)}"
            )
        if (not torch.is_tensor(audio_tokens) or audio_tokens.ndim != 4 or audio_tokens.shape[:2] != (batch, frames)
                or audio_tokens.shape[3] != cfg.audio_dim):
            raise ValueError(
                f"audio_tokens must be [B, F, M, {cfg.audio_dim}] with B={batch}, F={frames}; got {_shape(audio_tokens)}"
            )
        if memory_latents is not None:
            if cfg.variant == "vdt":
                raise ValueError("memory_latents were given, but the 'vdt' variant has no memory frames; pass None")
            if not torch.is_tensor(memory_latents) or memory_latents.ndim != 5 or (
                    memory_latents.shape[0], *memory_latents.shape[2:]) != (batch, channels, height, width):
                raise ValueError(
                    f"memory_latents must be [B, K, C, H, W] with B={batch}, C={channels}, H={height}, W={width}; "
                    f"got {_shape(memory_latents)}"
                )

    def _pack_tokens(self, memory, video, portrait) -> torch.Tensor:
        """memory ``[B, K, N, D]``, video and portrait ``[B, F, N, D]`` -> the packed tokens the blocks
        run on, ``[B, K+F, 2N, D]``: per frame the video (or memory) tokens, then the portrait tokens
        (left unused, zero, in the memory frames)."""
        batch, frames, tokens, dim = video.shape
        memory_frames = memory.shape[1]
        state = video.new_empty(batch, memory_frames + frames, 2 * tokens, dim)  # [B, K+F, 2N, D]
        state[:, :memory_frames, :tokens] = memory
        state[:, :memory_frames, tokens:] = 0
        state[:, memory_frames:, :tokens] = video
        state[:, memory_frames:, tokens:] = portrait
        return state

    def rows_per_chunk(self, device: torch.device) -> int | None:
        """Tokens per chunk of a forward without autograd on ``device`` (``LetsTalkBlock.forward``);
        None where it runs unchunked."""
        if not self.runs_chunked(device):
            return None
        # Chunks of ~2048 tokens keep every working buffer under glibc's largest mmap threshold
        # (32 MiB). Unchunked, the feed-forward and qkv buffers of an S model at 256 px (40-50 MiB)
        # are mmapped and unmapped on every block: ~220k-400k page faults, 0.3-0.8 s of a ~4-5 s
        # forward on the 2-core test machine. Chunked, the heap reuses them (once glibc's threshold
        # is up: letstalk_core.heap.keep_working_buffers_on_heap); on one thread and on two, 2048 measured as
        # fast as 4096 or faster (bench/transformer.py).
        return 2048 if self.inference_chunk_rows is None else self.inference_chunk_rows

    # ---- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        portrait_latents: torch.Tensor,
        audio_tokens: torch.Tensor,
        memory_latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latents ``[B, F, C, H, W]``, timestep ``[B]`` (0..999), portrait_latents ``[B, C, H, W]`` or
        ``[B, F, C, H, W]``, audio_tokens ``[B, F, M, Da]``, memory_latents ``[B, K, C, H, W]`` or None
        -> ``[B, F, 2C, H, W]`` (noise prediction, then the learned-range variance values).
        A single timestep (number or 0-d tensor) is used for the whole batch."""
        if torch.is_tensor(latents) and latents.ndim == 5:
            if isinstance(timestep, (int, float)):
                timestep = torch.tensor(timestep)
            if torch.is_tensor(timestep):
                timestep = timestep.to(latents.device)
                if timestep.ndim == 0:
                    timestep = timestep.expand(latents.shape[0])
        self._check_inputs(latents, timestep, portrait_latents, audio_tokens, memory_latents)
        cfg = self.config
        dtype = self.patch_embed.weight.dtype
        device = latents.device
        batch, frames, channels, height, width = latents.shape
        p = cfg.patch_size
        grid = (height // p, width // p)
        tokens = grid[0] * grid[1]
        dim = cfg.hidden_size
        memory_frames = 0 if memory_latents is None else memory_latents.shape[1]

        spatial = self.spatial_position_table(*grid, device=device, dtype=dtype)  # [N, D]
        temporal = self.temporal_position_table(memory_frames + frames, device=device, dtype=dtype)  # [K+F, D]

        video = self._embed_patches(latents.to(dtype).reshape(batch * frames, channels, height, width))
        video = (video.view(batch, frames, tokens, dim) + spatial) + temporal[memory_frames:, None]  # [B, F, N, D]
        if memory_latents is not None:
            memory = self._embed_patches(memory_latents.to(dtype).reshape(-1, channels, height, width))
            memory = (memory.view(batch, memory_frames, tokens, dim) + spatial) + temporal[:memory_frames, None]
        else:
            memory = video.new_zeros(batch, 0, tokens, dim)  # [B, 0, N, D]
        if portrait_latents.ndim == 4:
            portrait = self._embed_patches(portrait_latents.to(dtype)) + spatial  # [B, N, D]
            portrait = portrait[:, None].expand(batch, frames, tokens, dim)  # [B, F, N, D]
        else:
            portrait = self._embed_patches(portrait_latents.to(dtype).reshape(batch * frames, channels, height, width))
            portrait = portrait.view(batch, frames, tokens, dim) + spatial  # [B, F, N, D]

        time_embedding = self.timestep_embed(self.time_proj(timestep).to(dtype))  # [B, D]
        time_features = F.silu(time_embedding)
        audio = audio_tokens.to(dtype).reshape(batch * frames, audio_tokens.shape[2], audio_tokens.shape[3])

        state = self._pack_tokens(memory, video, portrait)  # [B, K+F, 2N, D]
        rows_per_chunk = None if torch.is_grad_enabled() else self.rows_per_chunk(device)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                state = self._gradient_checkpointing_func(block, state, time_features, audio, grid, memory_frames)
            else:
                state = block(state, time_features, audio, grid, memory_frames, rows_per_chunk)
        video = state[:, memory_frames:, :tokens]  # [B, F, N, D]

        shift, scale = self.final_modulation(time_features).view(batch, 2, dim).unbind(1)  # each [B, D]
        out = modulated_linear(F.layer_norm(video, (dim,), eps=1e-6), self.final_proj, shift, scale)  # [B, F, N, p*p*2C]
        out = out.view(batch, frames, grid[0], grid[1], p, p, self.out_channels)
        return out.permute(0, 1, 6, 2, 4, 3, 5).reshape(batch, frames, self.out_channels, height, width)


def _shape(value) -> str:
    return f"shape {tuple(value.shape)}" if torch.is_tensor(value) else f"{type(value).__name__}"
