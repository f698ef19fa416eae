import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bestroute import ROUTERS, RouterError, load_dataset, load_router, split_prompts
from bestroute.evaluation import area_under_curve
from bestroute.features import LexicalFeatures, apply_heads, fit_soft_heads
from bestroute.routers import BestRouteRouter
from bestroute.routers._base import column_means

ROUTABLE = [name for name in ROUTERS if name != "oracle"]


@pytest.fixture(scope="module")
def subset(subset_dir):
    data = load_dataset(subset_dir)
    return data, split_prompts(data.prompt_ids, seed=0)


@pytest.mark.parametrize("name", ROUTABLE)
def test_fit_predict_decide_save_load(name, subset, tmp_path):
    data, split = subset
    router = ROUTERS[name](features="lexical").fit(data, split.train, split.val)
    assert router.reference_.model == "gpt-4o-2024-08-06"  # best on validation of those answering all
    texts = [data.texts[i] for i in split.test]
    assessed = router.assess(texts, guard=False)  # the rule alone: no prompt sent to the reference by the guard
    scores = assessed.scores
    assert scores.shape == assessed.cost.shape == (len(texts), len(router.options_))
    assert np.isfinite(scores).all() and np.array_equal(scores, router.predict(texts))
    knob = router.default_knob()
    choices = router.decide(assessed, knob)
    # The serving path's plain-Python rule decides the same, prompt by prompt.
    everything = np.ones(len(router.options_), dtype=bool)
    assert choices.tolist() == [
        router.rule.order(row, knob, everything, cost)[0] for row, cost in zip(scores, assessed.cost, strict=True)
    ]
    assert router.active_[choices].all()
    assert router.table_, "fitting with validation data records the operating table"
    path = tmp_path / f"{name}.bestroute"
    router.save(path)
    loaded = load_router(path)
    assert type(loaded) is type(router) and loaded.options_ == router.options_
    np.testing.assert_allclose(loaded.predict(texts), scores, rtol=1e-6, atol=1e-9)
    assert loaded.route(texts[:2]) == router.route(texts[:2])


def test_best_route_beats_random_mix_and_can_reach_the_reference(subset):
    data, split = subset
    x = LexicalFeatures().transform(data.texts)
    auc = {}
    for name in ("best-route", "random"):
        router = ROUTERS[name](features="lexical").fit(data, split.train, split.val, features=x)
        decisions = router.sweep(data, split.test, x[split.test])
        points = np.array([[np.mean(d.cost), np.mean(d.quality)] for d in decisions])
        complete = router.outcomes_.available[split.test].all(axis=0)
        cost = router.outcomes_.cost[split.test].mean(axis=0)
        auc[name] = area_under_curve(
            points, cheapest_cost=cost[complete].min(), reference_cost=cost[router.reference_index_]
        )
        ref = router.outcomes_.quality[split.test, router.reference_index_].mean()
        # The top of each sweep sends everything to the reference.
        assert points[-1, 1] == pytest.approx(ref)
    assert auc["best-route"] > auc["random"]


def test_best_route_uses_best_of_n_options(multisample_dir):
    data = load_dataset(multisample_dir)
    split = split_prompts(data.prompt_ids, seed=0)
    router = BestRouteRouter(features="lexical", max_n=3, prune_dominated=False).fit(data, split.train, split.val)
    labels = {o.label for o in router.options_}
    assert {"small", "small x2", "small x3", "big"} <= labels and "small x4" not in labels
    # "small x3" has soft label 1 everywhere (see test_selection): at a threshold of 0.95 it is
    # the cheapest option that qualifies.
    decision = router.route([data.texts[0]], knob=0.95)[0]
    assert decision["option"] == "small x3"
    assert decision["scores"]["small"] < 0.95 <= decision["scores"]["small x3"]
    restricted = BestRouteRouter(features="lexical", max_n=1).fit(data, split.train, split.val)
    assert all(o.n == 1 for o in restricted.options_)


def test_operating_point_targets(subset):
    data, split = subset
    router = BestRouteRouter(features="lexical").fit(data, split.train, split.val)
    cheap = router.knob_for(max_cost_per_1k=0.2)
    point = next(p for p in router.table_ if p.knob == cheap)
    assert point.cost_per_1k <= 0.2
    assert all(p.quality <= point.quality for p in router.table_ if p.cost_per_1k <= 0.2)
    good = router.knob_for(min_relative_quality=0.99)
    point = next(p for p in router.table_ if p.knob == good)
    assert point.relative_quality >= 0.99
    with pytest.raises(RouterError, match="no operating point"):
        router.knob_for(max_cost_per_1k=1e-9)


def test_oracle_is_an_upper_bound_and_cannot_route(subset):
    data, split = subset
    x = LexicalFeatures().transform(data.texts)
    oracle = ROUTERS["oracle"](features="lexical").fit(data, split.train, split.val, features=x)
    best = max(float(np.mean(d.quality)) for d in oracle.sweep(data, split.test, x[split.test]))
    per_model = np.nanmax(oracle.outcomes_.quality[split.test], axis=1).mean()
    assert best == pytest.approx(per_model)
    with pytest.raises(RouterError, match="ground-truth"):
        oracle.predict(["hello"])


