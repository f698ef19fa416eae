"""Rows in, decisions out, on Ray Data.

A row is a JSON object (a line of a JSONL file, or a Parquet row) with a ``prompt`` string or
OpenAI ``messages`` (routed on the text the gateway routes on), and optionally an ``id`` that is
copied to the decision; or a logged request of a decision log, read by its database URL (its id
and stored prompt). Each worker loads the artifact once (an actor of ``map_batches``); a
row that cannot be routed gets its reason in the ``error`` column and the job goes on. Reading,
routing and writing stream: memory is flat in the number of rows."""

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pa_dataset
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .._exceptions import BestRouteError
from ..routers import Router, load_router
from ..serving import check_database, logged_prompts
from ..serving.protocol import ChatCompletionRequest
from ._pipeline import check_out, ordered_parquet, start_ray, streamed_source

RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("option", pa.string()),
        ("model", pa.string()),
        ("n", pa.int64()),
        ("knob", pa.float64()),
        ("expected_cost_usd", pa.float64()),
        ("scores", pa.map_(pa.string(), pa.float64())),
        ("out_of_domain", pa.bool_()),
        ("error", pa.string()),
    ]
)
LINE_COLUMN = "__line"  # the JSONL reader's one column: a row's text, parsed by the router actor
_LOGGED = "__logged"  # set on rows read from a decision log
_LINES_PER_BLOCK = 8192
_READ_BYTES = 1 << 20


class _RowError(Exception):
    """Why one row has no decision: written to its ``error`` column."""


def prompt_of(record: Any) -> str:
    """The text a row is routed on; _RowError with the reason when there is none."""
    if not isinstance(record, dict):
        raise _RowError("the row is not a JSON object")
    if "prompt" in record and record["prompt"] is not None:
        prompt = record["prompt"]
        if not isinstance(prompt, str):
            raise _RowError(f"prompt is not a string but {type(prompt).__name__}")
    elif record.get("messages") is not None:
        try:
            prompt = ChatCompletionRequest.model_validate(
                {"model": "bestroute", "messages": record["messages"]}
            ).prompt_text
        except ValidationError as exc:
            raise _RowError(f"messages are not OpenAI chat messages: {exc.errors()[0]['msg']}") from None
    elif record.get(_LOGGED) is not None:
        raise _RowError("the decision log stored no prompt for this request (decision_log.store_prompts was off)")
    else:
        raise _RowError("the row has no prompt and no messages")
    if not prompt.strip():
        raise _RowError("the prompt is empty")
    return prompt


def _records(batch: pa.Table) -> list[Any]:
    if batch.column_names == [LINE_COLUMN]:
        records: list[Any] = []
        for line in batch.column(LINE_COLUMN).to_pylist():
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                records.append(_RowError(f"not JSON: {exc}"))
        return records
    return batch.to_pylist()


class BatchRouter:
    """The ``map_batches`` actor: loads the artifact once, routes a batch of rows per call."""

    def __init__(self, artifact: str, knob: float | None) -> None:
        self.router: Router = load_router(artifact)
        self.knob = self.router.default_knob() if knob is None else self.router.rule.check(knob)

    def __call__(self, batch: pa.Table) -> pa.Table:
        records = _records(batch)
        ids: list[str | None] = []
        errors: list[str | None] = []
        texts: dict[int, str] = {}
        for i, record in enumerate(records):
            ids.append(str(record["id"]) if isinstance(record, dict) and record.get("id") is not None else None)
            try:
                if isinstance(record, _RowError):
                    raise record
                texts[i] = prompt_of(record)
                errors.append(None)
            except _RowError as exc:
                errors.append(str(exc))
        decided = self._route(texts, errors)
        empty: dict[str, Any] = {}
        rows = [decided.get(i, empty) for i in range(len(records))]
        return pa.Table.from_pydict(
            {
                "id": ids,
                "option": [row.get("option") for row in rows],
                "model": [row.get("model") for row in rows],
                "n": [row.get("n") for row in rows],
                "knob": [self.knob if row else None for row in rows],
                "expected_cost_usd": [row.get("expected_cost_usd") for row in rows],
                "scores": [list(row["scores"].items()) if row else None for row in rows],
                "out_of_domain": [row.get("out_of_domain") for row in rows],
                "error": errors,
            },
            schema=RESULT_SCHEMA,
        )

    def _route(self, texts: dict[int, str], errors: list[str | None]) -> dict[int, dict[str, Any]]:
        """Decisions for the rows of ``texts``; where the batch cannot be routed, row by row, a
        failing row's reason going to ``errors``."""
        if not texts:
            return {}
        try:
            return dict(zip(texts, self.router.route(list(texts.values()), knob=self.knob), strict=True))
        except BestRouteError:
            decided = {}
            for i, text in texts.items():
                try:
                    decided[i] = self.router.route([text], knob=self.knob)[0]
                except BestRouteError as exc:
                    errors[i] = str(exc)
            return decided


