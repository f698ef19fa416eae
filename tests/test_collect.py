"""bestroute collect against real loopback upstreams, including a SIGKILL mid-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from servers import Script, ServerThread, fake_upstream, reward_model

from bestroute import load_dataset
from bestroute.collection import check_reference, read_prompts


@pytest.mark.parametrize(
    ("response", "reference", "check", "expected"),
    [
        ("The answer is 12.", "12", "numeric", True),
        ("It is 1,200 dollars", "1200", "numeric", True),
        ("13 or maybe 12", "12", "numeric", False),
        ('{"answer": "Paris"}', "paris", "exact", True),
        ("[(1, 2)]", "[(1,2)]", "literal", True),
        ("[(1, 3)]", "[(1,2)]", "literal", False),
        ("The opposite is closed.", "closed?|shut", "regex", True),
        ("Paris is the capital.", "Paris", "contains", True),
        ("Parisian food", "Paris", "contains", False),
        ("Yes, it is. No doubt.", "yes", "yesno", True),
        ("No.", "yes", "yesno", False),
    ],
)
def test_reference_checks(response, reference, check, expected):
    assert check_reference(response, reference, check) is expected


def _prompt_file(path: Path, count: int, *, bad_lines: bool = True) -> Path:
    lines = [
        json.dumps({"prompt_id": f"q{i}", "prompt": f"What is {i} + 1?", "reference": str(i + 1), "check": "numeric"})
        for i in range(count)
    ]
    if bad_lines:
        lines.insert(2, "{not json")
        lines.insert(4, json.dumps({"prompt": "no reference"}))
        lines.insert(5, json.dumps({"prompt": "bad check", "reference": "1", "check": "vibes"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(path: Path, backends: dict[str, str]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "backends": [
                    {"name": n, "base_url": url + "/v1", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}
                    for n, url in backends.items()
                ],
                "retries": {"attempts": 2, "backoff_s": 0.01},
            }
        )
    )
    return path


def _collect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bestroute", "collect", *args], check=False, capture_output=True, text=True, timeout=300
    )


def _keys(out: Path) -> list[tuple[str, str, int]]:
    return [(r["prompt_id"], r["model"], r["sample"]) for r in map(json.loads, (out / "responses.jsonl").open())]


def test_prompt_file_bad_lines_are_reported_with_line_numbers(tmp_path):
    prompts, bad = read_prompts(_prompt_file(tmp_path / "p.jsonl", 5), needs_reference=True)
    assert [p["prompt_id"] for p in prompts] == [f"q{i}" for i in range(5)]
    assert [b.split(": ", 1)[0].rsplit(":", 1)[1] for b in bad] == ["3", "5", "6"]
    assert "invalid JSON" in bad[0] and "reference" in bad[1] and "check" in bad[2]


def test_collect_scores_counts_and_writes_loadable_data(tmp_path):
    good = Script(answers=["The answer is 1.", "It is 2", "3"])
    with_server = [
        ServerThread(fake_upstream(good)).start(),
        ServerThread(fake_upstream(Script(answers=["1"]))).start(),
    ]
    try:
        config = _config(tmp_path / "c.yaml", {"a": with_server[0].url, "b": with_server[1].url})
        done = _collect(
            "--prompts",
            str(_prompt_file(tmp_path / "p.jsonl", 4)),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "out"),
            "--samples",
            "3",
            "--max-tokens",
            "8",
        )
    finally:
        for server in with_server:
            server.stop()
    assert done.returncode == 0, done.stderr
    assert "p.jsonl:3: invalid JSON" in done.stderr and "skipped" in done.stderr
    assert "24 samples written" in done.stdout
    data = load_dataset(tmp_path / "out")
    assert data.quality.shape == (4, 2, 3)
    b = data.model_index("b")
    # Model b always answers "1": right only for q0 (reference 1).
    assert data.quality[:, b, :].tolist() == [[1.0] * 3] + [[0.0] * 3] * 3
    assert data.input_tokens[0, b] == 10 and data.output_tokens[0, b, 0] == 5
    assert data.single_sample_cost()[0, b] == pytest.approx((10 * 1 + 5 * 2) / 1e6)


def test_budget_stops_and_a_rerun_finishes(tmp_path):
    server = ServerThread(fake_upstream(Script(answers=["1"]))).start()
    try:
        config = _config(tmp_path / "c.yaml", {"a": server.url})
        args = [
            "--prompts",
            str(_prompt_file(tmp_path / "p.jsonl", 10, bad_lines=False)),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "out"),
            "--samples",
            "2",
            "--concurrency",
            "1",
        ]
        first = _collect(*args, "--budget-tokens", "60")  # 15 tokens a sample: stops after 4
        assert first.returncode == 0 and "stopped at the budget" in first.stdout
        assert len(_keys(tmp_path / "out")) == 4
        second = _collect(*args)
        assert "16 samples written, 4 already there" in second.stdout
    finally:
        server.stop()
    assert sorted(_keys(tmp_path / "out")) == sorted((f"q{i}", "a", s) for i in range(10) for s in range(2))


def test_stop_sequences_are_sent_and_the_reference_is_named(tmp_path):
    script = Script(answers=["1"])
    server = ServerThread(fake_upstream(script)).start()
    try:
        config = _config(tmp_path / "c.yaml", {"a": server.url, "b": server.url})
        args = ["--prompts", str(_prompt_file(tmp_path / "p.jsonl", 2, bad_lines=False)), "--config", str(config)]
        refused = _collect(*args, "--out", str(tmp_path / "no"), "--reference", "c")
        done = _collect(*args, "--out", str(tmp_path / "out"), "--samples", "1", "--stop", "\nQ:", "--reference", "b")
    finally:
        server.stop()
    assert refused.returncode == 2 and "the reference 'c' is not one of the arms sampled (a, b)" in refused.stderr
    assert not (tmp_path / "no" / "responses.jsonl").exists()
    assert done.returncode == 0, done.stderr
    assert [body["stop"] for body in script.bodies] == [["\nQ:"]] * 4
    assert load_dataset(tmp_path / "out").reference_model == "b"


def test_a_run_over_other_models_keeps_the_catalog_it_resumes(tmp_path):
    server = ServerThread(fake_upstream(Script(answers=["1"]))).start()
    try:
        config = _config(tmp_path / "c.yaml", {"a": server.url, "b": server.url})
        args = ["--prompts", str(_prompt_file(tmp_path / "p.jsonl", 2, bad_lines=False)), "--config", str(config)]
        args += ["--out", str(tmp_path / "out"), "--samples", "1"]
        assert _collect(*args, "--models", "a", "--reference", "a").returncode == 0
        assert _collect(*args, "--models", "b").returncode == 0  # the second run samples b only
    finally:
        server.stop()
    data = load_dataset(tmp_path / "out")  # a's responses still have their price
    assert data.models == ["a", "b"] and data.reference_model == "a"


def test_the_checkable_prompts_are_the_generators_and_their_checks_refuse_an_echo(tmp_path):
    """datasets/checkable/prompts.jsonl is what scripts/make_checkable_prompts.py writes; each
    prompt's own answer passes its check, and repeating the question does not."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "prompts.jsonl"
    made = subprocess.run(
        [sys.executable, str(root / "scripts" / "make_checkable_prompts.py"), "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    assert out.read_text() == (root / "datasets" / "checkable" / "prompts.jsonl").read_text()
    rows = [json.loads(line) for line in out.open()]
    assert len(rows) == 610 and len({r["prompt"] for r in rows}) == 610
    for row in rows:
        assert check_reference(row["answer"], row["reference"], row["check"]), row
        question = row["prompt"].rsplit("Q: ", 1)[-1].removesuffix("\nA:")
        if row["task"] in ("yes-no", "extraction", "dates"):
            assert not check_reference(question, row["reference"], row["check"]), row


def test_failures_are_not_written_and_are_retried_next_run(tmp_path):
    script = Script(answers=["1"], always=500)
    server = ServerThread(fake_upstream(script)).start()
    try:
        config = _config(tmp_path / "c.yaml", {"a": server.url})
        args = [
            "--prompts",
            str(_prompt_file(tmp_path / "p.jsonl", 3, bad_lines=False)),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "out"),
            "--samples",
            "2",
        ]
        first = _collect(*args)
        assert first.returncode == 0 and "0 samples written" in first.stdout and "6 failed" in first.stdout
        script.always = None
        second = _collect(*args)
        assert "6 samples written" in second.stdout
    finally:
        server.stop()


def test_reward_and_judge_scorers(tmp_path):
    upstream = ServerThread(fake_upstream(Script(answers=["good answer", "bad answer"]))).start()
    judge = ServerThread(fake_upstream(Script(answers=["7"]))).start()
    reward = ServerThread(reward_model(prefer="good")).start()
    try:
        config = _config(tmp_path / "c.yaml", {"a": upstream.url, "judge": judge.url})
        prompts = _prompt_file(tmp_path / "p.jsonl", 2, bad_lines=False)
        done = _collect(
            "--prompts",
            str(prompts),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "r"),
            "--models",
            "a",
            "--samples",
            "2",
            "--scorer",
            "reward",
            "--reward-url",
            reward.url + "/score",
            "--concurrency",
            "1",
        )
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in (tmp_path / "r" / "responses.jsonl").open()]
        assert sorted(r["quality"] for r in rows) == [0.0, 0.0, 1.0, 1.0]
        assert all((r["quality"] == 1.0) == r["response"].startswith("good") for r in rows)
        done = _collect(
            "--prompts",
            str(prompts),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "j"),
            "--models",
            "a",
            "--samples",
            "1",
            "--scorer",
            "judge",
            "--judge",
            "judge",
        )
        assert done.returncode == 0, done.stderr
        assert [json.loads(line)["quality"] for line in (tmp_path / "j" / "responses.jsonl").open()] == [0.7, 0.7]
        bad = _collect(
            "--prompts",
            str(prompts),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "x"),
            "--scorer",
            "judge",
            "--judge",
            "nobody",
        )
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    finally:
        for server in (upstream, judge, reward):
            server.stop()


