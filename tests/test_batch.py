"""`bestroute batch route` on a real local Ray instance (issue 26): the same decisions as the
in-process router, and a per-row error for rows it cannot route; files and decision logs
(SQLite and PostgreSQL) by URL."""

import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from conftest import bestroute
from servers import decision, empty_database

from bestroute import BestRouteError, BestRouteRouter, load_dataset, load_router, split_prompts
from bestroute.batch import RESULT_SCHEMA, features_batch, read_features, read_rows, route_batch
from bestroute.features import make_extractor
from bestroute.serving import DecisionLog, logged_prompts


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def guarded_artifact(subset_dir, tmp_path_factory) -> Path:
    """A router on real zeroeval prompts, with its domain guard (so some rows are flagged)."""
    data = load_dataset(subset_dir)
    split = split_prompts(data.prompt_ids)
    router = BestRouteRouter(features="lexical", max_n=3).fit(data, split.train, split.val)
    path = tmp_path_factory.mktemp("batch") / "router.bestroute"
    router.save(path)
    return path


def _decisions(out: Path) -> list[dict]:
    table = pq.read_table(out, schema=RESULT_SCHEMA)
    return table.to_pylist()


def test_ten_thousand_rows_get_the_in_process_decisions(local_ray, guarded_artifact, zeroeval_dir, tmp_path):
    texts = [json.loads(line)["prompt"] for line in (zeroeval_dir / "prompts.jsonl").open()]
    rows = [{"id": f"r{i}", "prompt": f"{texts[i % len(texts)]}\n(request {i})"} for i in range(10_000)]
    rows[7] = {
        "id": "r7",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    }
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    router = load_router(guarded_artifact)
    texts_routed = [row.get("prompt") or "Be brief.\n2+2?" for row in rows]
    # a knob at which the router picks more than one option: the comparison must be able to fail
    knob = next(
        float(k)
        for k in router.knob_grid()
        if len({d["option"] for d in router.route(texts_routed[:500], knob=float(k))}) > 2
    )

    report = route_batch(
        guarded_artifact, source, tmp_path / "out", knob=knob, workers=2, batch_size=700, rows_per_file=2000
    )

    assert (report.routed, report.failed) == (10_000, 0)
    assert len(list((tmp_path / "out").iterdir())) > 2  # the order holds across files too
    got = _decisions(tmp_path / "out")
    expected = router.route(texts_routed, knob=knob)
    assert [g["id"] for g in got] == [row["id"] for row in rows]  # in the input's order
    assert [g["option"] for g in got] == [e["option"] for e in expected]
    assert [g["out_of_domain"] for g in got] == [e["out_of_domain"] for e in expected]
    assert any(e["out_of_domain"] for e in expected) and len({e["option"] for e in expected}) > 2
    for g, e in zip(got, expected, strict=True):
        assert dict(g["scores"]) == pytest.approx(e["scores"])
        assert g["expected_cost_usd"] == e["expected_cost_usd"] and g["knob"] == knob


def test_two_actors_share_one_files_rows(local_ray, tmp_path):
    class Pid:  # defined here, so Ray's workers get it by value (they cannot import this module)
        """An actor that takes 0.1 s a batch and says which process it is."""

        def __call__(self, batch: pa.Table) -> pa.Table:
            time.sleep(0.1)
            return pa.table({"pid": [os.getpid()] * batch.num_rows})

    # One JSONL file is one read task; Ray used to join its output into one block (up to
    # 128 MiB), which one actor then took whole while the other idled.
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": f"{i} " + "word " * 200}) + "\n" for i in range(20_000)))
    rows = read_rows(source)
    assert rows.materialize().num_blocks() >= 10  # ~20 MB in blocks of about BLOCK_BYTES
    pids = Counter(
        pid
        for batch in rows.map_batches(
            Pid, batch_size=700, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=2)
        ).iter_batches(batch_format="pyarrow", batch_size=None)
        for pid in batch.column("pid").to_pylist()
    )
    assert sum(pids.values()) == 20_000 and len(pids) == 2
    assert min(pids.values()) >= 2_000, pids  # each actor routed a share, not a stray batch


