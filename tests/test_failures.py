"""Failure semantics of the gateway, with real servers on loopback: which upstream failures count
against a backend, ejection that expires by time, the request deadline, retries and their budget,
client-side limits, feedback per key through an outage, and configuration checked up front."""

import itertools
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from servers import Script, ask, gateway, upstream, write_gateway_config

from bestroute import ConfigError
from bestroute.serving import create_app, load_config
from bestroute.serving._log.schema import metadata


def chat(
    url: str, *, model: str = "bestroute:0", timeout: float = 30, headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        timeout=timeout,
        headers=headers,
        json={"model": model, "messages": [{"role": "user", "content": "q"}]} | fields,
    )


def logged(tmp_path: Path, table: str = "decisions") -> list[dict[str, Any]]:
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]


def test_a_4xx_storm_is_passed_through_and_opens_no_circuit(tmp_path, artifact):
    small, big = Script(answers=["small"]), Script(answers=["big"])
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, client),
    ):
        for _ in range(20):  # the client's mistake: OpenAI-style 400 from the upstream, as is
            response = chat(server.url, top_p=5)
            assert response.status_code == 400
            assert response.json()["error"] == {
                "message": "top_p must be at most 1",
                "type": "invalid_request_error",
                "param": "top_p",
                "code": "invalid_value",
            }
            assert response.headers["x-bestroute-model"] == "small"
        assert len(small.bodies) == 20 and not big.bodies  # not retried, not failed over
        assert all(ask(client, "bestroute:0")[0].model == "small" for _ in range(30))
        assert httpx.get(server.url + "/healthz").json()["backends"] == {"small": "closed", "big": "closed"}
        assert "bestroute_upstream_failures_total" not in httpx.get(server.url + "/metrics").text.replace(
            "# HELP bestroute_upstream_failures_total", ""
        ).replace("# TYPE bestroute_upstream_failures_total", "")
        # A 401 is the backend's key, not the client's request: it fails over and counts.
        small.always = 401
        answer, _ = ask(client, "bestroute:0")
        assert answer.model == "big" and "HTTP 401" in answer.model_extra["bestroute"]["fallbacks"][0]
    statuses = [r["status"] for r in logged(tmp_path)]
    assert statuses.count(400) == 20 and statuses.count(200) == 31


def test_a_prompt_over_a_routed_backends_context_window_goes_to_the_next_option(tmp_path, artifact):
    small, big = Script(answers=["small"], context_chars=2000), Script(answers=["big"])
    long_prompt = "word " * 1000
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, client),
    ):
        for _ in range(5):
            answer, _ = ask(client, "bestroute:0", text=long_prompt)
            assert answer.model == "big"
            assert "rejected the request (HTTP 400)" in answer.model_extra["bestroute"]["fallbacks"][0]
        assert ask(client, "bestroute:0")[0].model == "small"  # not ejected: it was the prompt
        response = chat(server.url, model="small", messages=[{"role": "user", "content": long_prompt}])
        assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
        big.context_chars = 2000  # no option takes it: the client gets the rejection, not a 502
        response = chat(server.url, messages=[{"role": "user", "content": long_prompt}])
        assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_ejection_expires_even_when_the_first_request_after_it_is_cancelled(tmp_path, artifact):
    small, big = Script(answers=["small"]), Script(answers=["big"])
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(
            tmp_path,
            artifact,
            {"small": {"base_url": s.url, "timeout_s": 0.3}, "big": b.url},
            circuit_breaker={"failures": 2, "reset_s": 1.0},
        ) as (server, client),
    ):
        small.delay_s = 5.0  # hangs
        for _ in range(2):
            assert ask(client, "bestroute:0")[0].model == "big"
        assert ask(client, "bestroute:0")[0].model_extra["bestroute"]["fallbacks"] == [
            "small: backend 'small': circuit open"
        ]
        time.sleep(1.05)  # the ejection is over; the next request goes to small and its client leaves
        with pytest.raises(httpx.ReadTimeout):
            chat(server.url, timeout=0.1)
        small.delay_s = 0.0  # small recovers
        answers = [ask(client, "bestroute:0")[0].model for _ in range(20)]
        assert answers == ["small"] * 20  # nothing stuck (it was: 40/40 got 502 "circuit open")
        assert httpx.get(server.url + "/healthz").json()["backends"]["small"] == "closed"


