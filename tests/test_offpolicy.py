"""Off-policy evaluation (issue 23, item 4): the estimators in simulation where the truth is
known, and `bestroute log evaluate` on traffic the gateway logged with exploration (real upstream
servers, a real SQLite log)."""

import json
import sqlite3

import httpx
import numpy as np
import pytest
from servers import Script, gateway, upstream
from typer.testing import CliRunner

from bestroute import BestRouteRouter, load_dataset, split_prompts
from bestroute.cli import app as cli
from bestroute.policy import off_policy_estimates
from bestroute.serving import evaluate_log, load_config

# Two kinds of prompt, three options; each option's chance of a good answer depends on the kind.
MEANS = np.array([[0.55, 0.60, 0.90], [0.85, 0.50, 0.50]])
CANDIDATES = {
    "always 0": lambda x: np.zeros_like(x),
    "by kind": lambda x: np.where(x == 0, 2, 0),
    "always 1": lambda x: np.ones_like(x),
}


def _simulated_log(rng: np.random.Generator, rows: int, rate: float) -> tuple[np.ndarray, ...]:
    """The logging policy takes option 1, or with probability ``rate`` one of the three at random."""
    kind = rng.integers(0, 2, rows)
    explore = rng.random(rows) < rate
    taken = np.where(explore, rng.integers(0, 3, rows), 1)
    propensity = rate / 3 + (1 - rate) * (taken == 1)
    reward = (rng.random(rows) < MEANS[kind, taken]).astype(float)
    return kind, taken, propensity, reward


def test_estimates_cover_the_truth_in_at_least_90_of_100_runs_and_rank_the_candidates():
    truth = {name: float(MEANS[[0, 1], policy(np.array([0, 1]))].mean()) for name, policy in CANDIDATES.items()}
    assert sorted(truth, key=truth.get) == ["always 1", "always 0", "by kind"]
    covered = {(name, estimator): 0 for name in CANDIDATES for estimator in ("ips", "snips", "dr")}
    ranked = 0
    rng = np.random.default_rng(11)
    for run in range(100):
        kind, taken, propensity, reward = _simulated_log(rng, 600, rate=0.5)
        points = {}
        for name, policy in CANDIDATES.items():
            chosen = policy(kind)
            # A direct model that is off by 0.1 everywhere: DR stays right through the propensities.
            found = off_policy_estimates(
                reward,
                propensity,
                chosen == taken,
                predicted_logged=MEANS[kind, taken] - 0.1,
                predicted_candidate=MEANS[kind, chosen] - 0.1,
                resamples=300,
                seed=run,
            )
            for estimator in ("ips", "snips", "dr"):
                covered[name, estimator] += getattr(found, estimator).covers(truth[name])
            points[name] = found.snips.value
        ranked += sorted(points, key=points.get) == sorted(truth, key=truth.get)
    assert all(count >= 90 for count in covered.values()), covered
    assert ranked >= 90, ranked


def test_without_overlap_the_effective_sample_size_says_so():
    rng = np.random.default_rng(0)
    _, taken, propensity, reward = _simulated_log(rng, 200, rate=0.0)  # never explores
    found = off_policy_estimates(reward, propensity, np.zeros_like(taken) == taken)  # a candidate of option 0
    assert found.matched == 0 and found.effective_size == 0.0


# ------------------------------------------------------------------ on the gateway's log


@pytest.fixture(scope="module")
def two_routers(multisample_dir, tmp_path_factory):
    data = load_dataset(multisample_dir)
    split = split_prompts(data.prompt_ids)
    directory = tmp_path_factory.mktemp("candidates")
    # no domain guard: it would keep its flagged prompts from exploring, and the test wants every row explorable
    router = BestRouteRouter(features="lexical", max_n=3, prune_dominated=False, domain_quantile=None).fit(
        data, split.train, split.val
    )
    router.save(directory / "logging.bestroute")
    return directory / "logging.bestroute", router


def _log_with_exploration(tmp_path, artifact, requests: int, explore: dict) -> None:
    small = Script(answers=["42", "7", "42", "9"])
    with (
        upstream(small) as s,
        upstream(Script(answers=["42"])) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}, explore=explore) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        for i in range(requests):
            body = {
                "model": "bestroute:0.5",
                "messages": [{"role": "user", "content": f"What is six times seven? ({i})"}],
            }
            answer = client.post("/v1/chat/completions", json=body).json()
            right = "42" in answer["choices"][0]["message"]["content"]
            client.post("/v1/feedback", json={"id": answer["id"], "quality": float(right)})


