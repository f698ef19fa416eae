"""The gateway end to end: real uvicorn servers on loopback, driven with the official openai client."""

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import yaml
from servers import (
    Script,
    ServerThread,
    ask,
    fake_upstream,
    gateway,
    reward_model,
    smollm2_gguf,
    upstream,
)

from bestroute import ArtifactError, BestRouteRouter, ConfigError, load_dataset, split_prompts
from bestroute.reward import RewardModel
from bestroute.routers import load_router
from bestroute.serving import create_app, load_config


def rows(tmp_path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM decisions ORDER BY created_at")]


def test_threshold_picks_the_option_and_reports_it(tmp_path, artifact):
    small, big = Script(answers=["42"]), Script(answers=["It is 42."])
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (_, client),
    ):
        cheap, headers = ask(client, "bestroute:0")
        assert cheap.model == "small" and headers["x-bestroute-model"] == "small"
        assert headers["x-bestroute-n"] == "1" and headers["x-bestroute-threshold"] == "0"
        assert cheap.choices[0].message.content == "42"
        extra = cheap.model_extra["bestroute"]
        assert extra["option"] == "small" and "big" in extra["scores"] and "tiny" not in extra["scores"]
        strict, headers = ask(client, "bestroute:1")
        assert strict.model == "big" and headers["x-bestroute-model"] == "big"
        assert big.bodies[-1]["model"] == "big"
        # Cost: 10 prompt + 5 completion tokens at $1 / $2 per million.
        assert strict.model_extra["bestroute"]["cost_usd"] == pytest.approx((10 * 1 + 5 * 2) / 1e6)
        default, headers = ask(client)  # model "bestroute": the artifact's default operating point
        router = load_router(artifact)
        served = np.array([o.model in ("small", "big") for o in router.options_])[None, :]
        assessed = router.assess(["What is six times seven?"])
        expected = router.options_[int(router.decide(assessed, router.default_knob(), served)[0])]
        assert default.model == expected.model and headers["x-bestroute-n"] == str(expected.n)
        models = {m.id for m in client.models.list().data}
        assert models == {"bestroute", "small", "big"}


def test_best_of_n_majority_counts_every_sample(tmp_path, artifact):
    small = Script(answers=['{"answer": "42"}', '{"answer": "7"}', '{"answer": "42"}'])
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (_, client),
    ):
        answer, headers = ask(client, "bestroute:0.95")
        assert headers["x-bestroute-n"] == "3" and answer.model == "small"
        assert len(small.bodies) == 3 and all("n" not in body for body in small.bodies)  # n requests
        assert '"42"' in answer.choices[0].message.content and len(answer.choices) == 1
        assert answer.usage.prompt_tokens == 30 and answer.usage.completion_tokens == 15
        assert answer.model_extra["bestroute"]["selector"] == "consensus"
        assert float(headers["x-bestroute-cost-usd"]) == pytest.approx((30 + 15 * 2) / 1e6)


def test_best_of_n_uses_the_n_parameter_where_supported(tmp_path, artifact):
    small = Script(answers=["7", "42", "42"])
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": {"base_url": s.url, "supports_n": True}, "big": b.url}) as (_, c),
    ):
        answer, _ = ask(c, "bestroute:0.95")
        assert len(small.bodies) == 1 and small.bodies[0]["n"] == 3
        assert answer.choices[0].message.content == "42"
        assert answer.usage.prompt_tokens == 10 and answer.usage.completion_tokens == 15


def test_reward_model_selector(tmp_path, artifact):
    small = Script(answers=["42", "7", "42"])
    reward = ServerThread(reward_model(prefer="7")).start()
    try:
        with (
            upstream(small) as s,
            upstream(Script()) as b,
            gateway(
                tmp_path,
                artifact,
                {"small": s.url, "big": b.url},
                selector={"kind": "reward", "url": reward.url + "/score"},
            ) as (_, client),
        ):
            answer, _ = ask(client, "bestroute:0.95")
            assert answer.choices[0].message.content == "7"
            assert answer.model_extra["bestroute"]["selector"] == "reward"
    finally:
        reward.stop()


