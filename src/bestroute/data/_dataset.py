"""The in-memory routing dataset: dense arrays over prompts x models x samples."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._exceptions import DataError
from ._schema import ModelPrice, PromptRecord, ResponseRecord, arm_parts


@dataclass(frozen=True, kw_only=True)
class RoutingDataset:
    """Prompts, models and every sampled response's quality and cost.

    Arrays are indexed ``[prompt, model]`` or ``[prompt, model, sample]``; a missing response
    is NaN in ``quality``/costs and None in ``responses``.
    """

    prompt_ids: list[str]
    texts: list[str]
    tasks: list[str | None]
    references: list[str | None]
    models: list[str]
    prices: dict[str, ModelPrice]
    quality: np.ndarray  # (P, M, K)
    input_cost: np.ndarray  # (P, M): USD per call, paid once however many samples one call returns
    output_cost: np.ndarray  # (P, M, K): USD
    input_tokens: np.ndarray  # (P, M)
    output_tokens: np.ndarray  # (P, M, K)
    responses: np.ndarray  # (P, M, K) of str | None
    source: str = ""
    reference_model: str | None = None  # named by the data; routers default to it
    # Per prompt, how its answers are read: (type, pattern), None where the data says nothing.
    answer_rules: list[tuple[str | None, str | None]] | None = None

    @classmethod
    def from_records(
        cls,
        prompts: Sequence[PromptRecord],
        responses: Sequence[ResponseRecord],
        prices: dict[str, ModelPrice],
        *,
        source: str = "",
        reference_model: str | None = None,
    ) -> "RoutingDataset":
        if not prompts:
            raise DataError("no prompts", path=source)
        if not responses:
            raise DataError("no responses", path=source)
        prompt_index = {p.prompt_id: i for i, p in enumerate(prompts)}
        models = sorted({r.arm for r in responses})
        model_index = {m: j for j, m in enumerate(models)}
        shape = (len(prompts), len(models), max(r.sample for r in responses) + 1)
        quality = np.full(shape, np.nan)
        output_cost = np.full(shape, np.nan)
        output_tokens = np.full(shape, np.nan)
        input_cost = np.full(shape[:2], np.nan)
        input_tokens = np.full(shape[:2], np.nan)
        texts = np.full(shape, None, dtype=object)
        for r in responses:
            i, j = prompt_index[r.prompt_id], model_index[r.arm]
            quality[i, j, r.sample] = r.quality
            output_tokens[i, j, r.sample] = r.output_tokens
            input_tokens[i, j] = r.input_tokens
            if r.cost_usd is not None:
                input_cost[i, j], output_cost[i, j, r.sample] = 0.0, r.cost_usd
            else:
                price = prices[r.model]
                input_cost[i, j] = price.cost(r.input_tokens, 0)
                output_cost[i, j, r.sample] = price.cost(0, r.output_tokens)
            texts[i, j, r.sample] = r.response
        return cls(
            prompt_ids=[p.prompt_id for p in prompts],
            texts=[p.prompt for p in prompts],
            tasks=[p.task for p in prompts],
            references=[p.reference for p in prompts],
            models=models,
            prices={arm: prices[model] for arm in models if (model := arm_parts(arm)[0]) in prices},
            quality=quality,
            input_cost=input_cost,
            output_cost=output_cost,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            responses=texts,
            source=source,
            reference_model=reference_model,
            answer_rules=[(p.answer_type, p.answer_pattern) for p in prompts]
            if any(p.answer_type or p.answer_pattern for p in prompts)
            else None,
        )

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)

    @property
    def available(self) -> np.ndarray:
        """(P, M) bool: the model answered the prompt at least once."""
        return ~np.isnan(self.quality[:, :, 0])

    def max_samples(self, model: int) -> int:
        """The largest n such that every prompt this model answered has n samples."""
        answered = self.available[:, model]
        counts = (~np.isnan(self.quality[answered, model, :])).sum(axis=1)
        return int(counts.min()) if counts.size else 0

    def model_index(self, name: str) -> int:
        try:
            return self.models.index(name)
        except ValueError:
            raise DataError(f"unknown model {name!r}; known: {', '.join(self.models)}", path=self.source) from None

    def single_sample_cost(self) -> np.ndarray:
        """(P, M) USD of one response (sample 0), NaN where missing."""
        return self.input_cost + self.output_cost[:, :, 0]

    def mean_quality(self) -> np.ndarray:
        """(P, M) quality averaged over samples, NaN where missing."""
        answered = ~np.isnan(self.quality)
        total = np.where(answered, self.quality, 0.0).sum(axis=2)
        count = answered.sum(axis=2)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def describe(self) -> dict[str, Any]:
        """Per model: prompts answered, samples, mean quality and cost per 1k prompts; the oracle."""
        quality = self.mean_quality()
        cost = self.single_sample_cost()
        rows = []
        for j, name in enumerate(self.models):
            answered = self.available[:, j]
            rows.append(
                {
                    "model": name,
                    "prompts": int(answered.sum()),
                    "samples": self.max_samples(j),
                    "quality": float(quality[answered, j].mean()),
                    "cost_per_1k": float(cost[answered, j].mean() * 1000),
                }
            )
        return {"prompts": self.n_prompts, "models": rows, "oracle": self.oracle_summary()}

    def oracle_summary(self) -> dict[str, float]:
        """Per-prompt oracle: the cheapest of the models with the best first sample."""
        q = np.where(self.available, self.quality[:, :, 0], -np.inf)
        best = q.max(axis=1, keepdims=True)
        cost = np.where(q == best, self.single_sample_cost(), np.inf)
        choice = cost.argmin(axis=1)
        rows = np.arange(self.n_prompts)
        return {
            "quality": float(self.quality[rows, choice, 0].mean()),
            "cost_per_1k": float(cost[rows, choice].mean() * 1000),
        }
