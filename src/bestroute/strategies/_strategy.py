"""A prompt strategy: how a request is put to a model (a system prompt, a user template, sampling
parameters, a reasoning guide) and how its reply becomes an answer (as it is, or the printed
output of the program it wrote). Offline collection and the gateway shape requests and finish
replies through this one class, so recorded data and served traffic mean the same thing."""

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .._section import Section
from ..data import STRATEGY_NAME
from ._sandbox import ProgramResult, SandboxLimits, program_text, run_program

PROMPT = "{prompt}"
BLUEPRINT = "{blueprint}"
_PLACEHOLDER = re.compile(r"\{prompt\}|\{blueprint\}")

# The request fields a strategy may set; every backend kind takes the first three, and
# `reasoning_effort` is for models that reason (OpenAI o-series and gpt-5, vLLM's reasoning
# parsers); a backend that does not know it rejects the request, which the gateway fails over.
SAMPLING_FIELDS = ("temperature", "top_p", "max_tokens", "reasoning_effort")


class Strategy(Section):
    """One named way of asking.

    ``template`` is the user message with ``{prompt}`` where the request's last user message
    goes (and ``{blueprint}``, if any, where the blueprint goes); ``system`` is put before the
    conversation. With ``program`` the model is asked for Python, the last fenced block of its
    reply is run in the sandbox, and the answer is what it printed: the reply the client (and
    the selector) gets is the model's reply followed by ``Answer: <printed output>``, or by the
    reason the program gave no answer, which agrees with no other sample.
    """

    name: str = Field(pattern=STRATEGY_NAME, max_length=64)
    system: str | None = Field(default=None, description="a system message put before the conversation")
    template: str = Field(default=PROMPT, description="the user message; {prompt} is the request's")
    blueprint: str | None = Field(
        default=None, description="a reasoning guide for the task, written once by a large model ({blueprint})"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    program: bool = Field(default=False, description="program of thought: run the reply's Python")
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)

    @field_validator("template")
    @classmethod
    def _has_the_prompt(cls, value: str) -> str:
        if PROMPT not in value:
            raise ValueError(f"a template needs the {PROMPT} placeholder, where the request's prompt goes")
        return value

    @model_validator(mode="after")
    def _blueprint_has_a_place(self) -> "Strategy":
        placed = BLUEPRINT in self.template or (self.system is not None and BLUEPRINT in self.system)
        if self.blueprint is not None and not placed:
            raise ValueError(f"a blueprint needs the {BLUEPRINT} placeholder in the template or the system prompt")
        if self.blueprint is None and placed:
            raise ValueError(f"{BLUEPRINT} is used but the strategy has no blueprint")
        return self

    def shape(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The chat request ``body`` as this strategy sends it: the last user message's text put
        into the template, the system prompt before the conversation, and the strategy's
        sampling fields in place of the request's."""
        messages = [dict(m) for m in body.get("messages", [])]
        last = max((k for k, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last is not None:
            messages[last]["content"] = self._templated(messages[last].get("content"))
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self._fill(self.system, "")})
        shaped = dict(body) | {"messages": messages}
        for field in SAMPLING_FIELDS:
            if getattr(self, field) is not None:
                shaped[field] = getattr(self, field)
        return shaped

    async def finish(self, reply: str) -> str:
        """The reply as an answer: itself, or for a program strategy the reply and what its
        program printed (or why it printed nothing)."""
        if not self.program:
            return reply
        return self.finished(reply, await self.run(reply))

    async def run(self, reply: str) -> ProgramResult:
        """Run the program in ``reply`` (a program strategy's) in the sandbox."""
        return await run_program(program_text(reply), self.sandbox)

    @staticmethod
    def finished(reply: str, result: ProgramResult) -> str:
        tail = f"Answer: {result.output}" if result.ok else f"(no answer: {result.error})"
        return f"{reply.rstrip()}\n\n{tail}"

    def _templated(self, content: Any) -> Any:
        """A user message's content with its text put into the template; the other parts of a
        list of content parts (images) stay, after the text."""
        if isinstance(content, list):
            texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
            others = [p for p in content if not (isinstance(p, dict) and isinstance(p.get("text"), str))]
            return [{"type": "text", "text": self._fill(self.template, "\n".join(texts))}, *others]
        return self._fill(self.template, content if isinstance(content, str) else "")

    def _fill(self, text: str, prompt: str) -> str:
        # One pass: a prompt or blueprint that contains a placeholder's text keeps it as it is.
        values = {PROMPT: prompt, BLUEPRINT: self.blueprint or ""}
        return _PLACEHOLDER.sub(lambda match: values[match.group(0)], text)
