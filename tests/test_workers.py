"""`bestroute serve --workers 2`: two worker processes on one port, with metrics added up over
the workers, one decision log, budgets and shadow checks counted across workers, and reloads (POST /admin/reload
on one worker, SIGHUP to the supervisor) reaching every worker. Real processes on loopback."""

import os
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from servers import Script, serve_subprocess, upstream, write_gateway_config
from test_budgets import fingerprint
from test_reload import second_router


def chat(url: str, key: str = "key-a") -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
        json={"model": "bestroute:0", "messages": [{"role": "user", "content": "What is six times seven?"}]},
    )


def health(url: str) -> dict:
    return httpx.get(url + "/healthz", headers={"authorization": "Bearer key-a"}, timeout=10).json()


def workers_seen(url: str, wanted: int, seconds: float = 30) -> set[int]:
    """The pids /healthz answers from (each request on a new connection), until ``wanted`` are seen."""
    pids: set[int] = set()
    deadline = time.monotonic() + seconds
    while len(pids) < wanted and time.monotonic() < deadline:
        pids.add(health(url)["pid"])
    return pids


def digests(url: str, count: int = 12) -> set[str]:
    return {health(url)["artifact"]["sha256"] for _ in range(count)}


def wait_until(check, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def requests_total(url: str) -> float:
    text = httpx.get(url + "/metrics", headers={"authorization": "Bearer key-a"}, timeout=10).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "bestroute_requests")
    return sum(s.value for s in family.samples if s.name == "bestroute_requests_total")


def rows(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return [r[0] for r in db.execute("SELECT id FROM decisions")]


def test_two_workers_share_the_port_metrics_log_and_reloads(tmp_path, artifact, multisample_dir, monkeypatch):
    monkeypatch.setenv("KEYS", "key-a")
    second = second_router(multisample_dir, tmp_path / "second.bestroute")
    run_root = tmp_path / "tmp"
    run_root.mkdir()
    with upstream(Script(answers=["42"], delay_s=0.02)) as s:
        backends = {"small": s.url, "big": s.url}
        config = write_gateway_config(tmp_path, artifact, backends, client_api_keys_env="KEYS")
        with serve_subprocess(config, "--workers", "2", env={"TMPDIR": str(run_root)}) as (process, url):
            assert len(workers_seen(url, 2)) == 2
            assert [p.name[:18] for p in run_root.iterdir()] == ["bestroute-workers-"]

            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda _: chat(url).status_code, range(60)))
            assert statuses == [200] * 60
            # Every scrape adds up both workers, whichever of them answers it.
            wait_until(lambda: all(requests_total(url) == 60 for _ in range(6)))

            first = health(url)["artifact"]["sha256"]
            write_gateway_config(tmp_path, second, backends, client_api_keys_env="KEYS")
            answer = httpx.post(url + "/admin/reload", headers={"authorization": "Bearer key-a"}, timeout=30).json()
            assert answer["status"] == "reloaded" and answer["other_workers_signalled"] == 1
            new = answer["artifact"]["sha256"]
            assert new != first
            wait_until(lambda: digests(url) == {new})

            write_gateway_config(tmp_path, artifact, backends, client_api_keys_env="KEYS")
            process.send_signal(signal.SIGHUP)  # to the supervisor, which passes it to each worker
            wait_until(lambda: digests(url) == {first})
            assert len(workers_seen(url, 2)) == 2  # reloaded in place, not restarted

            process.terminate()
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, stderr
    ids = rows(tmp_path / "decisions.db")
    assert len(ids) == 60  # both workers drained their writers at shutdown
    replicas = {i.removeprefix("chatcmpl-")[:8] for i in ids}
    assert len(replicas) == 2  # each worker answered some of them
    assert list(run_root.iterdir()) == []  # the group's run directory is gone
    assert "reload (SIGHUP): serving" in stderr and "reload (POST /admin/reload): serving" in stderr


def test_budgets_hold_across_workers(tmp_path, artifact, monkeypatch):
    monkeypatch.setenv("KEYS", "key-a")
    with upstream(Script(answers=["42"])) as s:
        config = write_gateway_config(
            tmp_path,
            artifact,
            {"small": s.url, "big": s.url},
            client_api_keys_env="KEYS",
            # not `shared`: in a group of workers each worker is a replica and reads the others' usage
            budgets={"requests_per_minute": 8, "refresh_s": 0.1},
        )
        with serve_subprocess(config, "--workers", "2") as (_, url):
            assert len(workers_seen(url, 2)) == 2
            statuses = []
            for _ in range(16):
                statuses.append(chat(url).status_code)
                time.sleep(0.4)  # past the writer's window and a refresh of the other worker
    assert statuses == [200] * 8 + [429] * 8
    ids = rows(tmp_path / "decisions.db")
    assert len({i.removeprefix("chatcmpl-")[:8] for i in ids}) == 2
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        keys = {r[0] for r in db.execute("SELECT client_key_id FROM decisions")}
    assert keys == {fingerprint("key-a")}


def test_workers_judge_shadow_checks_together(tmp_path, artifact, monkeypatch):
    """Each worker of a group judges an option by every worker's shadow checks (not `shared`:
    the workers of a group always share them), so both route around an option found below its
    target, however the checked requests were spread over them."""
    monkeypatch.setenv("KEYS", "key-a")
    with upstream(Script(answers=["7"])) as s, upstream(Script(answers=["42"])) as b:  # small never agrees
        config = write_gateway_config(
            tmp_path,
            artifact,
            {"small": s.url, "big": b.url},
            client_api_keys_env="KEYS",
            shadow={"rate": 1.0, "target": 0.9, "min_checks": 5, "on_breach": "avoid", "refresh_s": 0.1},
        )
        with serve_subprocess(config, "--workers", "2") as (_, url):
            assert len(workers_seen(url, 2)) == 2
            first = [chat(url).json()["bestroute"]["option"] for _ in range(5)]
            judged: set[int] = set()

            def both_judge() -> bool:
                report = health(url)
                if report["shadow"].get("small", {}).get("checks", 0) >= 5:
                    judged.add(report["pid"])
                return len(judged) == 2

            wait_until(both_judge, seconds=30)
            later = [chat(url).json() for _ in range(10)]
    assert first == ["small"] * 5
    # none on small (small x2, checked in turn and never agreeing either, gives way to small x3)
    assert all(r["bestroute"]["option"] in ("small x2", "small x3") for r in later)
    assert len({r["id"].removeprefix("chatcmpl-")[:8] for r in later}) == 2  # both workers answered


def test_a_worker_that_cannot_start_stops_the_gateway_with_one_line(tmp_path, artifact):
    with upstream(Script()) as s:
        config = write_gateway_config(tmp_path, artifact, {"small": s.url, "big": s.url})
        with serve_subprocess(config, "--workers", "2") as (process, url):
            # The supervisor checked the files; they break before a worker restarts.
            (tmp_path / "gateway.yaml").write_text("router: [")
            os.kill(health(url)["pid"], signal.SIGKILL)
            _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "a worker could not start" in stderr.splitlines()[-1]
