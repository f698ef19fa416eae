"""The dashboard (issue 23, item 1): its SQL on SQLite and PostgreSQL against the rows computed
by hand, its session tokens, its refusals, and the pages in a real browser (Playwright driving
Debian's Chromium) against a real gateway, real upstreams and a real decision log."""

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydantic
import pytest
import sqlalchemy
from hypothesis import given
from hypothesis import strategies as st
from servers import REFERENCE_COST, Script, decision, empty_database, gateway, priced_upstreams, upstream

from bestroute.serving import DecisionLog
from bestroute.serving._config import DecisionLogConfig
from bestroute.serving._dashboard._session import SESSION_S, session_token, token_valid
from bestroute.serving._log import (
    CallRow,
    DecisionFilter,
    FeedbackRow,
    ShadowRow,
    decision_detail,
    decision_page,
    latency_percentiles,
    model_stats,
    shadow_tallies,
    traffic_series,
    traffic_stats,
)
from bestroute.serving._log.database import open_database
from bestroute.serving._log.rollup import (
    DAY,
    MINUTE,
    MINUTE_ROLLUPS,
    ROLLUPS,
    bin_middle_ms,
    bucket_of,
    latency_bin,
    minutes_from,
    prune_minutes,
)

CHROMIUM = Path("/usr/bin/chromium")
ADMIN_KEY = "dashboard-admin-key-0123456789"
SCREENSHOTS = Path(os.environ.get("BESTROUTE_SCREENSHOTS", "")) if os.environ.get("BESTROUTE_SCREENSHOTS") else None


def _call(decision_id: str, model: str, cost: float, *, error: str | None = None) -> CallRow:
    return CallRow(
        decision_id=decision_id,
        attempt=0,
        stage=0,
        stage_label=model,
        model=model,
        first_sample=0,
        samples=2,
        requests=1,
        input_tokens=10,
        output_tokens=8,
        sample_tokens=[4, 4],
        cost_usd=cost,
        latency_ms=3.0,
        error=error,
        kept=None if error else 0,
        responses=None,
    )


def _log_of(url: str, tmp_path: Path, count: int, now: float, prefix: str = "d") -> list[dict[str, Any]]:
    """``count`` decisions over the ten hours before ``now`` (some failed, some escalated, three
    models and two client keys), a call each, and a shadow check for every fifth; the rows as
    written. Their ids are ``prefix`` and a number."""
    rng = random.Random(7)
    log = DecisionLog(url, dead_letter_path=tmp_path / "dead.jsonl", batch_window_s=0.01)
    rows = []
    for i in range(count):
        model = rng.choice(["small", "medium", "big"])
        failed = rng.random() < 0.1
        fields = {
            "created_at": now - rng.uniform(0, 36_000),
            "option": None if failed else f"{model} x2",
            "model": None if failed else model,
            "status": 502 if failed else 200,
            "latency_ms": round(rng.lognormvariate(3, 1), 3),
            "cost_usd": 0.0 if failed else rng.uniform(0, 0.01),
            "escalated": None if failed else int(rng.random() < 0.3),
            "client_key_id": rng.choice(["aaaa", "bbbb"]),
            "threshold": 0.5 if i % 2 else None,  # routed, or a model asked by name
            "reference_cost_usd": None if failed or i % 2 == 0 else 0.02,
        }
        row = decision(f"{prefix}{i:04d}", **fields)
        log.write(row)
        log.write(_call(row.id, model, row.cost_usd, error="boom" if failed else None))
        if i % 5 == 0 and not failed:
            shadow = ShadowRow(
                decision_id=row.id,
                created_at=row.created_at + 1,
                option=str(row.option),
                against="big",
                agreed=i % 10 == 0,
                cost_usd=0.001,
                latency_ms=2.0,
                error=None,
                response=None,
            )
            log.write(shadow)
        rows.append(fields | {"id": row.id})
    log.close()
    return rows