def test_static_features_travel_inside_the_artifact(subset, tmp_path):
    data, split = subset
    router = BestRouteRouter(features="static").fit(data, split.train, split.val)
    path = tmp_path / "static.bestroute"
    router.save(path)
    with np.load(path) as archive:
        assert archive["features.table"].shape == (30522, 256)
    loaded = load_router(path)
    text = [data.texts[split.test[0]]]
    np.testing.assert_allclose(loaded.predict(text), router.predict(text), rtol=1e-3, atol=1e-4)


def test_unknown_reference_and_bad_artifact(subset, tmp_path):
    data, split = subset
    from bestroute import ArtifactError, DataError

    with pytest.raises(DataError, match="unknown model 'gpt-5'"):
        BestRouteRouter(features="lexical", reference="gpt-5").fit(data, split.train, split.val)
    bad = tmp_path / "bad.bestroute"
    bad.write_bytes(b"not an artifact")
    with pytest.raises(ArtifactError, match="not a bestroute router artifact") as info:
        load_router(bad)
    assert "pickle" not in str(info.value)  # NumPy's hint to unpickle an unknown file is not ours to give
    with pytest.raises(ArtifactError, match="no such file"):
        load_router(tmp_path / "missing.bestroute")


@pytest.mark.parametrize("name", ["best-route", "n-label"])  # the threshold rule and the cost-penalty rule
def test_the_gateways_fallback_order_starts_with_the_routers_decision(name, subset):
    data, split = subset
    router = ROUTERS[name](features="lexical").fit(data, split.train, split.val)
    assessed = router.assess([data.texts[i] for i in split.test], guard=False)
    rng = np.random.default_rng(0)
    for knob in router.knob_grid()[::10]:
        available = router.active_ & (rng.random(len(router.options_)) < 0.7)
        available[router.reference_index_] = True
        decided = router.decide(assessed, float(knob), available[None, :])
        for row, cost, choice in zip(assessed.scores, assessed.cost, decided, strict=True):
            order = router.rule.order(row, float(knob), available, cost)
            assert order[0] == choice
            assert sorted(order) == list(np.flatnonzero(available))  # every available option, once


def test_soft_heads_fit_hard_and_soft_labels_by_cross_entropy():
    # With no features and a negligible penalty a head's prediction is its labels' mean, which
    # holds only if a hard label counts once and a soft one splits its weight y / 1 - y.
    labels = np.array([[1.0, 0.0, 0.25, 0.75, 1.0, np.nan]]).T
    coef, intercept = fit_soft_heads(np.zeros((6, 1)), labels, C=1e6)
    np.testing.assert_allclose(apply_heads(np.zeros((1, 1)), coef, intercept), [[0.6]], atol=1e-4)
    # Two feature values, each with its own mix: both means are fitted.
    x = np.array([[0.0], [0.0], [0.0], [1.0], [1.0]])
    coef, intercept = fit_soft_heads(x, np.array([[1.0, 0.0, 0.5, 0.9, 1.0]]).T, C=1e6)
    np.testing.assert_allclose(apply_heads(np.array([[0.0], [1.0]]), coef, intercept)[:, 0], [0.5, 0.95], atol=1e-3)


def test_a_decision_rule_checks_its_knob(subset):
    data, split = subset
    threshold = ROUTERS["best-route"](features="lexical").fit(data, split.train, split.val).rule
    penalty = ROUTERS["n-label"](features="lexical").fit(data, split.train, split.val).rule
    assert threshold.check(0.99) == 0.99 and penalty.check(1.5) == 1.5
    with pytest.raises(RouterError, match="a threshold must be between 0 and 1, got 1.5"):
        threshold.check(1.5)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(RouterError, match="finite non-negative"):
            penalty.check(bad)


@pytest.fixture(scope="module")
def static_embedder():
    from bestroute.features import make_extractor

    return make_extractor("static")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
            st.sampled_from(
                ["the", "seven?", "héllo", "中文字", "e\u0301", "\t", "\n", "", "x\u00a0y", "😀", "a" * 120]
            ),
        ),
        max_size=12,
    )
)
def test_one_prompt_through_the_word_cache_has_the_batch_paths_features(static_embedder, words):
    # The serving path (one prompt, token ids from the cache of words) has the tokenizer's ids
    # and the batch path's features (encode_batch), bit for bit, the first time and after.
    text = " ".join(words)
    batch = static_embedder.transform([text, "another prompt"])[0]
    for _ in range(2):
        assert static_embedder._ids(text) == static_embedder._tokenizer.encode(text, add_special_tokens=False).ids
        np.testing.assert_array_equal(static_embedder.transform([text])[0], batch)


def test_served_prompts_have_the_evaluated_prompts_features(subset_dir):
    from bestroute.features import make_extractor

    texts = load_dataset(subset_dir).texts
    embedder = make_extractor("static")
    served = np.vstack([embedder.transform([text]) for text in texts])
    np.testing.assert_array_equal(served, embedder.transform(texts))


@given(
    st.lists(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=3, max_size=3), min_size=1, max_size=6),
    st.floats(-10, 10),
)
@settings(max_examples=200, deadline=None)
def test_column_means_are_nanmeans_and_an_empty_column_gets_its_value_without_a_warning(rows, empty):
    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.nanmean warns on a column with no number; this must not
        means = column_means(values, empty=empty)
    known = ~np.isnan(values).all(axis=0)
    if known.any():
        np.testing.assert_array_equal(means[known], np.nanmean(values[:, known], axis=0))
    assert (means[~known] == empty).all()
