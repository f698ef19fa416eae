"""Exploration with logged propensities (issue 23, item 3): with `explore.rate` a routed request
takes an option near the router's choice with a known probability, and every routed row logs
the router's choice and that probability. Real upstream servers, a real SQLite log."""

import sqlite3
from collections import Counter

import httpx
import numpy as np
import pytest
from servers import Script, gateway, upstream, write_gateway_config

from bestroute import ConfigError
from bestroute.routers import load_router
from bestroute.serving import load_config


def _rows(tmp_path) -> list[dict]:
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM decisions ORDER BY created_at")]


def _send(server, count: int, model: str = "bestroute:0.5") -> list[dict]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return [
            client.post(
                "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": f"q {i}"}]}
            ).json()
            for i in range(count)
        ]


def test_without_exploration_every_routed_row_logs_the_choice_with_probability_one(tmp_path, artifact):
    with (
        upstream(Script(answers=["42"])) as s,
        upstream(Script(answers=["42"])) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, _),
    ):
        answers = _send(server, 5)
        direct = _send(server, 1, model="big")
    assert all(a["bestroute"]["propensity"] == 1.0 for a in answers)
    assert all(a["bestroute"]["router_choice"] == a["bestroute"]["option"] for a in answers)
    rows = _rows(tmp_path)
    assert [r["propensity"] for r in rows[:5]] == [1.0] * 5 and rows[5]["propensity"] is None  # not routed
    assert direct[0]["bestroute"]["router_choice"] is None


def test_exploration_draws_neighbours_of_the_choice_with_the_logged_probability(tmp_path, artifact):
    router = load_router(artifact)
    explore = {"rate": 0.6, "width": 1, "seed": 3}
    with (
        upstream(Script(answers=["42"])) as s,
        upstream(Script(answers=["42"])) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}, explore=explore) as (server, _),
    ):
        answers = _send(server, 300)
    (choice,) = {a["bestroute"]["router_choice"] for a in answers}  # one prompt kind: one choice
    # The candidates: the choice and its neighbour on each side among the servable options by cost.
    cost = router.option_cost_
    servable = [o for o in np.flatnonzero(router.active_) if router.options_[o].models[0] != "tiny"]
    ranked = sorted(servable, key=lambda o: (cost[o], o))
    at = [router.options_[o].label for o in ranked].index(choice)
    candidates = {router.options_[o].label for o in ranked[max(0, at - 1) : at + 2]}
    taken = Counter(a["bestroute"]["option"] for a in answers)
    assert set(taken) == candidates and len(candidates) >= 2
    for a in answers:
        expected = 0.6 / len(candidates) + (0.4 if a["bestroute"]["option"] == choice else 0.0)
        assert a["bestroute"]["propensity"] == pytest.approx(expected)
    # The frequencies follow the logged probabilities (300 draws; a loose bound, seeded).
    for label, count in taken.items():
        p = 0.6 / len(candidates) + (0.4 if label == choice else 0.0)
        assert abs(count / 300 - p) < 4 * (p * (1 - p) / 300) ** 0.5, (label, count)
    rows = _rows(tmp_path)
    assert {r["router_choice"] for r in rows} == {choice}
    assert [r["planned_option"] for r in rows] == [a["bestroute"]["option"] for a in answers]  # none failed over
    assert sorted(r["propensity"] for r in rows) == sorted(a["bestroute"]["propensity"] for a in answers)


def test_an_explore_rate_outside_zero_to_one_is_one_clear_error(tmp_path, artifact):
    for rate in (1.5, -0.2):
        path = write_gateway_config(tmp_path, artifact, {"small": "http://127.0.0.1:9"}, explore={"rate": rate})
        with pytest.raises(ConfigError, match="explore.rate: Input should be"):
            load_config(path)
