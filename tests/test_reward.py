import json
import subprocess
import sys

import numpy as np
import pytest

from bestroute import ArtifactError, load_dataset, split_prompts
from bestroute.reward import RewardModel, pairwise_accuracy
from bestroute.routers import MajorityVote, Option, OracleSelector, make_selector, soft_labels


@pytest.fixture(scope="module")
def trained(multisample_dir, tmp_path_factory):
    data = load_dataset(multisample_dir)
    split = split_prompts(data.prompt_ids)
    model = RewardModel(features="lexical", C=10.0).fit(data, split.train)
    path = tmp_path_factory.mktemp("reward") / "reward.bestroute"
    model.save(path)
    return data, split, model, path


def test_reward_model_ranks_better_responses_higher(trained):
    data, split, model, _ = trained
    accuracy = pairwise_accuracy(data, split.test, model)
    assert accuracy["reward_model"] > 0.9
    assert 0.3 < accuracy["random"] < 0.7
    # Per prompt: 6 good responses (42 x2 from small, 42 from big, ...) against the wrong ones.
    assert accuracy["pairs"] == len(split.test) * 3 * 7
    good = model.score(["What is six times seven?"], ['{"reasoning": "...", "answer": "42"}'])
    bad = model.score(["What is six times seven?"], ["I think 3"])
    assert good[0] > bad[0]


def test_reward_model_artifact_round_trip(trained, tmp_path):
    data, split, model, path = trained
    loaded = RewardModel.load(path)
    prompts = [data.texts[i] for i in split.test]
    responses = [data.responses[i, 0, 0] for i in split.test]
    np.testing.assert_allclose(loaded.score(prompts, responses), model.score(prompts, responses), rtol=1e-6)
    (tmp_path / "bad").write_bytes(b"nope")
    with pytest.raises(ArtifactError):
        RewardModel.load(tmp_path / "bad")


def test_reward_model_as_offline_best_of_n_selector(trained):
    data, split, _, path = trained
    options = [Option("small", n) for n in (1, 2, 3)]
    selector = make_selector(f"reward-model:{path}")
    by_reward = soft_labels(data, split.train, options, Option("big"), selector)
    by_oracle = soft_labels(data, split.train, options, Option("big"), OracleSelector())
    by_majority = soft_labels(data, split.train, options, Option("big"), MajorityVote())
    np.testing.assert_allclose(by_reward, by_oracle)  # it always keeps a right answer when there is one
    np.testing.assert_allclose(by_majority, by_oracle)


def test_cli_train_reward_reports_accuracy(multisample_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "bestroute", "train-reward", "--data", str(multisample_dir),
                           "--features", "lexical", "--out", str(tmp_path / "r.bestroute")],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1].split(": ", 1)[1])
    assert set(report) == {"reward_model", "majority_vote", "random", "pairs"}
    assert (tmp_path / "r.bestroute").stat().st_size > 0
