"""The decision log under hostile input: poison rows are repaired or dead-lettered, outages keep
rows (bounded), nothing is lost, and the writer never stops. Real SQLite and PostgreSQL."""

import json
import logging
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import sqlalchemy
import yaml
from servers import (
    REFERENCE_COST,
    Script,
    ask,
    decision,
    empty_database,
    gateway,
    priced_upstreams,
    serve_subprocess,
    upstream,
    write_gateway_config,
)
from typer.testing import CliRunner

from bestroute.cli import app as cli
from bestroute.serving import DecisionLog
from bestroute.serving._config import DecisionLogConfig
from bestroute.serving._log.schema import TRUNCATED, metadata

LONG_NAME = "backend-" + "x" * 242  # 250 characters; the column holds 200


def logged(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The rows of ``ids`` in the decision log at ``url``."""
    engine = sqlalchemy.create_engine(url)
    table = metadata.tables["decisions"]
    with engine.connect() as connection:
        found = connection.execute(sqlalchemy.select(table).where(table.c.id.in_(ids))).mappings().all()
    engine.dispose()
    return {r["id"]: dict(r) for r in found}


def dead_letters(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


row = decision


def test_poison_rows_are_repaired_or_dead_lettered_and_the_rest_is_written(log_url, tmp_path):
    tag = uuid.uuid4().hex[:8]  # the PostgreSQL server is shared by the session's tests
    poison = {
        f"{tag}-surrogate": {"prompt": "bad \ud800 text", "response": "\udfff"},
        f"{tag}-nul": {"prompt": "nul \x00 byte", "error": "a\x00b"},
        f"{tag}-names": {"model": LONG_NAME, "requested_model": "r" * 300},
        f"{tag}-count": {"prompt_tokens": 10**12, "completion_tokens": -(10**12)},
        f"{tag}-scores": {"scores": {"small": float("nan"), "big\ud800": float("inf"), "tiny": 0.5}},
    }
    normal = [f"{tag}-ok-{i}" for i in range(100)]
    log = DecisionLog(log_url, dead_letter_path=tmp_path / "dead.jsonl", batch_window_s=0.01)
    for decision_id, fields in poison.items():
        log.write(row(decision_id, **fields))
    log.write(None)  # type: ignore[arg-type]  # not a row at all
    log.write(row(normal[0]))
    log.write(row(normal[0], prompt="a second row with the same id"))  # the database refuses it
    for decision_id in normal[1:]:
        log.write(row(decision_id))
    log.close()

    rows = logged(log_url, normal + list(poison))
    assert set(normal) <= set(rows), "a normal row was lost"
    assert rows[normal[0]]["prompt"] == "What is 6 * 7?"
    assert rows[f"{tag}-surrogate"]["prompt"] == "bad \ufffd text" and rows[f"{tag}-surrogate"]["response"] == "\ufffd"
    assert rows[f"{tag}-nul"]["prompt"] == "nul  byte" and rows[f"{tag}-nul"]["error"] == "ab"
    names = rows[f"{tag}-names"]
    assert len(names["model"]) == 200 and names["model"].endswith(TRUNCATED) and names["model"].startswith("backend-x")
    assert len(names["requested_model"]) == 200
    assert rows[f"{tag}-count"]["prompt_tokens"] == 2**31 - 1 and rows[f"{tag}-count"]["completion_tokens"] == -(2**31)
    assert rows[f"{tag}-scores"]["scores"] == {"small": None, "big\ufffd": None, "tiny": 0.5}
    assert log.repaired == len(poison)

    letters = dead_letters(tmp_path / "dead.jsonl")
    assert log.dead_letters.count == len(letters) == 2
    assert letters[0]["row"] is None and letters[0]["reason"].startswith("not a row")
    assert letters[1]["row"]["prompt"] == "a second row with the same id"
    assert letters[1]["reason"].startswith("refused by the database (IntegrityError")


def test_an_outage_keeps_a_bounded_backlog_and_replay_restores_every_row(tmp_path):
    url, dead = f"sqlite:///{tmp_path}/log.db", tmp_path / "dead.jsonl"
    log = DecisionLog(url, dead_letter_path=dead, max_backlog=5, batch_window_s=0.01)
    log.write(row("before"))
    assert log.flush()
    with sqlite3.connect(tmp_path / "log.db") as db:  # the table disappears: an outage for the writer
        db.execute("DROP TABLE decisions")
    ids = [f"during-{i}" for i in range(12)]
    for decision_id in ids:
        log.write(row(decision_id))
    deadline = time.monotonic() + 10
    while log.dead_letters.count < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.backlog == 5 and not log.flush()  # the newest five wait; flush says they could not go
    spilled = dead_letters(dead)
    assert [d["row"]["id"] for d in spilled] == ids[:7]
    assert {d["reason"] for d in spilled} == {"backlog full while the database was away"}
    log.close()  # still away at shutdown: the five waiting rows go to the file too, not nowhere
    assert [d["row"]["id"] for d in dead_letters(dead)] == ids
    assert dead_letters(dead)[-1]["reason"] == "database unavailable at shutdown"

    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": [{"name": "small", "base_url": "http://127.0.0.1:9/v1"}],
                "decision_log": {"url": url, "dead_letter_path": "dead.jsonl"},
            }
        )
    )
    with dead.open("a") as handle:  # one row no database takes (no status), and one broken line
        handle.write(json.dumps({"reason": "test", "at": 0, "row": {"id": "incomplete", "created_at": 1.0}}) + "\n")
        handle.write("{not json\n")
    result = CliRunner().invoke(cli, ["log", "replay-dead-letters", "--config", str(config)])
    assert result.exit_code == 1, result.output  # two lines are still refused
    assert "replayed 12 rows" in result.output and "2 still refused" in result.output
    assert set(ids) <= set(logged(url, ids))
    left = dead.read_text().splitlines()  # the refused lines stay exactly as they were
    assert json.loads(left[0])["row"]["id"] == "incomplete" and left[1] == "{not json" and len(left) == 2
    again = CliRunner().invoke(cli, ["log", "replay-dead-letters", "--config", str(config)])
    assert again.exit_code == 1 and "replayed 0 rows" in again.output and "2 still refused" in again.output
    missing = CliRunner().invoke(cli, ["log", "replay-dead-letters", "--config", str(config.with_name("none.yaml"))])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")


def _chat(model: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]} | extra


# (what, raw request body, expected status); the body is sent as bytes so nothing "fixes" it on the way.
HOSTILE_REQUESTS: list[tuple[str, bytes, int]] = [
    ("lone surrogate", b'{"model": "bestroute:0", "messages": [{"role": "user", "content": "bad \\ud800 text"}]}', 200),
    ("NUL byte", b'{"model": "bestroute:0", "messages": [{"role": "user", "content": "nul \\u0000 byte"}]}', 200),
    ("over-long backend name", json.dumps(_chat(LONG_NAME, "hi")).encode(), 200),
    (
        "content part text not a string",
        json.dumps(_chat("bestroute:0", [{"type": "text", "text": 5}, {"type": "text", "text": {"a": [1]}}])).encode(),
        200,
    ),
    (
        "JSON deeper than the recursion limit",
        b'{"model": "bestroute", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        400,
    ),
    (
        "JSON deeper than the limit",
        json.dumps(_chat("bestroute", "hi", metadata=json.loads("[" * 80 + "]" * 80))).encode(),
        400,
    ),
    ("5,000-digit integer", b'{"model": "bestroute", "max_tokens": ' + b"9" * 5000 + b', "messages": []}', 400),
    ("threshold not a number", json.dumps(_chat("bestroute:abc", "hi")).encode(), 400),
    ("threshold of 5,000 digits", json.dumps(_chat("bestroute:" + "9" * 5000, "hi")).encode(), 400),
    ("invalid UTF-8", b'{"model": "bestroute", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),
    ("upstream: negative token counts", json.dumps(_chat("negative", "hi")).encode(), 502),
    ("upstream: token count as text", json.dumps(_chat("text-usage", "hi")).encode(), 502),
    ("upstream: a JSON list", json.dumps(_chat("listy", "hi")).encode(), 502),
    ("upstream: stream of a JSON list", json.dumps(_chat("listy-stream", "hi", stream=True)).encode(), 502),
    ("upstream: stream chunk not JSON", json.dumps(_chat("garbled-stream", "hi", stream=True)).encode(), 502),
    ("upstream: stream chunk not UTF-8", json.dumps(_chat("bytes-stream", "hi", stream=True)).encode(), 502),
]


def test_hostile_requests_get_4xx_or_502_and_never_stop_the_log(log_url, tmp_path, artifact, caplog):
    log = {"url": log_url, "store_prompts": True, "dead_letter_path": str(tmp_path / "dead.jsonl")}
    hostile = {
        "negative": Script(usage={"prompt_tokens": -5, "completion_tokens": 3}),
        "text-usage": Script(usage={"prompt_tokens": "abc", "completion_tokens": 3}),
        "listy": Script(raw=b"[1, 2, 3]"),
        "listy-stream": Script(raw=b"data: [1, 2]\n\n"),
        "garbled-stream": Script(raw=b'data: {"choices": [\n\n'),
        "bytes-stream": Script(raw=b'data: {"choices": [{"delta": {"content": "\xff\xfe"}}]}\n\n'),
    }
    with ExitStack() as stack:
        urls = {name: stack.enter_context(upstream(script)).url for name, script in hostile.items()}
        small = stack.enter_context(upstream(Script(answers=["42"])))
        big = stack.enter_context(upstream(Script(answers=["big"])))
        server, _ = stack.enter_context(
            gateway(
                tmp_path, artifact, {"small": small.url, "big": big.url, LONG_NAME: small.url} | urls, decision_log=log
            )
        )
        caplog.set_level(logging.ERROR)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answered: dict[str, str] = {}
            for what, body, status in HOSTILE_REQUESTS:
                response = client.post(
                    "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
                )
                assert response.status_code == status, (what, response.text)
                if status != 200 and not body.endswith(b'"stream": true}'):
                    error = response.json()["error"]
                    assert error["message"] and error["type"], what
                if status == 200:
                    answered[what] = response.json()["id"]
            normal = []
            for i in range(100):
                response = client.post("/v1/chat/completions", json=_chat("bestroute", f"What is {i} times 7?"))
                assert response.status_code == 200, response.text
                normal.append(response.json()["id"])
            deadline = time.monotonic() + 10
            while (health := client.get("/healthz").json())["decision_log"]["backlog"] and time.monotonic() < deadline:
                time.sleep(0.05)
            exposition = client.get("/metrics").text
    assert f"bestroute_decision_log_repaired_total {float(health['decision_log']['repaired'])}" in exposition
    assert "bestroute_decision_log_dead_letters_total 0.0" in exposition
    assert "bestroute_decision_log_backlog 0.0" in exposition
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a traceback was logged"
    assert health["decision_log"]["backlog"] == 0 and health["decision_log"]["dead_letters"] == 0
    assert health["decision_log"]["repaired"] >= 3
    rows = logged(log_url, normal + list(answered.values()))
    assert set(normal) <= set(rows), "a normal request lost its row"
    assert rows[answered["lone surrogate"]]["prompt"] == "bad \ufffd text"
    assert rows[answered["NUL byte"]]["prompt"] == "nul  byte"
    long_row = rows[answered["over-long backend name"]]
    assert long_row["model"].endswith(TRUNCATED) and long_row["requested_model"].endswith(TRUNCATED)
    assert rows[answered["content part text not a string"]]["prompt"] == "5\n{'a': [1]}"


def test_sigterm_under_load_drains_every_answered_request(tmp_path, artifact):
    with upstream(Script(answers=["42"], delay_s=0.02)) as small, upstream(Script(answers=["big"])) as big:
        config = write_gateway_config(tmp_path, artifact, {"small": small.url, "big": big.url})
        with serve_subprocess(config) as (process, url):
            answered: list[str] = []
            stop = threading.Event()

            def load() -> None:
                with httpx.Client(base_url=url, timeout=30) as client:
                    while not stop.is_set():
                        try:
                            response = client.post("/v1/chat/completions", json=_chat("bestroute:0", "What is 6 * 7?"))
                        except httpx.HTTPError:
                            return  # the gateway has stopped listening
                        if response.status_code == 200:
                            answered.append(response.json()["id"])

            workers = [threading.Thread(target=load) for _ in range(8)]
            for worker in workers:
                worker.start()
            while len(answered) < 100:
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            _, errors = process.communicate(timeout=60)
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean stop.
    assert process.returncode in (0, -signal.SIGTERM), errors
    assert "Traceback" not in errors
    # The start-up line says where it serves, with what router, backends and log.
    assert f"bestroute gateway at http://127.0.0.1:{url.rsplit(':', 1)[1]}/v1: router " in errors
    assert "backends small, big; decision log sqlite:///" in errors
    ids = set(answered)
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        logged_ids = {r[0] for r in db.execute("SELECT id FROM decisions WHERE status = 200")}
    assert len(ids) >= 100 and ids <= logged_ids, f"{len(ids - logged_ids)} answered requests have no row"


def test_a_field_that_is_not_a_column_is_an_error_not_dropped(tmp_path):
    from bestroute.serving._log import sanitize
    from bestroute.serving._log.schema import decisions

    with pytest.raises(ValueError, match="not a column of decisions: call_input_tokens"):
        sanitize({"id": "a", "call_input_tokens": 3}, decisions)
    url, dead = f"sqlite:///{tmp_path}/log.db", tmp_path / "dead.jsonl"
    unknown = {"reason": "test", "at": 0, "table": "decisions", "row": dict(row("x").__dict__, bogus=1)}
    dead.write_text(json.dumps(unknown, default=str) + "\n")
    from bestroute.serving import replay_dead_letters

    assert replay_dead_letters(url, dead) == (0, 1)  # refused, and kept in the file as it was
    assert json.loads(dead.read_text())["row"]["bogus"] == 1 and logged(url, ["x"]) == {}


def test_log_stats_give_the_logs_figures_and_the_saving_against_the_reference(log_url, tmp_path, artifact):
    """`bestroute log stats` on SQLite and PostgreSQL: per-option figures equal the rows', and the
    counterfactual is each routed request at the reference's prices (the fake upstreams report 10
    input tokens and 5 output tokens per sample, so always-the-reference is known exactly)."""
    log_url = empty_database(log_url)
    log = {"url": log_url, "store_prompts": False, "dead_letter_path": str(tmp_path / "dead.jsonl")}
    with (
        priced_upstreams() as backends,
        gateway(tmp_path, artifact, backends, decision_log=log) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        ids = []
        for model, count in (("bestroute:0", 3), ("bestroute:1", 2), ("big", 1), ("broken", 1)):
            for i in range(count):
                response = client.post("/v1/chat/completions", json=_chat(model, f"What is {i} plus {i}?"))
                ids.append(response.json().get("id"))
        assert client.post("/v1/feedback", json={"id": ids[0], "quality": 1.0}).status_code == 200
        assert client.post("/v1/feedback", json={"id": ids[1], "quality": 0.0}).status_code == 200
    config = str(tmp_path / "gateway.yaml")
    result = CliRunner().invoke(cli, ["log", "stats", "--config", config, "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    engine = sqlalchemy.create_engine(log_url)
    with engine.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(sqlalchemy.text("SELECT * FROM decisions"))]
    engine.dispose()
    assert figures["requests"] == len(rows) == 7 and figures["errors"] == 1
    assert figures["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    by_option = {o["option"]: o for o in figures["options"]}
    for option, entry in by_option.items():
        mine = [r for r in rows if r["option"] == option]
        assert entry["requests"] == len(mine) and entry["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in mine))
    routed = [r for r in rows if r["threshold"] is not None and r["status"] == 200]
    assert figures["routed"] == len(routed) == 5 and figures["reference"] == "big"
    assert figures["reference_cost_usd"] == pytest.approx(len(routed) * REFERENCE_COST)
    assert figures["routed_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in routed))
    assert figures["savings"] == pytest.approx(1 - figures["routed_cost_usd"] / figures["reference_cost_usd"])
    assert 0 < figures["savings"] < 1
    (cheapest,) = {r["option"] for r in rows if r["id"] in ids[:3]}  # threshold 0: one option for all three
    assert by_option[cheapest]["feedback"] == 2 and by_option[cheapest]["quality"] == pytest.approx(0.5)
    assert by_option[None]["requests"] == 1  # the failed request
    shown = CliRunner().invoke(cli, ["log", "stats", "--config", config, "--since", "1h"])
    assert shown.exit_code == 0 and "7 requests (1 failed)" in shown.output and "saved" in shown.output
    elsewhere = tmp_path / "empty.yaml"
    settings = yaml.safe_load(Path(config).read_text())
    settings["decision_log"]["url"] = f"sqlite:///{tmp_path}/empty.db"
    elsewhere.write_text(yaml.safe_dump(settings))
    empty = CliRunner().invoke(cli, ["log", "stats", "--config", str(elsewhere), "--since", "1h"])
    assert empty.exit_code == 0 and "no requests in the last 1h" in empty.output
    bad = CliRunner().invoke(cli, ["log", "stats", "--config", config, "--since", "yesterday"])
    assert bad.exit_code == 2 and "--since: 'yesterday' is not a duration" in bad.output


def test_serve_with_access_log_writes_a_line_per_request_subprocess(tmp_path, artifact):
    with upstream(Script(answers=["42"])) as small, upstream(Script(answers=["big"])) as big:
        config = write_gateway_config(tmp_path, artifact, {"small": small.url, "big": big.url})
        with serve_subprocess(config, "--access-log", stdout=subprocess.PIPE) as (process, url):
            assert httpx.post(url + "/v1/chat/completions", json=_chat("bestroute:0", "hi")).status_code == 200
            process.terminate()
            access, _ = process.communicate(timeout=60)
    # uvicorn's access log, on stdout
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in access and '"GET /healthz HTTP/1.1" 200' in access


def test_opening_an_older_log_drops_the_index_of_prompt_hashes(log_url):
    """No query looks a prompt hash up; its index of random keys cost a third of a row's insert."""
    from bestroute.serving._log.database import RETIRED_INDEX, open_database

    open_database(log_url).dispose()
    engine = sqlalchemy.create_engine(log_url)
    with engine.begin() as connection:  # as a log made before it was dropped has it
        connection.execute(sqlalchemy.text(f"CREATE INDEX {RETIRED_INDEX} ON decisions (prompt_hash)"))
    assert RETIRED_INDEX in {i["name"] for i in sqlalchemy.inspect(engine).get_indexes("decisions")}
    open_database(log_url).dispose()
    names = {i["name"] for i in sqlalchemy.inspect(engine).get_indexes("decisions")}
    engine.dispose()
    assert RETIRED_INDEX not in names and "ix_decisions_turn_key" in names


def test_the_writer_inserts_once_a_batch_window_and_drains_at_shutdown(tmp_path, artifact):
    # decision_log.batch_window_s reaches the writer: with a 30 s window nothing is inserted a
    # second after the requests (the first insert is 30 s after start-up), and stopping the
    # gateway writes every row.
    log = {"url": f"sqlite:///{tmp_path}/decisions.db", "store_prompts": True, "batch_window_s": 30}
    with (
        upstream(Script(answers=["42"])) as small,
        upstream(Script(answers=["big"])) as big,
        gateway(tmp_path, artifact, {"small": small.url, "big": big.url}, decision_log=log) as (_, client),
    ):
        ids = [ask(client)[0].id for _ in range(5)]
        time.sleep(1.0)
        assert logged(log["url"], ids) == {}
    assert set(logged(log["url"], ids)) == set(ids)


@pytest.mark.parametrize("window", [0, -1, 61, "soon", float("nan")])
def test_a_batch_window_must_be_a_positive_number_of_seconds(window):
    with pytest.raises(pydantic.ValidationError, match="batch_window_s"):
        DecisionLogConfig(batch_window_s=window)
