"""Each option's expected cost on a prompt: the cost heads on their own, and in a router that
decides by them offline as the gateway does."""

import numpy as np
import pytest

from bestroute import FeatureError, load_dataset, load_router, split_prompts
from bestroute.features import CostHeads
from bestroute.routers import Assessment, EscalatingBestRouteRouter


def _two_kinds(rows: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompts of two kinds (a feature each); option 0 costs 1 on the first kind and 3 on the
    second, option 1 never answered, option 2 costs 2 where it answered (every other prompt)."""
    rng = np.random.default_rng(0)
    kind = np.arange(rows) % 2
    x = np.c_[kind == 0, kind == 1, rng.normal(scale=0.05, size=(rows, 6))].astype(float)
    cost = np.c_[1.0 + 2.0 * kind + rng.normal(scale=0.01, size=rows), np.full(rows, np.nan), np.full(rows, 2.0)]
    available = np.c_[np.ones(rows, dtype=bool), np.zeros(rows, dtype=bool), np.arange(rows) % 4 < 2]
    return x, cost, available


def test_the_heads_predict_each_prompts_cost_within_what_training_saw():
    x, cost, available = _two_kinds()
    heads = CostHeads(alpha=0.1).fit(x, cost, available)
    predicted = heads.predict(x)
    assert predicted.shape == cost.shape
    assert np.abs(predicted[0::2, 0] - 1.0).max() < 0.1 and np.abs(predicted[1::2, 0] - 3.0).max() < 0.1
    assert np.isinf(predicted[:, 1]).all()  # never answered: never the cheapest
    assert np.allclose(predicted[:, 2], 2.0)
    far = heads.predict(np.c_[np.full((1, 2), 50.0), np.zeros((1, 6))])  # far outside: clipped to the seen range
    assert cost[:, 0].min() <= far[0, 0] <= cost[:, 0].max()
    again = CostHeads.from_state(*heads.state())
    assert np.array_equal(again.predict(x), predicted)
    assert np.array_equal(heads.select(np.array([2, 0])).predict(x), predicted[:, [2, 0]])
    assert np.array_equal(
        heads.select(np.array([0])).extended(heads.select(np.array([2]))).predict(x), predicted[:, [0, 2]]
    )


def test_one_option_with_weights_is_fitted_like_many():
    """Onboarding one model may add a single option, fitted on weighted calibration prompts."""
    x, cost, available = _two_kinds()
    weights = np.linspace(0.5, 1.5, len(x))
    one = CostHeads(alpha=0.1).fit(x, cost[:, :1], available[:, :1], weights)
    many = CostHeads(alpha=0.1).fit(x, cost[:, [0, 2]], available[:, [0, 2]], weights)
    assert one.coef_.shape == (x.shape[1], 1)
    assert np.allclose(one.predict(x)[:, 0], many.predict(x)[:, 0])


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf")])
def test_a_bad_strength_is_refused(alpha):
    with pytest.raises(FeatureError, match="alpha"):
        CostHeads(alpha=alpha)


def test_the_escalating_router_expects_a_pair_to_cost_more_where_it_disagrees_more(subset_dir, tmp_path):
    """On the real slice a pair of cheap models agrees on most arithmetic prompts and on far
    fewer code prompts, so it escalates, and pays the reference, more on code: the router expects
    that prompt by prompt, its decisions differ from deciding by mean costs, and the artifact
    decides the same after loading."""
    data = load_dataset(subset_dir)
    split = split_prompts(data.prompt_ids)
    router = EscalatingBestRouteRouter(features="lexical", max_n=1).fit(data, split.train, split.val)
    texts = [data.texts[i] for i in split.test]
    assessed = router.assess(texts)
    tasks = np.array(data.tasks)[split.test]
    pair = next(o for o, option in enumerate(router.options_) if len(option.mix) == 2 and option.then is None)
    realised = router.outcomes_.cost[split.test, pair]
    for task in ("crux", "gsm"):  # on each kind the expectation is nearer what it costs there than the mean is
        there = realised[tasks == task].mean()
        assert abs(assessed.cost[tasks == task, pair].mean() - there) < 0.6 * abs(router.option_cost_[pair] - there)
    assert assessed.cost[tasks == "crux", pair].mean() > 1.5 * assessed.cost[tasks == "gsm", pair].mean()
    by_mean = Assessment(assessed.scores, np.broadcast_to(router.option_cost_, assessed.scores.shape), None, None)
    knobs = router.knob_grid()[::20]
    assert any((router.decide(assessed, k) != router.decide(by_mean, k)).any() for k in knobs)
    path = tmp_path / "router.bestroute"
    router.save(path)
    loaded = load_router(path)
    again = loaded.assess(texts)
    assert np.array_equal(again.cost, assessed.cost)
    assert all(np.array_equal(loaded.decide(again, k), router.decide(assessed, k)) for k in knobs)
    routed = loaded.route(texts[:5], knob=0.95)
    chosen = loaded.decide(again, 0.95)[:5]
    assert [r["expected_cost_usd"] for r in routed] == [float(again.cost[i, c]) for i, c in enumerate(chosen)]
    plain = EscalatingBestRouteRouter(features="lexical", max_n=1, cost_alpha=None).fit(data, split.train, split.val)
    assert np.array_equal(plain.assess(texts).cost, np.broadcast_to(plain.option_cost_, assessed.cost.shape))
