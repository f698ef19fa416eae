"""The proxy reward model: scores (prompt, response) pairs for best-of-n selection."""

from ._model import RewardModel, pairwise_accuracy

__all__ = ["RewardModel", "pairwise_accuracy"]
