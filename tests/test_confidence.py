"""Confidence from every signal at once: a stage's signals, the acceptance model fitted on them, and
calibrated options whose stages keep their pick by its probability, offline and in the gateway."""

import numpy as np
import pytest

from bestroute import RouterError, load_dataset, split_prompts
from bestroute.reward import load_selector
from bestroute.routers import EscalatingBestRouteRouter, load_router
from bestroute.selection import (
    SIGNAL_NAMES,
    AcceptanceModel,
    Consensus,
    Option,
    RecordedJudge,
    RecordedSource,
    Sample,
    ScoreSelector,
    SelectionCache,
    SelectorSpec,
    execute,
    judgment,
    option_outcomes,
    run_now,
)

REFERENCE = Option("big")


@pytest.fixture(scope="module")
def data(multisample_dir):
    return load_dataset(multisample_dir)


def _signals(texts, models, selector=None, scores=None):
    selector = selector or Consensus()
    samples = [Sample(m, k, t) for k, (m, t) in enumerate(zip(models, texts, strict=True))]
    agreement, judged_scores = selector.judge("what is six times seven?", texts, np.zeros(len(texts)))
    scores = judged_scores if scores is None else scores
    return judgment(selector, agreement, scores, samples=samples, prompt="what is six times seven?").signals


def test_signals_say_how_much_and_which_models_agree_with_the_pick():
    signals = _signals(["Answer: 42", "#### 42", "Answer: 7", ""], ["a", "b", "c", "c"])
    named = dict(zip(SIGNAL_NAMES, signals.values, strict=True))
    assert named["support"] == pytest.approx(0.5)  # two of four agree with 42
    assert named["runner_up"] == pytest.approx(0.25)  # 7 agrees with itself only
    assert named["clusters"] == pytest.approx(3 / 4)  # {42, 42}, {7}, {nothing}
    assert named["empty"] == pytest.approx(1 / 4)
    assert named["number"] == 1.0 and named["text"] == 0.0 and named["models"] == 3.0
    assert signals.models == ("a", "b", "c") and signals.agreeing == ("a", "b")


def test_the_selector_picks_and_agreement_still_counts():
    """A scoring selector picks, but the stage's agreement is consensus's over the answers."""

    class Scorer:
        def score(self, prompts, responses):
            return np.array([0.9 if "7" in r else 0.1 for r in responses])

    selector = ScoreSelector(Scorer(), SelectorSpec(kind="reward-model", path="r.bestroute"))
    texts = ["Answer: 42", "Answer: 42", "Answer: 7"]
    samples = [Sample("a", k, t) for k, t in enumerate(texts)]
    agreement, scores = selector.judge("q", texts, np.zeros(3))
    judged = judgment(selector, agreement, scores, samples=samples, prompt="q")
    named = dict(zip(SIGNAL_NAMES, judged.signals.values, strict=True))
    assert judged.picked == 2 and judged.confidence == pytest.approx(0.9)  # the reward model's pick
    assert named["support"] == pytest.approx(1 / 3) and named["runner_up"] == pytest.approx(2 / 3)
    assert named["score"] == pytest.approx(0.9) and named["score_margin"] == pytest.approx(0.8)


def test_the_acceptance_model_learns_which_agreement_to_trust_and_round_trips():
    rng = np.random.default_rng(0)
    signals, labels = [], []
    for _ in range(400):
        agree = rng.random() < 0.5
        trusted = rng.random() < 0.5  # agreement counts only when model "good" is among those agreeing
        texts = ["Answer: 1", "Answer: 1" if agree else "Answer: 2"]
        models = ["good", "other"] if trusted else ["weak", "other"]
        signals.append(_signals(texts, models))
        labels.append(float(agree and trusted or rng.random() < 0.1))
    model = AcceptanceModel(C=10.0).fit(signals, np.array(labels))
    good_agree = model(_signals(["Answer: 1", "Answer: 1"], ["good", "other"]))
    weak_agree = model(_signals(["Answer: 1", "Answer: 1"], ["weak", "other"]))
    split = model(_signals(["Answer: 1", "Answer: 2"], ["good", "other"]))
    assert good_agree > 0.8 and weak_agree < 0.4 and split < 0.4
    meta, arrays = model.state()
    again = AcceptanceModel.from_state(meta, arrays)
    assert again(signals[0]) == pytest.approx(model(signals[0]))
    with pytest.raises(RouterError, match="does not match"):
        AcceptanceModel.from_state(meta, {"coef": arrays["coef"][:-1]})
    constant = AcceptanceModel().fit(signals[:3], np.ones(3))
    assert constant(signals[0]) > 0.99
    with pytest.raises(RouterError, match="one label per stage"):
        AcceptanceModel().fit(signals[:3], np.ones(2))


