"""Membership of a group of worker processes that share one port (``bestroute serve --workers N``).

The supervisor gives every worker one run directory (``BESTROUTE_WORKERS_DIR``). A worker
announces itself there by a file named after its pid while it serves, so a reload asked of one
worker (POST /admin/reload) can be passed on to the others: each reloads on SIGHUP, as a lone
gateway does. Prometheus' multiprocess directory lives beside it (``PROMETHEUS_MULTIPROC_DIR``)."""

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

WORKERS_DIR_ENV = "BESTROUTE_WORKERS_DIR"
_logger = logging.getLogger(__name__)


def group_dir() -> Path | None:
    """The run directory of this process's worker group; None for a lone gateway."""
    value = os.environ.get(WORKERS_DIR_ENV)
    return Path(value) / "workers" if value else None


@contextlib.contextmanager
def membership() -> Iterator[None]:
    """Be listed as a worker of the group (if there is one) while the block runs."""
    directory = group_dir()
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    own = directory / str(os.getpid())
    own.touch()
    try:
        yield
    finally:
        own.unlink(missing_ok=True)


def signal_others(signum: signal.Signals = signal.SIGHUP) -> int:
    """Send ``signum`` to every other worker of the group; how many were signalled. Files of
    workers that are gone are removed."""
    directory = group_dir()
    if directory is None:
        return 0
    sent = 0
    for entry in directory.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            os.kill(int(entry.name), signum)
            sent += 1
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
        except PermissionError:  # a pid reused by a process not ours
            _logger.warning("worker group: cannot signal pid %s; its file is stale", entry.name)
            entry.unlink(missing_ok=True)
    return sent