def test_shadow_tallies_pool_every_replicas_checks_of_the_window(log_url, tmp_path):
    """What replicas sharing shadow checks read: per option, the checks of the requests in the
    window and how many agreed, whoever logged them (two replicas' ids), none from before it."""
    url = empty_database(log_url)
    now = time.time()
    rows = _log_of(url, tmp_path, 200, now) + _log_of(url, tmp_path, 100, now, prefix="chatcmpl-aaaaaaaa")
    _log_of(url, tmp_path, 100, now - 3 * DAY, prefix="e")  # checked too, but before the window
    expected: dict[str, list[int]] = {}
    for row in rows:
        number = int(row["id"][-4:])
        if number % 5 == 0 and row["status"] == 200:  # _log_of checks every fifth answered decision
            tally = expected.setdefault(row["option"], [0, 0])
            tally[0] += 1
            tally[1] += number % 10 == 0
    assert sum(checks for checks, _ in expected.values()) > 30
    found = shadow_tallies(open_database(url), since=now - DAY)
    assert found == {option: (checks, agreed) for option, (checks, agreed) in expected.items()}
    assert shadow_tallies(open_database(url), since=now + 3600) == {}


def test_dashboard_queries_give_the_rows_figures(log_url, tmp_path):
    """Percentiles, the series, the calls per model, the filtered list and its pages, and one
    decision's detail equal what the rows say, on SQLite and PostgreSQL alike."""
    url = empty_database(log_url)
    now = time.time()
    rows = _log_of(url, tmp_path, 300, now)
    engine = open_database(url)
    since = bucket_of(now - 8 * 3600, 60)  # the rollups' minutes: a window of whole ones is exact
    until = since + 8 * 3600
    inside = [r for r in rows if since <= r["created_at"] < until]
    answered = sorted(r["latency_ms"] for r in inside if r["status"] == 200)
    found = latency_percentiles(engine, since=since, until=until, quantiles=(0.5, 0.95, 1.0))
    for q, value in zip((50, 95, 100), found, strict=True):
        exact = float(np.percentile(answered, q, method="inverted_cdf"))
        assert value == bin_middle_ms(latency_bin(exact)) == pytest.approx(exact, rel=0.045)  # its bin's middle
    assert latency_percentiles(engine, since=now + 120, until=None, quantiles=(0.5,)) == (None,)

    series = traffic_series(engine, since=since, until=until, buckets=16)
    assert len(series) == 16 and sum(b.requests for b in series) == len(inside)
    assert sum(b.errors for b in series) == sum(r["status"] != 200 for r in inside)
    assert sum(b.cost_usd for b in series) == pytest.approx(sum(r["cost_usd"] for r in inside))
    for k, bucket in enumerate(series):
        assert bucket.start == since + k * 1800
        mine = [r for r in inside if bucket.start <= r["created_at"] < bucket.start + 1800]
        assert bucket.requests == len(mine) and bucket.escalated == sum(bool(r["escalated"]) for r in mine)

    models = {m.model: m for m in model_stats(engine, since=since, until=until)}
    for name in ("small", "medium", "big"):
        mine = [r for r in inside if r["model"] == name]  # a failed request's call cost nothing
        assert models[name].cost_usd == pytest.approx(sum(r["cost_usd"] for r in mine))
    assert sum(m.calls for m in models.values()) == len(inside)
    assert sum(m.failed for m in models.values()) == sum(r["status"] != 200 for r in inside)

    chosen = DecisionFilter(since=since, until=until, model="big", escalated=False, client_key_id="aaaa")
    expected = sorted(
        (r for r in inside if r["model"] == "big" and not r["escalated"] and r["client_key_id"] == "aaaa"),
        key=lambda r: (r["created_at"], r["id"]),
        reverse=True,
    )
    seen: list[str] = []
    while True:
        page = decision_page(engine, chosen, limit=7)
        seen += [r["id"] for r in page]
        if len(page) < 7:
            break
        chosen = DecisionFilter(**(chosen.__dict__ | {"before": (page[-1]["created_at"], page[-1]["id"])}))
    assert seen == [r["id"] for r in expected] and len(seen) > 7  # every row once, newest first, across pages
    failed = decision_page(engine, DecisionFilter(status=502))
    assert {r["id"] for r in failed} == {r["id"] for r in rows if r["status"] == 502}

    detail = decision_detail(engine, "d0000")
    assert detail is not None and detail.decision["id"] == "d0000" and len(detail.calls) == 1
    assert [s["against"] for s in detail.shadows] == ["big"] and detail.feedback == ()
    assert decision_detail(engine, "no-such-id") is None
    engine.dispose()


def _by_option(rows: list[dict[str, Any]], option: str | None) -> list[dict[str, Any]]:
    return [r for r in rows if r["option"] == option]


