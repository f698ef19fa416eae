"""What every batch job shares: a Ray instance whose datasets keep their order, and a Parquet
datasink that keeps it in the files."""

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .._exceptions import BestRouteError

# Ray joins a task's output into blocks of up to this size. Its default, 128 MiB, made a reader's
# whole output (a 100,000-row file) one block, and the one actor given it did all the work while
# the others idled; a megabyte is a few batches of prompts, so every actor gets its share.
BLOCK_BYTES = 1 << 20


def start_ray(address: str | None) -> Any:
    """The ``ray`` module, connected to ``address`` (None: a running instance, else a new local
    one), with datasets that keep their rows' order in blocks of about BLOCK_BYTES."""
    try:
        import ray
    except ImportError:
        raise BestRouteError("batch jobs need Ray: pip install 'bestroute[scale]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.target_max_block_size = BLOCK_BYTES
    return ray


def streamed_source(name: str, blocks: Callable[[], Iterator[pa.Table]]) -> Any:
    """A Ray datasource of one read task that yields ``blocks()``'s tables as it makes them:
    where reading is a small part of a job, one reader keeps memory to a block and the work
    that follows runs on every worker. ``name`` is the read operator's (``Read<name>``)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class Streamed(Datasource):
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]  # Ray's is not annotated

        def get_name(self) -> str:
            return name

        def estimate_inmemory_data_size(self) -> None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            metadata = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            return [ReadTask(blocks, metadata)]

    return Streamed()


def check_out(out: Path) -> None:
    """A job writes to a new or empty directory: two jobs' files would mix."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BestRouteError(f"{out} is not an empty directory: the files of two jobs would mix")


def ordered_parquet(out: Path, rows_per_file: int) -> Any:
    """A Ray datasink writing each write task's blocks in their order to Parquet files named by
    the task's index and the file's, so a directory read in name order is the dataset's order.
    Ray's own ``write_parquet`` hands a task's blocks to pyarrow's multi-threaded
    ``write_dataset``, which may reorder them within the file (apache/arrow#26818: seen in CI,
    and in 2 of 20 writes of 8 blocks here)."""
    from ray.data import Datasink

    class OrderedParquet(Datasink[None]):
        @property
        def min_rows_per_write(self) -> int:  # Ray bundles a write task's blocks up to this
            return rows_per_file

        def on_write_start(self, schema: Any = None) -> None:
            out.mkdir(parents=True, exist_ok=True)

        def write(self, blocks: Iterable[pa.Table], ctx: Any) -> None:
            """The task's blocks in order, a new file every rows_per_file."""
            tables = [table for table in blocks if table.num_rows]
            if not tables:
                return
            rows = pa.concat_tables(tables)
            for part, start in enumerate(range(0, rows.num_rows, rows_per_file)):
                name = f"part-{ctx.task_idx:09d}-{part:06d}.parquet"
                pq.write_table(rows.slice(start, rows_per_file), out / name)

    return OrderedParquet()
