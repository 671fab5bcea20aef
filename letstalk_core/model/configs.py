"""Named sizes and variants of the LetsTalk transformer.

The numbers are those of the authors' published model tables (see ``shared/LETSTALK.md``):
depth / hidden width / attention heads per size, and the latent space each variant was trained in.
"""

from __future__ import annotations

VARIANTS = ("vdt", "vdt_long", "lite")

# size name -> (depth, hidden_size, num_heads)
OFFICIAL_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}

# hidden width -> heads of the official size with that width (L and XL both use 16 heads)
HEADS_BY_WIDTH: dict[int, int] = {width: heads for _, width, heads in OFFICIAL_SIZES.values()}

# per variant: the defaults of the published training setups
VARIANT_DEFAULTS: dict[str, dict] = {
    # SD VAE (f8, 4 channels) at 256 px -> 32x32 latents, patch 2
    "vdt": {"in_channels": 4, "patch_size": 2, "sample_size": 32, "memory_frames": 0},
    "vdt_long": {"in_channels": 4, "patch_size": 2, "sample_size": 32, "memory_frames": 2},
    # DC-AE (f32, 32 channels) at 512 px -> 16x16 latents, patch 1
    "lite": {"in_channels": 32, "patch_size": 1, "sample_size": 16, "memory_frames": 2},
}

# the authors' model names for each variant (used only for messages and the importer)
OFFICIAL_VARIANT_NAMES = {"vdt": "VDTcat", "vdt_long": "VDTcatlong", "lite": "Litecatlong"}


def transformer_config(
    variant: str,
    size: str,
    *,
    patch_size: int | None = None,
    in_channels: int | None = None,
    sample_size: int | None = None,
    frames_per_clip: int = 16,
    memory_frames: int | None = None,
    audio_dim: int = 768,
) -> dict:
    """Constructor arguments of ``LetsTalkTransformer`` for a published variant and size.

    ``variant`` is one of ``vdt``, ``vdt_long``, ``lite``; ``size`` one of S, B, L, XL.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not known; accepted: {', '.join(VARIANTS)}")
    if size not in OFFICIAL_SIZES:
        raise ValueError(f"size {size!r} is not known; accepted: {', '.join(OFFICIAL_SIZES)}")
    depth, hidden_size, num_heads = OFFICIAL_SIZES[size]
    defaults = VARIANT_DEFAULTS[variant]
    return {
        "variant": variant,
        "in_channels": defaults["in_channels"] if in_channels is None else in_channels,
        "patch_size": defaults["patch_size"] if patch_size is None else patch_size,
        "hidden_size": hidden_size,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": 4.0,
        "audio_dim": audio_dim,
        "sample_size": defaults["sample_size"] if sample_size is None else sample_size,
        "frames_per_clip": frames_per_clip,
        "memory_frames": defaults["memory_frames"] if memory_frames is None else memory_frames,
        "learn_sigma": True,
        "linear_head_dim": 32,
    }


def audio_projection_config(
    *,
    num_layers: int = 12,
    feature_dim: int = 768,
    window_size: int = 5,
    intermediate_dim: int = 512,
    num_tokens: int = 32,
    output_dim: int = 768,
) -> dict:
    """Constructor arguments of ``AudioProjection``; the defaults are the official
    wav2vec2-base setup (12 hidden states of 768 features, window 5, 32 tokens of 768)."""
    return {
        "window_size": window_size,
        "input_features": num_layers * feature_dim,
        "num_layers": num_layers,
        "feature_dim": feature_dim,
        "intermediate_dim": intermediate_dim,
        "num_tokens": num_tokens,
        "output_dim": output_dim,
    }
