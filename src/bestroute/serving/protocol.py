"""Wire formats of the gateway's endpoints (the OpenAI chat-completions subset it serves)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(str(part.get("text", "")) for part in self.content if isinstance(part, dict))
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """Fields the gateway reads; any other OpenAI parameter is passed to the upstream as is."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = Field(default=False, strict=True)  # "true" or 1 is not a boolean
    n: int = Field(default=1, strict=True)  # "2", 2.0 or true is not a number of choices
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)

    # Routing, judging, accounting and the log all read the prompt: joined once (a long
    # conversation is a megabyte to copy); the messages are not changed after validation.
    _prompt: str | None = PrivateAttr(default=None)

    def prompt_text(self) -> str:
        """The text the router sees: the conversation's messages, one per line."""
        if self._prompt is None:
            self._prompt = "\n".join(m.text() for m in self.messages)
        return self._prompt

    def upstream_body(self, model: str, *, n: int, stream: bool) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True, exclude={"model", "n", "stream"})
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
