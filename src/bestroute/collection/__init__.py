"""Collecting routing data: sample, score and write responses in the exchange format."""

from ._blueprint import write_blueprint
from ._collect import CollectReport, CollectSettings, collect, read_prompts
from ._scorers import CHECKS, JudgeScorer, ReferenceScorer, RewardScorer, check_reference

__all__ = [
    "CHECKS",
    "CollectReport",
    "CollectSettings",
    "JudgeScorer",
    "ReferenceScorer",
    "RewardScorer",
    "check_reference",
    "collect",
    "read_prompts",
    "write_blueprint",
]
