"""Property-based fuzzing with real servers on loopback: the gateway's HTTP API from its own
OpenAPI schema (schemathesis: inputs that fit the schema and inputs that do not), and a hostile
upstream whose answers hypothesis generates. No client input may get a 5xx, and no upstream
answer anything but a chat completion, a 502, or a stream that ends with [DONE] or an error event."""

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import Script, gateway, upstream


@pytest.fixture(scope="module")
def served_schema(tmp_path_factory, artifact):
    with (
        upstream(Script(answers=["42"])) as s,
        gateway(tmp_path_factory.mktemp("fuzz"), artifact, {"small": s.url, "big": s.url}) as (server, _),
    ):
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("served_schema")


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_5xx(case):
    response = case.call(timeout=30)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:  # every error is OpenAI-style JSON
        error = response.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
CHOICE = st.fixed_dictionaries(
    {
        "message": st.fixed_dictionaries(
            {"role": st.just("assistant"), "content": JSON}, optional={"tool_calls": JSON, "refusal": JSON}
        ),
        "finish_reason": JSON,
    },
    optional={"index": JSON, "logprobs": JSON},
)
COMPLETION = st.fixed_dictionaries({"choices": st.lists(CHOICE, max_size=3)}, optional={"usage": JSON, "id": JSON})
UPSTREAM_BODY = st.one_of(
    COMPLETION.map(json.dumps).map(str.encode), JSON.map(json.dumps).map(str.encode), st.binary(max_size=40)
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, artifact):
    script = Script()
    with (
        upstream(script) as s,
        gateway(
            tmp_path_factory.mktemp("hostile"), artifact, {"small": s.url, "big": s.url}, retries={"attempts": 1}
        ) as (server, _),
    ):
        yield script, server.url


@given(body=UPSTREAM_BODY, stream=st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_upstream_answer_gets_a_5xx_other_than_502(hostile, body, stream):
    script, url = hostile
    script.raw = b"data: " + body + b"\n\ndata: [DONE]\n\n" if stream else body
    response = httpx.post(
        url + "/v1/chat/completions",
        timeout=30,
        json={"model": "small", "stream": stream, "messages": [{"role": "user", "content": "q"}]},
    )
    assert response.status_code in (200, 502), response.text[:300]
    if response.status_code == 502 or not stream:
        document = response.json()  # a chat completion or an OpenAI-style error, never a broken body
        assert "error" in document or "choices" in document
    else:  # a relayed stream ends with [DONE] or an explicit error event
        events = [line for line in response.text.splitlines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]" or '"error"' in events[-1], events[-3:]


def test_an_oversized_upstream_answer_is_a_502(tmp_path, artifact):
    script = Script()
    with (
        upstream(script) as s,
        gateway(tmp_path, artifact, {"small": {"base_url": s.url, "max_response_bytes": 2**20}, "big": s.url}) as (
            server,
            _,
        ),
    ):
        script.raw = b'{"choices": [{"message": {"content": "' + b"x" * 2**21 + b'"}}]}'
        response = httpx.post(
            server.url + "/v1/chat/completions",
            timeout=30,
            json={"model": "small", "messages": [{"role": "user", "content": "q"}]},
        )
        assert (
            response.status_code == 502 and "over max_response_bytes (1048576)" in response.json()["error"]["message"]
        )
