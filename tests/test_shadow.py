"""Shadow checks (issue 23, item 2): the reference is asked again, after the client has its answer,
for a share of the requests a cheaper option answered; the agreement per option, its interval,
the breach signal and `on_breach: avoid`. Real upstream servers, a real SQLite log."""

import logging
import random
import sqlite3
import time

import httpx
import pytest
from servers import Script, gateway, upstream, write_gateway_config

from bestroute import ConfigError
from bestroute.serving import create_app, load_config
from bestroute.serving._shadow import wilson_interval


def _chat(model: str, text: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def _shadow_rows(tmp_path, expected: int) -> list[dict]:
    deadline = time.monotonic() + 20
    while True:
        with sqlite3.connect(tmp_path / "decisions.db") as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM shadows ORDER BY id")]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@pytest.mark.parametrize("truth", [0.8, 0.95, 0.99])
def test_the_interval_covers_the_true_agreement_in_at_least_90_of_100_runs(truth):
    """Simulation where the truth is known: 100 runs of 200 checks each, agreeing with
    probability ``truth``; the 95% Wilson interval must cover it in at least 90 of them."""
    rng = random.Random(7)
    covered = 0
    for _ in range(100):
        agreed = sum(rng.random() < truth for _ in range(200))
        lower, upper = wilson_interval(agreed, 200, 0.95)
        covered += lower <= truth <= upper
    assert covered >= 90, covered
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)
    lower, upper = wilson_interval(30, 30, 0.95)
    assert 0.88 < lower < 0.89 and upper == 1.0  # 30 of 30 does not show 0.99


def test_checks_run_after_the_answer_and_log_agreement_cost_and_breach(tmp_path, artifact, caplog):
    small = Script(answers=["42", "42", "42", "7"])  # agrees with the reference on 3 of 4
    big = Script(answers=["The answer is 42."], delay_s=1.0)
    shadow = {"rate": 1.0, "target": 0.9, "min_checks": 4}
    caplog.set_level(logging.WARNING, logger="bestroute.shadow")
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}, shadow=shadow) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        answered_at = []
        for i in range(8):
            response = client.post("/v1/chat/completions", json=_chat("bestroute:0", f"What is {i} and 42?"))
            answered_at.append(time.monotonic())
            assert response.status_code == 200 and response.json()["model"] == "small"
        direct = client.post("/v1/chat/completions", json=_chat("big", "Not routed: never checked"))
        assert direct.status_code == 200
        streamed = client.post("/v1/chat/completions", json=_chat("bestroute:0", "Streamed: 42?") | {"stream": True})
        assert streamed.status_code == 200 and "[DONE]" in streamed.text  # relayed, then checked
        rows = _shadow_rows(tmp_path, 9)
        metrics = client.get("/metrics").text
        health = client.get("/healthz").json()
    assert len(rows) == 9 and all(r["against"] == "big" and r["option"] == "small" for r in rows)
    assert [r["agreed"] for r in rows].count(1) == 7 and [r["agreed"] for r in rows].count(0) == 2
    assert all(r["cost_usd"] > 0 and r["error"] is None and r["response"] == "The answer is 42." for r in rows)
    # The client had each answer before the reference was even done: each shadow call took 1 s.
    assert len(big.times) == 10
    assert all(answered < arrived + 1.0 for answered, arrived in zip(answered_at, big.times, strict=False))
    assert 'bestroute_shadow_checks_total{option="small",outcome="agreed"} 7.0' in metrics
    assert 'bestroute_shadow_checks_total{option="small",outcome="disagreed"} 2.0' in metrics
    assert 'bestroute_shadow_below_target{option="small"} 1.0' in metrics
    report = health["shadow"]["small"]
    assert report["checks"] == 9 and report["agreement"] == 7 / 9 and report["below_target"] is True
    assert report["lower"] < 7 / 9 < report["upper"]
    assert any("option 'small' agrees with big on" in r.getMessage() for r in caplog.records)


