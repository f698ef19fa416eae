"""Reading routing data from disk: the native layout and RouterBench's wide format."""

import csv
import gzip
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from .._exceptions import DataError
from ._dataset import RoutingDataset
from ._schema import ModelPrice, PromptRecord, ResponseRecord
from ._split import in_sample

RecordT = TypeVar("RecordT", bound=BaseModel)

_TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".csv", ".csv.gz", ".parquet")


def iter_rows(
    path: Path, *, on_error: Callable[[DataError], None] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, row)`` of a JSONL(.gz), CSV(.gz) or Parquet table; line counts from 1.
    A line that is not a JSON object raises, or with ``on_error`` is reported there and skipped."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        index = 0
        try:
            for batch in pq.ParquetFile(path).iter_batches():  # a batch at a time, not the whole file
                for row in batch.to_pylist():
                    index += 1
                    yield index, row
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"not a readable Parquet file ({exc})", path=str(path)) from exc
        return
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            if ".csv" in name:
                # Line 1 is the header, so the first row is line 2.
                for index, row in enumerate(csv.DictReader(handle), start=2):
                    yield index, {k: (None if v == "" else v) for k, v in row.items()}
                return
            for index, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise DataError("expected a JSON object", path=str(path), line=index)
                except (json.JSONDecodeError, DataError) as exc:
                    error = (
                        exc
                        if isinstance(exc, DataError)
                        else DataError(f"invalid JSON ({exc.msg})", path=str(path), line=index)
                    )
                    if on_error is None:
                        raise error from exc
                    on_error(error)
                    continue
                yield index, row
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"cannot read file ({exc})", path=str(path)) from exc


def validate_record(model: type[RecordT], row: dict[str, Any], path: Path, line: int) -> RecordT:
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "record"
        raise DataError(f"{field}: {first['msg']}", path=str(path), line=line) from exc


def find_table(directory: Path, stem: str) -> Path:
    """The ``stem`` table of routing data in ``directory``, in whichever format it is."""
    for suffix in _TABLE_SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    raise DataError(
        f"missing {stem} table (one of {', '.join(stem + s for s in _TABLE_SUFFIXES)})", path=str(directory)
    )


def read_reference(path: Path) -> str | None:
    """The optional ``"reference"`` of ``models.json``: the large model the data compares against."""
    document = json.loads(path.read_text(encoding="utf-8"))
    reference = document.get("reference")
    if reference is not None and (not isinstance(reference, str) or reference not in document["models"]):
        raise DataError(f"reference {reference!r} is not in models", path=str(path))
    return reference


