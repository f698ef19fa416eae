"""Verify and escalate: options that keep their pick only when the selector is confident, and
mixtures of models, on hand-made data whose every outcome is known (see conftest.multisample_dir)."""

import json
import sqlite3
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bestroute import ConfigError, RouterError, load_dataset, split_prompts
from bestroute.cli import app as cli
from bestroute.evaluation import evaluate, markdown_table
from bestroute.reward import load_selector
from bestroute.routers import EscalatingBestRouteRouter, load_router
from bestroute.selection import Option, SelectionCache, option_outcomes
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
    outcomes = option_outcomes(SelectionCache(data, load_selector("consensus")), [strict, loose, REFERENCE], REFERENCE)
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
    outcomes = option_outcomes(SelectionCache(data, load_selector("majority")), [unanimous, either, plain], REFERENCE)
    assert (outcomes.accepted[:, 0] == 0).all() and (outcomes.accepted[:, 1] == 1).all()
    np.testing.assert_allclose(outcomes.cost[:, 0], SMALL_CALL + SMALL_SAMPLE + TINY_ONE + BIG_ONE)
    np.testing.assert_allclose(outcomes.cost[:, 1], SMALL_CALL + SMALL_SAMPLE + TINY_ONE)
    assert (outcomes.quality[:, 1] == 1.0).all()  # a tie goes to the earliest sample: small's 42
    assert (outcomes.quality[:, 2] == 1.0).all() and (outcomes.accepted[:, 2] == 1).all()


TINY_CALL = 10 * 0.01 / 1e6


def test_stages_are_checked_and_named():
    with pytest.raises(RouterError, match="keeps every pick|always goes on"):
        Option("small", 2, then=Option("small", 4, accept=0.5))
    with pytest.raises(RouterError, match="must draw more samples"):
        Option("small", 3, accept=1.0, then=Option("small", 3, accept=0.5))
    with pytest.raises(RouterError, match="its models first"):
        Option.mixture(("small", "tiny"), accept=1.0, then=Option.mixture(("tiny", "small", "big")))
    with pytest.raises(RouterError, match=r"gate must be in \[0, 1\], got 2"):
        Option.mixture(("small", "tiny"), gate=2.0, then=Option.mixture(("small", "tiny", "big")))
    with pytest.raises(RouterError, match="has none"):
        Option("small", 2, accept=1.0, gate=0.5)
    doubt = Option("small", 2, accept=1.0, then=Option("small", 4, accept=0.6))
    assert doubt.label == "small x2 >=1.00 else small x4 >=0.60 else reference" and doubt.escalates
    verify = Option.mixture(("small", "tiny"), gate=1.0, then=Option.mixture(("small", "tiny", "big"), accept=1.0))
    assert verify.label == "small+tiny if >=1.00: small+tiny+big >=1.00 else reference" and verify.escalates
    assert not Option("small", 2, accept=1.0, then=Option("small", 4)).escalates  # the last stage keeps its pick


def test_a_stage_goes_on_only_when_unsure_and_pays_only_for_what_it_adds(data):
    # small answers 42, 42, 7, 9 (qualities 1, 1, 0, 0); the reference's first answer has quality 1.
    agree_at_once = Option("small", 2, accept=1.0, then=Option("small", 4, accept=0.6))
    on_to_reference = Option("small", 3, accept=1.0, then=Option("small", 4, accept=0.6))
    kept_later = Option("small", 3, accept=1.0, then=Option("small", 4, accept=0.5))
    never_reference = Option("small", 3, accept=1.0, then=Option("small", 4))
    options = [agree_at_once, on_to_reference, kept_later, never_reference]
    outcomes = option_outcomes(SelectionCache(data, load_selector("consensus")), options, REFERENCE)
    np.testing.assert_array_equal(outcomes.accepted[0], [1, 0, 1, 1])
    np.testing.assert_array_equal(outcomes.quality[0], [1, 1, 1, 1])
    # A later stage is another call (its input is paid again) for the samples it adds.
    np.testing.assert_allclose(
        outcomes.cost[0],
        [
            SMALL_CALL + 2 * SMALL_SAMPLE,
            2 * SMALL_CALL + 4 * SMALL_SAMPLE + BIG_ONE,
            2 * SMALL_CALL + 4 * SMALL_SAMPLE,
            2 * SMALL_CALL + 4 * SMALL_SAMPLE,
        ],
    )