def test_on_breach_avoid_routes_around_an_option_below_its_target(tmp_path, artifact):
    small = Script(answers=["7"])  # never the reference's answer
    shadow = {"rate": 1.0, "target": 0.9, "min_checks": 5, "on_breach": "avoid"}
    with (
        upstream(small) as s,
        upstream(Script(answers=["42"])) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}, shadow=shadow) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        first = [client.post("/v1/chat/completions", json=_chat("bestroute:0", f"q {i}")).json() for i in range(5)]
        _shadow_rows(tmp_path, 5)
        later = client.post("/v1/chat/completions", json=_chat("bestroute:0", "q later")).json()
    assert {r["bestroute"]["option"] for r in first} == {"small"}
    assert later["bestroute"]["option"] == "small x2"  # 0 of 5 agreed: its whole interval is below 0.9


def _checks_seen(client: httpx.Client, server, option: str, count: int) -> None:
    """Wait until ``server``'s /healthz judges ``option`` by at least ``count`` checks."""
    deadline = time.monotonic() + 20
    while client.get(server.url + "/healthz").json()["shadow"].get(option, {}).get("checks", 0) < count:
        assert time.monotonic() < deadline, f"{server.url} never saw {count} checks of {option!r}"
        time.sleep(0.05)


def test_replicas_sharing_checks_judge_an_option_by_every_replicas_checks(tmp_path, artifact):
    """With ``shadow.shared``, replicas on one decision log judge an option by all the checks in
    it: one that has checked nothing itself routes around the option another's checks found
    below its target, and so does one started afterwards (a restart keeps the evidence); a
    replica that does not share judges by its own checks, of which it has none."""
    log = {"url": f"sqlite:///{tmp_path}/decisions.db"}
    shadow = {"rate": 1.0, "target": 0.9, "min_checks": 5, "on_breach": "avoid", "shared": True, "refresh_s": 0.1}
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()

    def option(server, text: str) -> str:
        response = httpx.post(server.url + "/v1/chat/completions", json=_chat("bestroute:0", text), timeout=30)
        return str(response.json()["bestroute"]["option"])

    with upstream(Script(answers=["7"])) as s, upstream(Script(answers=["42"])) as b:  # small never agrees
        backends = {"small": s.url, "big": b.url}
        with (
            gateway(tmp_path / "a", artifact, backends, shadow=shadow, decision_log=log) as (checking, _),
            gateway(tmp_path / "b", artifact, backends, shadow=shadow, decision_log=log) as (sharing, _),
            gateway(tmp_path / "c", artifact, backends, shadow=shadow | {"shared": False}, decision_log=log) as (
                alone,
                _,
            ),
            httpx.Client(timeout=30) as client,
        ):
            assert [option(checking, f"q {i}") for i in range(5)] == ["small"] * 5
            _shadow_rows(tmp_path, 5)
            _checks_seen(client, sharing, "small", 5)
            assert option(sharing, "q later") == "small x2"  # 0 of 5 agreed, all of them checked elsewhere
            _checks_seen(client, checking, "small", 5)
            assert option(checking, "q later") == "small x2"
            assert client.get(alone.url + "/healthz").json()["shadow"] == {}
            assert option(alone, "q later") == "small"
        with gateway(tmp_path / "d", artifact, backends, shadow=shadow, decision_log=log) as (restarted, _):
            with httpx.Client(timeout=30) as client:
                _checks_seen(client, restarted, "small", 5)
            assert option(restarted, "q after a restart") == "small x2"


def test_bad_shadow_settings_are_one_clear_error(tmp_path, artifact):
    for shadow, message in (
        ({"rate": 1.5}, "shadow.rate: Input should be less than or equal to 1"),
        ({"rate": -0.1}, "shadow.rate: Input should be greater than or equal to 0"),
        ({"on_breach": "panic"}, "shadow.on_breach"),
        ({"refresh_s": 0}, "shadow.refresh_s: Input should be greater than 0"),
        ({"window_s": -1}, "shadow.window_s: Input should be greater than 0"),
        ({"shared": "sometimes"}, "shadow.shared: Input should be a valid boolean"),
    ):
        path = write_gateway_config(
            tmp_path, artifact, {"small": "http://127.0.0.1:9", "big": "http://127.0.0.1:9"}, shadow=shadow
        )
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    path = write_gateway_config(
        tmp_path,
        artifact,
        {"small": "http://127.0.0.1:9", "big": "http://127.0.0.1:9"},
        shadow={"rate": 0.1, "against": "huge"},
    )
    with pytest.raises(ConfigError, match="shadow.against: 'huge' has no backend"):
        create_app(load_config(path), config_path=path)
