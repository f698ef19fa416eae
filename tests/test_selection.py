from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bestroute import RouterError, load_dataset
from bestroute.reward import load_selector
from bestroute.selection import (
    MajorityVote,
    Option,
    SelectionCache,
    SelectorSpec,
    make_selector,
    option_outcomes,
    soft_labels,
)


def test_bootstrap_labels_match_hand_computed_values(multisample_dir):
    data = load_dataset(multisample_dir)
    rows = np.arange(data.n_prompts)
    reference = Option("big")
    options = [Option("small", n) for n in (1, 2, 3, 4)] + [Option("tiny", 1), Option("big", 1)]
    # Reference samples have quality 1 and 0: a response is as good as the reference's with
    # probability 1 when its quality is 1 and 1/2 when it is 0.
    majority = soft_labels(SelectionCache(data, load_selector("majority")), rows, options, reference)
    # small, n=1: mean over its 4 samples of (1, 1, 1/2, 1/2) = 3/4.
    # n=2: of the 6 pairs, majority vote (ties: earliest) keeps a right answer in 5, so
    #      5/6 * 1 + 1/6 * 1/2 = 11/12. n=3 and n=4: every subset keeps a right answer: 1.
    np.testing.assert_allclose(majority[0], [3 / 4, 11 / 12, 1.0, 1.0, 0.5, 0.75])
    assert np.allclose(majority, majority[0])
    oracle = soft_labels(SelectionCache(data, load_selector("oracle")), rows, options, reference)
    # With ground truth picking, a pair holds a right answer unless it is {7, 9}: same 11/12.
    np.testing.assert_allclose(oracle[0, :4], [3 / 4, 11 / 12, 1.0, 1.0])


def test_majority_vote_beats_first_sample_when_wrong_answers_disagree(tmp_path, multisample_dir):
    data = load_dataset(multisample_dir)
    outcomes = option_outcomes(
        SelectionCache(data, load_selector("majority")), [Option("small", 1), Option("small", 3), Option("big", 1)]
    )
    # First three samples answer 42, 42, 7: majority keeps 42 (quality 1); cost is one input and
    # three outputs.
    np.testing.assert_allclose(outcomes.quality[0], [1.0, 1.0, 1.0])
    small = data.prices["small"]
    np.testing.assert_allclose(outcomes.cost[0, 1], small.cost(10, 3 * 5))
    assert outcomes.available.all()


def test_options_without_enough_samples_are_unlabelled(multisample_dir):
    data = load_dataset(multisample_dir)
    labels = soft_labels(
        SelectionCache(data, load_selector("majority")), np.arange(3), [Option("big", 3)], Option("big")
    )
    assert np.isnan(labels).all()


def test_consensus_agrees_across_free_text_where_majority_cannot():
    from bestroute.selection import Consensus, pick

    responses = ["The capital of France is Paris.", "Lyon", "Paris is the capital of France.", "It is Paris"]
    quality = np.zeros(4)
    agreement, scores = Consensus().judge("q", responses, quality)
    assert pick(agreement, scores, np.arange(4)) in (0, 2, 3)  # a Paris answer, never the outlier
    assert pick(agreement, scores, np.array([1, 2, 3])) in (2, 3)
    majority_agreement, majority_scores = MajorityVote().judge("q", responses, quality)
    assert pick(majority_agreement, majority_scores, np.array([1, 2, 3])) == 1  # all differ: the first


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("consensus", {"kind": "consensus"}),
        ("majority", {"kind": "majority"}),
        ("reward-model:runs/r.bestroute", {"kind": "reward-model", "path": Path("runs/r.bestroute")}),
        ("reward:http://127.0.0.1:9/score", {"kind": "reward", "url": "http://127.0.0.1:9/score"}),
        ("judge:big", {"kind": "judge", "backend": "big"}),
    ],
)
def test_a_selector_spec_is_parsed_once_and_prints_back(text, fields):
    spec = SelectorSpec.parse(text)
    assert spec == SelectorSpec(**fields)
    assert str(spec) == text and SelectorSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vote", "bad selector 'vote'"),
        ("reward-model", "needs path"),
        ("reward-model:", "needs path"),
        ("consensus:x", "takes no target"),
        ("judge:", "needs backend"),
    ],
)
def test_a_bad_selector_spec_is_one_clear_error(text, message):
    with pytest.raises(RouterError, match=message) as caught:
        SelectorSpec.parse(text)
    assert "\n" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_selector_text_parses_and_prints_back_or_is_a_router_error(text):
    try:
        spec = SelectorSpec.parse(text)
    except RouterError as exc:
        assert "\n" not in str(exc)
        return
    assert SelectorSpec.parse(str(spec)) == spec


def test_a_service_selector_only_selects_in_the_gateway():
    for text in ("reward:http://127.0.0.1:9", "judge:big"):
        with pytest.raises(RouterError, match="gateway only"):
            make_selector(SelectorSpec.parse(text))
    with pytest.raises(RouterError, match="needs its reward model loaded"):
        make_selector(SelectorSpec.parse("reward-model:r.bestroute"))


@pytest.mark.parametrize("blank", ["", " ", "\n", " \t\n "])
def test_a_blank_response_has_no_final_answer(blank):
    from bestroute.selection import extract_answer

    assert extract_answer(blank) == ""
