"""Records of the routing-data exchange format (see docs/data-format.md)."""

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator

# A strategy's responses are a column of their own, an "arm": "model@strategy" (a model name has
# no "@"; see docs/data-format.md). Routers learn over arms as over models.
ARM_SEPARATOR = "@"
STRATEGY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def arm_name(model: str, strategy: str | None) -> str:
    """The column of ``model``'s responses under ``strategy`` (None: the request as sent)."""
    return model if strategy is None else f"{model}{ARM_SEPARATOR}{strategy}"


def arm_parts(arm: str) -> tuple[str, str | None]:
    """(model, strategy or None) of an arm name."""
    model, separator, strategy = arm.partition(ARM_SEPARATOR)
    return model, strategy if separator else None


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
    # The prompt strategy the response was sampled under (absent: the prompt as sent).
    strategy: str | None = Field(default=None, pattern=STRATEGY_NAME, max_length=64)
    sample: int = Field(default=0, ge=0)
    quality: float
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    response: str | None = None
    # Data that knows the billed cost (RouterBench) gives it instead of relying on prices.
    cost_usd: float | None = Field(default=None, ge=0)

    @field_validator("model")
    @classmethod
    def _no_separator(cls, value: str) -> str:
        if ARM_SEPARATOR in value:
            raise ValueError(f"a model name has no {ARM_SEPARATOR!r} (a strategy goes in the strategy field)")
        return value

    @property
    def arm(self) -> str:
        return arm_name(self.model, self.strategy)

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
