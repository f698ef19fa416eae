import numpy as np
import pytest

from bestroute import DataError, split_prompts


def test_split_is_deterministic_disjoint_and_proportional():
    ids = [f"prompt-{i}" for i in range(5000)]
    first, again = split_prompts(ids, seed=3), split_prompts(ids, seed=3)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(first, part), getattr(again, part))
    parts = np.concatenate([first.train, first.val, first.test])
    assert sorted(parts.tolist()) == list(range(5000))
    assert abs(len(first.train) / 5000 - 0.6) < 0.03
    assert abs(len(first.val) / 5000 - 0.2) < 0.03
    other = split_prompts(ids, seed=4)
    assert set(other.test.tolist()) != set(first.test.tolist())


def test_adding_prompts_moves_no_existing_prompt():
    ids = [f"q{i}" for i in range(1000)]
    before = split_prompts(ids)
    after = split_prompts(ids + [f"new{i}" for i in range(500)])
    assert set(before.test.tolist()) == {i for i in after.test.tolist() if i < 1000}


def test_custom_fractions_and_bad_fractions():
    split = split_prompts([str(i) for i in range(2000)], fractions=(0.8, 0.1, 0.1))
    assert abs(len(split.train) / 2000 - 0.8) < 0.03
    with pytest.raises(DataError, match="fractions"):
        split_prompts(["a"], fractions=(0.5, 0.5, 0.5))
