import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_native

from bestroute import ArtifactError, load_dataset, split_prompts
from bestroute.reward import RewardModel, choose_selector, load_selector, pairwise_accuracy
from bestroute.selection import (
    Consensus,
    MajorityVote,
    Option,
    OracleSelector,
    SelectionCache,
    SelectorSpec,
    best_selector,
    selected_quality,
    soft_labels,
)


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


def test_reward_model_reads_a_long_response_by_its_head_and_tail(trained):
    _, _, model, _ = trained
    prompt = "What is six times seven?"
    head, tail = "Let me think. " * 20, '"answer": "42" ' * 60
    middle = "Some digression about sevens. " * 3000
    other_middle = ("Nothing to see here at all. " * 4000)[: len(middle)]  # same length, other words
    long = head + middle + tail
    # The head and tail (and the length) decide: another middle scores the same, another tail not.
    np.testing.assert_allclose(
        model.score([prompt], [head + other_middle + tail]), model.score([prompt], [long]), rtol=1e-6
    )
    wrong_tail = ("I think 3. " * 100)[: len(tail)]
    assert model.score([prompt], [head + middle + wrong_tail])[0] < model.score([prompt], [long])[0]


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
    by_reward = soft_labels(
        SelectionCache(data, load_selector(f"reward-model:{path}")), split.train, options, Option("big")
    )
    by_oracle = soft_labels(SelectionCache(data, load_selector("oracle")), split.train, options, Option("big"))
    by_majority = soft_labels(SelectionCache(data, load_selector("majority")), split.train, options, Option("big"))
    np.testing.assert_allclose(by_reward, by_oracle)  # it always keeps a right answer when there is one
    np.testing.assert_allclose(by_majority, by_oracle)


def test_cli_train_reward_reports_accuracy(multisample_dir, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bestroute",
            "train-reward",
            "--data",
            str(multisample_dir),
            "--features",
            "lexical",
            "--out",
            str(tmp_path / "r.bestroute"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1].split(": ", 1)[1])
    assert set(report) == {"reward_model", "majority_vote", "random", "pairs"}
    assert (tmp_path / "r.bestroute").stat().st_size > 0


def _small_and_big(directory, small: list[list[tuple[str, float]]], big_answer: str, prompt: str):
    """Prompt i (``prompt`` formatted with i): model "small" answers ``small[i]``, samples of
    (text, quality); "big", the reference, answers ``big_answer`` rightly."""
    prompts, responses = [], []
    for i, samples in enumerate(small):
        prompts.append({"prompt_id": f"q{i}", "prompt": prompt.format(i)})
        for sample, (text, quality) in enumerate(samples):
            responses.append(
                {
                    "prompt_id": f"q{i}",
                    "model": "small",
                    "sample": sample,
                    "quality": quality,
                    "input_tokens": 10,
                    "output_tokens": 5,
                    "response": text,
                }
            )
        responses.append(
            {
                "prompt_id": f"q{i}",
                "model": "big",
                "quality": 1.0,
                "input_tokens": 10,
                "output_tokens": 20,
                "response": big_answer,
            }
        )
    models = {
        "small": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2},
        "big": {"input_usd_per_mtok": 5.0, "output_usd_per_mtok": 15.0},
    }
    return load_dataset(write_native(directory, prompts, responses, models))


def _data_where_the_majority_is_wrong(directory):
    """Model "small" answers 7, 7, then the right 42 with its working; "big" is the reference."""
    samples = [("7", 0.0), ("7", 0.0), ("six times seven is 42 because 6 x 7 = 42", 1.0)]
    return _small_and_big(directory, [samples] * 50, "42", "What is six times seven? (case {})")


def test_best_selector_keeps_the_better_one_and_the_first_of_equals(tmp_path):
    data = _data_where_the_majority_is_wrong(tmp_path / "data")
    rows = np.arange(data.n_prompts)
    best, quality = best_selector(data, rows, [MajorityVote(), OracleSelector()])
    assert best.spec.kind == "oracle" and quality == {"majority": 0.0, "oracle": 1.0}
    first, quality = best_selector(data, rows, [Consensus(), MajorityVote()])  # both keep a 7
    assert first.spec.kind == "consensus" and quality == {"consensus": 0.0, "majority": 0.0}


def test_choose_selector_keeps_the_reward_model_where_it_picks_better(tmp_path):
    data = _data_where_the_majority_is_wrong(tmp_path / "data")
    split = split_prompts(data.prompt_ids)
    selector, quality = choose_selector(data, split, tmp_path / "r.bestroute", features="lexical")
    assert str(selector) == f"reward-model:{tmp_path / 'r.bestroute'}"
    assert quality == {"consensus": 0.0, "reward-model": 1.0}  # consensus keeps the agreeing 7s
    assert selected_quality(SelectionCache(data, load_selector(selector)), split.val) == 1.0


