"""The in-memory routing dataset: dense arrays over prompts x models x samples."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._exceptions import DataError
from ._schema import ModelPrice, PromptRecord, ResponseRecord, arm_parts

NUMERIC_ARRAYS = ("quality", "input_cost", "output_cost", "input_tokens", "output_tokens")


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

    def subset(
        self, *, rows: Sequence[int] | np.ndarray | None = None, models: Sequence[str] | None = None
    ) -> "RoutingDataset":
        """The prompts ``rows`` (in that order) and the columns of ``models`` (an unknown name is
        a DataError); None keeps all."""
        r = np.arange(self.n_prompts) if rows is None else np.asarray(rows, dtype=int)
        kept = list(self.models) if models is None else list(models)
        m = np.array([self.model_index(name) for name in kept], dtype=int)
        cells = np.ix_(r, m)
        return replace(
            self,
            prompt_ids=[self.prompt_ids[i] for i in r],
            texts=[self.texts[i] for i in r],
            tasks=[self.tasks[i] for i in r],
            references=[self.references[i] for i in r],
            models=kept,
            prices={name: price for name, price in self.prices.items() if name in kept},
            quality=self.quality[cells],
            input_cost=self.input_cost[cells],
            output_cost=self.output_cost[cells],
            input_tokens=self.input_tokens[cells],
            output_tokens=self.output_tokens[cells],
            responses=self.responses[cells],
            reference_model=self.reference_model if self.reference_model in kept else None,
            answer_rules=None if self.answer_rules is None else [self.answer_rules[i] for i in r],
        )

    def joined(self, other: "RoutingDataset") -> "RoutingDataset":
        """These prompts with ``other``'s models added as columns: ``other``'s rows are matched
        by prompt id (a prompt it has that this data lacks, or a model both have, is a DataError);
        a prompt it lacks gets no responses from its models."""
        shared = sorted(set(self.models) & set(other.models))
        if shared:
            raise DataError(f"model {shared[0]!r} is in both datasets", path=other.source)
        index = {pid: i for i, pid in enumerate(self.prompt_ids)}
        unknown = [pid for pid in other.prompt_ids if pid not in index]
        if unknown:
            raise DataError(f"prompt {unknown[0]!r} is not one of this data's prompts", path=other.source)
        samples = max(self.quality.shape[2], other.quality.shape[2])
        rows = np.array([index[pid] for pid in other.prompt_ids], dtype=int)

        width = len(self.models)

        def widen(mine: np.ndarray, theirs: np.ndarray, empty: Any) -> np.ndarray:
            shape = (self.n_prompts, width + len(other.models)) + ((samples,) if mine.ndim == 3 else ())
            out = np.full(shape, empty, dtype=mine.dtype)
            if mine.ndim == 3:
                out[:, :width, : mine.shape[2]] = mine
                out[rows, width:, : theirs.shape[2]] = theirs
            else:
                out[:, :width] = mine
                out[rows, width:] = theirs
            return out

        return replace(
            self,
            models=self.models + other.models,
            prices=self.prices | other.prices,
            quality=widen(self.quality, other.quality, np.nan),
            input_cost=widen(self.input_cost, other.input_cost, np.nan),
            output_cost=widen(self.output_cost, other.output_cost, np.nan),
            input_tokens=widen(self.input_tokens, other.input_tokens, np.nan),
            output_tokens=widen(self.output_tokens, other.output_tokens, np.nan),
            responses=widen(self.responses, other.responses, None),
        )

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-ready metadata and the numeric arrays (what an artifact stores of a small dataset)."""
        meta = {
            "prompt_ids": self.prompt_ids,
            "texts": self.texts,
            "tasks": self.tasks,
            "references": self.references,
            "models": self.models,
            "prices": {name: price.model_dump() for name, price in self.prices.items()},
            "responses": self.responses.tolist(),
            "source": self.source,
            "reference_model": self.reference_model,
            "answer_rules": None if self.answer_rules is None else [list(rule) for rule in self.answer_rules],
        }
        arrays = {name: getattr(self, name) for name in NUMERIC_ARRAYS}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "RoutingDataset":
        responses = np.array(meta["responses"], dtype=object).reshape(np.shape(arrays["quality"]))
        rules = meta["answer_rules"]
        return cls(
            prompt_ids=list(meta["prompt_ids"]),
            texts=list(meta["texts"]),
            tasks=list(meta["tasks"]),
            references=list(meta["references"]),
            models=list(meta["models"]),
            prices={name: ModelPrice.model_validate(price) for name, price in meta["prices"].items()},
            responses=responses,
            source=meta["source"],
            reference_model=meta["reference_model"],
            answer_rules=None if rules is None else [(kind, pattern) for kind, pattern in rules],
            **{name: np.asarray(arrays[name], dtype=float) for name in NUMERIC_ARRAYS},
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
