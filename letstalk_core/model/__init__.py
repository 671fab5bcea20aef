"""The LetsTalk transformer family and its audio projection."""

from .audio_projection import AudioProjection
from .configs import HEADS_BY_WIDTH, OFFICIAL_SIZES, VARIANTS, audio_projection_config, transformer_config
from .embeddings import spatial_table, temporal_table
from .transformer import LetsTalkTransformer

__all__ = [
    "AudioProjection",
    "HEADS_BY_WIDTH",
    "LetsTalkTransformer",
    "OFFICIAL_SIZES",
    "VARIANTS",
    "audio_projection_config",
    "spatial_table",
    "temporal_table",
    "transformer_config",
]
