"""Wire formats of the gateway's endpoints (the OpenAI chat-completions subset it serves)."""

from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..backends import Needs, estimate_tokens

IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
JSON_FORMATS = frozenset({"json_object", "json_schema"})


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def has_image(self) -> bool:
        return isinstance(self.content, list) and any(
            isinstance(part, dict) and part.get("type") in IMAGE_PARTS for part in self.content
        )

    def uses_tools(self) -> bool:
        extra = self.model_extra or {}
        return self.role == "tool" or bool(extra.get("tool_calls")) or bool(extra.get("function_call"))

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(str(part.get("text", "")) for part in self.content if isinstance(part, dict))
        return self.content or ""


class RequestConstraints(BaseModel):
    """A client's limits on how its request is routed (the body's ``bestroute`` field, or the
    x-bestroute-* headers of CONSTRAINT_HEADERS)."""

    model_config = ConfigDict(extra="forbid")

    allowed_models: list[str] | None = Field(default=None, description="only options whose every model is one of these")
    excluded_models: list[str] | None = Field(default=None, description="no option that calls one of these")
    max_cost_usd: float | None = Field(default=None, ge=0, description="the option's expected cost per request")
    max_latency_ms: float | None = Field(default=None, gt=0, description="the option's expected latency")
    min_quality: float | None = Field(default=None, ge=0, le=1, description="the option's predicted score")

    def given(self) -> bool:
        return any(getattr(self, name) is not None for name in type(self).model_fields)


NO_CONSTRAINTS = RequestConstraints()


CONSTRAINT_HEADERS = {
    "x-bestroute-allowed-models": "allowed_models",
    "x-bestroute-excluded-models": "excluded_models",
    "x-bestroute-max-cost-usd": "max_cost_usd",
    "x-bestroute-max-latency-ms": "max_latency_ms",
    "x-bestroute-min-quality": "min_quality",
}


class ChatCompletionRequest(BaseModel):
    """Fields the gateway reads; any other OpenAI parameter is passed to the upstream as is."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = Field(default=False, strict=True)  # "true" or 1 is not a boolean
    n: int = Field(default=1, strict=True)  # "2", 2.0 or true is not a number of choices
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    bestroute: RequestConstraints | None = None  # the gateway's own: never sent upstream

    # Routing, judging, accounting and the log all read the prompt: joined once (a long
    # conversation is a megabyte to copy); the messages are not changed after validation. Cached
    # in the instance's __dict__: pydantic's private attributes cost a __getattr__ on every read.
    @cached_property
    def needs(self) -> Needs:
        """What a backend must take to serve this request: tools, images, JSON output, streaming,
        and its estimated size."""
        extra = self.model_extra or {}
        response_format = extra.get("response_format")
        asked = extra.get("max_completion_tokens", self.max_tokens)
        return Needs(
            tools=bool(extra.get("tools") or extra.get("functions")) or any(m.uses_tools() for m in self.messages),
            images=any(m.has_image() for m in self.messages),
            json_output=isinstance(response_format, dict) and response_format.get("type") in JSON_FORMATS,
            streaming=self.stream,
            input_tokens=estimate_tokens(self.prompt_text) + 4 * len(self.messages),
            output_tokens=asked if isinstance(asked, int) and not isinstance(asked, bool) else None,
        )

    @cached_property
    def prompt_text(self) -> str:
        """The text the router sees: the conversation's messages, one per line."""
        return "\n".join(m.text() for m in self.messages)

    def upstream_body(self, model: str, *, n: int, stream: bool) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True, exclude={"model", "n", "stream", "bestroute"})
        body |= {"model": model, "stream": stream}
        if n > 1:
            body["n"] = n
        return body


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="the id of a chat completion this gateway returned")
    quality: float = Field(ge=0, le=1, description="how good the answer was, 0 to 1")
    comment: str | None = Field(default=None, max_length=4000)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
