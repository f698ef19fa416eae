"""The replay server. A request names a model and sends a prompt; the answer is that model's
recorded response to that prompt (the prompt's text is matched exactly, as the messages' texts
joined by newlines), with its recorded token usage. ``n`` draws consecutive recorded samples
from the one the FIRST_SAMPLE_HEADER names (default 0), so a staged option gets the samples
offline evaluation gives it. An unknown model or prompt, or more samples than were recorded, is
an OpenAI-style error: nothing is made up."""

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .._exceptions import ConfigError
from ..backends import FIRST_SAMPLE_HEADER
from ..data import RoutingDataset, arm_name, arm_parts
from ..strategies import Strategy


@dataclass(frozen=True)
class Latency:
    """How long a model takes to answer: ``base_ms`` plus ``per_token_ms`` per output token."""

    base_ms: float = 0.0
    per_token_ms: float = 0.0

    def seconds(self, output_tokens: int) -> float:
        return (self.base_ms + self.per_token_ms * output_tokens) / 1000


_LATENCY = re.compile(r"(?:(?P<model>[^=]+)=)?(?P<base>\d+(?:\.\d+)?)(?:\+(?P<per>\d+(?:\.\d+)?))?")


def parse_latency(specs: list[str]) -> tuple[Latency, dict[str, Latency]]:
    """``[MODEL=]BASE_MS[+PER_TOKEN_MS]`` specs: the default latency (a spec without a model) and
    each named model's. ConfigError names a spec that is not of that form."""
    default, by_model = Latency(), {}
    for spec in specs:
        found = _LATENCY.fullmatch(spec.strip())
        if found is None:
            raise ConfigError(f"latency {spec!r} is not [MODEL=]BASE_MS[+PER_TOKEN_MS], e.g. gpt-4o=300+0.02")
        latency = Latency(float(found["base"]), float(found["per"] or 0.0))
        if found["model"]:
            by_model[found["model"].strip()] = latency
        else:
            default = latency
    return default, by_model


class ReplayData:
    """A routing dataset indexed for replay: prompts by text, models by name. With
    ``strategies`` (the gateway's), a request shaped by one of them is answered from that arm
    (``model@strategy``): each prompt is indexed as each strategy sends it."""

    def __init__(self, data: RoutingDataset, strategies: Sequence[Strategy] = ()) -> None:
        if not any(r is not None for r in data.responses.flat):
            raise ConfigError(f"{data.source}: the data has no response texts to replay")
        self.data = data
        self.models = {model: j for j, model in enumerate(data.models)}
        self.backends = sorted({arm_parts(m)[0] for m in data.models})
        self.prompts: dict[str, list[tuple[int, str | None]]] = {}
        for i, text in enumerate(data.texts):
            self.prompts.setdefault(text, []).append((i, None))
            for strategy in strategies:
                body = strategy.shape({"messages": [{"role": "user", "content": text}]})
                self.prompts.setdefault(_prompt(body["messages"]) or "", []).append((i, strategy.name))

    def find(self, model: str, prompt: str) -> tuple[int, int] | str:
        """(prompt row, arm column) of a request to ``model`` with ``prompt``; or why there is none."""
        if model not in self.backends:
            return f"model {model!r} is not in the replayed data"
        for i, strategy in self.prompts.get(prompt, []):
            j = self.models.get(arm_name(model, strategy))
            if j is not None:
                return i, j
        return f"model {model!r} has no recorded answer to this prompt"

    def samples(self, i: int, j: int, first: int, n: int) -> list[tuple[str, int]] | str:
        """(text, output tokens) of the ``n`` recorded samples of prompt ``i`` by arm ``j`` from
        sample ``first``; or why there are none."""
        model = self.data.models[j]
        found = []
        for k in range(first, first + n):
            text = self.data.responses[i, j, k] if k < self.data.responses.shape[2] else None
            if text is None or np.isnan(self.data.quality[i, j, k]):
                return f"model {model!r} has {k} recorded samples for this prompt; asked for {first + n}"
            found.append((str(text), int(self.data.output_tokens[i, j, k])))
        return found


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status)


def _prompt(messages: Any) -> str | None:
    """The messages' texts joined by newlines (as the gateway's router reads them), or None."""
    if not isinstance(messages, list) or not messages:
        return None
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        texts.append(content if isinstance(content, str) else "")
    return "\n".join(texts)


def create_replay_app(
    replay: ReplayData, *, latency: Latency = Latency(), latencies: dict[str, Latency] | None = None
) -> FastAPI:
    """The replay server's app: ``POST /v1/chat/completions`` and ``GET /v1/models``."""
    app = FastAPI(title="bestroute replay")
    by_model = latencies or {}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "replay"} for m in replay.backends]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "request body is not valid JSON", "invalid_json")
        if not isinstance(body, dict):
            return _error(400, "request body is not a JSON object", "invalid_json")
        model, n, stream = body.get("model"), body.get("n", 1), body.get("stream", False)
        prompt = _prompt(body.get("messages"))
        first = request.headers.get(FIRST_SAMPLE_HEADER, "0")
        if not isinstance(model, str) or prompt is None:
            return _error(400, "model and messages are required", "invalid_request", "messages")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1 or not first.isdigit():
            return _error(400, f"n must be a whole number >= 1 and {FIRST_SAMPLE_HEADER} one >= 0", "invalid_n", "n")
        where = replay.find(model, prompt)
        if isinstance(where, str):
            code = "model_not_found" if "not in the replayed data" in where else "not_recorded"
            return _error(404, where, code, "model" if code == "model_not_found" else "messages")
        i, j = where
        found = replay.samples(i, j, int(first), n)
        if isinstance(found, str):
            return _error(404, found, "not_recorded", "messages")
        input_tokens = int(replay.data.input_tokens[i, j])
        output_tokens = sum(tokens for _, tokens in found)
        await asyncio.sleep(by_model.get(model, latency).seconds(output_tokens))
        usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}
        usage["total_tokens"] = input_tokens + output_tokens
        created = int(time.time())
        if stream is True:
            return StreamingResponse(_chunks(model, found[0][0], usage, created), media_type="text/event-stream")
        choices = [
            {"index": k, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            for k, (text, _) in enumerate(found)
        ]
        return JSONResponse(
            {
                "id": f"replay-{i}-{j}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
            }
        )

    return app


async def _chunks(model: str, text: str, usage: dict[str, int], created: int) -> AsyncIterator[bytes]:
    """A recorded answer as a stream: the role, the text in pieces of a few words, the finish,
    the usage, [DONE]."""
    base = {"id": "replay", "object": "chat.completion.chunk", "created": created, "model": model}

    def event(document: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(base | document).encode() + b"\n\n"

    yield event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    for piece in re.findall(r"\S*\s*", text):
        if piece:
            yield event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    yield event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    yield event({"choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"
