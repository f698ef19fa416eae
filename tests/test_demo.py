"""`bestroute demo`: the README's main command, end to end: real LLMs' recorded answers routed
through the gateway by replay backends, and (`--local`) the loop on the real local models."""

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from servers import free_port

from bestroute import load_dataset, split_prompts
from bestroute.data import zeroeval_slice_path
from bestroute.routers import load_router


def test_the_demo_routes_held_out_prompts_as_offline_evaluation_does(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "bestroute", "demo", "--once", "--out", str(out), "--port", str(free_port())],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    test = split_prompts(load_dataset(zeroeval_slice_path()).prompt_ids).test
    assert summary["requests"] == len(test)
    for key in ("accuracy", "cost_per_1k", "escalation_rate"):  # the gateway decided and paid as offline
        assert summary["routed"][key] == pytest.approx(summary["offline"][key], rel=1e-9, abs=1e-12), key
    assert summary["routed"]["cost_per_1k"] < summary["reference"]["cost_per_1k"]
    assert summary["cheapest"]["cost_per_1k"] < summary["routed"]["cost_per_1k"]
    assert "the same figures." in run.stdout and "| routed by bestroute |" in run.stdout
    with sqlite3.connect(out / "decisions.db") as db:
        statuses = [r[0] for r in db.execute("SELECT status FROM decisions")]
        feedback = db.execute("SELECT COUNT(*), AVG(quality) FROM feedback").fetchone()
    assert statuses == [200] * len(test)
    assert feedback[0] == len(test) and feedback[1] == pytest.approx(summary["routed"]["accuracy"])


def test_sigterm_stops_the_demo_and_its_servers(tmp_path):
    out, port = tmp_path / "demo", free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "bestroute", "demo", "--out", str(out), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "summary.json").exists():  # the summary is written, then it keeps serving
            assert demo.poll() is None and time.monotonic() < deadline, demo.stderr.read() if demo.stderr else ""
            time.sleep(0.5)
        replay_port = int(
            yaml.safe_load((out / "gateway.yaml").read_text())["backends"][0]["base_url"].split(":")[2][:-3]
        )
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0
    finally:
        demo.kill()
    for taken in (port, replay_port):  # nothing is left holding a port
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", taken)) != 0


@pytest.mark.llama
def test_the_local_demo_trains_evaluates_and_answers_through_the_gateway(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "bestroute", "demo", "--local", "--once", "--out", str(out), "--port", str(free_port())],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]

    # Evaluation: best-of-n options are used and never lower the quality reachable at the
    # reference's cost below the n = 1 router's (on this 21-prompt test split they tie; five
    # seeds are in docs/results.md).
    bon = json.loads((out / "eval" / "results.json").read_text())["routers"]["best-route"]
    single = json.loads((out / "eval-n1" / "results.json").read_text())["routers"]["best-route"]
    assert max(bon["best_of_n_share"]) > 0
    assert max(single["best_of_n_share"]) == 0
    assert bon["quality_at_reference_cost"] >= single["quality_at_reference_cost"]

    # Every demo question was answered through the gateway and logged, with the option the saved
    # router picks for it at the served threshold, and with that option's scores.
    assert run.stdout.count("\nQ: ") == 4
    with sqlite3.connect(out / "decisions.db") as db:
        rows = db.execute(
            "SELECT requested_model, model, n, status, response, prompt, threshold, scores "
            "FROM decisions ORDER BY created_at"
        ).fetchall()
    assert len(rows) == 4
    assert all(r[0] == "bestroute" and r[3] == 200 and r[4] is not None for r in rows)
    threshold = yaml.safe_load((out / "gateway.yaml").read_text())["threshold"]
    assert {r[6] for r in rows} == {threshold}
    router = load_router(out / "router.bestroute")
    offline = router.route([r[5] for r in rows], knob=threshold)
    assert [(r[1], r[2]) for r in rows] == [(d["model"], d["n"]) for d in offline]
    active = [o.label for o, kept in zip(router.options_, router.active_, strict=True) if kept]
    for row, decision in zip(rows, offline, strict=True):  # the log keeps the options it could pick
        assert json.loads(row[7]) == pytest.approx({label: decision["scores"][label] for label in active}, abs=1e-5)


def test_demo_fails_fast_on_a_taken_port(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "bestroute", "demo", "--once", "--out", str(tmp_path / "d"), "--port", str(port)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 2
    assert run.stderr == f"error: port {port} is in use; choose another with --port\n"
    assert not (tmp_path / "d").exists()  # nothing was trained or written
