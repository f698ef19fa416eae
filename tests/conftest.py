import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bestroute import BestRouteRouter, load_dataset, split_prompts
from bestroute.data import ModelPrice, write_routing_data

if TYPE_CHECKING:
    from servers import LlamaServer

ZEROEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "zeroeval"
SUBSET_MODELS = [
    "gpt-4o-2024-08-06",
    "gpt-4o-mini-2024-07-18",
    "gemini-1.5-flash",
    "deepseek-v2.5-0908",
    "gemma-2-2b-it",
    "deepseek-chat",
]


@pytest.fixture(scope="session")
def zeroeval_dir() -> Path:
    assert ZEROEVAL.is_dir(), f"routing data expected at {ZEROEVAL}"
    return ZEROEVAL


def bestroute(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line, run as a user runs it (wide columns, so tables do not wrap)."""
    return subprocess.run(
        [sys.executable, "-m", "bestroute", *args],
        check=False,
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
        timeout=600,
    )


def write_native(directory: Path, prompts: list[dict], responses: list[dict], models: dict) -> Path:
    return write_routing_data(directory, prompts, responses, {m: ModelPrice(**p) for m, p in models.items()})


def read_native(directory: Path) -> tuple[list[dict], list[dict], dict]:
    """Prompts, responses and the price catalog of a directory written by ``write_native``."""
    prompts = [json.loads(line) for line in (directory / "prompts.jsonl").open()]
    with gzip.open(directory / "responses.jsonl.gz", "rt") as handle:
        responses = [json.loads(line) for line in handle]
    return prompts, responses, json.loads((directory / "models.json").read_text())["models"]


@pytest.fixture(scope="session")
def subset_dir(tmp_path_factory: pytest.TempPathFactory, zeroeval_dir: Path) -> Path:
    """A real slice of the zeroeval data: 150 gsm and 150 crux prompts, six models."""
    prompts = [json.loads(line) for line in (zeroeval_dir / "prompts.jsonl").open()]
    chosen = [p for p in prompts if p["task"] == "gsm"][:150] + [p for p in prompts if p["task"] == "crux"][:150]
    ids = {p["prompt_id"] for p in chosen}
    with gzip.open(zeroeval_dir / "responses.jsonl.gz", "rt") as handle:
        responses = [r for r in map(json.loads, handle) if r["prompt_id"] in ids and r["model"] in SUBSET_MODELS]
    models = json.loads((zeroeval_dir / "models.json").read_text())["models"]
    return write_native(tmp_path_factory.mktemp("subset"), chosen, responses, {m: models[m] for m in SUBSET_MODELS})


@pytest.fixture(scope="session")
def multisample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hand-made data with four samples per prompt and model and known best-of-n labels.

    On every prompt, model "small" answers 42, 42, 7, 9 with qualities 1, 1, 0, 0 and model
    "big" (the reference) answers 42 then 5 with qualities 1, 0; "tiny" is always wrong.
    Prompts alternate between two phrasings so routers have something to learn.
    """
    prompts, responses = [], []
    for i in range(60):
        text = f"What is six times seven? (variant {i})" if i % 2 else f"Name the answer to everything, case {i}."
        prompts.append({"prompt_id": f"p{i}", "prompt": text, "task": "toy", "reference": "42"})
        for sample, (answer, quality) in enumerate([("42", 1.0), ("42", 1.0), ("7", 0.0), ("9", 0.0)]):
            responses.append(
                {
                    "prompt_id": f"p{i}",
                    "model": "small",
                    "sample": sample,
                    "quality": quality,
                    "input_tokens": 10,
                    "output_tokens": 5,
                    "response": f'{{"reasoning": "...", "answer": "{answer}"}}',
                }
            )
            responses.append(
                {
                    "prompt_id": f"p{i}",
                    "model": "tiny",
                    "sample": sample,
                    "quality": 0.0,
                    "input_tokens": 10,
                    "output_tokens": 5,
                    "response": "I think 3",
                }
            )
        for sample, (answer, quality) in enumerate([("42", 1.0), ("5", 0.0)]):
            responses.append(
                {
                    "prompt_id": f"p{i}",
                    "model": "big",
                    "sample": sample,
                    "quality": quality,
                    "input_tokens": 10,
                    "output_tokens": 20,
                    "response": f"The answer is {answer}",
                }
            )
    models = {
        "small": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2},
        "tiny": {"input_usd_per_mtok": 0.01, "output_usd_per_mtok": 0.02},
        "big": {"input_usd_per_mtok": 5.0, "output_usd_per_mtok": 15.0},
    }
    return write_native(tmp_path_factory.mktemp("multisample"), prompts, responses, models)


@pytest.fixture(scope="session")
def artifact(multisample_dir, tmp_path_factory) -> Path:
    """A router over small (cheap; options n = 1..3), tiny (no backend) and big (the reference).
    It has no domain guard: the tests send it prompts unlike its training ones (test_guard's
    routers have one)."""
    data = load_dataset(multisample_dir)
    split = split_prompts(data.prompt_ids)
    router = BestRouteRouter(features="lexical", max_n=3, prune_dominated=False, domain_quantile=None).fit(
        data, split.train, split.val
    )
    path = tmp_path_factory.mktemp("router") / "router.bestroute"
    router.save(path)
    return path


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> Iterator[str]:
    """A real PostgreSQL server (pgserver ships its binaries in a wheel)."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    server.cleanup()


@pytest.fixture
def llama() -> Iterator["LlamaServer"]:
    """SmolLM2-135M under llama.cpp's server, started as users start it (`bestroute local serve`)."""
    from servers import LlamaServer, smollm2_gguf

    server = LlamaServer(smollm2_gguf())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def log_url(request, tmp_path) -> str:
    """A decision log's URL: an SQLite file, or the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/log.db"
    return request.getfixturevalue("postgres_url")


# Tests are marked by the real servers they need, so `-m "not slow and not postgres and not llama"`
# runs the fast set.
_MARKS_BY_FIXTURE = {"postgres_url": "postgres", "llama": "llama"}
_SLOW_FILES = {"test_demo.py", "test_fuzz.py", "test_reload.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, mark in _MARKS_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, mark))
        if "real_local_model" in item.name:  # loads a GGUF model in process
            item.add_marker(pytest.mark.llama)
        if item.path.name in _SLOW_FILES or "sigterm" in item.name or "subprocess" in item.name:
            item.add_marker(pytest.mark.slow)
