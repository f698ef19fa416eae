"""Live reload of the configuration and the router artifact: POST /admin/reload, a file change
and SIGHUP; requests in flight finish, a bad file is refused and the old one keeps serving."""

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from servers import Script, ask, gateway, serve_subprocess, upstream, write_gateway_config

from bestroute import BestRouteRouter, load_dataset, split_prompts


def second_router(multisample_dir: Path, path: Path) -> Path:
    """Another router over the same models: one sample per option (no best-of-n)."""
    data = load_dataset(multisample_dir)
    split = split_prompts(data.prompt_ids)
    BestRouteRouter(features="lexical", max_n=1, prune_dominated=False).fit(data, split.train, split.val).save(path)
    return path


def artifact_digest(url: str) -> str:
    return httpx.get(url + "/healthz").json()["artifact"]["sha256"]


def test_reload_swaps_the_router_without_dropping_requests_and_refuses_bad_files(
    tmp_path, artifact, multisample_dir, caplog
):
    second = second_router(multisample_dir, tmp_path / "second.bestroute")
    broken = tmp_path / "broken.bestroute"
    broken.write_text("not a router")
    small = Script(answers=["42"])
    with upstream(small) as s, upstream(Script(answers=["big"])) as b, caplog.at_level("WARNING"):
        backends = {"small": s.url, "big": b.url}
        with gateway(tmp_path, artifact, backends, reload_poll_s=0.2) as (g, client):
            assert ask(client, "bestroute:0.95")[1]["x-bestroute-n"] == "3"
            first = artifact_digest(g.url)
            small.delay_s = 1.0
            answers: list[Any] = []
            threads = [threading.Thread(target=lambda: answers.append(ask(client, "bestroute:0.95"))) for _ in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)  # four requests are in flight on the first router
            write_gateway_config(tmp_path, broken, backends, reload_poll_s=0.2)
            refused = httpx.post(g.url + "/admin/reload")
            assert refused.status_code == 400 and "reload refused" in refused.json()["error"]["message"]
            assert artifact_digest(g.url) == first  # still serving the first
            write_gateway_config(tmp_path, second, backends, reload_poll_s=0.2)  # picked up by the watcher
            deadline = time.monotonic() + 10
            while artifact_digest(g.url) == first and time.monotonic() < deadline:
                time.sleep(0.05)
            assert artifact_digest(g.url) != first
            for thread in threads:
                thread.join()
            assert [headers["x-bestroute-n"] for _, headers in answers] == ["3"] * 4  # finished, on the old one
            small.delay_s = 0.0
            assert ask(client, "bestroute:0.95")[1]["x-bestroute-n"] == "1"  # the new router decides
            health = httpx.get(g.url + "/healthz").json()
            assert health["artifact"]["path"] == str(second) and health["artifact"]["loaded_at"]
    assert "reload (POST /admin/reload) refused" in caplog.text


def test_sighup_reloads_bestroute_serve(tmp_path, artifact, multisample_dir):
    second = second_router(multisample_dir, tmp_path / "second.bestroute")
    with upstream(Script()) as s:
        backends = {"small": s.url, "big": s.url}
        config = write_gateway_config(tmp_path, artifact, backends, reload_poll_s=0)
        with serve_subprocess(config) as (process, url):
            first = artifact_digest(url)
            write_gateway_config(tmp_path, second, backends, reload_poll_s=0)
            time.sleep(0.5)
            assert artifact_digest(url) == first  # no watcher: nothing happens until the signal
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while artifact_digest(url) == first and time.monotonic() < deadline:
                time.sleep(0.05)
            assert artifact_digest(url) != first and process.poll() is None
            process.terminate()
            _, stderr = process.communicate(timeout=30)
    assert "reload (SIGHUP): serving" in stderr