def test_llm_judge_selector(tmp_path, artifact):
    small = Script(answers=["alpha", "beta", "gamma"])
    judge = Script(answers=["2"])
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        upstream(judge) as j,
        gateway(
            tmp_path,
            artifact,
            {"small": s.url, "big": b.url, "judge": j.url},
            selector={"kind": "judge", "backend": "judge"},
        ) as (_, client),
    ):
        answer, _ = ask(client, "bestroute:0.95")
        assert "Answer 3:" in judge.bodies[0]["messages"][0]["content"]
        # Samples arrive concurrently; the judge named the second of them.
        assert len(small.bodies) == 3
        assert answer.model_extra["bestroute"]["selected_sample"] == 1
        second = re.search(r"Answer 2:\n(\w+)", judge.bodies[0]["messages"][0]["content"])
        assert second is not None and answer.choices[0].message.content == second.group(1)


def test_streaming_relays_and_replays_best_of_n(tmp_path, artifact):
    small = Script(answers=["the answer is 42"])
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (_, client),
    ):
        chunks = list(
            client.chat.completions.create(
                model="bestroute:0", messages=[{"role": "user", "content": "q"}], stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "the answer is 42"
        assert all(c.model == "small" for c in chunks)
        assert chunks[-1].usage.completion_tokens > 0
        small.answers = ["42", "42", "7"]
        chunks = list(
            client.chat.completions.create(
                model="bestroute:0.95", messages=[{"role": "user", "content": "q"}], stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "42"
        assert chunks[-1].model_extra["bestroute"]["n"] == 3


def test_fallback_on_errors_before_the_first_chunk(tmp_path, artifact):
    small, big = Script(always=500), Script(answers=["from big"])
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (_, client),
    ):
        answer, headers = ask(client, "bestroute:0")
        assert answer.model == "big" and headers["x-bestroute-model"] == "big"
        assert len(small.bodies) == 2  # two attempts (retry) before falling back
        assert "HTTP 500" in answer.model_extra["bestroute"]["fallbacks"][0]
        small.always = "drop-stream"
        chunks = list(
            client.chat.completions.create(
                model="bestroute:0", messages=[{"role": "user", "content": "q"}], stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from big"


def test_retry_after_429_and_timeout_falls_back(tmp_path, artifact):
    small, big = Script(failures=[429], answers=["ok"]), Script(answers=["big"])
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": {"base_url": s.url, "timeout_s": 0.5}, "big": b.url}) as (_, c),
    ):
        answer, _ = ask(c, "bestroute:0")
        assert answer.model == "small" and len(small.bodies) == 2
        small.delay_s = 3.0
        answer, _ = ask(c, "bestroute:0")
        assert answer.model == "big" and "timed out" in answer.model_extra["bestroute"]["fallbacks"][0]


def test_upstream_dies_mid_test_and_circuit_breaks(tmp_path, artifact):
    big = Script(answers=["big"])
    small_script = Script(answers=["small"])
    small = ServerThread(fake_upstream(small_script)).start()
    port = small.port
    with (
        upstream(big) as b,
        gateway(
            tmp_path, artifact, {"small": small.url, "big": b.url}, circuit_breaker={"failures": 2, "reset_s": 1.0}
        ) as (server, client),
    ):
        assert ask(client, "bestroute:0")[0].model == "small"
        small.stop()  # the upstream dies
        for _ in range(2):
            answer, _ = ask(client, "bestroute:0")
            assert answer.model == "big" and "connection failed" in answer.model_extra["bestroute"]["fallbacks"][0]
        # Two consecutive failures opened the circuit: the dead backend is skipped outright.
        answer, _ = ask(client, "bestroute:0")
        assert answer.model_extra["bestroute"]["fallbacks"] == ["small: backend 'small': circuit open"]
        assert httpx.get(server.url + "/healthz").json()["backends"]["small"] == "open"
        assert 'bestroute_circuit_open{backend="small"} 1.0' in httpx.get(server.url + "/metrics").text
        revived = ServerThread(fake_upstream(small_script), port=port).start()  # it comes back
        try:
            time.sleep(1.1)
            answer, _ = ask(client, "bestroute:0")  # the ejection has expired: traffic flows again
            assert answer.model == "small"
            assert httpx.get(server.url + "/healthz").json()["backends"]["small"] == "closed"
        finally:
            revived.stop()


def test_all_backends_failing_is_a_502_not_a_500(tmp_path, artifact):
    with (
        upstream(Script(always=503)) as s,
        upstream(Script(always=503)) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (_, client),
    ):
        with pytest.raises(openai.APIStatusError) as info:
            ask(client, "bestroute:0")
        assert info.value.status_code == 502
        assert info.value.body["type"] == "upstream_error"
        assert "HTTP 503 (injected)" in info.value.body["message"]  # what the upstream said, not only its status


def test_a_502_says_what_the_upstream_said_on_one_line_without_the_key(tmp_path, artifact, monkeypatch):
    monkeypatch.setenv("BIG_KEY", "sk-secret-123")
    text_body = b"model crashed:\n  out of memory\n" + b"x" * 5000
    echo = json.dumps({"error": {"message": "bad key sk-secret-123 for this org"}}).encode()
    with upstream(Script(always=500, error_body=text_body)) as s, upstream(Script(always=401, error_body=echo)) as b:
        backends = {"small": s.url, "big": {"base_url": b.url, "api_key_env": "BIG_KEY"}}
        with gateway(tmp_path, artifact, backends) as (_, client), pytest.raises(openai.APIStatusError) as info:
            ask(client, "bestroute:0")
    message = info.value.body["message"]
    assert info.value.status_code == 502
    assert "backend 'small': HTTP 500 (model crashed: out of memory xxx" in message
    assert "backend 'big': HTTP 401 (bad key [key] for this org)" in message
    assert "sk-secret" not in message and "\n" not in message and len(message) < 1000


def test_estimated_usage_is_flagged_in_headers_body_and_log(tmp_path, artifact):
    with (
        upstream(Script(usage={})) as s,  # reports no token counts
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (_, client),
    ):
        estimated, estimated_headers = ask(client, "small", text="What is six times seven, exactly?")
        reported, reported_headers = ask(client, "big")
        chunks = list(
            client.chat.completions.create(model="big", messages=[{"role": "user", "content": "q"}], stream=True)
        )
    details = estimated.model_extra["bestroute"]
    assert estimated_headers["x-bestroute-usage-estimated"] == "true"
    assert details["usage_estimated"] is True and details["calls"][0]["tokens_estimated"] is True
    # characters / 4 of the prompt and of the answer "42"
    assert estimated.usage.prompt_tokens == 9 and estimated.usage.completion_tokens == 1
    assert "x-bestroute-usage-estimated" not in reported_headers
    assert reported.model_extra["bestroute"]["usage_estimated"] is False
    assert chunks[-1].model_extra["bestroute"]["usage_estimated"] is True  # the fake stream sends no usage
    assert [r["usage_estimated"] for r in rows(tmp_path)] == [1, 0, 1]


def test_client_disconnect_cancels_the_upstream_request(tmp_path, artifact):
    small = Script(delay_s=3.0)
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": {"base_url": s.url, "timeout_s": 10}, "big": b.url}) as (g, _),
    ):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                g.url + "/v1/chat/completions",
                timeout=0.5,
                json={"model": "bestroute:0", "messages": [{"role": "user", "content": "q"}]},
            )
        deadline = time.monotonic() + 3
        while small.disconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert small.disconnects == 1
    assert rows(tmp_path)[-1]["status"] == 499


def test_auth_and_no_key_leaks(tmp_path, artifact, monkeypatch, caplog):
    monkeypatch.setenv("CLIENT_KEYS", "key-one,key-two")
    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream-secret")
    small = Script(answers=["42"])
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(
            tmp_path,
            artifact,
            {"small": {"base_url": s.url, "api_key_env": "UPSTREAM_KEY"}, "big": b.url},
            client_api_keys_env="CLIENT_KEYS",
        ) as (server, _),
    ):
        wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            ask(wrong, "bestroute:0")
        assert info.value.body["code"] == "invalid_api_key"
        missing = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "bestroute", "messages": [{"role": "user", "content": "q"}]},
        )
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
        assert httpx.get(server.url + "/v1/models").status_code == 401
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="key-two", max_retries=0)
        answer, _ = ask(good, "bestroute:0")
        assert answer.model == "small"
        assert small.headers[-1]["authorization"] == "Bearer sk-upstream-secret"
        small.always = 500
        answer, _ = ask(good, "bestroute:0")
        assert "sk-upstream-secret" not in answer.model_dump_json()
    stored = "".join(str(v) for row in rows(tmp_path) for v in row.values())
    assert "key-two" not in stored and "sk-upstream-secret" not in stored
    assert "key-two" not in caplog.text and "sk-upstream-secret" not in caplog.text


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        (b"{not json", 400, None),
        ({"messages": [{"role": "user", "content": "q"}]}, 422, "model"),
        ({"model": "bestroute"}, 422, "messages"),
        ({"model": "bestroute", "messages": "hello"}, 422, "messages"),
        ({"model": "bestroute", "messages": [{"role": "wizard", "content": "q"}]}, 422, "messages.0.role"),
        (
            {"model": "bestroute", "messages": [{"role": "user", "content": "q"}], "temperature": "hot"},
            422,
            "temperature",
        ),
        ({"model": "gpt-9", "messages": [{"role": "user", "content": "q"}]}, 404, "model"),
        ({"model": "small", "messages": [{"role": "user", "content": "q"}], "n": 9}, 400, "n"),
        ({"model": "small", "messages": [{"role": "user", "content": "q"}], "n": 0}, 400, "n"),
        ({"model": "bestroute", "messages": [{"role": "user", "content": "q"}], "n": 2}, 400, "n"),
        ({"model": "bestroute:abc", "messages": [{"role": "user", "content": "q"}]}, 400, "model"),
        ({"model": "bestroute:1.5", "messages": [{"role": "user", "content": "q"}]}, 400, "model"),
        ({"model": "bestroute", "messages": [{"role": "user", "content": "q"}] * 20}, 413, "messages"),
        ({"model": "bestroute", "messages": [{"role": "user", "content": "x" * 5000}]}, 413, None),
        ([1, 2, 3], 422, None),
    ],
)
def test_bad_input_gets_openai_style_errors(tmp_path, artifact, payload, status, param):
    with (
        upstream(Script()) as s,
        upstream(Script()) as b,
        gateway(
            tmp_path, artifact, {"small": s.url, "big": b.url}, limits={"max_body_bytes": 4096, "max_messages": 10}
        ) as (server, _),
    ):
        kwargs = {"content": payload} if isinstance(payload, bytes) else {"json": payload}
        response = httpx.post(
            server.url + "/v1/chat/completions", headers={"content-type": "application/json"}, **kwargs
        )
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"] and error["type"]
        assert error["param"] == param
        assert "Traceback" not in response.text