def test_choose_selector_prefers_consensus_on_ties_and_single_samples(tmp_path, multisample_dir, subset_dir):
    data = load_dataset(multisample_dir)  # every selector keeps a 42 here
    selector, quality = choose_selector(
        data, split_prompts(data.prompt_ids), tmp_path / "r.bestroute", features="lexical"
    )
    assert str(selector) == "consensus" and quality["consensus"] == quality["reward-model"]
    single = load_dataset(subset_dir)  # one sample per prompt and model: nothing to select
    assert choose_selector(single, split_prompts(single.prompt_ids), tmp_path / "s.bestroute") == (SelectorSpec(), {})
    assert not (tmp_path / "s.bestroute").exists()


def test_cli_eval_chooses_the_selector_and_reports_best_of_n_use(tmp_path):
    directory = tmp_path / "data"
    _data_where_the_majority_is_wrong(directory)
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bestroute",
            "eval",
            "--data",
            str(directory),
            "--out",
            str(out),
            "--features",
            "lexical",
            "--routers",
            "best-route",
            "--max-n",
            "3",
            "--no-guard",  # every test prompt to best of 3, none sent to the reference as out of domain
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["selector"] == f"reward-model:{(out / 'reward.bestroute').resolve()}"
    assert results["selector_validation_quality"] == {"consensus": 0.0, "reward-model": 1.0}
    # Best of 3 from the cheap model is as good as the reference, so the router uses it.
    share = results["routers"]["best-route"]["best_of_n_share"]
    assert len(share) == len(results["routers"]["best-route"]["curve"]) and max(share) == 1.0
    assert "| best-route |" in done.stdout and "100% |" in done.stdout


def test_a_rewritten_reward_model_file_is_loaded_anew(tmp_path):
    data = _data_where_the_majority_is_wrong(tmp_path / "data")
    split = split_prompts(data.prompt_ids)
    path = tmp_path / "r.bestroute"
    RewardModel(features="lexical", C=10.0).fit(data, split.train).save(path)
    first = SelectionCache(data, load_selector(f"reward-model:{path}"))
    RewardModel(features="lexical", C=0.01).fit(data, split.train).save(path)
    second = SelectionCache(data, load_selector(f"reward-model:{path}"))  # no process-wide cache keeps the old one
    assert first.selector.scorer.C == 10.0 and second.selector.scorer.C == 0.01
    with pytest.raises(ArtifactError):
        load_selector(f"reward-model:{tmp_path / 'missing.bestroute'}")


def _data_with_memorisable_noise(directory):
    """Every response is a unique word and right or wrong at random: nothing generalises, but a
    scorer can memorise which of its training responses were right."""
    rng = np.random.default_rng(0)
    small = [[(f"w{i}x{sample}", float(rng.random() < 0.5)) for sample in range(4)] for i in range(120)]
    return _small_and_big(directory, small, "yes", "Question number {}?")


def test_reward_model_scores_its_training_prompts_out_of_fold(tmp_path):
    data = _data_with_memorisable_noise(tmp_path / "data")
    split = split_prompts(data.prompt_ids)
    path = tmp_path / "r.bestroute"
    RewardModel(features="lexical", C=1000.0).fit(data, split.train).save(path)
    small = [data.models.index("small")]
    # Scored by the fold scorer that saw them, its picks would be right nearly always (a right one
    # is among 4 samples for 94% of prompts); scored out of fold, they are right by chance.
    oracle = selected_quality(SelectionCache(data, load_selector("oracle")), split.train)
    picked = selected_quality(SelectionCache(data, load_selector(f"reward-model:{path}")), split.train)
    assert oracle > 0.9 and 0.3 < picked < 0.7
    # Not a weak scorer: it did memorise, which shows on responses it was trained on when they are
    # asked under another prompt text (held out of every fold, so scored by the fold average).
    right = [(i, k) for i in split.train for k in range(4) if data.quality[i, small[0], k] == 1.0][:40]
    wrong = [(i, k) for i in split.train for k in range(4) if data.quality[i, small[0], k] == 0.0][:40]
    score = RewardModel.load(path).score
    unseen = "A prompt it never saw?"
    assert (
        score([unseen] * 40, [data.responses[i, small[0], k] for i, k in right]).mean()
        > score([unseen] * 40, [data.responses[i, small[0], k] for i, k in wrong]).mean() + 0.2
    )
