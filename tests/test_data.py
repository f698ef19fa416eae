import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bestroute, write_native

from bestroute import DataError, load_dataset
from bestroute.data import read_native

PRICES = {"a": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}}


def _prompt(i: int) -> dict:
    return {"prompt_id": f"p{i}", "prompt": f"question {i}"}


def _response(i: int, **overrides) -> dict:
    return {
        "prompt_id": f"p{i}",
        "model": "a",
        "sample": 0,
        "quality": 1.0,
        "input_tokens": 10,
        "output_tokens": 20,
    } | overrides


def test_zeroeval_loads_with_costs_from_prices(zeroeval_dir):
    data = load_dataset(zeroeval_dir)
    assert data.quality.shape == (2119, 51, 1)
    assert int(data.available.sum()) == 85322
    j = data.model_index("gpt-4o-mini-2024-07-18")
    i = int(np.flatnonzero(data.available[:, j])[0])
    price = data.prices["gpt-4o-mini-2024-07-18"]
    expected = (
        data.input_tokens[i, j] * price.input_usd_per_mtok + data.output_tokens[i, j, 0] * price.output_usd_per_mtok
    ) / 1e6
    assert math.isclose(data.single_sample_cost()[i, j], expected)
    summary = data.describe()
    assert summary["oracle"]["quality"] > max(row["quality"] for row in summary["models"])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"quality": float("nan")}, "quality"),
        ({"quality": 1.5}, "quality"),
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"prompt_id": "p99"}, "unknown prompt_id 'p99'"),
        ({"input_tokens": -1}, "input_tokens"),
    ],
)
def test_bad_response_names_file_and_line(tmp_path, bad, message):
    responses = [_response(0), _response(1), _response(2, **bad)]
    write_native(tmp_path, [_prompt(i) for i in range(3)], responses, PRICES)
    with pytest.raises(DataError) as info:
        read_native(tmp_path)
    assert "responses.jsonl.gz:3" in str(info.value)
    assert message in str(info.value)


def test_missing_field_and_invalid_json(tmp_path):
    write_native(tmp_path, [_prompt(0), {"prompt_id": "p1"}], [_response(0)], PRICES)
    with pytest.raises(DataError, match=r"prompts.jsonl:2: prompt: Field required"):
        read_native(tmp_path)
    (tmp_path / "prompts.jsonl").write_text(json.dumps(_prompt(0)) + "\n{not json\n")
    with pytest.raises(DataError, match=r"prompts.jsonl:2: invalid JSON"):
        read_native(tmp_path)


def test_duplicates_and_missing_files(tmp_path):
    write_native(tmp_path, [_prompt(0), _prompt(0)], [_response(0)], PRICES)
    with pytest.raises(DataError, match=r"prompts.jsonl:2: duplicate prompt_id"):
        read_native(tmp_path)
    write_native(tmp_path, [_prompt(0)], [_response(0), _response(0)], PRICES)
    with pytest.raises(DataError, match=r"responses.jsonl.gz:2: duplicate response"):
        read_native(tmp_path)
    (tmp_path / "models.json").unlink()
    with pytest.raises(DataError, match="models.json"):
        read_native(tmp_path)