def test_recovering_from_a_hang_does_not_flap(tmp_path, artifact):
    small, big = Script(answers=["small"], delay_s=5.0), Script(answers=["big"])
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(
            tmp_path,
            artifact,
            {"small": {"base_url": s.url, "timeout_s": 1.0}, "big": b.url},
            circuit_breaker={"failures": 2, "reset_s": 0.5},
        ) as (server, client),
    ):
        hung = []
        for _ in range(6):  # six requests enter the hang 0.1 s apart
            thread = threading.Thread(target=ask, args=(client, "bestroute:0"))
            thread.start()
            hung.append(thread)
            time.sleep(0.1)
        while httpx.get(server.url + "/healthz").json()["backends"]["small"] != "open":
            time.sleep(0.01)
        small.delay_s = 0.0  # recovered; the four requests still hanging fail over in the next 0.5 s
        states = []
        finish = time.monotonic() + 2.0
        while time.monotonic() < finish:
            states.append(httpx.get(server.url + "/healthz").json()["backends"]["small"])
            ask(client, "bestroute:0")
            time.sleep(0.02)
        for thread in hung:
            thread.join()
        changes = sum(a != b for a, b in itertools.pairwise(states))
        assert states[0] == "open" and states[-1] == "closed" and changes == 1, states


def test_the_deadline_bounds_a_hung_backend_and_a_dripping_stream(tmp_path, artifact):
    small, big = Script(delay_s=30.0), Script(delay_s=30.0)
    backends = {"small": {"base_url": "", "timeout_s": 10.0}, "big": {"base_url": "", "timeout_s": 10.0}}
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(
            tmp_path,
            artifact,
            {
                "small": backends["small"] | {"base_url": s.url},
                "big": backends["big"] | {"base_url": b.url, "stream_idle_s": 1.0},
            },
            retries={"attempts": 3, "backoff_s": 0.01},
            timeouts={"request_s": 2.0},
        ) as (server, _),
    ):
        tic = time.monotonic()
        response = chat(server.url, headers={"x-bestroute-timeout": "1.5"})
        took = time.monotonic() - tic
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"
        assert 1.4 < took < 2.5, took
        tic = time.monotonic()
        assert chat(server.url).status_code == 504  # timeouts.request_s
        assert 1.9 < time.monotonic() - tic < 3.0
        for bad in ("abc", "0", "-1", "nan", "1e9"):
            response = chat(server.url, headers={"x-bestroute-timeout": bad})
            assert response.status_code == 400 and response.json()["error"]["param"] == "x-bestroute-timeout"
        # A stream that drips a chunk every 0.3 s ends at the deadline with an error event.
        small.delay_s, big.delay_s = 0.0, 0.0
        big.always = "drip-stream"
        tic = time.monotonic()
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            timeout=30,
            headers={"x-bestroute-timeout": "1.2"},
            json={"model": "bestroute:1", "stream": True, "messages": [{"role": "user", "content": "q"}]},
        ) as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data:")]
        assert 1.1 < time.monotonic() - tic < 2.0
        assert '"type":"timeout"' in lines[-1] and "deadline passed mid-stream" in lines[-1]
    rows = logged(tmp_path)
    assert [r["status"] for r in rows[:2]] == [504, 504] and rows[-1]["status"] == 504