def test_decision_log_feedback_and_export(tmp_path, artifact):
    with (
        upstream(Script(answers=["42"])) as s,
        upstream(Script(answers=["big"])) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, client),
    ):
        first, _ = ask(client, "bestroute:0", text="What is six times seven?")
        second, _ = ask(client, "bestroute:1", text="Name the answer to everything.")
        feedback = httpx.post(server.url + "/v1/feedback", json={"id": first.id, "quality": 1.0})
        assert feedback.status_code == 200
        assert httpx.post(server.url + "/v1/feedback", json={"id": "nope", "quality": 1}).status_code == 404
        assert httpx.post(server.url + "/v1/feedback", json={"id": first.id, "quality": 3}).status_code == 422
        metrics = httpx.get(server.url + "/metrics").text
        assert 'bestroute_requests_total{model="small",n="1",status="200"} 1.0' in metrics
    logged = {r["id"]: r for r in rows(tmp_path)}  # the server has shut down: every row is there
    assert set(logged) == {first.id, second.id}
    row = logged[first.id]
    assert row["model"] == "small" and row["n"] == 1 and row["status"] == 200 and row["threshold"] == 0
    assert row["prompt"] == "What is six times seven?" and len(row["prompt_hash"]) == 64
    assert row["prompt_tokens"] == 10 and row["completion_tokens"] == 5 and row["cost_usd"] > 0
    assert logged[second.id]["model"] == "big"
    from typer.testing import CliRunner

    from bestroute.cli import app

    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["log", "export", "--config", str(tmp_path / "gateway.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    exported = load_dataset(out)
    assert exported.prompt_ids == [first.id]  # only the request with feedback
    assert exported.models == ["small"] and exported.quality[0, 0, 0] == 1.0
    as_parquet = tmp_path / "parquet"
    command = ["log", "export", "--config", str(tmp_path / "gateway.yaml"), "--out", str(as_parquet)]
    result = CliRunner().invoke(app, [*command, "--format", "parquet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in as_parquet.iterdir()) == ["models.json", "prompts.parquet", "responses.parquet"]
    again = load_dataset(as_parquet)
    assert again.prompt_ids == exported.prompt_ids and again.texts == exported.texts
    assert (again.quality == exported.quality).all() and (again.responses == exported.responses).all()
    assert CliRunner().invoke(app, [*command, "--format", "csv"]).exit_code != 0


def test_config_errors_are_clear(tmp_path, artifact):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"router": str(artifact), "backends": [{"name": "small"}]}))
    with pytest.raises(ConfigError, match=r"backends.0.base_url: Field required"):
        load_config(path)
    path.write_text(
        yaml.safe_dump({"router": str(artifact), "backends": [{"name": "small", "base_url": "http://127.0.0.1:9/v1"}]})
    )
    with pytest.raises(ConfigError, match="reference model 'big' has no backend"):
        create_app(load_config(path))
    path.write_text(
        yaml.safe_dump(
            {
                "router": str(artifact),
                "backends": [
                    {"name": "big", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "BESTROUTE_TEST_UNSET_KEY"}
                ],
            }
        )
    )
    with pytest.raises(ConfigError, match="BESTROUTE_TEST_UNSET_KEY is not set"):
        create_app(load_config(path))
    path.write_text("router: [unclosed")
    with pytest.raises(ConfigError, match="cannot read YAML"):
        load_config(path)


def test_real_local_model_routing_best_of_n_streaming_and_failover(tmp_path, artifact, llama):
    """SmolLM2-135M under llama.cpp's server is the cheap backend; it returns one choice even
    when asked for n, so best-of-n sends n requests. It runs under `bestroute local serve`, which
    says where it listens before the model loads."""
    assert llama.output().startswith(
        f"local model {smollm2_gguf()} ({smollm2_gguf()}, 2 threads, context 1024 tokens) "
        f"at http://127.0.0.1:{llama.port}/v1 once it has loaded\n"
    )
    big = Script(answers=["Paris"])
    with (
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": {"base_url": llama.url, "timeout_s": 60}, "big": b.url}) as (_, client),
    ):
        kwargs = {"max_tokens": 12, "temperature": 0.8}
        answer, headers = ask(client, "bestroute:0", text="What is the capital of France?", **kwargs)
        assert answer.model == "small" and headers["x-bestroute-n"] == "1"
        assert answer.choices[0].message.content.strip()
        single_prompt_tokens = answer.usage.prompt_tokens
        assert single_prompt_tokens > 5 and 0 < answer.usage.completion_tokens <= 12
        best, headers = ask(client, "bestroute:0.95", text="What is the capital of France?", **kwargs)
        assert best.model == "small" and headers["x-bestroute-n"] == "3"
        assert best.usage.prompt_tokens == 3 * single_prompt_tokens  # every sample is counted
        assert best.model_extra["bestroute"]["selector"] == "consensus"
        chunks = list(
            client.chat.completions.create(
                model="bestroute:0", messages=[{"role": "user", "content": "Say hello."}], stream=True, **kwargs
            )
        )
        assert all(c.model == "small" for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
        # A prompt over its 1,024-token context: llama.cpp answers 400 context_length_exceeded.
        for _ in range(5):
            answer, _ = ask(client, "bestroute:0", text="word " * 1500, **kwargs)
            assert answer.model == "big" and "HTTP 400" in answer.model_extra["bestroute"]["fallbacks"][0]
        with pytest.raises(openai.BadRequestError) as rejected:
            ask(client, "small", text="word " * 1500, **kwargs)
        assert rejected.value.code == "context_length_exceeded"
        assert ask(client, "bestroute:0", text="What is the capital of France?", **kwargs)[0].model == "small"
        llama.stop()  # the local model server dies mid-test
        answer, headers = ask(client, "bestroute:0", text="What is the capital of France?", **kwargs)
        assert answer.model == "big" and headers["x-bestroute-model"] == "big"
        assert "connection failed" in answer.model_extra["bestroute"]["fallbacks"][0]


def _streamed(url: str, model: str) -> tuple[httpx.Response, list[str]]:
    """A streamed chat completion from the gateway at ``url``: its response and its data lines."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "q"}]}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body) as response:
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    return response, events


def test_stream_breaking_after_it_started_ends_with_an_error_event(tmp_path, artifact):
    small = Script(answers=["one two three"], always="break-stream")
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, _),
    ):
        response, events = _streamed(server.url, "bestroute:0")
        assert response.status_code == 200 and response.headers["x-bestroute-model"] == "small"
        assert '"content":"one"' in events[0]
        assert '"upstream_error"' in events[-1]  # no [DONE]: the answer is incomplete
    assert rows(tmp_path)[-1]["status"] == 502


@pytest.mark.parametrize("garbage", [b'data: {"choices": [\n\n', b'data: {"x": "\xff"}\n\n', b"data: [1]\n\n"])
def test_a_malformed_chunk_after_the_stream_started_ends_it_with_an_error_event(tmp_path, artifact, garbage):
    # a hostile upstream: one good chunk, then one that is not JSON, not UTF-8, or not an object
    good = b'data: {"choices": [{"index": 0, "delta": {"content": "one"}}]}\n\n'
    with (
        upstream(Script(raw=good + garbage)) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, _),
    ):
        response, events = _streamed(server.url, "small")
        assert response.status_code == 200
        assert '"content":"one"' in events[0]
        assert '"upstream_error"' in events[-1] and "stream broke after it started" in events[-1]
    assert rows(tmp_path)[-1]["status"] == 502


def test_trained_reward_model_selector(tmp_path, artifact, multisample_dir):
    data = load_dataset(multisample_dir)
    model_path = tmp_path / "reward.bestroute"
    RewardModel(features="lexical", C=10.0).fit(data, split_prompts(data.prompt_ids).train).save(model_path)
    small = Script(answers=["I think 3", '{"reasoning": "...", "answer": "42"}', "I think 3"])
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(
            tmp_path,
            artifact,
            {"small": s.url, "big": b.url},
            selector={"kind": "reward-model", "path": str(model_path)},
        ) as (_, client),
    ):
        answer, _ = ask(client, "bestroute:0.95")
        assert answer.choices[0].message.content == '{"reasoning": "...", "answer": "42"}'
        assert answer.model_extra["bestroute"]["selector"] == "reward-model"


def test_without_a_selector_the_gateway_uses_the_routers_own(tmp_path, multisample_dir):
    data = load_dataset(multisample_dir)
    split = split_prompts(data.prompt_ids)
    model_path = tmp_path / "reward.bestroute"
    RewardModel(features="lexical", C=10.0).fit(data, split.train).save(model_path)
    router_path = tmp_path / "router.bestroute"
    BestRouteRouter(
        features="lexical", max_n=3, prune_dominated=False, domain_quantile=None, selector=f"reward-model:{model_path}"
    ).fit(data, split.train, split.val).save(router_path)
    small = Script(answers=["I think 3", '{"reasoning": "...", "answer": "42"}', "I think 3"])
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(tmp_path, router_path, {"small": s.url, "big": b.url}) as (_, client),
    ):
        answer, headers = ask(client, "bestroute:0.95")
        assert headers["x-bestroute-n"] == "3"
        assert answer.model_extra["bestroute"]["selector"] == "reward-model"
        assert answer.choices[0].message.content == '{"reasoning": "...", "answer": "42"}'
    model_path.unlink()  # the router's reward model went missing: a clear start-up error
    (tmp_path / "gateway.yaml").write_text(
        yaml.safe_dump(
            {
                "router": str(router_path),
                "backends": [
                    {"name": "small", "base_url": "http://127.0.0.1:9/v1"},
                    {"name": "big", "base_url": "http://127.0.0.1:9/v1"},
                ],
            }
        )
    )
    with pytest.raises(ConfigError, match="trained with the reward model .* does not exist"):
        create_app(load_config(tmp_path / "gateway.yaml"))


def test_decision_log_keeps_rows_while_the_database_is_away(tmp_path):
    from servers import decision

    from bestroute.serving._log import DecisionLog
    from bestroute.serving._log.schema import metadata

    url = f"sqlite:///{tmp_path}/log.db"
    log = DecisionLog(url, dead_letter_path=tmp_path / "dead.jsonl", batch_window_s=0.01)
    log.write(decision("a"))
    log.flush()
    with sqlite3.connect(tmp_path / "log.db") as db:  # the table disappears under the writer
        db.execute("DROP TABLE decisions")
    log.write(decision("b"))
    log.write(decision("c"))
    time.sleep(0.1)  # several windows fail; the rows wait in order
    metadata.create_all(log.engine)
    log.close()  # drains what waited
    with sqlite3.connect(tmp_path / "log.db") as db:
        assert [r[0] for r in db.execute("SELECT id FROM decisions ORDER BY rowid")] == ["b", "c"]


def test_replicas_share_a_postgresql_decision_log(tmp_path, artifact, postgres_url):
    import sqlalchemy

    log = {"url": postgres_url, "store_prompts": True}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with upstream(Script(answers=["42"])) as s, upstream(Script(answers=["big"])) as b:
        backends = {"small": s.url, "big": b.url}
        with (
            gateway(tmp_path / "a", artifact, backends, decision_log=log) as (replica_a, client_a),
            gateway(tmp_path / "b", artifact, backends, decision_log=log) as (replica_b, client_b),
        ):
            first, _ = ask(client_a, "bestroute:0", text="What is six times seven?")
            second, _ = ask(client_b, "bestroute:1", text="Name the answer to everything.")
            # Feedback may reach a replica other than the one that answered.
            feedback = httpx.post(replica_b.url + "/v1/feedback", json={"id": first.id, "quality": 0.5})
            assert feedback.status_code == 200, feedback.text
            assert httpx.post(replica_a.url + "/v1/feedback", json={"id": "nope", "quality": 1}).status_code == 404
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as connection:
        logged = {r.id: r for r in connection.execute(sqlalchemy.text("SELECT * FROM decisions"))}
    engine.dispose()
    assert {first.id, second.id} <= set(logged)
    assert logged[first.id].model == "small" and logged[second.id].model == "big"
    assert logged[first.id].scores and logged[first.id].prompt == "What is six times seven?"
    from typer.testing import CliRunner

    from bestroute.cli import app

    out = tmp_path / "exported"
    result = CliRunner().invoke(
        app, ["log", "export", "--config", str(tmp_path / "a" / "gateway.yaml"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    exported = load_dataset(out)
    assert first.id in exported.prompt_ids and second.id not in exported.prompt_ids
    assert exported.quality[exported.prompt_ids.index(first.id), 0, 0] == 0.5


def test_a_missing_or_stale_reward_model_is_a_start_up_error(tmp_path, artifact, multisample_dir):
    data = load_dataset(multisample_dir)
    model_path = tmp_path / "reward.bestroute"
    RewardModel(features="lexical").fit(data, split_prompts(data.prompt_ids).train).save(model_path)
    with np.load(model_path) as archive:  # the same model as an older bestroute wrote it
        stored = {key: archive[key] for key in archive.files}
    stored["meta"] = np.array(json.dumps(json.loads(str(stored["meta"])) | {"version": 1}))
    with open(tmp_path / "old.bestroute", "wb") as handle:
        np.savez_compressed(handle, **stored)
    backends = [
        {"name": "small", "base_url": "http://127.0.0.1:9/v1"},
        {"name": "big", "base_url": "http://127.0.0.1:9/v1"},
    ]
    for path, message in (
        (tmp_path / "missing.bestroute", "no such file"),
        (tmp_path / "old.bestroute", r"older bestroute \(version 1\); train it again"),
    ):
        (tmp_path / "gateway.yaml").write_text(
            yaml.safe_dump(
                {"router": str(artifact), "backends": backends, "selector": {"kind": "reward-model", "path": str(path)}}
            )
        )
        with pytest.raises(ArtifactError, match=message):
            create_app(load_config(tmp_path / "gateway.yaml"))
        done = subprocess.run(
            [sys.executable, "-m", "bestroute", "serve", "--config", str(tmp_path / "gateway.yaml"), "--port", "9"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and str(path) in done.stderr


def test_a_relayed_stream_sends_no_cost_header_before_its_cost_is_known(tmp_path, artifact):
    with (
        upstream(Script(answers=["one two"])) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, _),
    ):
        body = {"model": "small", "messages": [{"role": "user", "content": "q"}], "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
            headers = dict(response.headers)
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert "x-bestroute-cost-usd" not in headers and headers["x-bestroute-model"] == "small"
    last = json.loads(events[-2])  # the one before [DONE]
    assert last["bestroute"]["cost_usd"] > 0 and last["usage"]["completion_tokens"] > 0


def test_bodies_nested_deeper_than_the_limit_are_refused_however_many_brackets_their_strings_hold(tmp_path, artifact):
    """Past ``max_json_depth`` (and past Python's recursion limit) a 400; brackets inside strings
    do not count as nesting, whether or not they outnumber the limit."""
    message = {"role": "user", "content": "q"}
    deep: object = "leaf"
    for _ in range(12):
        deep = [deep]
    with (
        upstream(Script()) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}, limits={"max_json_depth": 8}) as (server, _),
    ):

        def post(content: bytes) -> httpx.Response:
            return httpx.post(
                server.url + "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
            )

        for body in (
            json.dumps({"model": "small", "messages": [message], "metadata": deep}).encode(),
            b'{"model": "small", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        ):
            refused = post(body)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["message"] == "request body is nested deeper than 8 levels"
        brackets = {"role": "user", "content": "[{" * 50 + "}]" * 50}
        assert post(json.dumps({"model": "small", "messages": [brackets]}).encode()).status_code == 200