def test_a_calibrated_stage_keeps_its_pick_by_the_models_probability(data):
    cache = SelectionCache(data, load_selector("consensus"))
    option = Option.mixture(("small", "tiny"), accept=0.9, calibrated=True)
    assert option.label == "small+tiny p>=0.90 else reference"

    def run(probability):
        work = execute(
            option,
            source=RecordedSource(data, 0),
            judge=RecordedJudge(cache, 0, option),
            reference="big",
            acceptance=lambda signals: probability,
        )
        return run_now(work)

    kept, escalated = run(0.95), run(0.5)
    assert kept.accepted and kept.confidence == 0.95 and kept.answer.model == "small"
    assert escalated.escalated and escalated.stages[0].confidence == 0.5
    with pytest.raises(RouterError, match="calibrated, but no acceptance model"):
        run_now(execute(option, source=RecordedSource(data, 0), judge=RecordedJudge(cache, 0, option), reference="big"))
    with pytest.raises(RouterError, match="all calibrated or none"):
        Option.mixture(("small", "tiny"), accept=0.9, calibrated=True, then=Option.mixture(("small", "tiny"), n=2))


def test_the_escalating_router_fits_its_acceptance_model_and_the_artifact_keeps_it(data, tmp_path):
    split = split_prompts(data.prompt_ids)
    router = EscalatingBestRouteRouter(
        features="lexical", max_n=3, prune_dominated=False, domain_quantile=None, calibrate=True
    ).fit(data, split.train, split.val)
    calibrated = [o for o in router.options_ if o.calibrated]
    assert {"small+tiny p>=0.90 else reference", "small+tiny p>=0.98 else reference"} <= {o.label for o in calibrated}
    assert router.accept_model_ is not None and router.accept_model_.models_ == ["small", "tiny"]
    # small's 42 is as good as the reference's answer on every training prompt: always kept.
    o = router.options_.index(calibrated[0])
    assert (router.outcomes_.accepted[:, o] == 1).all()
    router.save(tmp_path / "router.bestroute")
    loaded = load_router(tmp_path / "router.bestroute")
    assert loaded.options_ == router.options_
    np.testing.assert_allclose(loaded.accept_model_.coef_, router.accept_model_.coef_)
    again = option_outcomes(
        SelectionCache(data, load_selector("consensus")), calibrated, REFERENCE, loaded.accept_model_
    )
    np.testing.assert_array_equal(
        again.accepted, router.outcomes_.accepted[:, [router.options_.index(c) for c in calibrated]]
    )
    from typer.testing import CliRunner

    from bestroute.cli import app as cli

    shown = CliRunner().invoke(cli, ["explain", str(tmp_path / "router.bestroute")])
    assert shown.exit_code == 0 and "acceptance model" in shown.output and "agrees: tiny" in shown.output
    plain = EscalatingBestRouteRouter(features="lexical", max_n=3).fit(data, split.train, split.val)  # the default
    assert plain.accept_model_ is None and not any(o.calibrated for o in plain.options_)


def test_the_gateway_serves_a_calibrated_option_as_evaluated_offline(data, tmp_path):
    """Real upstream servers: the gateway's calibrated stage takes the acceptance model's
    probability of the samples it drew, the one offline judging gives the same samples."""
    from servers import Script, ask, gateway, upstream

    label = "small+tiny p>=0.90 else reference"
    split = split_prompts(data.prompt_ids)
    router = EscalatingBestRouteRouter(
        features="lexical", max_n=3, prune_dominated=False, domain_quantile=None, calibrate=True, cost_alpha=None
    ).fit(data, split.train, split.val)
    # An acceptance model that trusts agreement only: both agree 0.95, a split pair 0.12.
    model = router.accept_model_
    model.coef_ = np.zeros_like(model.coef_)
    model.coef_[SIGNAL_NAMES.index("support")], model.intercept_ = 10.0, -7.0
    router.active_ = np.array([o.label == label or o == router.reference_ for o in router.options_])
    router.option_cost_[[o.label for o in router.options_].index(label)] = 1e-9
    artifact = tmp_path / "calibrated.bestroute"
    router.save(artifact)
    prompt = "What is six times seven?"

    def offline(texts: list[str]) -> float:
        return model(_signals(texts, ["small", "tiny"]))

    small, tiny, big = Script(answers=["42"]), Script(answers=["3"]), Script(answers=["big answer"])
    with (
        upstream(small) as s,
        upstream(tiny) as t,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": s.url, "tiny": t.url, "big": b.url}) as (_, client),
    ):
        answer, headers = ask(client, "bestroute:0", text=prompt)
        assert answer.model_extra["bestroute"]["option"] == label
        assert float(headers["x-bestroute-confidence"]) == pytest.approx(offline(["42", "3"]), abs=1e-4)
        assert offline(["42", "3"]) < 0.9 and answer.model == "big" and headers["x-bestroute-escalated"] == "true"
        tiny.answers = ["42"]
        answer, headers = ask(client, "bestroute:0", text=prompt)
        assert float(headers["x-bestroute-confidence"]) == pytest.approx(offline(["42", "42"]), abs=1e-4)
        assert offline(["42", "42"]) >= 0.9 and answer.model == "small" and headers["x-bestroute-escalated"] == "false"
        assert answer.choices[0].message.content == "42" and len(big.bodies) == 1