def test_malformed_rows_get_an_error_column_not_a_failed_job(local_ray, guarded_artifact, tmp_path):
    lines = [
        json.dumps({"id": 1, "prompt": "What is 6 times 7?"}),
        json.dumps({"id": 2}),
        json.dumps({"id": 3, "prompt": 12}),
        json.dumps({"id": 4, "prompt": "   "}),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"id": 7, "messages": [{"role": "wizard", "content": "hi"}]}),
        json.dumps({"id": 8, "messages": "hello"}),
        "\xff\xfe{",  # not UTF-8
        json.dumps({"id": 10, "prompt": "Sort [3, 1, 2] in Python."}),
    ]
    source = tmp_path / "bad.jsonl"
    source.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    report = route_batch(guarded_artifact, source, tmp_path / "out")
    got = _decisions(tmp_path / "out")
    assert (report.routed, report.failed) == (2, 8)
    assert [g["error"] is None for g in got] == [True] + [False] * 8 + [True]
    assert "no prompt" in got[1]["error"] and "not a string but int" in got[2]["error"]
    assert "empty" in got[3]["error"] and got[4]["error"].startswith("not JSON")
    assert "not a JSON object" in got[5]["error"] and "chat messages" in got[6]["error"]
    assert got[0]["option"] and got[1]["option"] is None and got[2]["id"] == "3"


def test_parquet_with_a_non_string_prompt_column_and_the_cli(local_ray, guarded_artifact, tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["What is 6 times 7?", None]}), tmp_path / "in.parquet")
    report = route_batch(guarded_artifact, tmp_path / "in.parquet", tmp_path / "out")
    assert (report.routed, report.failed) == (1, 1)
    pq.write_table(pa.table({"prompt": [1, 2, 3]}), tmp_path / "ints.parquet")
    done = bestroute(
        "batch", "route", str(guarded_artifact), str(tmp_path / "ints.parquet"), "--out", str(tmp_path / "o2")
    )
    assert done.returncode == 0 and "0 rows routed, 3 with an error" in done.stdout
    assert {g["error"] for g in _decisions(tmp_path / "o2")} == {"prompt is not a string but int"}
    missing = bestroute(
        "batch", "route", str(guarded_artifact), str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o3")
    )
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1
    again = bestroute(
        "batch", "route", str(guarded_artifact), str(tmp_path / "in.parquet"), "--out", str(tmp_path / "o2")
    )
    assert again.returncode != 0 and "not an empty directory" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and len(_decisions(tmp_path / "o2")) == 3  # nothing lost


def test_a_decision_log_by_url_is_routed_in_request_id_order(
    local_ray, guarded_artifact, zeroeval_dir, log_url, tmp_path
):
    url = empty_database(log_url)
    texts = [json.loads(line)["prompt"] for line in (zeroeval_dir / "prompts.jsonl").open()]
    log = DecisionLog(url, dead_letter_path=tmp_path / "dead.jsonl")
    written = [
        decision(f"chatcmpl-{i:06d}", prompt=None if i % 97 == 5 else texts[i % len(texts)], prompt_hash=str(i))
        for i in range(3000)
    ]
    for row in reversed(written):  # logged in another order than the ids'
        log.write(row)
    log.close()

    # Small batches: a write task gets many blocks, which Ray's write_parquet could reorder in a file.
    report = route_batch(guarded_artifact, url, tmp_path / "out", workers=2, batch_size=50)

    unstored = [row.id for row in written if row.prompt is None]
    assert (report.routed, report.failed) == (3000 - len(unstored), len(unstored))
    got = _decisions(tmp_path / "out")
    assert [g["id"] for g in got] == [row.id for row in written]
    stored = [row for row in written if row.prompt is not None]
    expected = load_router(guarded_artifact).route([row.prompt for row in stored])
    by_id = {g["id"]: g for g in got}
    assert [by_id[row.id]["option"] for row in stored] == [e["option"] for e in expected]
    assert {by_id[i]["error"] for i in unstored} == {
        "the decision log stored no prompt for this request (decision_log.store_prompts was off)"
    }

    # Pages by id: rows logged between two pages do not shift them.
    pages = logged_prompts(url, batch=700)
    first = next(pages)
    late = DecisionLog(url, dead_letter_path=tmp_path / "dead.jsonl")
    late.write(decision("chatcmpl-000000a", prompt="late"))  # sorts into the first page's range
    late.close()
    rest = [item for page in pages for item in page]
    assert [i for i, _ in first + rest] == [row.id for row in written]


