import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bestroute, read_native, write_native

from bestroute import load_dataset, load_router, split_prompts


@pytest.fixture(scope="module")
def artifact(subset_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "router.bestroute"
    done = bestroute(
        "train", "--data", str(subset_dir), "--router", "best-route", "--features", "lexical", "--out", str(path)
    )
    assert done.returncode == 0, done.stderr
    assert "saved best-route router" in done.stdout
    return path


def test_route_prints_decision_scores_and_cost(artifact, subset_dir):
    data = load_dataset(subset_dir)
    test = split_prompts(data.prompt_ids).test
    prompt = data.texts[int(test[0])]  # a held-out prompt of the training data's kind (its template included)
    done = bestroute("route", str(artifact), prompt, "--json")
    assert done.returncode == 0, done.stderr
    decision = json.loads(done.stdout)
    assert decision["option"] in decision["scores"]
    assert decision["expected_cost_usd"] > 0
    assert decision["out_of_domain"] is False
    cheap = json.loads(bestroute("route", str(artifact), prompt, "--threshold", "0", "--json").stdout)
    full = json.loads(bestroute("route", str(artifact), prompt, "--threshold", "1", "--json").stdout)
    assert full["model"] == "gpt-4o-2024-08-06"
    assert cheap["expected_cost_usd"] < full["expected_cost_usd"]
    # far from every training prompt: the domain guard sends it to the reference at any threshold
    odd = json.loads(
        bestroute("route", str(artifact), "Bonjour, ça va ? Écris un haïku.", "--threshold", "0", "--json").stdout
    )
    assert odd["out_of_domain"] is True and odd["model"] == "gpt-4o-2024-08-06"
    target = bestroute("route", str(artifact), "What is 2+2?", "--max-cost", "0.5")
    assert target.returncode == 0 and "option:" in target.stdout


def test_a_lower_guard_quantile_flags_more(artifact, subset_dir, tmp_path):
    path = tmp_path / "strict.bestroute"
    done = bestroute(
        "train", "--data", str(subset_dir), "--features", "lexical", "--guard-quantile", "0.9", "--out", str(path)
    )
    assert done.returncode == 0, done.stderr
    default, strict = load_router(artifact).domain_, load_router(path).domain_
    assert default is not None and strict is not None
    assert (default.quantile, strict.quantile) == (0.995, 0.9) and strict.threshold_ < default.threshold_


def test_explain_prints_operating_table(artifact):
    done = bestroute("explain", str(artifact))
    assert done.returncode == 0, done.stderr
    assert "vs reference" in done.stdout and "100.00%" in done.stdout


def test_bad_inputs_exit_non_zero_with_one_line(artifact, subset_dir, tmp_path):
    cases = [
        ("train", "--data", str(subset_dir), "--router", "magic", "--out", str(tmp_path / "x")),
        ("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")),
        ("route", str(tmp_path / "missing.bestroute"), "hi"),
        ("route", str(artifact), "hi", "--max-cost", "0.0000001"),
        # Knobs and targets no decision can use, and nothing to route (they exited 0 before).
        ("route", str(artifact), "hi", "--threshold", "nan"),
        ("route", str(artifact), "hi", "--threshold", "-5"),
        ("route", str(artifact), "hi", "--min-quality", "-0.2"),
        ("route", str(artifact), "hi", "--max-cost", "-1"),
        ("route", str(artifact), " "),
        ("eval", "--data", str(subset_dir), "--out", str(tmp_path / "e"), "--routers", "nope"),
        ("train", "--data", str(subset_dir), "--guard-quantile", "1.5", "--out", str(tmp_path / "x")),
        ("eval", "--data", str(subset_dir), "--out", str(tmp_path / "e"), "--guard-quantile", "0"),
    ]
    for args in cases:
        done = bestroute(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr


def test_eval_writes_results_and_plot(subset_dir, tmp_path):
    out = tmp_path / "eval"
    done = bestroute(
        "eval",
        "--data",
        str(subset_dir),
        "--out",
        str(out),
        "--features",
        "lexical",
        "--routers",
        "best-route,knn,random",
        "--routers",
        "oracle",
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["routers"]) == {"best-route", "knn", "random", "oracle"}
    ref = results["reference"]
    assert {"model", "quality", "cost_per_1k"} <= set(ref)
    for entry in results["routers"].values():
        assert {
            "curve",
            "auc",
            "cost_reduction_at_1pct_drop",
            "quality_at_reference_cost",
            "decision_latency_ms_p50",
        } <= set(entry)
        assert 0.0 <= entry["cost_reduction_at_1pct_drop"] <= 1.0
        assert entry["quality_at_reference_cost"] >= ref["quality"] - 1e-9  # every sweep reaches the reference
    assert results["routers"]["oracle"]["auc"] >= max(e["auc"] for e in results["routers"].values())
    assert (out / "curves.png").stat().st_size > 10_000
    assert "| best-route |" in done.stdout


def _eval_results(data: Path, out: Path, routers: str, *flags: str) -> dict:
    """Run `bestroute eval` on ``data`` and read its results.json, refusing NaN or Infinity."""
    done = bestroute(
        "eval", "--data", str(data), "--out", str(out), "--features", "lexical", "--routers", routers, *flags
    )
    assert done.returncode == 0, done.stderr

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads((out / "results.json").read_text(), parse_constant=refuse)


def test_eval_on_sparse_data_compares_only_where_the_reference_answered(subset_dir, tmp_path):
    """Logged traffic is sparse: no model answered every prompt. The reference is then the best
    of the models that answered at least 80%, and the metrics use only the prompts it answered."""
    from bestroute.data import load_dataset, split_prompts

    prompts, responses, models = read_native(subset_dir)
    # Each model drops a different tenth of the prompts (by position), so none is complete.
    names = sorted({r["model"] for r in responses})
    prompt_ids = sorted({r["prompt_id"] for r in responses})
    position = {pid: i for i, pid in enumerate(prompt_ids)}
    kept = [r for r in responses if position[r["prompt_id"]] % 10 != names.index(r["model"])]
    sparse = write_native(tmp_path / "sparse", prompts, kept, models)
    results = _eval_results(sparse, tmp_path / "eval", "best-route,n-label,oracle")

    data = load_dataset(sparse)
    split = split_prompts(data.prompt_ids, seed=0)
    ref = data.models.index(results["reference"]["model"])
    answered = data.available[:, ref]
    assert not data.available.all(axis=0).any()
    left_out = (~answered[split.val]).sum() + (~answered[split.test]).sum()
    assert results["split"]["left_out_without_reference"] == left_out > 0
    assert results["split"]["test"] == answered[split.test].sum()
    test = split.test[answered[split.test]]
    assert results["reference"]["quality"] == pytest.approx(data.quality[test, ref, 0].mean())
    for entry in results["routers"].values():
        assert 0.0 < entry["auc"] <= 1.0
        assert entry["quality_at_reference_cost"] is not None


def test_eval_refuses_a_reference_with_nothing_to_save(subset_dir, tmp_path):
    done = bestroute(
        "eval",
        "--data",
        str(subset_dir),
        "--out",
        str(tmp_path / "e"),
        "--features",
        "lexical",
        "--routers",
        "random",
        "--reference",
        "gemma-2-2b-it",
    )
    assert done.returncode == 2, done.stdout
    assert done.stderr.splitlines()[-1].startswith("error: the reference gemma-2-2b-it costs")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("degenerate", ["constant quality", "identical prompts"])
def test_eval_survives_degenerate_data(degenerate, subset_dir, tmp_path):
    """Unseen data can be degenerate: every answer right (nothing to learn, everything to save),
    or one prompt text for every prompt (features carry no signal)."""
    prompts, responses, models = read_native(subset_dir)
    if degenerate == "constant quality":
        responses = [r | {"quality": 1.0} for r in responses]
    else:
        prompts = [p | {"prompt": "What is 2 + 2?"} for p in prompts]
    data = write_native(tmp_path / "data", prompts, responses, models)
    # without the domain guard, whose flagged prompts would go to the reference
    results = _eval_results(data, tmp_path / "eval", "best-route,knn,mf,n-label,oracle", "--no-guard")
    for name, entry in results["routers"].items():
        assert entry["out_of_domain_share"] is None, name
        assert 0.0 <= entry["auc"] <= 1.0 and 0.0 <= entry["cost_reduction_at_1pct_drop"] <= 1.0, name
    if degenerate == "constant quality":  # the cheapest model is as good as the reference
        ref = results["reference"]
        assert results["routers"]["best-route"]["cost_reduction_at_1pct_drop"] == pytest.approx(
            1 - ref["cheapest_cost_per_1k"] / ref["cost_per_1k"], abs=1e-3
        )


def test_help_shows_no_value_after_flags_and_says_the_defaults():
    """A flag's help must not read as if it took a value (`--once <bool>`); route's help says how
    it routes without a knob and that pruned options are not listed."""
    for command in (("demo",), ("route",), ("serve",), ("log", "stats"), ("data", "describe")):
        done = bestroute(*command, "--help")
        assert done.returncode == 0, done.stderr
        assert "<bool>" not in done.stdout and "BOOLEAN" not in done.stdout, (command, done.stdout)
    route = " ".join(bestroute("route", "--help").stdout.split())
    assert "--min-quality 0.99" in route and "pruned" in route and "per 1k" in route


def test_describe_shows_model_names_whole_at_any_width(zeroeval_dir):
    names = json.loads(bestroute("data", "describe", str(zeroeval_dir), "--json").stdout)["models"]
    longest = max((row["model"] for row in names), key=len)
    assert len(longest) > 25
    narrow = subprocess.run(
        [sys.executable, "-m", "bestroute", "data", "describe", str(zeroeval_dir)],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "60"},
        check=True,
    )
    assert all(row["model"] in narrow.stdout for row in names)


