"""Verify and escalate: options that keep their pick only when the selector is confident, and
mixtures of models, on hand-made data whose every outcome is known (see conftest.multisample_dir)."""

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bestroute import ConfigError, RouterError, load_dataset, split_prompts
from bestroute.cli import app as cli
from bestroute.evaluation import evaluate, markdown_table
from bestroute.routers import (
    EscalatingBestRouteRouter,
    Option,
    load_router,
    make_selector,
    option_outcomes,
)
from bestroute.serving import create_app, load_config

SMALL_CALL = 10 * 0.1 / 1e6  # input tokens x price, paid once per call
SMALL_SAMPLE = 5 * 0.2 / 1e6
TINY_ONE = 10 * 0.01 / 1e6 + 5 * 0.02 / 1e6
BIG_ONE = 10 * 5.0 / 1e6 + 20 * 15.0 / 1e6
REFERENCE = Option("big")


@pytest.fixture(scope="module")
def data(multisample_dir):
    return load_dataset(multisample_dir)


def test_acceptance_threshold_and_mixture_names_are_checked():
    with pytest.raises(RouterError, match=r"acceptance threshold must be in \[0, 1\], got 1.5"):
        Option("small", 3, accept=1.5)
    with pytest.raises(RouterError, match="acceptance threshold"):
        Option.mixture(("small", "tiny"), accept=-0.1)
    with pytest.raises(RouterError, match="joined by"):
        Option("small", 1, ("small", "tiny"))
    assert Option.mixture(("small", "tiny"), accept=1.0).label == "small+tiny >=1.00 else reference"


def test_same_model_samples_escalate_when_they_disagree(data):
    # small's first three samples answer 42, 42, 7: the pick (42, quality 1) has 2 of 3 votes.
    strict, loose = Option("small", 3, accept=1.0), Option("small", 3, accept=0.6)
    outcomes = option_outcomes(data, [strict, loose, REFERENCE], make_selector("consensus"), REFERENCE)
    assert (outcomes.accepted[:, 0] == 0).all() and (outcomes.accepted[:, 1] == 1).all()
    assert (outcomes.accepted[:, 2] == 1).all()  # a plain option always keeps its answer
    # Escalated: the reference's answer (42, quality 1), paid on top of the three samples.
    np.testing.assert_allclose(outcomes.cost[:, 0], SMALL_CALL + 3 * SMALL_SAMPLE + BIG_ONE)
    np.testing.assert_allclose(outcomes.cost[:, 1], SMALL_CALL + 3 * SMALL_SAMPLE)
    assert (outcomes.quality[:, :2] == 1.0).all()


def test_a_mixture_votes_across_models(data):
    # small says 42 (quality 1), tiny says 3 (quality 0): half the votes each.
    unanimous = Option.mixture(("small", "tiny"), accept=1.0)
    either = Option.mixture(("small", "tiny"), accept=0.5)
    plain = Option.mixture(("small", "tiny"))
    outcomes = option_outcomes(data, [unanimous, either, plain], make_selector("majority"), REFERENCE)
    assert (outcomes.accepted[:, 0] == 0).all() and (outcomes.accepted[:, 1] == 1).all()
    np.testing.assert_allclose(outcomes.cost[:, 0], SMALL_CALL + SMALL_SAMPLE + TINY_ONE + BIG_ONE)
    np.testing.assert_allclose(outcomes.cost[:, 1], SMALL_CALL + SMALL_SAMPLE + TINY_ONE)
    assert (outcomes.quality[:, 1] == 1.0).all()  # a tie goes to the earliest sample: small's 42
    assert (outcomes.quality[:, 2] == 1.0).all() and (outcomes.accepted[:, 2] == 1).all()


def test_a_selector_without_confidence_cannot_escalate(data):
    with pytest.raises(RouterError, match="oracle.* gives no confidence"):
        option_outcomes(data, [Option("small", 3, accept=0.5)], make_selector("oracle"), REFERENCE)


