"""Best-of-n selection: routing options, the selectors that keep one of n responses (offline
and in the gateway), the answers they compare, and the outcomes and soft labels they lead to."""

from ._answers import extract_answer
from ._online import EndpointSelector, InProcessSelector, JudgeSelector, OnlineSelector, online_selector
from ._options import Option, stage_draws, stage_positions, stage_samples, stage_verdict
from ._outcomes import (
    OptionOutcomes,
    SelectionCache,
    best_selector,
    option_outcomes,
    selected_quality,
    soft_labels,
)
from ._selectors import (
    IN_PROCESS,
    Consensus,
    MajorityVote,
    OracleSelector,
    ResponseScorer,
    ScoreSelector,
    Selector,
    SelectorKind,
    SelectorSpec,
    make_selector,
    pick,
    pick_confidence,
)

__all__ = [
    "IN_PROCESS",
    "Consensus",
    "EndpointSelector",
    "InProcessSelector",
    "JudgeSelector",
    "MajorityVote",
    "OnlineSelector",
    "Option",
    "OptionOutcomes",
    "OracleSelector",
    "ResponseScorer",
    "ScoreSelector",
    "SelectionCache",
    "Selector",
    "SelectorKind",
    "SelectorSpec",
    "best_selector",
    "extract_answer",
    "make_selector",
    "online_selector",
    "option_outcomes",
    "pick",
    "pick_confidence",
    "selected_quality",
    "soft_labels",
    "stage_draws",
    "stage_positions",
    "stage_samples",
    "stage_verdict",
]