def test_route_prints_costs_per_1k_prompts_like_explain(artifact):
    done = bestroute("route", str(artifact), "What is 2+2?", "--threshold", "1")
    decision = json.loads(bestroute("route", str(artifact), "What is 2+2?", "--threshold", "1", "--json").stdout)
    assert f"expected cost per 1k prompts: ${1000 * decision['expected_cost_usd']:.4f}" in done.stdout
    assert "expected cost per 1k ($)" in done.stdout


def test_a_reward_model_passed_as_a_router_is_named_as_such(subset_dir, tmp_path):
    reward = tmp_path / "reward.bestroute"
    assert (
        bestroute("train-reward", "--data", str(subset_dir), "--features", "lexical", "--out", str(reward)).returncode
        == 0
    )
    done = bestroute("route", str(reward), "hi")
    assert done.returncode == 2
    assert done.stderr == (
        f"error: {reward}: not a router artifact (it is a bestroute-reward-model artifact); "
        "a reward model is a selector: --selector reward-model:PATH\n"
    )


def test_eval_reports_progress_over_every_fit(subset_dir):
    from bestroute import evaluate, load_dataset

    seen: list[tuple[str, int, int]] = []
    evaluate(
        load_dataset(subset_dir),
        routers=["best-route", "knn"],
        features="lexical",
        progress=lambda what, done, total: seen.append((what, done, total)),
    )
    totals = {total for _, _, total in seen}
    assert len(totals) == 1
    (total,) = totals
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)  # never goes back
    assert seen[0][:2] == ("features", 0) and seen[-1] == ("done", total, total)
    assert {what for what, _, _ in seen} >= {"best-route: fitting", "knn: fitting", "knn: test sweep"}