def read_models(path: Path) -> dict[str, ModelPrice]:
    """Read ``models.json``: ``{"models": {name: {input_usd_per_mtok, output_usd_per_mtok}}}``."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read model catalog ({exc})", path=str(path)) from exc
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, dict) or not models:
        raise DataError('expected {"models": {name: prices}} with at least one model', path=str(path))
    prices = {}
    for name, entry in models.items():
        try:
            prices[name] = ModelPrice.model_validate(entry)
        except ValidationError as exc:
            raise DataError(f"model {name!r}: {exc.errors()[0]['msg']}", path=str(path)) from exc
    return prices


def read_native(directory: Path, *, sample: float | None = None) -> RoutingDataset:
    """Read a directory in the exchange layout: prompts, responses and ``models.json``; with
    ``sample``, only the prompts of a deterministic sample of about that fraction (``in_sample``)
    and their responses are kept, so memory is about that fraction of the whole."""
    if not directory.is_dir():
        raise DataError("not a directory in the routing-data layout", path=str(directory))
    prices = read_models(directory / "models.json")
    prompts_path = find_table(directory, "prompts")
    prompts: list[PromptRecord] = []
    seen: set[str] = set()
    left_out: set[str] = set()
    for line, row in iter_rows(prompts_path):
        record = validate_record(PromptRecord, row, prompts_path, line)
        if record.prompt_id in seen or record.prompt_id in left_out:
            raise DataError(f"duplicate prompt_id {record.prompt_id!r}", path=str(prompts_path), line=line)
        if sample is not None and not in_sample(record.prompt_id, sample):
            left_out.add(record.prompt_id)
            continue
        seen.add(record.prompt_id)
        prompts.append(record)
    responses_path = find_table(directory, "responses")
    responses: list[ResponseRecord] = []
    keys: set[tuple[str, str, int]] = set()
    for line, row in iter_rows(responses_path):
        if left_out and row.get("prompt_id") in left_out:
            continue
        response = validate_record(ResponseRecord, row, responses_path, line)
        if response.prompt_id not in seen:
            raise DataError(f"unknown prompt_id {response.prompt_id!r}", path=str(responses_path), line=line)
        if response.model not in prices and response.cost_usd is None:
            raise DataError(
                f"unknown model {response.model!r} (not in models.json)", path=str(responses_path), line=line
            )
        key = (response.prompt_id, response.arm, response.sample)
        if key in keys:
            raise DataError(f"duplicate response {key}", path=str(responses_path), line=line)
        keys.add(key)
        responses.append(response)
    return RoutingDataset.from_records(
        prompts, responses, prices, source=str(directory), reference_model=read_reference(directory / "models.json")
    )


def read_routerbench(path: Path) -> RoutingDataset:
    """Read RouterBench's wide table: a row per prompt, per model ``<m>``, ``<m>|total_cost``
    and ``<m>|model_response``. Token counts are estimated as characters / 4."""
    prompts: list[PromptRecord] = []
    responses: list[ResponseRecord] = []
    models: list[str] | None = None
    for line, row in iter_rows(path):
        if models is None:
            models = [c.split("|", 1)[0] for c in row if c.endswith("|total_cost")]
            if not models or "prompt" not in row:
                raise DataError(
                    "not a RouterBench table: needs 'prompt' and '<model>|total_cost' columns",
                    path=str(path),
                    line=line,
                )
        prompt_id = str(row.get("sample_id") or f"row-{line}")
        text = _prompt_text(row["prompt"])
        prompts.append(
            validate_record(
                PromptRecord, {"prompt_id": prompt_id, "prompt": text, "task": row.get("eval_name")}, path, line
            )
        )
        for model in models:
            quality, cost = row.get(model), row.get(f"{model}|total_cost")
            if quality is None and cost is None:
                continue  # this model did not answer this prompt
            answer = row.get(f"{model}|model_response")
            answer = "" if answer is None else str(answer)
            responses.append(
                validate_record(
                    ResponseRecord,
                    {
                        "prompt_id": prompt_id,
                        "model": model,
                        "quality": _number(quality),
                        "cost_usd": _number(cost),
                        "input_tokens": math.ceil(len(text) / 4),
                        "output_tokens": math.ceil(len(answer) / 4),
                        "response": answer,
                    },
                    path,
                    line,
                )
            )
    if models is None:
        raise DataError("empty RouterBench table", path=str(path))
    return RoutingDataset.from_records(prompts, responses, {}, source=str(path))


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value  # let validation name the field


def _prompt_text(value: Any) -> str:
    # RouterBench stores prompts as a list of turns in some releases.
    if isinstance(value, list):
        return "\n".join(str(part) for part in value)
    if isinstance(value, str) and value.startswith("['") and value.endswith("']"):
        return value[2:-2]
    return str(value)


def load_dataset(path: str | Path, *, sample: float | None = None) -> RoutingDataset:
    """Load routing data: a native-layout directory or a RouterBench wide table file; with
    ``sample`` (a fraction in (0, 1]) only a deterministic sample of its prompts (a native
    directory; docs/data-format.md, "Training on a sample")."""
    path = Path(path)
    if path.is_dir():
        return read_native(path, sample=sample)
    if sample is not None:
        raise DataError("a sample is drawn from a routing-data directory, not a RouterBench table", path=str(path))
    if path.is_file() and path.name.lower().endswith(_TABLE_SUFFIXES):
        return read_routerbench(path)
    raise DataError(
        f"expected a routing-data directory or a RouterBench table ({', '.join(_TABLE_SUFFIXES)})", path=str(path)
    )
