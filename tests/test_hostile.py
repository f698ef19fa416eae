"""Defects a hostile-input probe of the gateway found (issue 20, item 6), each fixed and tested
against real servers on loopback: whitespace-only samples, lone surrogates from an upstream,
cross-origin redirects, loosely typed ``n``, the open-files limit, a database URL without its
driver, megabyte prompts."""

import resource
import sqlite3

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from servers import Script, ServerThread, gateway, upstream, write_gateway_config
from typer.testing import CliRunner

from bestroute import ConfigError, load_dataset, split_prompts
from bestroute.cli import app as cli
from bestroute.features import make_extractor
from bestroute.routers import EscalatingBestRouteRouter
from bestroute.serving import create_app, load_config
from bestroute.serving._config import LimitsConfig
from bestroute.serving._server import connection_cap

PROMPT = "What is six times seven?"


def chat(url: str, **body) -> httpx.Response:
    payload = {"model": "bestroute:0.99", "messages": [{"role": "user", "content": PROMPT}]} | body
    return httpx.post(url + "/v1/chat/completions", json=payload, timeout=30)


@pytest.fixture(scope="module")
def escalating(multisample_dir, tmp_path_factory):
    """A router whose only servable option besides the reference is small x3 >=0.60 else reference."""
    data = load_dataset(multisample_dir)
    split = split_prompts(data.prompt_ids)
    router = EscalatingBestRouteRouter(features="lexical", max_n=3, prune_dominated=False, domain_quantile=None).fit(
        data, split.train, split.val
    )
    router.active_ = np.array(
        [o.label == "small x3 >=0.60 else reference" or o == router.reference_ for o in router.options_]
    )
    path = tmp_path_factory.mktemp("hostile") / "router.bestroute"
    router.save(path)
    return path


@pytest.mark.parametrize("blank", [" ", "\n", "\t \n", ""])
def test_whitespace_only_samples_escalate_instead_of_failing(escalating, tmp_path, blank):
    small, big = Script(answers=[blank, blank, "42"]), Script(answers=["It is 42."])
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(tmp_path, escalating, {"small": s.url, "big": b.url}) as (server, _),
    ):
        answer = chat(server.url)
        assert answer.status_code == 200, answer.text
        details = answer.json()["bestroute"]
        assert details["option"] == "small x3 >=0.60 else reference"
        assert answer.json()["choices"][0]["message"]["content"] in {blank, "It is 42."}
        small.answers = [blank, "7", "42"]
        answer = chat(server.url)
        assert answer.status_code == 200 and answer.json()["bestroute"]["escalation"]["escalated"] is True
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        assert [r[0] for r in db.execute("SELECT status FROM decisions")] == [200, 200]


def test_a_lone_surrogate_from_an_upstream_reaches_the_client_replaced(tmp_path, artifact):
    raw = (
        b'{"id": "x", "object": "chat.completion", "created": 1, "model": "small", "choices": [{"index": 0, '
        b'"message": {"role": "assistant", "content": "bad \\ud800 answer 42"}, "finish_reason": "stop"}], '
        b'"usage": {"prompt_tokens": 3, "completion_tokens": 4}}'
    )
    with (
        upstream(Script(raw=raw)) as s,
        upstream(Script(answers=["big"])) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, _),
    ):
        answer = chat(server.url, model="small")
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "bad \ufffd answer 42"
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        assert db.execute("SELECT status, response FROM decisions").fetchall() == [(200, "bad \ufffd answer 42")]


def test_a_redirect_to_another_origin_is_not_followed(tmp_path, artifact):
    elsewhere = Script(answers=["stolen"])
    with upstream(elsewhere) as other, upstream(Script(answers=["big"])) as b:
        redirecting = FastAPI()

        @redirecting.post("/v1/chat/completions")
        async def moved() -> RedirectResponse:
            return RedirectResponse(other.url + "/v1/chat/completions", status_code=307)

        server = ServerThread(redirecting).start()
        try:
            with gateway(tmp_path, artifact, {"small": server.url, "big": b.url}) as (gw, _):
                answer = chat(gw.url, model="small")
                assert answer.status_code == 502 and "redirect, not followed" in answer.json()["error"]["message"]
        finally:
            server.stop()
    assert elsewhere.bodies == []  # the prompt never reached the other origin


@pytest.mark.parametrize("n", ["2", True, 2.0, "true"])
def test_n_must_be_a_whole_number(tmp_path, artifact, n):
    with (
        upstream(Script()) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (
            server,
            _,
        ),
    ):
        answer = chat(server.url, model="small", n=n)
        assert answer.status_code == 422 and answer.json()["error"]["param"] == "n"
        assert chat(server.url, model="small", stream="yes").status_code == 422


def test_connections_are_capped_at_what_the_open_files_limit_allows():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert connection_cap(LimitsConfig()) == (1024 - 64) // 2  # not the default 4096
        assert connection_cap(LimitsConfig(max_connections=100)) == 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_database_url_without_its_driver_is_one_line(tmp_path, artifact):
    path = write_gateway_config(
        tmp_path,
        artifact,
        {"small": "http://127.0.0.1:9", "big": "http://127.0.0.1:9"},
        decision_log={"url": "postgresql+pg8000://user@127.0.0.1:9/db"},
    )
    with pytest.raises(ConfigError, match=r"needs the 'pg8000' package"):
        create_app(load_config(path))
    result = CliRunner().invoke(cli, ["serve", "--config", str(path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "pg8000" in result.output, result.output


def test_features_read_the_head_and_tail_of_a_megabyte_prompt():
    from bestroute.features._extractors import FEATURE_HEAD_CHARS, FEATURE_TAIL_CHARS, feature_text

    huge = "start " + "filler " * 150_000 + " the question: what is 6 * 7?"
    kept = feature_text(huge)
    assert len(kept) == FEATURE_HEAD_CHARS + FEATURE_TAIL_CHARS + 1 and kept.endswith("what is 6 * 7?")
    lexical = make_extractor("lexical")
    np.testing.assert_array_equal(lexical.transform([huge]), lexical.transform([kept]))
    assert feature_text("short \ud800") == "short \ufffd"