def test_log_evaluate_estimates_a_candidate_from_the_explored_log(tmp_path, two_routers):
    artifact, _ = two_routers
    _log_with_exploration(tmp_path, artifact, 120, {"rate": 0.6, "width": 1, "seed": 5})
    config = str(tmp_path / "gateway.yaml")
    done = CliRunner().invoke(cli, ["log", "evaluate", str(artifact), "--config", config, "--json"])
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    assert found["rows"] == 120 and found["labelled"] == 120
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        rows = db.execute(
            "SELECT d.planned_option, d.router_choice, d.cost_usd, f.quality FROM decisions d JOIN feedback f ON f.decision_id = d.id"
        ).fetchall()
    # The candidate is the logging router itself: its choice is each row's router_choice, and its
    # value is what the rows that took that choice got (a self-normalised mean of equal weights).
    mine = [r for r in rows if r[0] == r[1]]
    quality, cost = np.mean([r[3] for r in mine]), 1000 * np.mean([r[2] for r in mine])
    snips = found["quality"]["snips"]
    assert snips["value"] == pytest.approx(quality) and snips["lower"] <= quality <= snips["upper"]
    assert found["cost_per_1k"]["snips"]["value"] == pytest.approx(cost)
    assert found["quality"]["matched"] == len(mine) and found["quality"]["dr"] is not None
    shown = CliRunner().invoke(cli, ["log", "evaluate", str(artifact), "--config", config])
    assert shown.exit_code == 0 and "snips" in shown.output and "logged traffic" in shown.output
    # Read 7 requests at a time (17 pages and a part), the same estimates: the pages only feed running sums.
    paged = evaluate_log(load_config(config), str(artifact), batch=7)
    assert (paged.rows, paged.labelled, paged.quality.matched) == (120, 120, len(mine))
    for name in ("ips", "snips", "dr"):
        for metric, whole in (("quality", found["quality"]), ("cost_per_1k", found["cost_per_1k"])):
            estimate = getattr(getattr(paged, metric), name)
            assert estimate.value == pytest.approx(whole[name]["value"])
            # another draw of the bootstrap: the same interval up to its own noise
            width = whole[name]["upper"] - whole[name]["lower"]
            assert estimate.upper - estimate.lower == pytest.approx(width, rel=0.25)
    assert paged.logged_quality == pytest.approx(found["logged_quality"])


def test_log_evaluate_refuses_what_cannot_be_estimated(tmp_path, two_routers, subset_dir):
    artifact, _ = two_routers
    config = str(tmp_path / "gateway.yaml")

    def refused(*args: str) -> str:
        done = CliRunner().invoke(cli, ["log", "evaluate", *args, "--config", config])
        assert done.exit_code == 2 and done.output.startswith("error: ") and done.output.count("\n") == 1, done.output
        return done.output

    _log_with_exploration(tmp_path, artifact, 0, {})  # the gateway ran, nothing was logged
    assert "no answered routed requests" in refused(str(artifact))
    _log_with_exploration(tmp_path, artifact, 12, {})
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        db.execute("UPDATE decisions SET propensity = NULL")
    assert "has no propensities" in refused(str(artifact))
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        db.execute("UPDATE decisions SET propensity = 1.0")
    other = tmp_path / "other.bestroute"
    data = load_dataset(subset_dir)
    split = split_prompts(data.prompt_ids)
    BestRouteRouter(features="lexical").fit(data, split.train, split.val).save(other)
    assert "has no backend in this gateway" in refused(str(other))


def test_on_recorded_routing_data_three_routers_are_estimated_and_ranked():
    """Simulation on the embedded zeroeval slice (real models' recorded answers): 200 logs, each
    the test prompts drawn again (coverage of 90% over 100 logs has a standard error of 3 points:
    one case came out at 89 of 100); the logging router (BEST-Route at 99% of the reference's
    validation quality) takes its choice, or with probability 0.5 one of it and its four neighbours
    on each side in cost (the gateway's exploration); three
    candidates (the same router at 93%, 97% and 100%) are estimated from each log. The truth is
    each candidate's mean recorded quality and cost over the test prompts."""
    from bestroute.data import zeroeval_slice_path

    data = load_dataset(zeroeval_slice_path())
    split = split_prompts(data.prompt_ids)
    router = BestRouteRouter(features="lexical", max_n=1).fit(data, split.train, split.val)
    test = split.test
    quality, cost = router.outcomes_.quality[test], router.outcomes_.cost[test] * 1000
    usable = ~np.isnan(quality).any(axis=1)  # prompts every model answered
    assessed = router.assess([data.texts[i] for i in test[usable]])
    quality, cost = quality[usable], cost[usable]
    options = len(router.options_)
    logger = router.decide(assessed, router.knob_for(min_relative_quality=0.99))
    candidates = {
        target: router.decide(assessed, router.knob_for(min_relative_quality=target)) for target in (0.93, 0.97, 1.0)
    }
    rows = np.arange(len(logger))
    truth = {t: (quality[rows, c].mean(), cost[rows, c].mean()) for t, c in candidates.items()}
    assert len({round(q, 4) for q, _ in truth.values()}) == 3  # three different values to rank
    # The gateway's exploration: the choice and its four neighbours on each side in cost.
    by_cost = np.argsort(router.option_cost_, kind="stable")
    rank = np.empty(options, dtype=int)
    rank[by_cost] = np.arange(options)
    width, rate = 4, 0.5
    neighbours = [by_cost[max(0, rank[c] - width) : rank[c] + width + 1] for c in range(options)]
    for chosen in candidates.values():  # every candidate choice can be explored into
        assert all(c in neighbours[l] for c, l in zip(chosen, logger, strict=True))
    rng = np.random.default_rng(5)
    covered, ranked = dict.fromkeys([(t, m) for t in candidates for m in ("quality", "cost")], 0), 0
    for run in range(200):
        drawn = rng.integers(0, len(logger), 4000)
        explore = rng.random(len(drawn)) < rate
        around = [neighbours[c] for c in logger[drawn]]
        taken = np.array([rng.choice(a) if e else c for a, e, c in zip(around, explore, logger[drawn], strict=True)])
        propensity = np.array([rate / len(a) for a in around]) + (1 - rate) * (taken == logger[drawn])
        points = {}
        for target, chosen in candidates.items():
            matched = chosen[drawn] == taken
            for metric, table in (("quality", quality), ("cost", cost)):
                found = off_policy_estimates(table[drawn, taken], propensity, matched, resamples=300, seed=run)
                covered[target, metric] += found.snips.covers(truth[target][0 if metric == "quality" else 1])
                if metric == "quality":
                    points[target] = found.snips.value
        ranked += sorted(points, key=points.get) == sorted(truth, key=lambda t: truth[t][0])
    assert all(count >= 180 for count in covered.values()), covered
    assert ranked >= 180, ranked