def test_a_gated_mixture_goes_on_only_when_its_models_agree_enough(data):
    # small's 42 against tiny's 3: agreement 1/2.
    straight_to_reference = Option.mixture(
        ("small", "tiny"), gate=1.0, then=Option.mixture(("small", "tiny"), n=2, accept=0.5)
    )
    verified = Option.mixture(("small", "tiny"), gate=0.5, then=Option.mixture(("small", "tiny"), n=2, accept=0.5))
    unverified = Option.mixture(("small", "tiny"), gate=0.5, then=Option.mixture(("small", "tiny"), n=2, accept=1.0))
    outcomes = option_outcomes(
        SelectionCache(data, load_selector("majority")), [straight_to_reference, verified, unverified], REFERENCE
    )
    np.testing.assert_array_equal(outcomes.accepted[0], [0, 1, 0])
    first = SMALL_CALL + SMALL_SAMPLE + TINY_ONE
    np.testing.assert_allclose(outcomes.cost[0], [first + BIG_ONE, 2 * first, 2 * first + BIG_ONE])
    assert outcomes.quality[0, 1] == 1.0  # 42, 42 against 3, 3: the tie goes to small's first sample


def test_a_selector_without_confidence_cannot_escalate(data):
    with pytest.raises(RouterError, match="oracle.* gives no confidence"):
        option_outcomes(SelectionCache(data, load_selector("oracle")), [Option("small", 3, accept=0.5)], REFERENCE)


def test_escalating_router_fits_saves_explains_and_the_gateway_checks_it(data, tmp_path):
    split = split_prompts(data.prompt_ids)
    router = EscalatingBestRouteRouter(features="lexical", max_n=3, prune_dominated=False, domain_quantile=None).fit(
        data, split.train, split.val
    )
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
    staged = EscalatingBestRouteRouter(features="lexical", max_n=4).fit(data, split.train, split.val)
    assert "small x2 >=1.00 else small x4 >=0.60 else reference" in {o.label for o in staged.options_}
    staged.save(tmp_path / "staged.bestroute")
    assert load_router(tmp_path / "staged.bestroute").options_ == staged.options_
    np.testing.assert_allclose(
        loaded.predict(["What is six times seven?"]), router.predict(["What is six times seven?"])
    )
    result = CliRunner().invoke(cli, ["explain", str(path)])
    assert result.exit_code == 0, result.output
    assert "small x3 >=1.00 else reference" in result.output and "0.0%" in result.output

    def gateway_config(names: tuple[str, ...], **settings: object) -> Path:
        (tmp_path / "gateway.yaml").write_text(
            yaml.safe_dump(
                {"router": str(path), "backends": [{"name": n, "base_url": "http://127.0.0.1:9/v1"} for n in names]}
                | settings
            )
        )
        return tmp_path / "gateway.yaml"

    with pytest.raises(
        ConfigError, match="option 'small\\+tiny >=1.00 else reference' mixes 'tiny', which has no backend"
    ):
        create_app(load_config(gateway_config(("small", "big"))))
    with pytest.raises(ConfigError, match="escalates on the confidence of the selector it was trained with"):
        create_app(
            load_config(
                gateway_config(("small", "tiny", "big"), selector={"kind": "reward", "url": "http://127.0.0.1:9"})
            )
        )
    create_app(load_config(gateway_config(("small", "tiny", "big"), selector={"kind": "consensus"})))


def served_router(data, tmp_path, keep: set[str], costs: dict[str, float] | None = None) -> Path:
    """An escalating router with only ``keep`` (and the reference) active, so the test decides
    which option requests take; ``costs`` replaces options' expected costs for the same end (mean
    costs: without cost heads, every prompt's)."""
    split = split_prompts(data.prompt_ids)
    router = EscalatingBestRouteRouter(
        features="lexical", max_n=3, prune_dominated=False, domain_quantile=None, cost_alpha=None
    ).fit(data, split.train, split.val)
    router.active_ = np.array([o.label in keep or o == router.reference_ for o in router.options_])
    for o, option in enumerate(router.options_):
        router.option_cost_[o] = (costs or {}).get(option.label, router.option_cost_[o])
    path = tmp_path / f"served-{len(keep)}.bestroute"
    router.save(path)
    return path