def test_the_rollups_equal_the_rows_and_an_older_log_gets_them(log_url, tmp_path):
    """Per option, the figures read from the rollups (minutes and hours) equal the rows', with
    feedback that came in later batches than its decision; a log from before the rollups has
    them filled from its rows when it is opened."""
    url = empty_database(log_url)
    now = time.time()
    rows = _log_of(url, tmp_path, 300, now)
    rated = [r for r in rows if r["status"] == 200][:40]
    log = DecisionLog(url, dead_letter_path=tmp_path / "dead.jsonl", batch_window_s=0.01)
    for k, r in enumerate(rated):  # feedback after its decision was written: counted in its decision's minute
        log.write(FeedbackRow(decision_id=r["id"], quality=(k % 4) / 3, comment=None, created_at=now))
        r["quality"] = (k % 4) / 3
    log.close()
    engine = open_database(url)

    def agree(stats: Any) -> None:
        assert stats.requests == len(rows) and stats.errors == sum(r["status"] != 200 for r in rows)
        assert stats.cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows))
        routed = [r for r in rows if r["reference_cost_usd"] is not None]
        assert stats.routed == len(routed) and stats.reference_cost_usd == pytest.approx(0.02 * len(routed))
        assert stats.routed_cost_usd == pytest.approx(sum(r["cost_usd"] for r in routed))
        assert {o.option for o in stats.options} == {r["option"] for r in rows}
        for option in stats.options:
            mine = _by_option(rows, option.option)
            assert option.requests == len(mine) and option.escalated == sum(bool(r["escalated"]) for r in mine)
            assert option.latency_ms_mean == pytest.approx(np.mean([r["latency_ms"] for r in mine]))
            qualities = [r["quality"] for r in mine if "quality" in r]
            assert option.feedback == len(qualities)
            if qualities:
                assert option.quality == pytest.approx(np.mean(qualities))
                assert option.quality_sd == pytest.approx(np.std(qualities), abs=1e-9)
            checked = [r for r in mine if int(r["id"][1:]) % 5 == 0 and r["status"] == 200]
            assert option.shadow_checks == len(checked)
            assert option.shadow_agreed == sum(int(r["id"][1:]) % 10 == 0 for r in checked)

    def per_client_day(engine: Any) -> None:  # what shared budgets read
        expected: dict[tuple[int, str], list[float]] = {}
        for r in rows:
            entry = expected.setdefault((bucket_of(r["created_at"], 86_400), r["client_key_id"]), [0, 0.0])
            entry[0], entry[1] = entry[0] + 1, entry[1] + r["cost_usd"]
        with engine.connect() as connection:
            got = connection.execute(
                sqlalchemy.text("SELECT bucket, client_key_id, replica, requests, cost_usd FROM client_rollup")
            ).all()
        assert {(b, c) for b, c, *_ in got} == expected.keys() and {g[2] for g in got} == {""}
        for bucket, client, _, requests, cost in got:
            assert [requests, cost] == pytest.approx(expected[(bucket, client)])

    agree(traffic_stats(engine, reference="big", since=bucket_of(now - 11 * 3600, 60)))  # from the minutes
    agree(traffic_stats(engine, reference="big", since=0.0))  # from the hours
    per_client_day(engine)
    with engine.begin() as connection:
        for table in ROLLUPS:
            connection.execute(sqlalchemy.text(f"DROP TABLE {table.name}"))
    engine.dispose()
    reopened = open_database(url)  # an older log: no rollups until now
    agree(traffic_stats(reopened, reference="big", since=0.0))
    agree(traffic_stats(reopened, reference="big", since=bucket_of(now - 11 * 3600, 60)))
    assert {m.model for m in model_stats(reopened, since=0.0, until=None)} == {"small", "medium", "big"}
    per_client_day(reopened)
    with reopened.begin() as connection:  # a log from before the client rollup alone gets it
        connection.execute(sqlalchemy.text("DROP TABLE client_rollup"))
    reopened.dispose()
    again = open_database(url)
    per_client_day(again)
    agree(traffic_stats(again, reference="big", since=0.0))  # the other rollups not counted twice
    again.dispose()