def _on_a_terminal(*args: str) -> tuple[int, str]:
    """Run `bestroute ARGS` with a pseudo-terminal as stdout and stderr: (exit status, output)."""
    import pty

    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "bestroute", *args],
        stdout=secondary,
        stderr=secondary,
        env=os.environ | {"COLUMNS": "160", "TERM": "xterm"},
    )
    os.close(secondary)
    output = bytearray()
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    return process.wait(timeout=600), output.decode(errors="replace")


def test_train_and_eval_show_progress_on_a_terminal_and_none_in_a_pipe(subset_dir, tmp_path):
    train = ["train", "--data", str(subset_dir), "--features", "lexical", "--selector", "consensus"]
    status, shown = _on_a_terminal(*train, "--out", str(tmp_path / "r"))
    assert status == 0, shown
    assert "train best-route" in shown and "fitting on" in shown and "saved best-route router" in shown
    status, shown = _on_a_terminal(
        "eval", "--data", str(subset_dir), "--features", "lexical", "--routers", "knn", "--out", str(tmp_path / "e")
    )
    assert status == 0, shown
    assert "knn: fitting" in shown and "/" in shown
    piped = bestroute(*train, "--out", str(tmp_path / "r"))
    assert piped.returncode == 0 and piped.stderr == ""


def test_the_installer_says_what_it_does_and_the_demo_directory_is_not_tracked():
    """The install printed nothing for minutes (pip --quiet): each step is announced and pip's
    own progress is shown. CI runs the installer itself (.ci/run); here its text and usage."""
    root = Path(__file__).resolve().parents[1]
    script = (root / "scripts" / "install.sh").read_text()
    assert "--quiet" not in script and "-q " not in script and "--progress-bar on" in script
    assert script.count('echo "==> ') >= 3
    usage = subprocess.run(
        ["bash", str(root / "scripts" / "install.sh"), "--bogus"], check=False, capture_output=True, text=True
    )
    assert usage.returncode == 2 and usage.stderr.startswith("usage: bash scripts/install.sh")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "bestroute-demo/summary.json"], cwd=root, capture_output=True, check=False
    )
    assert ignored.returncode == 0  # a run of the demo leaves nothing for git to pick up
