"""Budgets per client key (requests per minute, USD per UTC day): 429 with Retry-After, per
process and shared by replicas through the decision log's database; real servers on loopback."""

import hashlib
import sqlite3
import time
from pathlib import Path

import httpx
from servers import Script, gateway, upstream


def chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
        json={"model": "bestroute:0", "messages": [{"role": "user", "content": "q"}]},
    )


def wait_for_rows(database: Path, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as db:
            if db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} rows in {database}")


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def test_requests_per_minute_per_key_with_overrides(tmp_path, artifact, monkeypatch):
    monkeypatch.setenv("KEYS", "key-a,key-b,key-c")
    budgets = {"requests_per_minute": 5, "per_key": {fingerprint("key-b"): {"requests_per_minute": 2}}}
    with (
        upstream(Script()) as s,
        gateway(tmp_path, artifact, {"small": s.url, "big": s.url}, client_api_keys_env="KEYS", budgets=budgets) as (
            g,
            _,
        ),
    ):
        assert [chat(g.url, "key-a").status_code for _ in range(5)] == [200] * 5
        refused = chat(g.url, "key-a")
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert [chat(g.url, "key-b").status_code for _ in range(3)] == [200, 200, 429]  # its override
        assert [chat(g.url, "key-c").status_code for _ in range(5)] == [200] * 5  # its own minute


def test_usd_per_day_from_the_gateways_own_cost(tmp_path, artifact, monkeypatch):
    monkeypatch.setenv("KEYS", "key-a,key-b")
    # Each answer costs 10 x 1 + 5 x 2 = 20 USD per million tokens: 2e-5 USD.
    with (
        upstream(Script()) as s,
        gateway(
            tmp_path,
            artifact,
            {"small": s.url, "big": s.url},
            client_api_keys_env="KEYS",
            budgets={"usd_per_day": 3e-5},
        ) as (g, _),
    ):
        assert [chat(g.url, "key-a").status_code for _ in range(2)] == [200, 200]
        refused = chat(g.url, "key-a")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
        until_midnight = 86_400 - time.time() % 86_400
        assert abs(int(refused.headers["retry-after"]) - until_midnight) < 5
        assert chat(g.url, "key-b").status_code == 200


def test_replicas_share_budgets_through_the_decision_log(tmp_path, artifact, monkeypatch):
    monkeypatch.setenv("KEYS", "key-a")
    shared_log = {"url": f"sqlite:///{tmp_path}/shared.db"}
    budgets = {"requests_per_minute": 6, "shared": True, "refresh_s": 0.1}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    with (
        upstream(Script()) as s,
        gateway(
            one,
            artifact,
            {"small": s.url, "big": s.url},
            client_api_keys_env="KEYS",
            decision_log=shared_log,
            budgets=budgets,
        ) as (first, _),
        gateway(
            two,
            artifact,
            {"small": s.url, "big": s.url},
            client_api_keys_env="KEYS",
            decision_log=shared_log,
            budgets=budgets,
        ) as (second, _),
    ):
        assert [chat(first.url, "key-a").status_code for _ in range(4)] == [200] * 4
        wait_for_rows(tmp_path / "shared.db", 4)
        time.sleep(0.5)  # several refreshes of the other replica
        assert [chat(second.url, "key-a").status_code for _ in range(3)] == [200, 200, 429]
        wait_for_rows(tmp_path / "shared.db", 6)  # the refused request has no row
        time.sleep(0.5)
        assert chat(first.url, "key-a").status_code == 429


def test_replicas_share_the_days_spend_through_the_client_rollup(tmp_path, artifact, monkeypatch):
    """Two requests on one replica spend the key's day; the other replica then refuses it, from
    the log's daily client rollup, and another key still passes."""
    monkeypatch.setenv("KEYS", "key-a,key-b")
    shared_log = {"url": f"sqlite:///{tmp_path}/shared.db"}
    budgets = {"usd_per_day": 3e-5, "shared": True, "refresh_s": 0.1}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    with upstream(Script()) as s:
        config = {"client_api_keys_env": "KEYS", "decision_log": shared_log, "budgets": budgets}
        with (
            gateway(one, artifact, {"small": s.url, "big": s.url}, **config) as (first, _),
            gateway(two, artifact, {"small": s.url, "big": s.url}, **config) as (second, _),
        ):
            assert [chat(first.url, "key-a").status_code for _ in range(2)] == [200, 200]
            wait_for_rows(tmp_path / "shared.db", 2)
            time.sleep(0.5)  # several refreshes of the other replica
            refused = chat(second.url, "key-a")
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
            assert chat(second.url, "key-b").status_code == 200
    with sqlite3.connect(tmp_path / "shared.db") as db:
        by_replica = db.execute("SELECT client_key_id, replica, requests FROM client_rollup").fetchall()
    assert sorted(r[2] for r in by_replica) == [1, 2] and len({r[1] for r in by_replica}) == 2
