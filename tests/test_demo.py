"""`bestroute demo`: the README's main command, end to end on the real local models."""

import json
import sqlite3
import subprocess
import sys

from servers import free_port


def test_demo_trains_evaluates_and_answers_through_the_gateway(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "bestroute", "demo", "--once", "--out", str(out),
                          "--port", str(free_port())], check=False, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]

    # Evaluation: best-of-n options are used and lift the curve above the n = 1 router.
    bon = json.loads((out / "eval" / "results.json").read_text())["routers"]["best-route"]
    single = json.loads((out / "eval-n1" / "results.json").read_text())["routers"]["best-route"]
    assert max(bon["best_of_n_share"]) > 0
    assert max(single["best_of_n_share"]) == 0
    assert bon["quality_at_reference_cost"] > single["quality_at_reference_cost"]

    # Every demo question was answered through the gateway and logged; the router sent at least
    # one to a best-of-n option, which the reward model picked from.
    assert run.stdout.count("\nQ: ") == 4
    with sqlite3.connect(out / "decisions.db") as db:
        rows = db.execute("SELECT requested_model, model, n, status, response FROM decisions").fetchall()
    assert len(rows) == 4
    assert all(r[0] == "bestroute" and r[3] == 200 and r[4] is not None for r in rows)
    assert {r[1] for r in rows} <= {"smollm2-135m", "gemma3-270m"}
    assert max(r[2] for r in rows) > 1
    assert "by reward-model" in run.stdout


def test_demo_fails_fast_on_a_taken_port(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "bestroute", "demo", "--once", "--out", str(tmp_path / "d"),
                              "--port", str(port)], check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr == f"error: port {port} is in use; choose another with --port\n"
    assert not (tmp_path / "d").exists()  # nothing was trained or written