def test_sigkill_mid_run_then_resume_gives_every_sample_exactly_once(tmp_path):
    script = Script(answers=["1", "2"], delay_s=0.05)  # ~50 ms a sample: the run takes seconds
    server = ServerThread(fake_upstream(script)).start()
    try:
        config = _config(tmp_path / "c.yaml", {"a": server.url, "b": server.url})
        prompts = _prompt_file(tmp_path / "p.jsonl", 20, bad_lines=False)
        args = ["--prompts", str(prompts), "--config", str(config), "--samples", "3", "--concurrency", "2"]
        reference = _collect(*args, "--out", str(tmp_path / "whole"))
        assert reference.returncode == 0, reference.stderr
        out = tmp_path / "killed"
        process = subprocess.Popen(
            [sys.executable, "-m", "bestroute", "collect", *args, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        responses = out / "responses.jsonl"
        deadline = time.monotonic() + 60
        while not (responses.exists() and responses.read_text().count("\n") >= 30):
            assert time.monotonic() < deadline and process.poll() is None, "collect finished or stalled"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        partial = len(_keys(out))
        assert 30 <= partial < 120
        with responses.open("a") as handle:  # as if the kill had cut a line in half
            handle.write('{"prompt_id": "q1", "model": "a", "sam')
        resumed = _collect(*args, "--out", str(out))
        assert resumed.returncode == 0, resumed.stderr
        assert f"{partial} already there" in resumed.stdout
    finally:
        server.stop()
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 120
    assert set(keys) == set(_keys(tmp_path / "whole"))


def test_likelihood_scorer_with_a_real_local_model(tmp_path):
    upstream = ServerThread(
        fake_upstream(Script(answers=["The capital of France is Paris.", "The capital of France is Berlin."]))
    ).start()
    try:
        config = _config(tmp_path / "c.yaml", {"a": upstream.url})
        prompts = tmp_path / "p.jsonl"
        prompts.write_text(json.dumps({"prompt_id": "q", "prompt": "What is the capital of France?"}) + "\n")
        done = _collect(
            "--prompts",
            str(prompts),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "r"),
            "--samples",
            "2",
            "--scorer",
            "likelihood",
            "--likelihood-model",
            "smollm2-135m",
            "--concurrency",
            "1",
        )
        assert done.returncode == 0, done.stderr
        rows = {
            json.loads(line)["response"]: json.loads(line)["quality"]
            for line in (tmp_path / "r" / "responses.jsonl").open()
        }
        # SmolLM2 finds the right answer far likelier than the wrong one; both are probabilities.
        assert 0 < rows["The capital of France is Berlin."] < rows["The capital of France is Paris."] <= 1
        bad = _collect(
            "--prompts",
            str(prompts),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "x"),
            "--scorer",
            "likelihood",
            "--likelihood-model",
            "no-such-model",
        )
        assert bad.returncode == 2 and "unknown local model 'no-such-model'" in bad.stderr
        assert bad.stderr.count("\n") == 1
    finally:
        upstream.stop()