def test_a_bad_database_url_is_one_line(guarded_artifact, tmp_path):
    done = bestroute(
        "batch", "route", str(guarded_artifact), "postgresql+psycopg://nobody@127.0.0.1:1/none", "--out", str(tmp_path)
    )
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1
    assert "decision_log.url: cannot open" in done.stderr


# ------------------------------------------------------------------ training features


def test_training_features_on_two_workers_are_the_in_process_ones_and_train_on_them(local_ray, subset_dir, tmp_path):
    report = features_batch(
        subset_dir, tmp_path / "vectors", features="static", workers=2, batch_size=32, rows_per_file=100
    )
    data = load_dataset(subset_dir)
    assert (report.prompts, report.dim, report.extractor) == (len(data.prompt_ids), 256, "static")
    assert len(list((tmp_path / "vectors").glob("*.parquet"))) >= 3  # the prompts' order across files
    table = pq.read_table(tmp_path / "vectors")
    assert table.column("prompt_id").to_pylist() == data.prompt_ids
    made = read_features(tmp_path / "vectors", data.prompt_ids, make_extractor("static"))
    np.testing.assert_allclose(made, make_extractor("static").transform(data.texts), atol=1e-6)

    # Trained on them, the artifact decides as one trained on features it made itself.
    with_vectors, without = tmp_path / "with.bestroute", tmp_path / "without.bestroute"
    common = ("train", "--data", str(subset_dir), "--features", "static", "--max-n", "3")
    done = bestroute(*common, "--features-from", str(tmp_path / "vectors"), "--out", str(with_vectors))
    assert done.returncode == 0, done.stderr
    assert bestroute(*common, "--out", str(without)).returncode == 0
    test = [data.texts[i] for i in split_prompts(data.prompt_ids).test]
    got, expected = load_router(with_vectors).route(test), load_router(without).route(test)
    assert [g["option"] for g in got] == [e["option"] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["scores"] == pytest.approx(e["scores"], abs=1e-5)

    # Another extractor's vectors, a prompt they lack, a bad prompts table: one line each.
    lexical = bestroute(
        *common[:-4],
        "--features",
        "lexical",
        "--features-from",
        str(tmp_path / "vectors"),
        "--out",
        str(tmp_path / "x"),
    )
    assert lexical.returncode == 2 and "made by another extractor" in lexical.stderr
    assert len(lexical.stderr.strip().splitlines()) == 1
    with pytest.raises(BestRouteError, match="lack 1 of the data's prompts"):
        read_features(tmp_path / "vectors", [*data.prompt_ids, "unseen"], make_extractor("static"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "prompts.jsonl").write_text('{"prompt_id": "a", "prompt": "hi"}\n{"prompt_id": "b"}\n')
    refused = bestroute("batch", "features", str(bad), "--out", str(tmp_path / "v2"))
    assert refused.returncode == 2 and "prompts.jsonl:2: prompt: Field required" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr  # checked before Ray starts
    again = bestroute("batch", "features", str(subset_dir), "--out", str(tmp_path / "vectors"))
    assert again.returncode == 2 and "not an empty directory" in again.stderr