def test_old_minute_rollups_are_pruned_and_windows_before_them_read_the_hours(log_url, tmp_path):
    """Pruning deletes the minute rows older than its cut (the hours stay); a short window
    before the cut is then read from the hours, and every figure still equals the rows', a late
    feedback on an old decision included; the gateway's writer prunes by itself."""
    url = empty_database(log_url)
    now = time.time()
    old_now = now - 40 * DAY
    recent, old = _log_of(url, tmp_path, 200, now), _log_of(url, tmp_path, 150, old_now, prefix="e")
    engine = open_database(url)

    def minute_rows(before: float) -> int:
        with engine.connect() as connection:
            return sum(
                connection.execute(
                    sqlalchemy.select(sqlalchemy.func.count()).where(t.c.width == MINUTE, t.c.bucket < before)
                ).scalar_one()
                for t in MINUTE_ROLLUPS
            )

    def requests_and_cost(since: float, until: float | None) -> tuple[int, float]:
        stats = traffic_stats(engine, reference="big", since=since, until=until)
        return stats.requests, stats.cost_usd

    old_window = (bucket_of(old_now - 11 * 3600, 60), old_now + 3600)  # under a day: minutes if there are any
    expected_old = (len(old), pytest.approx(sum(r["cost_usd"] for r in old)))
    assert requests_and_cost(*old_window) == expected_old and minute_rows(now - 30 * DAY) > 0
    cut = bucket_of(now - 30 * DAY, 3600)
    assert prune_minutes(engine, now - 30 * DAY) > 0
    assert minute_rows(cut) == 0 and minute_rows(now + 60) > 0  # the recent minutes stay
    with engine.connect() as connection:
        assert minutes_from(connection) == cut
    assert requests_and_cost(*old_window) == expected_old  # from the hours now
    assert requests_and_cost(bucket_of(now - 11 * 3600, 60), None) == (
        len(recent),
        pytest.approx(sum(r["cost_usd"] for r in recent)),
    )
    assert requests_and_cost(0.0, None)[0] == len(recent) + len(old)
    assert sum(m.calls for m in model_stats(engine, since=old_window[0], until=old_window[1])) == len(old)
    prune_minutes(engine, now - 60 * DAY)  # a replica keeping more minutes: the later start stays
    with engine.connect() as connection:
        assert minutes_from(connection) == cut
    # a late feedback on an old decision: added to its hour (and to a minute row that is never read)
    late = DecisionLog(url, dead_letter_path=tmp_path / "dead.jsonl", batch_window_s=0.01, minute_rollup_days=None)
    late.write(FeedbackRow(decision_id=old[0]["id"], quality=1.0, comment=None, created_at=now))
    late.close()
    assert minute_rows(cut) > 0
    stats = traffic_stats(engine, reference="big", since=old_window[0], until=old_window[1])
    assert sum(o.feedback for o in stats.options) == 1 and stats.requests == len(old)
    # the gateway's writer prunes at start-up: the stray minute row goes
    writer = DecisionLog(url, dead_letter_path=tmp_path / "dead.jsonl", batch_window_s=0.01, minute_rollup_days=30)
    deadline = time.monotonic() + 20
    while minute_rows(cut) and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    assert minute_rows(cut) == 0
    assert traffic_stats(engine, reference="big", since=0.0).requests == len(recent) + len(old)
    engine.dispose()


@pytest.mark.parametrize("days", [0, -1, "x", float("inf")])
def test_minute_rollup_days_must_be_a_positive_number(tmp_path, days):
    with pytest.raises(pydantic.ValidationError, match="minute_rollup_days"):
        DecisionLogConfig(minute_rollup_days=days)


def test_session_tokens_expire_and_bind_to_their_key():
    key, other = b"admin-one", b"admin-two"
    now = 1_000_000.0
    token = session_token(key, now=now)
    assert token_valid(token, [other, key], now=now + 1)
    assert not token_valid(token, [other], now=now + 1)  # that key was removed: its sessions end
    assert not token_valid(token, [key], now=now + SESSION_S)  # expired
    expires, signature = token.split(".")
    assert not token_valid(f"{int(expires) + 3600}.{signature}", [key], now=now)  # extended by hand
    assert not token_valid(f"{expires}.{signature[:-1]}0", [key], now=now)


@given(st.text(max_size=200))
def test_any_cookie_is_refused_without_raising(cookie):
    assert not token_valid(cookie, [b"admin-one"], now=0.0)


