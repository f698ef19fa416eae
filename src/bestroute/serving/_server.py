"""The HTTP server: uvicorn, with limits on client connections that uvicorn lacks.

A connection must send its request headers within ``header_timeout_s`` (of opening, or of its
previous response), so idle or byte-a-second (slowloris) connections cannot pile up. Past
``max_connections`` the oldest connection waiting for a request is closed to make room; if every
connection has a request in progress, the new one gets a 503 with Retry-After at once.

``run_workers`` serves with several worker processes on one socket (uvicorn's supervisor), each
building its gateway from the configuration file; what they share is in ``_workers``."""

import asyncio
import json
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from .._exceptions import BestRouteError, ConfigError
from ._config import LimitsConfig, load_config
from ._workers import WORKERS_DIR_ENV
from .app import Gateway, create_app

_REFUSAL_BODY = json.dumps(
    {
        "error": {
            "message": "the gateway has too many connections; retry shortly",
            "type": "service_unavailable",
            "param": None,
            "code": None,
        }
    }
).encode()
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)
_logger = logging.getLogger(__name__)
_FILES_RESERVE = 64  # open files the gateway needs besides connections
_REFUSED_LINGER_S = 1.0  # a refused client's request is read and dropped, so closing does not reset the 503


def connection_cap(limits: LimitsConfig) -> int:
    """``max_connections``, within what the open-files limit allows: half of it (less a reserve
    for the log, the database and the listening socket), the other half left for upstream
    connections. Past the limit, accept() fails and every request would, not just the newest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    allowed = max(16, (soft - _FILES_RESERVE) // 2)
    if allowed < limits.max_connections:
        _logger.warning(
            "limits.max_connections %d is above what the open-files limit (%d) allows; using %d",
            limits.max_connections,
            soft,
            allowed,
        )
    return min(limits.max_connections, allowed)


def limited_protocol(limits: LimitsConfig) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the header timeout and the connection limit."""
    waiting: dict[Any, None] = {}  # connections waiting for a request, oldest first
    max_connections = connection_cap(limits)

    class LimitedProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                oldest = next((c for c in waiting if c is not self), None)
                if oldest is None:
                    self._refuse()
                    return
                oldest.transport.close()
            self._wait_for_request()

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

        def on_headers_complete(self) -> None:
            self._stop_waiting()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._wait_for_request()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def _wait_for_request(self) -> None:
            waiting[self] = None
            self._timer = self.loop.call_later(limits.header_timeout_s, self.transport.close)

        def _stop_waiting(self) -> None:
            waiting.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _refuse(self) -> None:
            self._refused = True
            self.transport.write(_REFUSAL)
            self.loop.call_later(_REFUSED_LINGER_S, self.transport.close)

    return LimitedProtocol


def server_config(gateway: Gateway, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``gateway`` with its connection limits."""
    limits = gateway.config.limits
    return uvicorn.Config(
        gateway, host=host, port=port, http=limited_protocol(limits), timeout_keep_alive=limits.keep_alive_s, **options
    )


def run_gateway(gateway: Gateway, *, host: str, port: int, access_log: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then finish the requests in progress (up to 30 s) and drain
    the decision log. Access lines are off unless asked for (the decision log records every
    request)."""
    raise_open_files_limit()
    uvicorn.Server(
        server_config(
            gateway,
            host=host,
            port=port,
            timeout_graceful_shutdown=30,
            **_logging_options(access_log),
        )
    ).run()


def _logging_options(access_log: bool) -> dict[str, Any]:
    """uvicorn's options for access lines. The forwarded client address (X-Forwarded-For from a
    proxy on loopback) is read only with them: nothing else in the gateway reads the client's
    address, and uvicorn's middleware that reads it was about 1% of the event loop's samples in
    a profile (py-spy, 400 requests/s)."""
    return {"log_level": "info" if access_log else "warning", "access_log": access_log, "proxy_headers": access_log}


def raise_open_files_limit() -> int:
    """Raise this process's open-files limit to the hard limit (each connection is a file);
    returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class _WorkerConfig(uvicorn.Config):
    """What uvicorn pickles into each spawned worker. A built gateway cannot be pickled, so each
    worker builds its own from the configuration file when uvicorn loads the app."""

    def __init__(self, config_path: Path, **options: Any) -> None:
        super().__init__("bestroute.serving:create_app", **options)  # replaced in load()
        self.config_path = config_path

    def load(self) -> None:
        raise_open_files_limit()
        try:
            gateway = create_app(load_config(self.config_path), config_path=self.config_path)
        except BestRouteError as exc:  # the files changed since the supervisor checked them
            _logger.error("worker %d cannot start: %s", os.getpid(), exc)
            sys.exit(STARTUP_FAILURE)
        limits = gateway.config.limits
        self.app, self.http, self.timeout_keep_alive = gateway, limited_protocol(limits), limits.keep_alive_s
        super().load()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor (workers restarted when they die, SIGTTIN/SIGTTOU add or remove one),
    with SIGHUP passed to every worker, which reloads in place as a lone gateway does, instead
    of uvicorn's restart of each; and a dead worker's live gauges dropped from the metrics."""

    def handle_hup(self) -> None:
        _logger.warning("SIGHUP: reloading %d workers", len(self.processes))
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGHUP)

    def keep_subprocess_alive(self) -> None:
        before = {p.pid for p in self.processes}
        super().keep_subprocess_alive()
        self._forget(before)

    def handle_ttou(self) -> None:
        before = {p.pid for p in self.processes}
        super().handle_ttou()
        self._forget(before)

    def _forget(self, before: set[int | None]) -> None:
        for pid in before - {p.pid for p in self.processes}:
            if pid is not None:
                mark_process_dead(pid)  # type: ignore[no-untyped-call]

    @property
    def failed_to_start(self) -> bool:
        return any(p.exitcode == STARTUP_FAILURE for p in self.processes)


def run_workers(config_path: Path, *, host: str, port: int, workers: int, access_log: bool = False) -> None:
    """Serve with ``workers`` processes accepting on one socket until SIGINT or SIGTERM; each
    finishes its requests in progress and drains its decision log. The group's metrics files
    and membership live in a run directory removed at exit (docs/gateway.md, "Several workers")."""
    raise_open_files_limit()
    run_dir = Path(tempfile.mkdtemp(prefix="bestroute-workers-"))
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    # Set before the workers start: prometheus-client picks its multiprocess mode at import.
    os.environ[WORKERS_DIR_ENV] = str(run_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    config = _WorkerConfig(
        config_path,
        host=host,
        port=port,
        workers=workers,
        timeout_graceful_shutdown=30,
        **_logging_options(access_log),
    )
    try:
        supervisor = _Supervisor(config, sockets=[config.bind_socket()])
        supervisor.run()
    finally:
        del os.environ[WORKERS_DIR_ENV], os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(run_dir, ignore_errors=True)
    if supervisor.failed_to_start:
        raise ConfigError("a worker could not start (its log line is above); the gateway stopped")