def _json_lines() -> type:
    """Ray's file datasource reading JSONL a megabyte at a time, one text column (its JSON
    readers parse a whole file at once and fail the job on one bad line or a changing type)."""
    from ray.data.datasource import FileBasedDatasource

    class JsonLines(FileBasedDatasource):
        def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
            rest, lines = b"", []
            while chunk := f.read(_READ_BYTES):
                *complete, rest = (rest + chunk).split(b"\n")
                lines += [line.decode("utf-8", "replace") for line in complete if line.strip()]
                while len(lines) >= _LINES_PER_BLOCK:
                    yield pa.table({LINE_COLUMN: lines[:_LINES_PER_BLOCK]})
                    lines = lines[_LINES_PER_BLOCK:]
            if rest.strip():
                lines.append(rest.decode("utf-8", "replace"))
            if lines:
                yield pa.table({LINE_COLUMN: lines})

    return JsonLines


def _logged_blocks(url: str) -> Iterator[pa.Table]:
    """A decision log's requests (id, stored prompt), read by id a page at a time
    (``logged_prompts``; Ray's read_sql fetches a whole query's result at once)."""
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), (_LOGGED, pa.bool_())])
    for page in logged_prompts(url, batch=_LINES_PER_BLOCK):
        ids, prompts = zip(*page, strict=True)
        yield pa.table({"id": list(ids), "prompt": list(prompts), _LOGGED: [True] * len(page)}, schema=schema)


def database_url(source: str | Path) -> str | None:
    """``source`` if it is a decision log's database URL (sqlite:///..., postgresql+psycopg://...)."""
    text = str(source)
    if isinstance(source, Path) or "://" not in text:
        return None
    try:
        make_url(text)
    except ArgumentError:
        return None
    return text


@dataclass(frozen=True)
class BatchReport:
    """What a batch job wrote: rows with a decision and rows with an error."""

    routed: int
    failed: int
    out: Path


def _is_parquet(source: Path) -> bool:
    if source.is_dir():
        return any(p.suffix == ".parquet" for p in source.iterdir())
    return source.suffix == ".parquet"


def read_rows(source: str | Path, *, ray_address: str | None = None) -> Any:
    """The Ray dataset of ``source``'s rows (a JSONL or Parquet file, a directory of them, or a
    decision log's database URL: see route_batch), on the Ray of ``start_ray(ray_address)``."""
    url = database_url(source)
    if url is not None:
        check_database(url)  # a wrong URL or missing driver is one line here, not a failed Ray task
    elif not Path(source).exists():
        raise BestRouteError(f"{source} does not exist")
    ray = start_ray(ray_address)
    # Reading takes no CPU of Ray's: the routers' actors hold one each, and reads that wait for
    # a CPU the actors hold would never run (workers = CPUs is a deadlock otherwise). One read
    # task per JSONL file (or decision log), streaming its blocks as it makes them: given fewer
    # tasks than it wants, Ray holds a task's whole output to split it in blocks, which made a
    # reader's memory grow with its file.
    if url is not None:
        source_of_rows = streamed_source("DecisionLogRequests", functools.partial(_logged_blocks, url))
        return ray.data.read_datasource(source_of_rows, num_cpus=0, override_num_blocks=1)
    if _is_parquet(Path(source)):
        return ray.data.read_parquet(str(source), num_cpus=0)
    files = [p for p in Path(source).rglob("*") if p.is_file()] if Path(source).is_dir() else [Path(source)]
    return ray.data.read_datasource(_json_lines()(str(source)), num_cpus=0, override_num_blocks=max(1, len(files)))


def route_batch(
    artifact: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    knob: float | None = None,
    workers: int = 1,
    batch_size: int = 1024,
    rows_per_file: int = 65_536,
    ray_address: str | None = None,
) -> BatchReport:
    """Route every row of ``source`` (a JSONL or Parquet file, a directory of them, or a decision
    log's database URL) with the router ``artifact`` at ``knob`` (None: its default) on
    ``workers`` actors, and write the decisions (RESULT_SCHEMA, in the input's order; a decision
    log's by request id) as Parquet files of about ``rows_per_file`` rows in ``out`` (a new or
    empty directory; its files in name order are the input's order). Starts a local Ray
    instance unless one is running or ``ray_address`` names a cluster."""
    out = Path(out)
    if min(workers, batch_size, rows_per_file) < 1:
        raise BestRouteError("workers, batch size and rows per file must be at least 1")
    check_out(out)
    router = load_router(artifact)  # a bad artifact or knob fails here, not in every worker
    checked = router.default_knob() if knob is None else router.rule.check(knob)
    rows = read_rows(source, ray_address=ray_address)
    ray = start_ray(ray_address)
    decisions = rows.map_batches(
        BatchRouter,
        fn_constructor_kwargs={"artifact": str(artifact), "knob": checked},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
    )
    # writing takes no CPU of Ray's either, for the same reason as reading
    decisions.write_datasink(ordered_parquet(out, rows_per_file), ray_remote_args={"num_cpus": 0})
    written = pa_dataset.dataset(str(out), format="parquet", schema=RESULT_SCHEMA)
    failed = written.count_rows(filter=pa_dataset.field("error").is_valid())
    return BatchReport(routed=written.count_rows() - failed, failed=failed, out=out)
