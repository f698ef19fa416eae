"""Choose the best-of-n selector on validation: consensus, or a proxy reward model fitted on
the training prompts."""

from pathlib import Path

import numpy as np

from ..data import RoutingDataset, Split
from ..features import FeatureExtractor
from ..selection import Consensus, SelectorSpec, best_selector
from ._model import RewardModel, load_selector


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
    only if it picks better samples than consensus on ``split.val`` (ties go to consensus).

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
        return Consensus.spec, {}
    RewardModel(features=features).fit(data, split.train, extractor=extractor).save(reward_model_path)
    reward_model = load_selector(SelectorSpec(kind="reward-model", path=reward_model_path))
    best, quality = best_selector(data, split.val, [Consensus(), reward_model])  # ties: consensus
    return best.spec, quality
