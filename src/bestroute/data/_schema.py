"""Records of the routing-data exchange format (see docs/data-format.md)."""

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PromptRecord(_Record):
    """One prompt: the full text a model is sent, plus optional task, reference answer and how its
    answers are read (a type and a regular expression; see ``bestroute.selection.AnswerSpec``)."""

    prompt_id: str = Field(min_length=1)
    prompt: str
    task: str | None = None
    reference: str | None = None
    answer_type: str | None = None
    answer_pattern: str | None = None

    @field_validator("reference", mode="before")
    @classmethod
    def _reference_as_text(cls, value: object) -> object:
        return None if value is None else str(value)


class ResponseRecord(_Record):
    """One sampled response of one model to one prompt, with its quality and token counts."""

    prompt_id: str = Field(min_length=1)
    model: str = Field(min_length=1)
    sample: int = Field(default=0, ge=0)
    quality: float
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    response: str | None = None
    # Data that knows the billed cost (RouterBench) gives it instead of relying on prices.
    cost_usd: float | None = Field(default=None, ge=0)

    @field_validator("quality")
    @classmethod
    def _quality_in_unit_interval(cls, value: float) -> float:
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"quality must be a number in [0, 1], got {value}")
        return value


class ModelPrice(_Record):
    """Price of a model in USD per million input and output tokens."""

    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6
