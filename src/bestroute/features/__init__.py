"""Query features: text in, fixed-size L2-normalised vectors out; and the linear sigmoid heads
fitted on them (BEST-Route's per-option heads, the reward model's scorer); and the domain the
features of training prompts span (the out-of-domain guard); and each option's expected cost
on a prompt."""

from ._cache import EmbeddingCache, cache_dir
from ._costs import CostHeads
from ._domain import DOMAIN_QUANTILE, DomainGuard
from ._extractors import (
    FeatureExtractor,
    LexicalFeatures,
    MiniLMEmbedder,
    StaticEmbedder,
    distill_static_table,
    extractor_fingerprint,
    extractor_from_state,
    make_extractor,
)
from ._heads import apply_heads, fit_head_near, fit_soft_heads
from ._representative import RepresentativePrompts

__all__ = [
    "DOMAIN_QUANTILE",
    "CostHeads",
    "DomainGuard",
    "EmbeddingCache",
    "FeatureExtractor",
    "LexicalFeatures",
    "MiniLMEmbedder",
    "RepresentativePrompts",
    "StaticEmbedder",
    "apply_heads",
    "cache_dir",
    "distill_static_table",
    "extractor_fingerprint",
    "extractor_from_state",
    "fit_head_near",
    "fit_soft_heads",
    "make_extractor",
]
