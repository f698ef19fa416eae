"""Query features: text in, fixed-size L2-normalised vectors out."""

from ._cache import EmbeddingCache, cache_dir
from ._extractors import (
    FeatureExtractor,
    LexicalFeatures,
    MiniLMEmbedder,
    StaticEmbedder,
    distill_static_table,
    extractor_from_state,
    make_extractor,
)

__all__ = [
    "EmbeddingCache",
    "FeatureExtractor",
    "LexicalFeatures",
    "MiniLMEmbedder",
    "StaticEmbedder",
    "cache_dir",
    "distill_static_table",
    "extractor_from_state",
    "make_extractor",
]
