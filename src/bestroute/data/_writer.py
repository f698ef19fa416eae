"""The one writer of the routing-data exchange format (docs/data-format.md): prompts.jsonl,
responses.jsonl(.gz) (or prompts.parquet and responses.parquet) and models.json. Rows are
written as given; the readers validate them."""

import gzip
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TextIO

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from ._schema import ModelPrice, PromptRecord, ResponseRecord

ROW_GROUP = 10_000  # rows a Parquet file's writer holds before it writes them out
_ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64()}


def write_prompts(directory: Path, prompts: Iterable[Mapping[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prompts.jsonl").write_text("".join(json.dumps(dict(p)) + "\n" for p in prompts), encoding="utf-8")


def write_catalog(directory: Path, prices: Mapping[str, ModelPrice], *, reference: str | None = None) -> None:
    """models.json: each model's price, and the reference model where one is named."""
    directory.mkdir(parents=True, exist_ok=True)
    catalog: dict[str, Any] = {"models": {name: price.model_dump() for name, price in prices.items()}}
    if reference is not None:
        catalog["reference"] = reference
    (directory / "models.json").write_text(json.dumps(catalog, indent=1), encoding="utf-8")


def write_routing_data(
    directory: Path,
    prompts: Iterable[Mapping[str, Any]],
    responses: Iterable[Mapping[str, Any]],
    prices: Mapping[str, ModelPrice],
    *,
    reference: str | None = None,
) -> Path:
    """A whole data directory, its responses compressed (responses.jsonl.gz); returns it."""
    with RoutingDataWriter(directory) as writer:
        writer.add(prompts, responses)
    write_catalog(directory, prices, reference=reference)
    return directory


def arrow_schema(record: type[BaseModel]) -> pa.Schema:
    """The Parquet columns of an exchange-format record: its fields, with their types; optional
    fields are nullable."""
    fields = []
    for name, info in record.model_fields.items():
        annotation = info.annotation
        options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
        base = next(t for t in options if t in _ARROW_TYPES)
        fields.append(pa.field(name, _ARROW_TYPES[base], nullable=not info.is_required()))
    return pa.schema(fields)


class _ParquetTable:
    """A Parquet file written ROW_GROUP rows at a time."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.schema = schema
        self._writer = pq.ParquetWriter(path, schema)
        self._rows: list[dict[str, Any]] = []

    def writelines(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self._rows.append(dict(row))
            if len(self._rows) >= ROW_GROUP:
                self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


class RoutingDataWriter:
    """The prompts and responses tables written as rows come, so a large export holds only the
    rows of the batch at hand (the catalog is written apart: ``write_catalog``): prompts.jsonl
    and responses.jsonl.gz, or with ``format="parquet"`` prompts.parquet and responses.parquet
    (columns typed by the records, a row group per ROW_GROUP rows). A field a Parquet table has
    no column for is an error (ValueError), not dropped."""

    def __init__(self, directory: Path, *, format: Literal["jsonl", "parquet"] = "jsonl") -> None:
        self.directory, self.format = directory, format
        self._prompts: TextIO | _ParquetTable | None = None
        self._responses: TextIO | _ParquetTable | None = None

    def __enter__(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.format == "parquet":
            self._prompts = _ParquetTable(self.directory / "prompts.parquet", arrow_schema(PromptRecord))
            self._responses = _ParquetTable(self.directory / "responses.parquet", arrow_schema(ResponseRecord))
        else:
            self._prompts = (self.directory / "prompts.jsonl").open("w", encoding="utf-8")
            self._responses = gzip.open(self.directory / "responses.jsonl.gz", "wt", encoding="utf-8")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for handle in (self._prompts, self._responses):
            if handle is not None:
                handle.close()

    def add(self, prompts: Iterable[Mapping[str, Any]], responses: Iterable[Mapping[str, Any]]) -> None:
        assert self._prompts is not None and self._responses is not None, "use RoutingDataWriter in a with block"
        for handle, rows in ((self._prompts, prompts), (self._responses, responses)):
            if isinstance(handle, _ParquetTable):
                rows = list(rows)
                extra = {key for row in rows for key in row} - set(handle.schema.names)
                if extra:
                    raise ValueError(f"no Parquet column for {', '.join(sorted(extra))}")
                handle.writelines(rows)
            else:
                handle.writelines(json.dumps(dict(row)) + "\n" for row in rows)


class ResponseAppender:
    """responses.jsonl opened for appending, one flushed line per response, so a run that is
    killed loses no response it finished (what `bestroute collect` writes as it goes)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "responses.jsonl"
        self._handle: TextIO | None = None

    def __enter__(self) -> Self:
        self._handle = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.close()

    def write(self, row: Mapping[str, Any]) -> None:
        assert self._handle is not None, "use ResponseAppender in a with block"
        self._handle.write(json.dumps(dict(row)) + "\n")
        self._handle.flush()
