"""The one writer of the routing-data exchange format (docs/data-format.md): prompts.jsonl,
responses.jsonl(.gz) and models.json. Rows are written as given; the readers validate them."""

import gzip
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from ._schema import ModelPrice


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


class RoutingDataWriter:
    """prompts.jsonl and responses.jsonl.gz written as rows come, so a large export holds only
    the rows of the batch at hand (the catalog is written apart: ``write_catalog``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._prompts: TextIO | None = None
        self._responses: TextIO | None = None

    def __enter__(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
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
        self._prompts.writelines(json.dumps(dict(p)) + "\n" for p in prompts)
        self._responses.writelines(json.dumps(dict(r)) + "\n" for r in responses)


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
