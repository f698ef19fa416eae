"""Onboarding a model into a trained router and removing one, without retraining: the router
API on a real zeroeval slice, the command line end to end (with answers sampled from a real
loopback upstream), the gateway serving and reloading the onboarded artifact as the offline
router decides, and bad input."""

import dataclasses
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import bestroute, read_native, write_native
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import Script, gateway, upstream, write_gateway_config

from bestroute import BestRouteRouter, EscalatingBestRouteRouter, RouterError, load_dataset, load_router, split_prompts
from bestroute.data import RoutingDataset
from bestroute.features import RepresentativePrompts
from bestroute.routers import MIN_CALIBRATION_PROMPTS, choose_reference, onboard, remove
from bestroute.selection import Option

NEW_MODEL = "deepseek-chat"  # one of the zeroeval slice's six models, not its reference


@pytest.fixture(scope="module")
def onboarded(subset_dir):
    """The escalating router trained on the slice without NEW_MODEL, and that router given it
    back from its recorded answers to the representative prompts."""
    data = load_dataset(subset_dir)
    split = split_prompts(data.prompt_ids)
    reference = choose_reference(data, split.val)
    assert reference != NEW_MODEL
    without = EscalatingBestRouteRouter(features="static", reference=reference, representative_prompts=40)
    without.fit(data.subset(models=[m for m in data.models if m != NEW_MODEL]), split.train, split.val)
    assert without.calibration_ is not None
    asked = [data.prompt_ids.index(pid) for pid in without.calibration_.prompt_ids]
    answers = data.subset(rows=asked, models=[NEW_MODEL])
    return data, split, without, answers, onboard(without, answers)


def _calls(router: BestRouteRouter, model: str) -> np.ndarray:
    return np.array([any(model in stage.models for stage in o.stages) for o in router.options_])


def test_an_onboarded_model_is_routed_to_and_the_artifact_round_trips(onboarded, tmp_path):
    data, split, without, answers, router = onboarded
    kept = len(without.options_)
    assert router.options_[:kept] == without.options_  # the router's own options and heads stay
    np.testing.assert_array_equal(router.coef_[:, :kept], without.coef_)
    new = _calls(router, NEW_MODEL)
    assert new[kept:].all() and not new[:kept].any()
    labels = {o.label for o in router.options_[kept:]}
    assert NEW_MODEL in labels and any("+" in label for label in labels)  # alone and in mixtures
    assert router.changes_ == [
        {
            "added": [NEW_MODEL],
            "prompts": int(answers.available.all(axis=1).sum()),
            "options": len(router.options_) - kept,
            "twins": router.changes_[0]["twins"],
        }
    ]
    texts = [data.texts[i] for i in split.test]

    def share(onboarded: BestRouteRouter) -> float:
        assessed = onboarded.assess(texts)
        chosen = np.concatenate([onboarded.decide(assessed, float(k)) for k in onboarded.knob_grid()])
        return float(new[chosen].mean())

    # without caution the sweep sends a share of the test prompts to it; with caution, no more
    bold = share(onboard(without, answers, caution=0.0))
    assert bold > 0.05 and share(router) <= bold
    assert router.table_ and router.table_ != without.table_  # re-estimated on the representative prompts
    path = tmp_path / "onboarded.bestroute"
    router.save(path)
    loaded = load_router(path)
    np.testing.assert_allclose(loaded.predict(texts), router.predict(texts))
    assert loaded.options_ == router.options_ and loaded.table_ == router.table_ and loaded.changes_ == router.changes_
    # removing it again gives the router it was given to, head for head
    back = remove(loaded, [NEW_MODEL])
    assert back.options_ == without.options_
    np.testing.assert_allclose(back.predict(texts), without.predict(texts))
    assert back.calibration_ is not None and NEW_MODEL not in back.calibration_.models