def test_escalating_router_fits_saves_explains_and_is_refused_by_the_gateway(data, tmp_path):
    split = split_prompts(data.prompt_ids)
    router = EscalatingBestRouteRouter(features="lexical", max_n=3, prune_dominated=False).fit(
        data, split.train, split.val)
    labels = {o.label for o in router.options_}
    assert {"small x3 >=0.60 else reference", "small x3 >=1.00 else reference"} <= labels
    assert not any(o.model == "big" and o.accept is not None for o in router.options_)  # nothing above the top
    # The escalated prompts of a decision are those whose option did not keep its own pick.
    x = router.extractor_.transform([data.texts[i] for i in split.test])
    for decisions in router.sweep(data, split.test, x):
        expected = router.outcomes_.accepted[split.test, decisions.option] == 0
        assert (decisions.escalated == expected).all()
    by_option = {row["option"]: row for row in router.acceptance_}
    assert by_option["small x3 >=1.00 else reference"]["accepted"] == 0.0
    assert by_option["small x3 >=0.60 else reference"]["accepted"] == 1.0
    assert by_option["small x3 >=0.60 else reference"]["accepted_quality"] == 1.0

    path = tmp_path / "router.bestroute"
    router.save(path)
    loaded = load_router(path)
    assert loaded.options_ == router.options_ and loaded.acceptance_ == router.acceptance_
    np.testing.assert_allclose(loaded.predict(["What is six times seven?"]), router.predict(["What is six times seven?"]))
    result = CliRunner().invoke(cli, ["explain", str(path)])
    assert result.exit_code == 0, result.output
    assert "small x3 >=1.00 else reference" in result.output and "0.0%" in result.output

    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({"router": str(path), "backends": [
        {"name": n, "base_url": "http://127.0.0.1:9/v1"} for n in ("small", "tiny", "big")]}))
    with pytest.raises(ConfigError, match="escalating or mixture options .* does not serve yet"):
        create_app(load_config(tmp_path / "gateway.yaml"))


def test_eval_reports_escalation(data):
    results = evaluate(data, routers=["best-route", "best-route-escalate"], features="lexical", max_n=3)
    plain, escalating = results["routers"]["best-route"], results["routers"]["best-route-escalate"]
    assert plain["escalation_rate"] == [0.0] * len(plain["escalation_rate"])
    assert len(escalating["escalation_rate"]) == len(escalating["curve"])
    assert all(0.0 <= rate <= 1.0 for rate in escalating["escalation_rate"])
    assert escalating["escalation_rate_at_1pct_drop"] is None or 0 <= escalating["escalation_rate_at_1pct_drop"] <= 1
    assert "| escalated there |" in markdown_table(results)


def test_a_reward_model_escalates_on_its_score(data, tmp_path):
    from bestroute.reward import RewardModel

    split = split_prompts(data.prompt_ids)
    path = tmp_path / "reward.bestroute"
    RewardModel(features="lexical").fit(data, split.train).save(path)
    selector = make_selector(f"reward-model:{path}")
    options = [Option("small", 1, accept=a) for a in (0.0, 0.5, 1.0)] + [Option.mixture(("small", "tiny"))]
    outcomes = option_outcomes(data, options, selector, REFERENCE)
    assert (outcomes.accepted[:, 0] == 1).all() and (outcomes.accepted[:, 2] == 0).all()  # a score is < 1
    small_j, tiny_j = data.model_index("small"), data.model_index("tiny")
    scores = selector.model.score(data.texts, [data.responses[i, small_j, 0] for i in range(data.n_prompts)])
    np.testing.assert_array_equal(outcomes.accepted[:, 1], (scores >= 0.5 - 1e-9).astype(float))
    # The mixture keeps whichever of small's and tiny's first answers the reward model scores higher.
    tiny = selector.model.score(data.texts, [data.responses[i, tiny_j, 0] for i in range(data.n_prompts)])
    expected = np.where(scores >= tiny, data.quality[:, small_j, 0], data.quality[:, tiny_j, 0])
    np.testing.assert_array_equal(outcomes.quality[:, 3], expected)