def test_the_gateway_serves_escalation_as_evaluated_offline(data, tmp_path):
    from servers import Script, ask, gateway, upstream

    from bestroute.selection import pick, pick_confidence

    artifact = served_router(data, tmp_path, {"small x3 >=0.60 else reference", "tiny x3 >=0.60 else reference"})
    router = load_router(artifact)
    consensus = load_selector("consensus")
    small, tiny, big = Script(answers=["42", "42", "7"]), Script(answers=["3"]), Script(answers=["big answer"])
    with (
        upstream(small) as s,
        upstream(tiny) as t,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": s.url, "tiny": t.url, "big": b.url}) as (server, client),
    ):
        prompt = "What is six times seven?"
        offline = router.options_[int(router.decide(router.assess([prompt]), 0.99)[0])]
        assert offline.label == "small x3 >=0.60 else reference"
        answer, headers = ask(client, "bestroute:0.99", text=prompt)
        details = answer.model_extra["bestroute"]
        assert details["option"] == offline.label  # the gateway decides as the router does offline
        texts = ["42", "42", "7"]  # what small sampled; offline, the same samples give the same verdict
        agreement, scores = consensus.judge(prompt, texts, np.zeros(3))
        confidence = pick_confidence(consensus, agreement, scores, pick(agreement, scores, np.arange(3)))
        assert confidence == pytest.approx(2 / 3)
        assert answer.choices[0].message.content == "42" and answer.model == "small"
        assert headers["x-bestroute-escalated"] == "false" and float(
            headers["x-bestroute-confidence"]
        ) == pytest.approx(confidence, abs=1e-4)
        assert details["escalation"]["escalated"] is False and len(details["escalation"]["stages"]) == 1
        assert answer.usage.completion_tokens == 15 and not big.bodies  # three samples, no reference
        small.answers = ["1", "2", "3"]  # the samples disagree: one third < 0.60
        answer, headers = ask(client, "bestroute:0.99", text=prompt)
        stages = answer.model_extra["bestroute"]["escalation"]["stages"]
        assert answer.model == "big" and answer.choices[0].message.content == "big answer"
        assert headers["x-bestroute-escalated"] == "true" and float(headers["x-bestroute-confidence"]) < 0.6
        assert [st["option"] for st in stages] == ["small x3 >=0.60 else reference", "reference"]
        assert float(headers["x-bestroute-cost-usd"]) == pytest.approx(sum(st["cost_usd"] for st in stages))
        assert answer.usage.completion_tokens == 20  # both stages are paid for
        assert headers["x-bestroute-n"] == "4"  # three samples and the reference's answer, all paid for
        chunks = list(
            client.chat.completions.create(  # streamed: decided, then the answer is streamed
                model="bestroute:0.99", messages=[{"role": "user", "content": prompt}], stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "big answer"
        metrics = httpx.get(server.url + "/metrics").text
        assert 'bestroute_escalations_total{option="small x3 >=0.60 else reference",outcome="accepted"} 1.0' in metrics
        assert 'bestroute_escalations_total{option="small x3 >=0.60 else reference",outcome="escalated"} 2.0' in metrics
        # Tokens by the model called: three requests' samples from small, two answers from big.
        assert 'bestroute_tokens_total{kind="completion",model="small"} 45.0' in metrics
        assert 'bestroute_tokens_total{kind="completion",model="big"} 10.0' in metrics
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        rows = [json.loads(r[0]) for r in db.execute("SELECT escalation FROM decisions ORDER BY created_at")]
    assert [r["escalated"] for r in rows] == [False, True, True]
    assert [len(r["stages"]) for r in rows] == [1, 2, 2]


def test_the_gateway_serves_a_mixture_of_models(data, tmp_path):
    from servers import Script, ask, gateway, upstream

    label = "small+tiny >=1.00 else reference"
    artifact = served_router(data, tmp_path, {label}, costs={label: 1e-6})
    small, tiny, big = Script(answers=["42"]), Script(answers=["42"]), Script(answers=["big answer"])
    with (
        upstream(small) as s,
        upstream(tiny) as t,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": s.url, "tiny": t.url, "big": b.url}) as (_, client),
    ):
        answer, headers = ask(client, "bestroute:0.99")
        assert answer.model_extra["bestroute"]["option"] == label
        assert headers["x-bestroute-escalated"] == "false" and answer.choices[0].message.content == "42"
        assert len(small.bodies) == len(tiny.bodies) == 1 and not big.bodies  # one sample of each, at once
        tiny.answers = ["7"]  # the models disagree
        answer, headers = ask(client, "bestroute:0.99")
        assert headers["x-bestroute-escalated"] == "true" and answer.model == "big"


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
    cache = SelectionCache(data, load_selector(f"reward-model:{path}"))
    selector = cache.selector
    options = [Option("small", 1, accept=a) for a in (0.0, 0.5, 1.0)] + [Option.mixture(("small", "tiny"))]
    outcomes = option_outcomes(cache, options, REFERENCE)
    assert (outcomes.accepted[:, 0] == 1).all() and (outcomes.accepted[:, 2] == 0).all()  # a score is < 1
    small_j, tiny_j = data.model_index("small"), data.model_index("tiny")
    scores = selector.scorer.score(data.texts, [data.responses[i, small_j, 0] for i in range(data.n_prompts)])
    np.testing.assert_array_equal(outcomes.accepted[:, 1], (scores >= 0.5 - 1e-9).astype(float))
    # The mixture keeps whichever of small's and tiny's first answers the reward model scores higher.
    tiny = selector.scorer.score(data.texts, [data.responses[i, tiny_j, 0] for i in range(data.n_prompts)])
    expected = np.where(scores >= tiny, data.quality[:, small_j, 0], data.quality[:, tiny_j, 0])
    np.testing.assert_array_equal(outcomes.quality[:, 3], expected)


def test_the_gateway_serves_stages_as_evaluated_offline(data, tmp_path):
    from servers import Script, ask, gateway, upstream

    from bestroute.selection import pick, pick_confidence, stage_verdict

    label = "small x2 >=1.00 else small x4 >=0.60 else reference"
    split = split_prompts(data.prompt_ids)
    router = EscalatingBestRouteRouter(
        features="lexical", max_n=4, prune_dominated=False, domain_quantile=None, cost_alpha=None
    ).fit(data, split.train, split.val)
    router.active_ = np.array([o.label == label or o == router.reference_ for o in router.options_])
    router.option_cost_[[o.label for o in router.options_].index(label)] = 1e-9  # the cheapest on every prompt
    artifact = tmp_path / "staged.bestroute"
    router.save(artifact)
    option = next(o for o in router.options_ if o.label == label)
    consensus = load_selector("majority" if router.selector == "majority" else "consensus")

    def offline(samples: list[str]) -> tuple[str, int]:
        """The verdict offline judging gives these samples, and the stage that gives it."""
        for number, stage in enumerate(option.stages):
            texts = samples[: stage.n]
            agreement, scores = consensus.judge("", texts, np.zeros(len(texts)))
            picked = pick(agreement, scores, np.arange(len(texts)))
            verdict = stage_verdict(stage, pick_confidence(consensus, agreement, scores, picked))
            if verdict != "next":
                return verdict, number
        raise AssertionError("the last stage always decides")

    small, big = Script(answers=["42"]), Script(answers=["big answer"])
    with (
        upstream(small) as s,
        upstream(Script(answers=["3"])) as t,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": {"base_url": s.url, "max_n": 4}, "tiny": t.url, "big": b.url}) as (
            server,
            client,
        ),
    ):
        expected = [("keep", 0), ("reference", 1), ("keep", 1)]
        for answers, (verdict, stage) in zip([["42"] * 2, ["1", "2", "3", "3"], ["1", "2", "2", "2"]], expected):
            assert offline(answers) == (verdict, stage)
            small.answers, small._next, calls = answers, 0, len(small.bodies)
            answer, headers = ask(client, "bestroute:0")  # the cheapest active option: the staged one
            details = answer.model_extra["bestroute"]
            assert details["option"] == label, details
            stages = details["escalation"]["stages"]
            assert len(stages) == stage + 1 + (verdict == "reference")
            assert len(small.bodies) - calls == (2 if stage == 0 else 4)  # a stage draws only what it adds
            assert headers["x-bestroute-escalated"] == ("true" if verdict == "reference" else "false")
            assert float(headers["x-bestroute-cost-usd"]) == pytest.approx(sum(st["cost_usd"] for st in stages))
            if verdict == "keep":
                assert answer.model == "small" and headers["x-bestroute-n"] == str(2 * (stage + 1))
        assert answer.choices[0].message.content == "2"  # 3 of 4 samples agree at the second stage
        metrics = httpx.get(server.url + "/metrics").text
        for outcome in ("accepted", "escalated", "continued"):
            assert f'bestroute_escalations_total{{option="{label}",outcome="{outcome}"}} 1.0' in metrics
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        rows = [json.loads(r[0]) for r in db.execute("SELECT escalation FROM decisions ORDER BY created_at")]
    assert [len(r["stages"]) for r in rows] == [1, 3, 2]
    assert [r["escalated"] for r in rows] == [False, True, False]


def test_a_failed_escalation_fails_over_and_an_open_circuit_is_never_called(data, tmp_path):
    """The reference fails: the escalating attempt fails (its samples still paid for and logged)
    and the request fails over; once the reference's circuit is open, an escalation does not
    call it at all."""
    from servers import Script, gateway, upstream

    label = "small x3 >=0.60 else reference"
    artifact = served_router(data, tmp_path, {label})
    small, big = Script(answers=["1", "2", "3"]), Script(always=503)
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(
            tmp_path,
            artifact,
            {"small": s.url, "big": b.url},
            circuit_breaker={"failures": 1, "reset_s": 60.0},
            retries={"attempts": 1},
        ) as (server, _),
    ):

        def ask_routed() -> httpx.Response:
            body = {"model": "bestroute:0.99", "messages": [{"role": "user", "content": "What is six times seven?"}]}
            return httpx.post(server.url + "/v1/chat/completions", json=body)

        first = ask_routed()
        assert first.status_code == 502 and "HTTP 503" in first.json()["error"]["message"], first.text
        calls_to_big = len(big.bodies)
        assert calls_to_big == 1
        second = ask_routed()
        assert second.status_code == 502 and "circuit open" in second.json()["error"]["message"]
        assert len(big.bodies) == calls_to_big  # the open circuit was consulted before the escalation
        metrics = httpx.get(server.url + "/metrics").text
        assert f'bestroute_escalations_total{{option="{label}",outcome="failed"}} 2.0' in metrics
        assert 'outcome="accepted"' not in metrics
        assert 'bestroute_tokens_total{kind="completion",model="small"} 30.0' in metrics  # both requests' samples
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        calls = db.execute("SELECT model, samples, requests, error FROM calls ORDER BY id").fetchall()
        statuses = [r[0] for r in db.execute("SELECT status FROM decisions")]
    assert statuses == [502, 502]
    assert calls[:2] == [("small", 3, 3, None), ("big", 1, 1, "backend 'big': HTTP 503 (injected)")]  # no n: 3 requests
    assert calls[2:] == [("small", 3, 3, None), ("big", 1, 0, "backend 'big': circuit open")]