def test_a_new_heads_mean_prediction_is_its_labels_mean_less_its_caution(onboarded):
    # The new heads' mean prediction on the calibration prompts (weighted as the training prompts
    # they stand for) is, with caution 0, their labels' mean where no twin lends a head and their
    # twin's mean prediction plus the labels' mean difference where one does; lower the more
    # caution is asked, where the labels leave room for doubt.
    _, _, without, answers, default = onboarded
    kept = len(without.options_)
    assert without.calibration_ is not None and without.representative_ is not None
    complete = answers.available.all(axis=1)
    answered = np.array(answers.prompt_ids)[complete]
    chosen = np.array(sorted(without.calibration_.prompt_ids.index(pid) for pid in answered))
    texts = [without.calibration_.texts[i] for i in chosen]
    weights = without.representative_.weights(chosen)
    means = {}
    for caution in (0.0, 1.0, 3.0):
        router = default if caution == 1.0 else onboard(without, answers, caution=caution)
        means[caution] = np.average(router.predict(texts)[:, kept:], axis=0, weights=weights)
    twins = default.changes_[-1]["twins"]
    assert twins and set(twins) <= {o.label for o in default.options_[kept:]}
    labels = {o.label: o for o in default.options_}
    lent = without.predict(texts)
    rows = np.arange(len(texts))
    checked = 0
    for h, option in enumerate(default.options_[kept:]):
        if option.label not in twins:
            expected = default.label_mean_[kept + h]
        else:
            twin = without.options_.index(labels[twins[option.label]])
            own, theirs = default._labels(default._cache, rows, [option, without.options_[twin]]).T
            known, both = ~np.isnan(own), ~np.isnan(own) & ~np.isnan(theirs)
            expected = np.average(lent[known, twin], weights=weights[known])
            expected += np.average(own[both] - theirs[both], weights=weights[both])
        if 1e-3 < expected < 1 - 1e-3:  # a target a head can reach
            np.testing.assert_allclose(means[0.0][h], expected, atol=1e-6, err_msg=option.label)
            checked += 1
    assert checked >= 10
    inside = default.label_mean_[kept:] > 0.5  # no target at the floor, whatever the caution
    assert inside.any()
    assert (means[3.0][inside] <= means[1.0][inside] + 1e-9).all()
    assert (means[1.0][inside] <= means[0.0][inside] + 1e-9).all()
    assert (means[3.0][inside] < means[0.0][inside]).any()


def test_a_model_that_answers_as_an_existing_one_gets_its_heads(onboarded):
    # Onboarded under a new name, a model's own answers make it its own twin: every new option
    # that mixes the copy with existing models and is an existing one with the copy in the
    # model's place starts from that option's head and, their labels equal, predicts as it does
    # on the calibration prompts, and close to it on the test prompts, which the 40 prompts never
    # saw. The copy's options alone are judged by their own labels: they have no twin.
    data, split, without, answers, _ = onboarded
    original = "gpt-4o-mini-2024-07-18"
    assert original in {m for o in without.options_ for m in o.models}
    copy = dataclasses.replace(
        data.subset(rows=[data.prompt_ids.index(pid) for pid in answers.prompt_ids], models=[original]),
        models=["gpt-4o-mini-copy"],
    )
    router = onboard(without, copy)
    kept = len(without.options_)
    texts = [data.texts[i] for i in split.test]
    calibration = router.calibration_
    assert calibration is not None
    predicted, at_calibration = router.predict(texts), router.predict(calibration.texts)
    weights = without.representative_.weights(np.arange(calibration.n_prompts))
    twins = router.changes_[-1]["twins"]
    assert not any(o.label in twins for o in router.options_[kept:] if len(o.models) == 1)
    paired = 0
    for h, option in enumerate(router.options_[kept:], start=kept):
        if len(option.models) == 1:
            continue
        renamed = _renamed(option, "gpt-4o-mini-copy", original)
        if renamed not in without.options_ or not without.active_[without.options_.index(renamed)]:
            continue
        # its twin: that option, or one that lists the same models of each stage in another order
        t = next(i for i, o in enumerate(without.options_) if o.label == twins[option.label])
        assert [sorted(s.models) for s in without.options_[t].stages] == [sorted(s.models) for s in renamed.stages]
        paired += 1
        known = ~np.isnan(router._labels(router._cache, np.arange(calibration.n_prompts), [option])[:, 0])
        theirs = np.average(at_calibration[known, t], weights=weights[known])
        if theirs < 1 - 1e-3:  # (a mean at 1 is aimed at from below: no head reaches it)
            np.testing.assert_allclose(np.average(at_calibration[known, h], weights=weights[known]), theirs, atol=1e-6)
        assert np.abs(predicted[:, h] - predicted[:, t]).mean() < 0.02, option.label
    assert paired >= 3


