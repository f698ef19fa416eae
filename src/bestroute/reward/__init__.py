"""The proxy reward model: scores (prompt, response) pairs for best-of-n selection."""

from ._choice import choose_selector
from ._model import RewardModel, load_selector, pairwise_accuracy

__all__ = ["RewardModel", "choose_selector", "load_selector", "pairwise_accuracy"]