def test_export_writes_each_drawn_sample_with_its_own_tokens(data, tmp_path):
    """Best of three from a backend without n (three requests): each sample is its own response
    row, with one call's input (not three) and its own output; a sample whose final answer is not
    the one the client got has no known quality and is left out (and counted)."""
    from servers import Script, gateway, upstream

    from bestroute import load_dataset

    artifact = served_router(data, tmp_path, {"small x3"})
    with (
        upstream(Script(answers=["42", "42", "7"])) as s,
        upstream(Script(answers=["big"])) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, _),
    ):
        answer = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "bestroute:0", "messages": [{"role": "user", "content": "What is six times seven?"}]},
        ).json()
        assert answer["bestroute"]["option"] == "small x3" and answer["choices"][0]["message"]["content"] == "42"
        assert answer["usage"] == {"prompt_tokens": 30, "completion_tokens": 15, "total_tokens": 45}
        assert [c["requests"] for c in answer["bestroute"]["calls"]] == [3]
        assert httpx.post(server.url + "/v1/feedback", json={"id": answer["id"], "quality": 1.0}).status_code == 200
    out = tmp_path / "exported"
    result = CliRunner().invoke(cli, ["log", "export", "--config", str(tmp_path / "gateway.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 prompts, 2 responses" in result.output and "1 sample" in result.output
    exported = load_dataset(out)
    j = exported.model_index("small")
    np.testing.assert_array_equal(exported.quality[0, j, :2], [1.0, 1.0])
    assert exported.input_tokens[0, j] == 10 and list(exported.output_tokens[0, j, :2]) == [5, 5]
    assert list(exported.responses[0, j, :2]) == ["42", "42"]