def test_csv_and_parquet_read_like_jsonl(tmp_path):
    prompts = [_prompt(i) for i in range(4)]
    responses = [_response(i, quality=i / 4, output_tokens=10 + i) for i in range(4)]
    reference = read_native(write_native(tmp_path / "jsonl", prompts, responses, PRICES))
    for kind in ("csv", "parquet"):
        directory = tmp_path / kind
        directory.mkdir()
        (directory / "models.json").write_text(json.dumps({"models": PRICES}))
        for name, rows in (("prompts", prompts), ("responses", responses)):
            if kind == "csv":
                with (directory / f"{name}.csv").open("w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                pq.write_table(pa.Table.from_pylist(rows), directory / f"{name}.parquet")
        data = read_native(directory)
        np.testing.assert_array_equal(data.quality, reference.quality)
        np.testing.assert_allclose(data.output_cost, reference.output_cost)
        assert data.texts == reference.texts


def test_csv_error_line_counts_the_header(tmp_path):
    (tmp_path / "models.json").write_text(json.dumps({"models": PRICES}))
    (tmp_path / "prompts.csv").write_text("prompt_id,prompt\np0,hello\np1,world\n")
    (tmp_path / "responses.csv").write_text(
        "prompt_id,model,sample,quality,input_tokens,output_tokens\np0,a,0,1,3,4\np1,a,0,2,3,4\n"
    )
    with pytest.raises(DataError, match=r"responses.csv:3: quality"):
        read_native(tmp_path)


def test_routerbench_wide_format(tmp_path):
    path = tmp_path / "routerbench.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "sample_id",
                "prompt",
                "eval_name",
                "gpt-4",
                "gpt-4|total_cost",
                "gpt-4|model_response",
                "mistral",
                "mistral|total_cost",
                "mistral|model_response",
            ]
        )
        writer.writerow(["s1", "['What is 2+2?']", "math", 1.0, 0.003, "4", 0.0, 0.0001, "5"])
        writer.writerow(["s2", "Capital of France?", "qa", 1.0, 0.002, "Paris", 1.0, 0.0002, "Paris"])
    data = load_dataset(path)
    assert data.models == ["gpt-4", "mistral"]
    assert data.texts[0] == "What is 2+2?"
    np.testing.assert_allclose(data.single_sample_cost(), [[0.003, 0.0001], [0.002, 0.0002]])
    np.testing.assert_array_equal(data.quality[:, :, 0], [[1.0, 0.0], [1.0, 1.0]])
    path.write_text("sample_id,prompt\ns1,hi\n")
    with pytest.raises(DataError, match="not a RouterBench table"):
        load_dataset(path)


def test_cli_describe(zeroeval_dir, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "bestroute", "data", "describe", str(zeroeval_dir)],
        check=False,
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )
    assert ok.returncode == 0, ok.stderr
    assert "claude-3-5-sonnet-20241022" in ok.stdout and "per-prompt oracle" in ok.stdout
    write_native(tmp_path, [_prompt(0)], [_response(0, quality=2)], PRICES)
    bad = subprocess.run(
        [sys.executable, "-m", "bestroute", "data", "describe", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    assert "responses.jsonl.gz:1: quality" in bad.stderr


def test_a_sample_reads_about_its_fraction_of_the_prompts_and_only_their_responses(zeroeval_dir, tmp_path):
    whole = load_dataset(zeroeval_dir)
    half, quarter = load_dataset(zeroeval_dir, sample=0.5), load_dataset(zeroeval_dir, sample=0.25)
    assert abs(half.n_prompts / whole.n_prompts - 0.5) < 0.05
    assert abs(quarter.n_prompts / whole.n_prompts - 0.25) < 0.05
    assert set(quarter.prompt_ids) <= set(half.prompt_ids) <= set(whole.prompt_ids)  # nested samples
    rows = {pid: i for i, pid in enumerate(whole.prompt_ids)}
    picked = [rows[pid] for pid in quarter.prompt_ids]
    assert quarter.models == whole.models
    assert np.array_equal(quarter.quality, whole.quality[picked], equal_nan=True)
    assert load_dataset(zeroeval_dir, sample=1.0).prompt_ids == whole.prompt_ids
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(DataError, match="a sample is a fraction"):
            load_dataset(zeroeval_dir, sample=bad)
    out = tmp_path / "router.bestroute"
    done = bestroute(
        "train",
        "--data",
        str(zeroeval_dir),
        "--router",
        "knn",
        "--features",
        "lexical",
        "--sample",
        "0.3",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert out.exists()
    wrong = bestroute("train", "--data", str(zeroeval_dir), "--sample", "2", "--out", str(out))
    assert wrong.returncode != 0 and len(wrong.stderr.strip().splitlines()) == 1
