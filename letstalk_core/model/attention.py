"""Attention layers of the LetsTalk transformer.

Softmax attention goes through ``torch.nn.functional.scaled_dot_product_attention``; the ReLU-kernel
linear attention of the ``lite`` variant accumulates in float32 whatever the model dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _fused_bias_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_FUSED_BIAS_LINEAR = _fused_bias_linear_available()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, except that float32 CPU inference with a bias runs oneDNN's matmul with the bias
    fused into it (the kernel torch's own compiler uses for CPU linears). ``F.linear`` goes through
    ``addmm``, which first copies the bias into every row of the output, a whole extra pass over
    the largest buffers of a forward; at the transformer's shapes that pass is ~4% of the time.
    Anything else (autograd, other dtypes or devices, ``torch.backends.mkldnn`` disabled, a torch
    built without oneDNN) takes ``F.linear``. Results agree with it to float32 rounding."""
    if (bias is not None and _FUSED_BIAS_LINEAR and torch.backends.mkldnn.enabled and not torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype == weight.dtype == bias.dtype == torch.float32
            and x.is_contiguous() and weight.is_contiguous() and bias.is_contiguous() and x.numel() > 0):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def apply_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` through ``linear``."""
    return linear(x, module.weight, module.bias)


def fold_modulation(module: nn.Linear, shift: torch.Tensor, scale: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weights ``[B, out, D]`` and biases ``[B, out]`` such that ``x W_b^T + b_b`` equals
    ``module(x * (1 + scale_b) + shift_b)``: ``W * (1 + scale)`` and ``b + W shift``, which costs
    ``B x out x D`` multiplies instead of a pass over all the activations."""
    weight = module.weight[None] * (1 + scale)[:, None, :]  # [B, out, D]
    bias = torch.matmul(shift, module.weight.t())  # [B, out]
    if module.bias is not None:
        bias = bias + module.bias
    return weight, bias


def modulated_linear(x: torch.Tensor, module: nn.Linear, shift: torch.Tensor | None = None,
                     scale: torch.Tensor | None = None) -> torch.Tensor:
    """``module(x * (1 + scale) + shift)`` for x ``[B, ..., D]`` and per-sample shift/scale ``[B, D]``,
    with the modulation folded into the weights (``fold_modulation``)."""
    if shift is None:
        return apply_linear(module, x)
    return per_sample_linear(x, *fold_modulation(module, shift, scale))


def per_sample_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x ``[B, ..., D]`` through sample b's own weight ``[B, out, D]`` and bias ``[B, out]`` (as
    ``fold_modulation`` makes them) -> ``[B, ..., out]``."""
    batch, dim = x.shape[0], x.shape[-1]
    if batch == 1:
        return linear(x, weight[0], bias[0])
    out = torch.baddbmm(bias[:, None, :], x.reshape(batch, -1, dim), weight.transpose(1, 2))  # [B, L, out]
    return out.view(*x.shape[:-1], -1)


class _SoftmaxHeads(nn.Module):
    """The projections of softmax self-attention with ``num_heads`` heads: one fused ``to_qkv`` and
    ``to_out`` (the authors' layout, so their state dicts load as they are)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.to_out = nn.Linear(dim, dim, bias=True)


class TemporalAttention(_SoftmaxHeads):
    """Softmax self-attention along the frame axis, separately for every spatial position.

    Input and output ``[B, T, n, D]`` (T frames of n tokens, frames first as the tokens are stored);
    one fused qkv projection.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, n, D]`` -> ``[B, T, n, D]``."""
        return apply_linear(self.to_out, self.attend(x))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, n, D]`` -> attention output ``[B, T, n, D]`` before ``to_out``. The projection
        runs on the stored order and the attention reads q, k and v through strided views (copied
        only to merge a batch of several samples); the CPU kernel writes its output in the query's
        memory order, so for one sample neither side needs a transposed copy."""
        batch, frames, tokens, dim = x.shape
        heads = self.num_heads
        qkv = apply_linear(self.to_qkv, x).view(batch, frames, tokens, 3, heads, dim // heads)  # [B, T, n, 3, h, d]
        q, k, v = (part.reshape(batch * tokens, heads, frames, dim // heads)  # each [B*n, h, T, d]
                   for part in qkv.permute(3, 0, 2, 4, 1, 5).unbind(0))
        out = F.scaled_dot_product_attention(q, k, v)  # [B*n, h, T, d]
        out = out.view(batch, tokens, heads, frames, dim // heads).permute(0, 3, 1, 2, 4)  # [B, T, n, h, d]
        return out.reshape(batch, frames, tokens, dim)  # a view when frame-major


class AudioCrossAttention(nn.Module):
    """Queries from each frame's video tokens, keys/values from that frame's audio tokens."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(audio_dim, dim, bias=False)
        self.to_v = nn.Linear(audio_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, audio_tokens: torch.Tensor) -> torch.Tensor:
        """x ``[S, N, D]`` (S = batch x frames), audio_tokens ``[S, M, Da]`` -> ``[S, N, D]``."""
        return self.attend(x, *self.keys_values(audio_tokens))

    def keys_values(self, audio_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio_tokens ``[S, M, Da]`` -> keys and values, each ``[S, h, M, d]``."""
        seqs = audio_tokens.shape[0]
        heads = self.num_heads
        k = self.to_k(audio_tokens).view(seqs, -1, heads, self.to_k.out_features // heads).transpose(1, 2)
        v = self.to_v(audio_tokens).view(seqs, -1, heads, self.to_v.out_features // heads).transpose(1, 2)
        return k, v

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x ``[S, N, D]``, keys/values ``[S, h, M, d]`` of the same S frames -> ``[S, N, D]``."""
        seqs, tokens, dim = x.shape
        heads = self.num_heads
        q = self.to_q(x).view(seqs, tokens, heads, dim // heads).transpose(1, 2)  # [S, h, N, d]
        out = F.scaled_dot_product_attention(q, k, v)  # [S, h, N, d]
        return apply_linear(self.to_out, out.transpose(1, 2).reshape(seqs, tokens, dim))


class _FrameAttention(nn.Module):
    """Self-attention within each frame's tokens: ``to_qkv`` (with optional modulation), then the
    subclass's ``attend_projected``."""

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None, scale: torch.Tensor | None = None
                ) -> torch.Tensor:
        """x ``[B, F, L, D]`` (attention within each of the B x F sequences of L tokens), optionally
        modulated by per-sample ``shift``/``scale`` ``[B, D]`` -> ``[B*F, L, D]``."""
        batch, frames, length, dim = x.shape
        seqs = batch * frames
        return self.attend_projected(modulated_linear(x, self.to_qkv, shift, scale).view(seqs, length, 3 * dim))


class SpatialAttention(_FrameAttention, _SoftmaxHeads):
    """Softmax self-attention over the tokens of one frame (video and portrait tokens together)."""

    def attend_projected(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv ``[S, L, 3D]`` (output of ``to_qkv``, possibly with folded modulation) -> ``[S, L, D]``."""
        seqs, length, dim = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        heads = self.num_heads
        q, k, v = qkv.view(seqs, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)  # [S, h, L, d]
        out = F.scaled_dot_product_attention(q, k, v)  # [S, h, L, d]
        return apply_linear(self.to_out, out.transpose(1, 2).reshape(seqs, length, dim))


class LinearAttention(_FrameAttention):
    """ReLU-kernel linear attention (``lite`` variant): heads are contiguous channel groups of
    ``head_dim``; ``out_i = sum_j (v_j k_j^T) q_i / (sum_j k_j^T q_i + eps)``, accumulated in float32."""

    def __init__(self, dim: int, head_dim: int = 32, eps: float = 1e-8):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"hidden size {dim} is not divisible by the linear-attention head width {head_dim}")
        self.head_dim = head_dim
        self.eps = eps
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=True)

    def attend_projected(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv ``[S, L, 3D]`` (output of ``to_qkv``, possibly with folded modulation; overwritten at
        inference) -> ``[S, L, D]``."""
        seqs, length, dim = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        heads = dim // self.head_dim
        q, k, v = qkv.view(seqs, length, 3, heads, self.head_dim).unbind(2)  # each [S, L, h, d]
        q = F.relu(q, inplace=not q.requires_grad).float()  # views of qkv: in place at inference
        k = F.relu(k, inplace=not k.requires_grad).float()
        v = v.float()
        if q.device.type == "cpu" and not (q.requires_grad or k.requires_grad or v.requires_grad):
            out = self._attend_per_sequence(q, k, v)  # [S, L, h, d], contiguous
        else:
            kv = torch.einsum("slhd,slhe->shde", k, v)  # [S, h, d, d]
            # k summed over tokens as one more column of kv: one product gives numerator and denominator
            kv = torch.cat([kv, k.sum(dim=1).unsqueeze(-1)], dim=-1)  # [S, h, d, d+1]
            product = torch.einsum("slhd,shde->slhe", q, kv)  # [S, L, h, d+1]
            numerator, denominator = product[..., :-1], product[..., -1:]  # [S, L, h, d], [S, L, h, 1]
            out = numerator / (denominator + self.eps)
        return apply_linear(self.to_out, out.to(qkv.dtype).reshape(seqs, length, dim))

    def _attend_per_sequence(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Inference: q, k, v ``[S, L, h, d]`` float32, possibly strided views of one qkv buffer ->
        ``[S, L, h, d]`` contiguous. One sequence at a time, its heads as the batch of ``bmm``: a
        head of one sequence is a plain strided matrix, so nothing is copied (``einsum`` over
        ``(S, h)`` batches must first gather q, k and v, and its output, into contiguous buffers:
        at the ``lite`` shapes those copies cost more than the products themselves)."""
        seqs, length, heads, width = q.shape
        out = torch.empty(seqs, length, heads, width, dtype=torch.float32, device=q.device)
        kv = torch.empty(heads, width, width + 1, dtype=torch.float32, device=q.device)  # [h, d, d+1]
        product = torch.empty(heads, length, width + 1, dtype=torch.float32, device=q.device)  # [h, L, d+1]
        for s in range(seqs):
            keys, values, queries = k[s].transpose(0, 1), v[s].transpose(0, 1), q[s].transpose(0, 1)  # [h, L, d]
            torch.bmm(keys.transpose(1, 2), values, out=kv[..., :width])
            torch.sum(keys, dim=1, out=kv[..., width])  # the denominator's column, as in the einsum path
            torch.bmm(queries, kv, out=product)
            denominator = product[..., width:].add_(self.eps)
            torch.div(product[..., :width], denominator, out=out[s].transpose(0, 1))
        return out
