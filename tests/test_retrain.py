"""Retraining from traffic (issue 23, item 5): a gateway serves a router that wrongly believes the
small model fails, explores with logged propensities and shadow-checks the small answers against
the reference; `bestroute retrain` trains on the older traffic, estimates both routers on the newer
traffic, and writes the new router only when it is better, which the gateway then serves. Real
upstream servers, a real gateway, a real SQLite log."""

import hashlib
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy
from servers import Script, gateway, upstream
from typer.testing import CliRunner

from bestroute import BestRouteRouter, load_dataset, split_prompts
from bestroute.cli import app as cli
from bestroute.data import ModelPrice, write_routing_data
from bestroute.routers import load_router
from bestroute.serving import export_log, load_config

PRICES = {
    "small": ModelPrice(input_usd_per_mtok=0.1, output_usd_per_mtok=0.2),
    "big": ModelPrice(input_usd_per_mtok=5.0, output_usd_per_mtok=15.0),
}


def _pessimist(tmp_path: Path) -> Path:
    """A router trained on data where the small model is always wrong: it sends every prompt to big."""
    prompts = [{"prompt_id": f"p{i}", "prompt": f"What is {i} plus {i}?"} for i in range(80)]
    responses = [
        {"prompt_id": f"p{i}", "model": model, "sample": 0, "quality": quality, "input_tokens": 10, "output_tokens": 5}
        for i in range(80)
        for model, quality in (("small", 0.0), ("big", 1.0))
    ]
    directory = write_routing_data(tmp_path / "original", prompts, responses, PRICES)
    data = load_dataset(directory)
    split = split_prompts(data.prompt_ids)
    router = BestRouteRouter(features="lexical", max_n=1, prune_dominated=False, domain_quantile=None).fit(
        data, split.train, split.val
    )
    path = tmp_path / "router.bestroute"
    router.save(path)
    return path


def _backends(small_url: str, big_url: str) -> dict:
    return {
        name: {
            "base_url": url,
            "input_usd_per_mtok": p.input_usd_per_mtok,
            "output_usd_per_mtok": p.output_usd_per_mtok,
        }
        for name, url, p in (("small", small_url, PRICES["small"]), ("big", big_url, PRICES["big"]))
    }


def _send(client: httpx.Client, count: int) -> list[str]:
    """``count`` routed prompts; the model that answered each."""
    return [choice[0] for choice in _choices(client, count)]


def _choices(client: httpx.Client, count: int) -> list[tuple[str, str]]:
    """``count`` routed prompts; the model that answered each and the router's choice."""
    models = []
    for i in range(count):
        body = {"model": "bestroute", "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}]}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        models.append((response.headers["x-bestroute-model"], response.json()["bestroute"]["router_choice"]))
    return models


def _settled(client: httpx.Client, url: str, shadows: int) -> None:
    """Wait until ``shadows`` shadow checks are logged and the log has written every row."""
    engine = sqlalchemy.create_engine(url)
    deadline = time.monotonic() + 60
    try:
        while True:
            with engine.connect() as connection:
                done = connection.execute(sqlalchemy.text("SELECT count(*) FROM shadows")).scalar_one()
            if done >= shadows and not client.get("/healthz").json()["decision_log"]["backlog"]:
                return
            assert time.monotonic() < deadline, f"{done} of {shadows} shadow checks logged"
            time.sleep(0.05)
    finally:
        engine.dispose()


SETTINGS = {"explore": {"rate": 0.5, "width": 1, "seed": 1}, "shadow": {"rate": 1.0}, "reload_poll_s": 0.2}


def test_retrain_writes_a_better_router_and_the_gateway_serves_it(tmp_path):
    """The small model answers as the reference does: the shadow checks say so, the retrained
    router sends the traffic to it at a fraction of the cost, is written over the serving one,
    and the gateway reloads it."""
    artifact = _pessimist(tmp_path)
    before = artifact.read_bytes()
    with (
        upstream(Script(answers=["42"])) as small,
        upstream(Script(answers=["The answer is 42."])) as big,
        gateway(tmp_path, artifact, _backends(small.url, big.url), **SETTINGS) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        served = _send(client, 160)
        assert 20 < served.count("small") < 140 and "big" in served  # the router's big, and explored small
        _settled(client, f"sqlite:///{tmp_path}/decisions.db", served.count("small"))
        result = CliRunner().invoke(cli, ["retrain", "--config", str(tmp_path / "gateway.yaml"), "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["better"] and report["written"] == str(artifact)
        serving, candidate = report["serving"], report["candidate"]
        assert serving["quality"]["snips"]["value"] == pytest.approx(1.0)  # the reference, agreeing with itself
        assert candidate["quality"]["snips"]["value"] == pytest.approx(1.0)  # small agreed on every check
        assert candidate["cost_per_1k"]["snips"]["value"] < serving["cost_per_1k"]["snips"]["value"] / 5
        assert report["prompts"] > 0 and report["serving"]["rows"] == report["candidate"]["rows"]
        assert (tmp_path / "router.bestroute.previous").read_bytes() == before
        deadline = time.monotonic() + 30
        while client.get("/healthz").json()["artifact"]["sha256"] != _sha(artifact.read_bytes())[:16]:
            assert time.monotonic() < deadline, "the gateway did not reload the retrained router"
            time.sleep(0.1)
        after = _choices(client, 20)
    assert {choice for _, choice in after} == {"small"}  # the new router's choice (exploration still runs)
    assert [model for model, _ in after].count("small") > 10
    assert load_router(artifact).reference_.model == "big"


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_retrain_keeps_the_serving_router_when_the_new_one_is_not_better(tmp_path):
    """The small model answers otherwise than the reference: the shadow checks say it is wrong, the
    retrained router is no better, and the serving artifact is left as it was."""
    artifact = _pessimist(tmp_path)
    before = artifact.read_bytes()
    with (
        upstream(Script(answers=["41"])) as small,
        upstream(Script(answers=["The answer is 42."])) as big,
        gateway(tmp_path, artifact, _backends(small.url, big.url), **SETTINGS) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        served = _send(client, 160)
        _settled(client, f"sqlite:///{tmp_path}/decisions.db", served.count("small"))
    config = load_config(tmp_path / "gateway.yaml")
    prompts, _, _ = export_log(config, tmp_path / "exported")
    exported = load_dataset(tmp_path / "exported")
    small_quality = exported.quality[:, exported.model_index("small"), 0]
    assert prompts == served.count("small") and (small_quality[~np.isnan(small_quality)] == 0).all()
    result = CliRunner().invoke(cli, ["retrain", "--config", str(tmp_path / "gateway.yaml")])
    assert result.exit_code == 0, result.output
    assert "not better: the serving router stays" in result.output and "serving" in result.output
    assert artifact.read_bytes() == before and not (tmp_path / "router.bestroute.previous").exists()


def test_retrain_refuses_bad_input_with_one_line(tmp_path):
    artifact = _pessimist(tmp_path)
    with (
        upstream(Script(answers=["42"])) as small,
        upstream(Script(answers=["42"])) as big,
        gateway(tmp_path, artifact, _backends(small.url, big.url)),
    ):
        pass  # a gateway that served nothing: an empty log
    config = str(tmp_path / "gateway.yaml")
    for arguments, message in (
        (["--holdout", "1.5"], "--holdout must be between 0 and 1"),
        ([], "the decision log has 0 answered routed request(s)"),
        (["--with-data", str(tmp_path / "nowhere")], "the decision log has 0"),
    ):
        result = CliRunner().invoke(cli, ["retrain", "--config", config, *arguments])
        assert result.exit_code != 0 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