def test_stalled_streams_fail_over_before_the_first_chunk_and_end_with_an_error_after_it(tmp_path, artifact):
    small, big = Script(answers=["one two three"]), Script(answers=["big answer"])
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(
            tmp_path, artifact, {"small": {"base_url": s.url, "timeout_s": 0.5, "stream_idle_s": 0.5}, "big": b.url}
        ) as (_, client),
    ):
        small.failures = ["stall-first"]  # headers, then nothing: fails over within timeout_s
        tic = time.monotonic()
        chunks = list(
            client.chat.completions.create(
                model="bestroute:0", messages=[{"role": "user", "content": "q"}], stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "big answer"
        assert time.monotonic() - tic < 2.0
        assert "timed out after 0.5 s" in chunks[-1].model_extra["bestroute"]["fallbacks"][0]
        small.failures = ["stall-stream"]  # one chunk, then nothing: an explicit error, not a silent cut
        with pytest.raises(openai.APIError, match="stream stalled: no chunk for 0.5 s"):
            list(
                client.chat.completions.create(
                    model="bestroute:0", messages=[{"role": "user", "content": "q"}], stream=True
                )
            )
    row = logged(tmp_path)[-1]
    assert row["status"] == 502 and "stream stalled" in row["error"] and row["model"] == "small"


def test_retry_after_is_honoured_within_limits_and_the_retry_budget_caps_retries(tmp_path, artifact):
    small, big = Script(answers=["small"]), Script(answers=["big"])
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(
            tmp_path,
            artifact,
            {"small": s.url, "big": b.url},
            retries={"attempts": 2, "backoff_s": 0.01, "max_retry_after_s": 2, "budget_ratio": 0.0, "budget_min": 1},
            circuit_breaker={"failures": 100},
        ) as (_, client),
    ):
        small.failures, small.retry_after = [429], "0.6"
        answer, _ = ask(client, "bestroute:0")
        assert answer.model == "small" and small.times[-1] - small.times[-2] >= 0.6
        small.failures, small.retry_after = [503], "120"  # longer than max_retry_after_s: fail over now
        tic = time.monotonic()
        answer, _ = ask(client, "bestroute:0")
        assert answer.model == "big" and time.monotonic() - tic < 1.0
        assert "Retry-After 120 s is too long to wait" in answer.model_extra["bestroute"]["fallbacks"][0]
        # Five requests fail at once; the budget lets one retry while the others fail over.
        small.failures, small.retry_after = [], "0.5"
        small.always = 503
        before = len(small.bodies)
        threads = [threading.Thread(target=lambda: results.append(ask(client, "bestroute:0")[0])) for _ in range(5)]
        results: list[Any] = []
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        fallbacks = [r.model_extra["bestroute"]["fallbacks"][0] for r in results]
        assert sum("retry budget spent" in f for f in fallbacks) == 4, fallbacks
        assert len(small.bodies) - before == 6 and {r.model for r in results} == {"big"}


def test_a_connection_flood_and_slow_clients_do_not_stop_authenticated_traffic(tmp_path, artifact, monkeypatch):
    monkeypatch.setenv("GATEWAY_KEYS", "good-key")
    limits = {"max_connections": 50, "header_timeout_s": 1.0, "body_timeout_s": 1.0, "max_concurrent_requests": 2}
    small = Script(answers=["small"])
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(
            tmp_path, artifact, {"small": s.url, "big": b.url}, client_api_keys_env="GATEWAY_KEYS", limits=limits
        ) as (server, _),
    ):
        auth = {"authorization": "Bearer good-key"}
        flood = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]  # idle, no key
        try:
            statuses = [chat(server.url, headers=auth).status_code for _ in range(20)]
            assert statuses == [200] * 20
        finally:
            for sock in flood:
                sock.close()
        # A client sending its headers a byte at a time is cut off after header_timeout_s.
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.settimeout(5)
        tic = time.monotonic()
        request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
        closed = False
        for byte in request:
            try:
                slow.send(bytes([byte]))
                time.sleep(0.1)
            except OSError:
                closed = True
                break
        if not closed:
            closed = slow.recv(100) == b""
        assert closed and time.monotonic() - tic < 3.0
        slow.close()
        # A body that stops arriving gets a 408.
        body = socket.create_connection(("127.0.0.1", server.port))
        body.settimeout(5)
        body.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer good-key\r\n"
            b'content-type: application/json\r\ncontent-length: 100\r\n\r\n{"model":'
        )
        assert body.recv(1000).startswith(b"HTTP/1.1 408")
        body.close()
        # Over max_concurrent_requests: a fast 503 with Retry-After, never a hang.
        small.delay_s = 1.0
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(chat(server.url, headers=auth))) for _ in range(4)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        refused = [r for r in results if r.status_code == 503]
        assert len(refused) == 2 and sorted(r.status_code for r in results) == [200, 200, 503, 503]
        assert all(r.headers["retry-after"] == "1" and r.elapsed.total_seconds() < 0.5 for r in refused)


