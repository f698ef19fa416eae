"""What an option's model names in the gateway: a backend, or an arm ``backend@strategy`` whose
calls go to that backend shaped by the strategy (``strategies`` in the configuration), their
replies finished by it (a program strategy's program run in the sandbox)."""

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..backends import Completion, Upstream
from ..data import arm_parts
from ..strategies import Strategy


@dataclass(frozen=True)
class Arms:
    """The backends by name and the configured strategies by name."""

    upstreams: Mapping[str, Upstream]
    strategies: Mapping[str, Strategy]

    def resolve(self, arm: str) -> tuple[Upstream, Strategy | None] | None:
        """The backend and strategy of ``arm``; None if either is not configured."""
        backend, strategy = arm_parts(arm)
        upstream = self.upstreams.get(backend)
        if upstream is None:
            return None
        if strategy is None:
            return upstream, None
        found = self.strategies.get(strategy)
        return (upstream, found) if found is not None else None

    def serves(self, arm: str, n: int) -> bool:
        """Whether ``arm`` is configured and its backend allows ``n`` samples."""
        resolved = self.resolve(arm)
        return resolved is not None and n <= resolved[0].config.max_n

    def get(self, arm: str) -> tuple[Upstream, Strategy | None]:
        resolved = self.resolve(arm)
        assert resolved is not None, f"{arm!r} was planned without a backend or strategy"
        return resolved


def shaped(body: dict[str, Any], strategy: Strategy | None) -> dict[str, Any]:
    return strategy.shape(body) if strategy is not None else body


def relays(strategy: Strategy | None) -> bool:
    """Whether a reply under ``strategy`` can be relayed as it streams (a program's cannot: its
    answer is known only once the program has run)."""
    return strategy is None or not strategy.program


async def finished(completion: Completion, strategy: Strategy | None) -> Completion:
    """``completion`` with each choice's text finished by ``strategy`` (its programs run at once)."""
    if strategy is None or not strategy.program:
        return completion
    texts = await asyncio.gather(*(strategy.finish(text) for text in completion.texts))
    choices = [
        choice | {"message": choice["message"] | {"content": text}}
        for choice, text in zip(completion.choices, texts, strict=True)
    ]
    return replace(completion, choices=choices)