def _renamed(option: Option, old: str, new: str) -> Option:
    then = None if option.then is None else _renamed(option.then, old, new)
    mix = tuple(new if m == old else m for m in option.mix)
    model = "+".join(mix) if mix else (new if option.model == old else option.model)
    return dataclasses.replace(option, model=model, mix=mix, then=then)


def test_removing_a_model_drops_every_option_that_samples_it(onboarded):
    data, split, _, _, router = onboarded
    gone = "gpt-4o-mini-2024-07-18"
    assert _calls(router, gone).any()
    removed = remove(router, [gone])
    assert not _calls(removed, gone).any() and removed.reference_ == router.reference_
    assert len(removed.options_) == int((~_calls(router, gone)).sum())
    decisions = removed.route([data.texts[i] for i in split.test[:20]])
    assert all(gone not in d["option"] for d in decisions)
    assert removed.changes_[-1] == {"removed": [gone]}


def test_onboarding_refuses_bad_calibration_answers(onboarded, subset_dir):
    data, split, without, answers, _ = onboarded
    asked = set(answers.prompt_ids)
    foreign = [i for i, pid in enumerate(data.prompt_ids) if pid not in asked][:30]
    with pytest.raises(RouterError, match="are not the router's representative prompts"):
        onboard(without, data.subset(rows=foreign, models=[NEW_MODEL]))
    rows = [data.prompt_ids.index(pid) for pid in answers.prompt_ids]
    with pytest.raises(RouterError, match="already one of the router's models"):
        onboard(without, data.subset(rows=rows, models=[without.reference_.model]))
    with pytest.raises(RouterError, match=f"needs at least {MIN_CALIBRATION_PROMPTS}"):
        onboard(without, answers.subset(rows=range(MIN_CALIBRATION_PROMPTS - 1)))
    edited = dataclasses.replace(answers, texts=["another question"] + answers.texts[1:])
    with pytest.raises(RouterError, match="has another text"):
        onboard(without, edited)
    with pytest.raises(RouterError, match="is the router's reference"):
        remove(without, [without.reference_.model])
    with pytest.raises(RouterError, match="has no model 'gpt-5'"):
        remove(without, ["gpt-5"])
    plain = BestRouteRouter(features="lexical", representative_prompts=0, domain_quantile=None)
    plain.fit(load_dataset(subset_dir), split.train, split.val)
    with pytest.raises(RouterError, match="trained without representative prompts"):
        onboard(plain, answers)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=60),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=25),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_representative_prompts_cover_the_training_set(rows, dims, wanted, seed):
    """Every representative is a training row, their clusters hold every row once, each next one
    is the one that most lowers the rows' squared distance to their nearest representative so
    far (each cluster counted by its size), and any answered subset's weights still sum to all rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dims)).round(1)
    chosen = RepresentativePrompts(n_prompts=wanted, seed=seed).fit(x)
    assert len(chosen.rows_) <= min(wanted, rows) and len(set(chosen.rows_.tolist())) == len(chosen.rows_)
    assert chosen.sizes_.sum() == rows
    points = chosen.points_.astype(float)
    between = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)

    def spread(i: int, following: int) -> float:
        return float((chosen.sizes_ * between[:, [*range(i), following]].min(axis=1)).sum())

    for i in range(len(points)):
        assert spread(i, i) <= min(spread(i, j) for j in range(i, len(points))) * (1 + 1e-5) + 1e-4
    answered = np.sort(rng.choice(len(points), size=rng.integers(1, len(points) + 1), replace=False))
    weights = chosen.weights(answered)
    assert weights.shape == answered.shape and (weights >= chosen.sizes_[answered] - 1e-9).all()
    assert weights.sum() == pytest.approx(rows)


def test_the_first_representatives_stand_for_even_shares_of_the_training_prompts():
    """180 prompts near the centre and a halo of 20 far ones: the first ten representatives (of
    40) stand for shares even enough to be worth more than three prompts (their weights'
    effective number; farthest-first, which takes the halo first, gives 1.1 here)."""
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(180, 5)), rng.normal(size=(20, 5)) * 3])
    weights = RepresentativePrompts(n_prompts=40, seed=0).fit(x).weights(np.arange(10))
    assert weights.sum() ** 2 / (weights**2).sum() > 3


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_datasets_join_by_prompt_and_survive_the_artifact(multisample_dir, draw):
    data = load_dataset(multisample_dir)
    rows = draw.draw(st.lists(st.integers(0, data.n_prompts - 1), min_size=1, max_size=20, unique=True))
    theirs = draw.draw(st.lists(st.sampled_from(rows), min_size=1, unique=True))
    split = draw.draw(st.integers(1, len(data.models) - 1))
    mine, other = data.models[:split], data.models[split:]
    joined = data.subset(rows=rows, models=mine).joined(data.subset(rows=theirs, models=other))
    expected = data.subset(rows=rows)
    answered = np.isin(rows, theirs)
    assert joined.models == mine + other and joined.prompt_ids == expected.prompt_ids
    np.testing.assert_array_equal(joined.quality[:, :split], expected.quality[:, :split])
    np.testing.assert_array_equal(joined.quality[answered, split:], expected.quality[answered, split:])
    assert np.isnan(joined.quality[~answered, split:]).all()
    assert (joined.responses[answered, split:] == expected.responses[answered, split:]).all()
    meta, arrays = joined.state()
    restored = RoutingDataset.from_state(json.loads(json.dumps(meta)), arrays)
    np.testing.assert_array_equal(restored.output_cost, joined.output_cost)
    assert restored.responses.tolist() == joined.responses.tolist() and restored.prices == joined.prices
    with pytest.raises(Exception, match="is in both datasets"):
        joined.joined(data.subset(rows=rows, models=[mine[0]]))


# ---------------------------------------------------------------- command line and gateway
def _without_small(multisample_dir: Path, directory: Path) -> Path:
    prompts, responses, models = read_native(multisample_dir)
    kept = [r for r in responses if r["model"] != "small"]
    return write_native(directory, prompts, kept, {m: p for m, p in models.items() if m != "small"})


def test_onboard_and_remove_on_the_command_line(multisample_dir, tmp_path):
    """Train without `small`, write the representative prompts, answer them from the recorded
    data, onboard, explain, route, remove; every bad input is one line and a non-zero exit."""
    artifact = tmp_path / "router.bestroute"
    data_dir = _without_small(multisample_dir, tmp_path / "without")
    trained = bestroute(
        "train", "--data", str(data_dir), "--features", "lexical", "--max-n", "3", "--out", str(artifact)
    )
    assert trained.returncode == 0, trained.stderr
    written = bestroute("calibration", str(artifact), "--out", str(tmp_path / "calibration"), "--prompts", "25")
    assert written.returncode == 0, written.stderr
    asked = [json.loads(line) for line in (tmp_path / "calibration" / "prompts.jsonl").open()]
    assert len(asked) == 25 and all(p["reference"] == "42" for p in asked)
    prompts, responses, models = read_native(multisample_dir)
    ids = {p["prompt_id"] for p in asked}
    answers = write_native(
        tmp_path / "answers",
        [p for p in prompts if p["prompt_id"] in ids],
        [r for r in responses if r["model"] == "small" and r["prompt_id"] in ids],
        {"small": models["small"]},
    )
    new = tmp_path / "onboarded.bestroute"
    done = bestroute("onboard", str(artifact), "--data", str(answers), "--out", str(new))
    assert done.returncode == 0, done.stderr
    assert "onboarded small from 25 representative prompts" in done.stdout
    explained = bestroute("explain", str(new))
    assert explained.returncode == 0 and "onboarded small from 25 representative prompts" in explained.stdout
    routed = bestroute("route", str(new), "What is six times seven? (variant 3)", "--json")
    assert routed.returncode == 0 and "small x3" in json.loads(routed.stdout)["scores"]
    wary = tmp_path / "wary.bestroute"
    assert (
        bestroute("onboard", str(artifact), "--data", str(answers), "--out", str(wary), "--caution", "3").returncode
        == 0
    )
    # the flag reaches onboard: the artifact's new heads are those onboard(caution=3) makes
    cautious = onboard(load_router(artifact), load_dataset(answers), caution=3.0)
    np.testing.assert_allclose(load_router(wary).intercept_, cautious.intercept_)
    back = bestroute("remove", str(new), "--model", "small", "--out", str(tmp_path / "back.bestroute"))
    assert back.returncode == 0 and "removed small" in back.stdout
    assert load_router(tmp_path / "back.bestroute").options_ == load_router(artifact).options_
    for args, message in (
        (("onboard", str(new), "--data", str(answers), "--out", str(tmp_path / "x")), "already one of the router's"),
        (("onboard", str(artifact), "--data", str(data_dir), "--out", str(tmp_path / "x")), "already one of the"),
        (("onboard", str(artifact), "--out", str(tmp_path / "x")), "give --data"),
        (
            ("onboard", str(artifact), "--data", str(answers), "--out", str(tmp_path / "x"), "--caution", "-1"),
            "caution",
        ),
        (
            ("onboard", str(artifact), "--data", str(answers), "--out", str(tmp_path / "x"), "--caution", "nan"),
            "caution",
        ),
        (("remove", str(new), "--model", "big", "--out", str(tmp_path / "x")), "is the router's reference"),
        (("calibration", str(artifact), "--out", str(tmp_path / "c"), "--prompts", "3"), "at least 20"),
    ):
        failed = bestroute(*args)
        assert failed.returncode != 0 and failed.stderr.strip().count("\n") == 0, failed.stderr
        assert message in failed.stderr
        assert not (tmp_path / "x").exists()


def test_onboard_collects_answers_and_the_gateway_reloads_to_route_as_offline(multisample_dir, tmp_path):
    """`onboard --collect` samples the new model through a gateway configuration (a real loopback
    upstream), and a running gateway reloaded onto the new artifact routes each prompt to the
    option the offline router chooses, the new model's among them."""
    artifact = tmp_path / "router.bestroute"
    data_dir = _without_small(multisample_dir, tmp_path / "without")
    trained = bestroute(
        "train", "--data", str(data_dir), "--features", "lexical", "--max-n", "3", "--out", str(artifact)
    )
    assert trained.returncode == 0, trained.stderr
    data = load_dataset(multisample_dir)
    texts = [data.texts[i] for i in split_prompts(data.prompt_ids).test]
    with (
        upstream(Script(answers=['{"answer": "42"}'])) as small,
        upstream(Script(answers=["It is 42."])) as big,
        upstream(Script(answers=["3"])) as tiny,
    ):
        backends = {"small": small.url, "big": big.url, "tiny": tiny.url}
        config = write_gateway_config(tmp_path, artifact, backends, reload_poll_s=0)
        new = tmp_path / "onboarded.bestroute"
        done = bestroute(
            "onboard", str(artifact), "--collect", str(config), "--model", "small", "--prompts", "20",
            "--samples", "3", "--out", str(new),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        collected = load_dataset(tmp_path / "onboarded.bestroute.calibration")
        assert collected.models == ["small"] and collected.n_prompts == 20 and (collected.quality == 1.0).all()
        router = load_router(new)
        assert router.changes_[-1]["added"] == ["small"]
        with gateway(tmp_path, artifact, backends, reload_poll_s=0) as (server, _):
            write_gateway_config(tmp_path, new, backends, reload_poll_s=0)
            assert httpx.post(server.url + "/admin/reload").status_code == 200
            assessed = router.assess(texts)
            offline = router.decide(assessed, router.default_knob())
            models = []
            for text, choice in zip(texts, offline, strict=True):
                answer = httpx.post(
                    server.url + "/v1/chat/completions",
                    json={"model": "bestroute", "messages": [{"role": "user", "content": text}]},
                    timeout=30,
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["bestroute"]["option"] == router.options_[int(choice)].label
                models.append(answer.headers["x-bestroute-model"])
            assert "small" in models
