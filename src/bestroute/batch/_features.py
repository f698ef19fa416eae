"""Training features on Ray Data: the prompts of routing data in, each prompt's feature vector
out, made by actors that build the feature extractor once (``bestroute batch features``), so the
part of training that grows with the prompts' text runs on every core of a cluster; ``bestroute
train --features-from`` then fits on them instead of making them again."""

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pa_dataset
import pyarrow.parquet as pq

from .._exceptions import BestRouteError
from ..data import PromptRecord, find_table, iter_rows, validate_record
from ..features import FeatureExtractor, extractor_fingerprint, extractor_from_state, make_extractor
from ._pipeline import check_out, ordered_parquet, start_ray, streamed_source

FEATURES_FILE = "_features.json"  # beside the Parquet files (readers skip names with a leading _): its extractor
_ROWS_PER_BLOCK = 8192


@dataclass(frozen=True)
class FeaturesReport:
    """What a features job wrote: one vector of ``dim`` floats per prompt."""

    prompts: int
    dim: int
    extractor: str
    out: Path


def _schema(dim: int) -> pa.Schema:
    return pa.schema([("prompt_id", pa.string()), ("features", pa.list_(pa.float32(), dim))])


class FeatureMaker:
    """The ``map_batches`` actor: builds the extractor once from its state, makes a batch's vectors per call."""

    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], dim: int) -> None:
        self.extractor = extractor_from_state(meta, arrays)
        self.schema = _schema(dim)

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = np.asarray(self.extractor.transform(batch.column("prompt").to_pylist()), dtype=np.float32)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        features = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        return pa.Table.from_arrays([batch.column("prompt_id"), features], schema=self.schema)


def _prompt_blocks(path: Path) -> Iterator[pa.Table]:
    """A prompts table's (prompt_id, prompt), a block at a time (checked by ``check_prompts``)."""
    ids: list[str] = []
    texts: list[str] = []
    for _, row in iter_rows(path):
        ids.append(str(row["prompt_id"]))
        texts.append(row["prompt"])
        if len(ids) == _ROWS_PER_BLOCK:
            yield pa.table({"prompt_id": ids, "prompt": texts})
            ids, texts = [], []
    if ids:
        yield pa.table({"prompt_id": ids, "prompt": texts})


def check_prompts(path: Path) -> None:
    """DataError (its file and line) at the first row of a prompts table that is not a prompt:
    read once in the driver, so a bad row is one line before Ray starts, not a failed task."""
    for line, row in iter_rows(path):
        validate_record(PromptRecord, row, path, line)


def features_batch(
    data: str | Path,
    out: str | Path,
    *,
    features: str = "auto",
    workers: int = 1,
    batch_size: int = 1024,
    rows_per_file: int = 65_536,
    ray_address: str | None = None,
) -> FeaturesReport:
    """Make the feature vector of every prompt of the routing data in ``data`` with the
    extractor ``features`` (as ``bestroute train --features`` makes it) on ``workers`` actors,
    and write them as Parquet (prompt_id, features; in the prompts' order) to ``out``, a new or
    empty directory, with ``_features.json`` naming the extractor."""
    out = Path(out)
    prompts = find_table(Path(data), "prompts")
    check_out(out)
    if min(workers, batch_size, rows_per_file) < 1:
        raise BestRouteError("workers, batch size and rows per file must be at least 1")
    check_prompts(prompts)
    extractor = make_extractor(features)
    dim = int(extractor.transform(["a"]).shape[1])
    meta, arrays = extractor.state()
    ray = start_ray(ray_address)
    source = streamed_source("Prompts", functools.partial(_prompt_blocks, prompts))
    made = ray.data.read_datasource(source, num_cpus=0, override_num_blocks=1).map_batches(
        FeatureMaker,
        fn_constructor_kwargs={"meta": meta, "arrays": arrays, "dim": dim},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
    )
    made.write_datasink(ordered_parquet(out, rows_per_file), ray_remote_args={"num_cpus": 0})
    out.mkdir(parents=True, exist_ok=True)  # an empty table's job writes no file
    written = pa_dataset.dataset(str(out), format="parquet").count_rows()  # from the files' footers
    stamp = {"extractor": meta["name"], "fingerprint": extractor_fingerprint(extractor), "dim": dim, "prompts": written}
    (out / FEATURES_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    return FeaturesReport(prompts=written, dim=dim, extractor=str(meta["name"]), out=out)


def read_features(directory: str | Path, prompt_ids: list[str], extractor: FeatureExtractor) -> np.ndarray:
    """The vectors ``features_batch`` wrote to ``directory``, one row per id of ``prompt_ids``;
    BestRouteError if they were made by another extractor than ``extractor`` or lack a prompt."""
    directory = Path(directory)
    try:
        stamp = json.loads((directory / FEATURES_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BestRouteError(f"{directory} holds no features of `bestroute batch features` ({exc})") from None
    if stamp.get("fingerprint") != extractor_fingerprint(extractor):
        raise BestRouteError(
            f"the features in {directory} were made by another extractor ({stamp.get('extractor')!r}) than "
            f"this training's ({extractor.name!r}, or another version of its model): make them again"
        )
    table = pq.ParquetDataset(directory).read()
    row_of = {prompt_id: row for row, prompt_id in enumerate(table.column("prompt_id").to_pylist())}
    missing = [prompt_id for prompt_id in prompt_ids if prompt_id not in row_of]
    if missing:
        raise BestRouteError(
            f"the features in {directory} lack {len(missing)} of the data's prompts (first: {missing[0]!r})"
        )
    vectors = table.column("features").combine_chunks().flatten().to_numpy().reshape(len(row_of), stamp["dim"])
    return np.asarray(vectors[[row_of[prompt_id] for prompt_id in prompt_ids]], dtype=np.float32)
