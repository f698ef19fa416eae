"""Route only where a request can be served (issue 24, item 1 and the server quirks of item 5):
a request with tools, images, JSON output or a size a backend cannot take is never sent to it,
the response says which options were excluded and why, and a request none can take is a 400
before any upstream is called. Real upstream servers, a real gateway, a real llama.cpp server."""

import sqlite3

import httpx
import pytest
from servers import Script, gateway, upstream

from bestroute import ConfigError
from bestroute.backends import BackendConfig, Capabilities, Needs
from bestroute.serving import load_config

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
IMAGE = [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
]


def _chat(model: str, content, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def _notes(tmp_path) -> list[str]:
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        return [row[0] for row in db.execute("SELECT fallbacks FROM decisions ORDER BY created_at")]


@pytest.mark.parametrize(
    ("extra", "content", "small", "reason"),
    [
        ({"tools": TOOLS}, "What is the weather in Paris?", {"kind": "llama-cpp"}, "no tools"),
        ({}, IMAGE, {"kind": "ollama"}, "no image input"),
        ({"response_format": {"type": "json_object"}}, "Answer in JSON.", {"kind": "replay"}, "no JSON output"),
        (
            {"max_tokens": 500},
            "Tell me a story.",
            {"capabilities": {"max_output_tokens": 100}},
            "above its largest output",
        ),
        ({}, "word " * 200, {"capabilities": {"context_tokens": 100}}, "exceed its context window (100)"),
    ],
)
def test_a_request_is_never_sent_to_a_backend_that_cannot_take_it(tmp_path, artifact, extra, content, small, reason):
    """Threshold 0 makes small the router's choice for every prompt: each request here is one
    small cannot take, so big answers, small never sees it, and the response and the log say why."""
    small_script, big_script = Script(answers=["42"]), Script(answers=["42"])
    with (
        upstream(small_script) as s,
        upstream(big_script) as b,
        gateway(
            tmp_path, artifact, {"small": {"base_url": s.url} | small, "big": {"base_url": b.url, "kind": "openai"}}
        ) as (
            server,
            _,
        ),
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        plain = client.post("/v1/chat/completions", json=_chat("bestroute:0", "What is 2 plus 2?"))
        assert plain.status_code == 200 and plain.headers["x-bestroute-model"] == "small"  # the router's choice
        assert plain.json()["bestroute"]["excluded"] == {}
        seen = len(small_script.bodies)
        response = client.post("/v1/chat/completions", json=_chat("bestroute:0", content, **extra))
        assert response.status_code == 200, response.text
        assert response.headers["x-bestroute-model"] == "big"
        assert len(small_script.bodies) == seen  # not tried and failed: never sent
        excluded = response.json()["bestroute"]["excluded"]
        assert excluded and all(label.startswith("small") for label in excluded)
        assert all(why.startswith("small: ") and reason in why for why in excluded.values())
        direct = client.post("/v1/chat/completions", json=_chat("small", content, **extra))
        assert direct.status_code == 400 and direct.json()["error"]["code"] == "not_capable"
        assert reason in direct.json()["error"]["message"] and len(small_script.bodies) == seen
    notes = _notes(tmp_path)
    assert reason in notes[1] and "excluded (" in notes[1]


def test_a_request_no_backend_can_take_is_a_400_before_any_call(tmp_path, artifact):
    small_script, big_script = Script(answers=["42"]), Script(answers=["42"])
    backends = {"small": {"kind": "llama-cpp"}, "big": {"kind": "vllm"}}
    with (
        upstream(small_script) as s,
        upstream(big_script) as b,
        gateway(
            tmp_path, artifact, {n: {"base_url": u} | backends[n] for n, u in (("small", s.url), ("big", b.url))}
        ) as (
            server,
            _,
        ),
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        response = client.post("/v1/chat/completions", json=_chat("bestroute", IMAGE))
        streamed = client.post("/v1/chat/completions", json=_chat("bestroute", IMAGE, stream=True))
    for refused in (response, streamed):
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "not_capable" and error["type"] == "invalid_request_error"
        assert "no option can serve this request" in error["message"] and "no image input" in error["message"]
    assert small_script.bodies == [] and big_script.bodies == []


def test_capabilities_default_by_server_kind_and_declared_ones_win(tmp_path):
    image, tools = Needs(images=True), Needs(tools=True)
    assert BackendConfig(name="a", base_url="http://x/v1", kind="openai").refusal(image) is None
    assert BackendConfig(name="a", base_url="http://x/v1", kind="vllm").refusal(image) == "no image input"
    assert BackendConfig(name="a", base_url="http://x/v1", kind="llama-cpp").refusal(tools) == "no tools"
    declared = BackendConfig(name="a", base_url="http://x/v1", kind="llama-cpp", capabilities=Capabilities(tools=True))
    assert declared.refusal(tools) is None
    assert BackendConfig(name="a", base_url="http://x/v1").refusal(Needs(True, True, True, True, 10**6, 10**6)) is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: [{name: a, base_url: 'http://x/v1', kind: tgi}]\n")
    with pytest.raises(ConfigError, match="kind"):
        load_config(bad)
    bad.write_text("backends: [{name: a, base_url: 'http://x/v1', capabilities: {context_tokens: 0}}]\n")
    with pytest.raises(ConfigError, match="context_tokens"):
        load_config(bad)


def test_llama_cpp_gets_an_empty_content_for_an_assistant_tool_call(tmp_path, artifact, llama):
    """llama-cpp-python answers HTTP 500 to an assistant message with tool calls and no content,
    the form OpenAI's own clients send back; a backend of kind llama-cpp gets "" instead."""
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 20 C"},
    ]
    body = {"model": "x", "messages": messages, "max_tokens": 8}
    assert httpx.post(llama.url + "/v1/chat/completions", json=body, timeout=120).status_code == 500  # as it is
    small = {"base_url": llama.url, "kind": "llama-cpp", "capabilities": {"tools": True}, "timeout_s": 120}
    with (
        upstream(Script(answers=["42"])) as b,
        gateway(tmp_path, artifact, {"small": small, "big": b.url}) as (server, _),
    ):
        response = httpx.post(server.url + "/v1/chat/completions", json=body | {"model": "small"}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "small"


def test_embeddings_pass_through_to_the_named_or_default_backend(tmp_path, artifact):
    """/v1/embeddings goes to the backend its model names, else to passthrough.embeddings,
    under that backend's model id; its cost is priced from the usage it reports."""
    small_script, embedder_script = Script(answers=["42"]), Script()
    with (
        upstream(small_script) as s,
        upstream(Script(answers=["42"])) as b,
        upstream(embedder_script) as e,
    ):
        backends = {
            "small": s.url,
            "big": b.url,
            "embedder": {"base_url": e.url, "model": "all-minilm", "input_usd_per_mtok": 2.0},
        }
        with (
            gateway(tmp_path, artifact, backends, passthrough={"embeddings": "embedder"}) as (server, _),
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            named = client.post("/v1/embeddings", json={"model": "embedder", "input": ["two words", "and three more"]})
            default = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hello"})
            refused = client.post("/v1/embeddings", json={"model": "embedder", "input": [""]})
            broken = client.post("/v1/embeddings", json={"input": "hello"})
            metrics = client.get("/metrics").text
    assert named.status_code == 200, named.text
    assert [len(item["embedding"]) for item in named.json()["data"]] == [2, 2]
    assert named.headers["x-bestroute-model"] == "embedder"
    assert float(named.headers["x-bestroute-cost-usd"]) == pytest.approx(5 * 2.0 / 1e6)
    assert default.status_code == 200 and default.headers["x-bestroute-model"] == "embedder"
    assert [body["model"] for body in embedder_script.bodies[:2]] == ["all-minilm", "all-minilm"]
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input"  # the backend's own 400
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "model"
    assert 'bestroute_cost_usd_total{model="embedder"}' in metrics and small_script.bodies == []


def test_embeddings_without_a_backend_for_them_are_a_404(tmp_path, artifact):
    with (
        upstream(Script(answers=["42"])) as s,
        upstream(Script(answers=["42"])) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, _),
    ):
        response = httpx.post(server.url + "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hi"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_legacy_completions_pass_through_to_a_real_llama_cpp_server(tmp_path, artifact, llama):
    with (
        upstream(Script(answers=["42"])) as b,
        gateway(tmp_path, artifact, {"small": {"base_url": llama.url, "timeout_s": 120}, "big": b.url}) as (server, _),
    ):
        body = {"model": "small", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
        response = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
        streamed = httpx.post(server.url + "/v1/completions", json=body | {"stream": True}, timeout=120)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["object"] == "text_completion" and document["choices"][0]["text"].strip()
    assert response.headers["x-bestroute-model"] == "small" and document["usage"]["prompt_tokens"] > 0
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