def test_every_connection_busy_gets_an_immediate_503(tmp_path, artifact):
    small = Script(answers=["small"], delay_s=1.5)
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}, limits={"max_connections": 2}) as (server, _),
    ):
        threads = [threading.Thread(target=chat, args=(server.url,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.4)  # both connections have a request in progress
        tic = time.monotonic()
        response = chat(server.url)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "service_unavailable" and time.monotonic() - tic < 0.5
        for thread in threads:
            thread.join()


def test_feedback_is_per_key_and_survives_a_database_outage(tmp_path, artifact, monkeypatch):
    monkeypatch.setenv("GATEWAY_KEYS", "key-a,key-b")
    key_a, key_b = {"authorization": "Bearer key-a"}, {"authorization": "Bearer key-b"}
    with (
        upstream(Script()) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}, client_api_keys_env="GATEWAY_KEYS") as (g, _),
    ):
        answered = chat(g.url, headers=key_a).json()["id"]
        feedback = {"id": answered, "quality": 0.5}
        assert httpx.post(g.url + "/v1/feedback", json=feedback, headers=key_b).status_code == 404
        assert httpx.post(g.url + "/v1/feedback", json=feedback, headers=key_a).status_code == 200
        tic = time.monotonic()  # an id no replica answered: a few lookups for about a second, then 404
        assert (
            httpx.post(g.url + "/v1/feedback", json={"id": "made-up", "quality": 1}, headers=key_a).status_code == 404
        )
        assert 0.5 < time.monotonic() - tic < 2.0
        while httpx.get(g.url + "/healthz", headers=key_a).json()["decision_log"]["backlog"]:
            time.sleep(0.01)  # the rows so far are written
        with sqlite3.connect(tmp_path / "decisions.db") as db:  # the database goes away
            db.execute("DROP TABLE decisions")
            db.execute("DROP TABLE feedback")
        ids = [chat(g.url, headers=key_a).json()["id"] for _ in range(30)]
        for i, request_id in enumerate(ids):  # feedback during the outage is accepted, never blocks
            response = httpx.post(
                g.url + "/v1/feedback", json={"id": request_id, "quality": i / 30}, headers=key_a, timeout=5
            )
            assert response.status_code == 200 and response.elapsed.total_seconds() < 0.5
        healthz = httpx.get(g.url + "/healthz", headers=key_a).json()
        assert healthz["decision_log"]["backlog"] >= 60  # 30 decisions and 30 feedback rows wait
        from sqlalchemy import create_engine

        engine = create_engine(f"sqlite:///{tmp_path}/decisions.db")
        metadata.create_all(engine)  # the database is back
        engine.dispose()
    decisions, scores = logged(tmp_path), logged(tmp_path, "feedback")
    assert [r["id"] for r in decisions] == ids
    assert [(r["decision_id"], r["quality"]) for r in scores] == [(i, n / 30) for n, i in enumerate(ids)]
    assert {r["client_key_id"] for r in decisions} == {__import__("hashlib").sha256(b"key-a").hexdigest()[:16]}


def serve(config: Path, *arguments: str, seconds: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bestroute", "serve", "--config", str(config), *arguments],
        capture_output=True,
        text=True,
        timeout=seconds,
        check=False,
    )