def _chat(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def _backlog_drained(client: httpx.Client, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 30
    while client.get("/healthz", headers=headers).json()["decision_log"]["backlog"]:
        assert time.monotonic() < deadline, "the decision log did not drain"
        time.sleep(0.05)


def _count(url: str, table: str) -> int:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        found = int(connection.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar_one())
    engine.dispose()
    return found


def _logged(url: str) -> list[dict[str, Any]]:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(sqlalchemy.text("SELECT * FROM decisions"))]
    engine.dispose()
    return rows


def test_without_the_admin_key_the_dashboard_gives_no_data(tmp_path, artifact, monkeypatch):
    monkeypatch.setenv("BR_ADMIN_KEYS", ADMIN_KEY)
    with upstream(Script(answers=["42"])) as small, upstream(Script(answers=["43"])) as big:
        backends = {"small": small.url, "big": big.url}
        with (
            gateway(tmp_path, artifact, backends, admin={"api_keys_env": "BR_ADMIN_KEYS"}) as (server, _),
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            answer = client.post("/v1/chat/completions", json=_chat("bestroute:0", "What is 2 plus 2?")).json()
            _backlog_drained(client, {"authorization": f"Bearer {ADMIN_KEY}"})
            forged = f"{int(time.time()) + 3600}.{'0' * 64}"
            for path in (
                "/dashboard",
                "/dashboard/options",
                "/dashboard/decisions",
                f"/dashboard/decisions/{answer['id']}",
                "/dashboard/backends",
            ):
                for cookie in (None, forged):
                    client.cookies.clear()
                    if cookie is not None:
                        client.cookies.set("bestroute_session", cookie)
                    refused = client.get(path)
                    assert refused.status_code == 303 and refused.headers["location"].startswith(
                        "/dashboard/login?next="
                    )
                    assert answer["id"] not in refused.text and "42" not in refused.text
                wrong = client.get(path, headers={"authorization": "Bearer not-the-key"})
                assert wrong.status_code == 303
                shown = client.get(path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
                assert shown.status_code == 200 and shown.headers["content-security-policy"].startswith(
                    "default-src 'self'"
                )
            failed = client.post("/dashboard/login", data={"key": "guess", "next": "/dashboard"})
            assert (
                failed.status_code == 401 and "not an admin key" in failed.text and "set-cookie" not in failed.headers
            )
            signed = client.post("/dashboard/login", data={"key": ADMIN_KEY, "next": "//evil.example/x"})
            assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"  # never another site
            cookie = signed.headers["set-cookie"].lower()
            assert all(part in cookie for part in ("httponly", "secure", "samesite=strict", "path=/dashboard"))
            client.cookies.clear()
            client.cookies.set("bestroute_session", signed.cookies["bestroute_session"])
            assert client.get("/dashboard").status_code == 200
            client.cookies.clear()
            headers = {"authorization": f"Bearer {ADMIN_KEY}"}
            for path, param in (
                ("/dashboard?range=forever", "range"),
                ("/dashboard/decisions?status=abc", "status"),
                ("/dashboard/decisions?escalated=maybe", "escalated"),
                ("/dashboard/decisions?before=nan_x", "before"),
            ):
                bad = client.get(path, headers=headers)
                assert bad.status_code == 400 and bad.json()["error"]["param"] == param
            missing = client.get("/dashboard/decisions/no-such-decision", headers=headers)
            assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"


def _browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: bash scripts/install.sh --dev installs it")
    manager = sync_playwright().start()
    browser = manager.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )
    return manager, browser


def _shot(page: Any, directory: Path, name: str) -> None:
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000  # a rendered page, not a blank one


def _usd(value: float) -> str:
    return f"${value:,.4f}"


def test_the_dashboard_in_a_browser_shows_the_logs_figures(tmp_path, artifact, monkeypatch):
    """Sign in, open every page, check the figures against the log's rows (requests, cost,
    savings), filter the decisions, open one, and save screenshots of each page."""
    monkeypatch.setenv("BR_ADMIN_KEYS", ADMIN_KEY)
    shots = SCREENSHOTS or tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with priced_upstreams() as backends:
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        shadow = {"rate": 1.0, "min_checks": 1, "target": 0.99}  # every cheaper answer checked against big
        with (
            gateway(tmp_path, artifact, backends, admin={"api_keys_env": "BR_ADMIN_KEYS"}, shadow=shadow) as (
                server,
                _,
            ),
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            for model, count in (("bestroute:0", 3), ("bestroute:1", 2), ("big", 2), ("broken", 1)):
                for i in range(count):
                    client.post("/v1/chat/completions", json=_chat(model, f"What is {i} plus {i}?"))
            url = f"sqlite:///{tmp_path}/decisions.db"
            deadline = time.monotonic() + 30
            while _count(url, "shadows") < 3:  # the checks of small's three answers run after them
                assert time.monotonic() < deadline, "the shadow checks were not logged"
                time.sleep(0.05)
            _backlog_drained(client, admin)
            rows = _logged(url)
            routed = [r for r in rows if r["threshold"] is not None and r["status"] == 200]
            reference_cost = len(routed) * REFERENCE_COST  # the fake upstreams' usage, at big's prices
            savings = 1 - sum(r["cost_usd"] for r in routed) / reference_cost
            manager, browser = _browser()
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.goto(server.url + "/dashboard/decisions?range=24h")
                assert "/dashboard/login" in page.url
                page.fill("#key", "a wrong key")
                page.click("#sign-in")
                assert page.text_content("#login-error") == "That is not an admin key."
                page.fill("#key", ADMIN_KEY)
                page.click("#sign-in")
                page.wait_for_url("**/dashboard/decisions?range=24h")  # back where the browser was sent from
                page.click("nav >> text=Overview")
                assert page.text_content("#requests") == str(len(rows)) == "8"
                assert page.text_content("#errors") == "1"
                assert page.text_content("#cost") == _usd(sum(r["cost_usd"] for r in rows))
                assert page.text_content("#reference-cost") == _usd(reference_cost)
                assert page.text_content("#savings") == f"{savings:.1%}"
                page.wait_for_selector("#chart-traffic[data-drawn=true] canvas")
                page.wait_for_selector("#chart-cost[data-drawn=true] canvas")
                # three agreeing checks leave a Wilson interval far below 0.99: the gateway says so
                assert "small" in page.text_content("#shadow-breach")
                _shot(page, shots, "overview")

                page.click("nav >> text=Options and models")
                for option in {r["option"] for r in rows if r["option"]}:
                    row = page.locator(f"#options tr[data-option='{option}']")
                    assert row.locator(".requests").text_content() == str(sum(r["option"] == option for r in rows))
                    assert row.locator(".cost").text_content() == _usd(
                        sum(r["cost_usd"] for r in rows if r["option"] == option)
                    )
                failed_calls = page.locator("#models tr[data-model='broken'] td").nth(3)
                assert failed_calls.text_content() == "1"
                checked = page.locator("#options tr[data-option='small'] td")
                assert checked.nth(10).text_content() == "3" and checked.nth(11).text_content().startswith("100.0% [")
                _shot(page, shots, "options")

                page.click("nav >> text=Decisions")
                assert page.locator("#decisions tbody tr").count() == len(rows)
                page.fill("#filters input[name=model]", "big")
                page.click("#apply")
                page.wait_for_url("**model=big**")
                listed = page.locator("#decisions tbody tr")
                big_rows = [r for r in rows if r["model"] == "big"]
                assert listed.count() == len(big_rows) > 0
                assert {listed.nth(i).get_attribute("data-id") for i in range(listed.count())} == {
                    r["id"] for r in big_rows
                }
                _shot(page, shots, "decisions")

                listed.first.locator("a").click()
                page.wait_for_selector("#decision")
                shown = next(r for r in rows if r["id"] in page.url)
                assert page.text_content("#model") == "big" and page.text_content("#status").startswith("200")
                assert page.text_content("#decision-cost").startswith(_usd(shown["cost_usd"]))
                assert page.text_content("#prompt") == shown["prompt"]  # store_prompts is on here
                assert page.locator("#calls tbody tr").count() >= 1

                routed = next(r for r in rows if r["option"] == "small")
                page.goto(server.url + f"/dashboard/decisions/{routed['id']}")
                assert page.locator("#scores tbody tr").count() == len(json.loads(routed["scores"])) > 1
                assert page.locator("#scores tr.chosen td").first.text_content() == "small"
                assert page.locator("#shadows tbody tr td").nth(1).text_content() == "yes"
                _shot(page, shots, "decision")

                page.click("nav >> text=Backends")
                assert page.locator("#backends tbody tr").count() == 3
                assert page.locator("#backends tr[data-backend='broken'] td").nth(3).text_content() != "0"
                _shot(page, shots, "backends")

                page.click("#sign-out")
                page.goto(server.url + "/dashboard")
                assert "/dashboard/login" in page.url  # signed out: no data
            finally:
                browser.close()
                manager.stop()
    assert math.isfinite(savings) and 0 < savings < 1