def test_configuration_is_checked_up_front_with_one_line(tmp_path, artifact):
    def config(small: str = "http://127.0.0.1:9", **overrides: Any) -> Path:
        return write_gateway_config(tmp_path, artifact, {"small": small, "big": "http://127.0.0.1:9"}, **overrides)

    cases = [
        (["--port", "70000"], {}, "--port: 70000 is not a port"),
        ([], {"decision_log": {"url": "not a url"}}, "decision_log.url: 'not a url' is not a database URL"),
        (
            [],
            {"decision_log": {"url": "postgresql+psycopg://u:secret@127.0.0.1:9/x"}},
            "decision_log.url: cannot open postgresql+psycopg://u:***@127.0.0.1:9/x",
        ),
        ([], {"threshold": 7}, "threshold: 7 is not between 0 and 1"),
        ([], {"small": "localhost:8000"}, "backends.0.base_url: 'localhost:8000/v1' is not an http:// or https:// URL"),
        ([], {"timeouts": {"request_s": 100, "max_request_s": 10}}, "request_s is larger than max_request_s"),
    ]
    for arguments, overrides, message in cases:
        result = serve(config(**overrides), *arguments)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr and "secret" not in result.stderr


def test_unreachable_backends_are_named_at_start_up(tmp_path, artifact, caplog):
    with (
        upstream(Script()) as b,
        caplog.at_level("WARNING"),
        gateway(tmp_path, artifact, {"small": "http://127.0.0.1:9", "big": b.url}),
    ):
        deadline = time.monotonic() + 5
        while "backend 'small': nothing answers at 127.0.0.1:9" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "backend 'small': nothing answers at 127.0.0.1:9" in caplog.text
    assert "backend 'big'" not in caplog.text


def test_admin_endpoints_need_a_key(tmp_path, artifact, monkeypatch):
    monkeypatch.setenv("GATEWAY_KEYS", "client")
    monkeypatch.setenv("ADMIN_KEYS", "admin")
    with (
        upstream(Script()) as s,
        gateway(tmp_path, artifact, {"small": s.url, "big": s.url}, client_api_keys_env="GATEWAY_KEYS") as (g, _),
    ):
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
            assert httpx.get(g.url + path).status_code == 401
            assert httpx.get(g.url + path, headers={"authorization": "Bearer client"}).status_code == 200
        assert httpx.get(g.url + "/healthz").json() == {"status": "ok"}  # liveness only
        assert "backends" in httpx.get(g.url + "/healthz", headers={"authorization": "Bearer client"}).json()
    with (
        upstream(Script()) as s,
        gateway(
            tmp_path,
            artifact,
            {"small": s.url, "big": s.url},
            client_api_keys_env="GATEWAY_KEYS",
            admin={"api_keys_env": "ADMIN_KEYS"},
        ) as (g, _),
    ):
        assert httpx.get(g.url + "/metrics", headers={"authorization": "Bearer client"}).status_code == 401
        assert httpx.get(g.url + "/metrics", headers={"authorization": "Bearer admin"}).status_code == 200
    with (
        upstream(Script()) as s,
        gateway(
            tmp_path, artifact, {"small": s.url, "big": s.url}, client_api_keys_env="GATEWAY_KEYS", admin={"open": True}
        ) as (g, _),
    ):
        assert httpx.get(g.url + "/metrics").status_code == 200
        assert "backends" in httpx.get(g.url + "/healthz").json()
    with pytest.raises(ConfigError, match="admin.api_keys_env: environment variable UNSET_KEYS is empty"):
        create_app(
            load_config(
                write_gateway_config(
                    tmp_path, artifact, {"small": s.url, "big": s.url}, admin={"api_keys_env": "UNSET_KEYS"}
                )
            )
        )


def test_hanging_backends_fall_back_after_one_try_not_after_every_retry(tmp_path, artifact):
    small = Script(delay_s=30.0)
    with (
        upstream(small) as s,
        upstream(Script(answers=["big"])) as b,
        gateway(
            tmp_path,
            artifact,
            {"small": {"base_url": s.url, "timeout_s": 1.0}, "big": b.url},
            retries={"attempts": 3, "backoff_s": 0.01},
        ) as (_, client),
    ):
        tic = time.monotonic()
        answer, _ = ask(client, "bestroute:0")
        took = time.monotonic() - tic
        assert answer.model == "big" and 1.0 <= took < 1.8 and len(small.bodies) == 1, took
