"""The demos' child servers: started as `bestroute` subprocesses, waited for until they answer,
and stopped together, on an error, Ctrl-C or SIGTERM alike."""

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import yaml

from .._exceptions import ConfigError
from ..selection import SelectorSpec


def start_gateway(
    processes: "Processes",
    *,
    out: Path,
    port: int,
    artifact: Path,
    threshold: float,
    backends: list[dict[str, Any]],
    selector: str,
    log: Path | None = None,
) -> Path:
    """Write the demo's gateway configuration (its decision log, with prompts, in ``out``) and
    start `bestroute serve` on it; returns the configuration's path."""
    spec = SelectorSpec.parse(selector)
    config = {
        "router": str(artifact.resolve()),
        "threshold": threshold,
        "backends": backends,
        "selector": {"kind": spec.kind} | spec.model_dump(mode="json", exclude_defaults=True),
        "decision_log": {"url": f"sqlite:///{(out / 'decisions.db').resolve()}", "store_prompts": True},
    }
    config_path = out / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    processes.start(
        ["serve", "--config", str(config_path), "--port", str(port)], ready=f"http://127.0.0.1:{port}/healthz", log=log
    )
    return config_path


def check_port(port: int) -> None:
    """Fail before any work if the gateway's port is taken."""
    with socket.socket() as probe:
        # As the server will: connections of a previous run waiting out TIME_WAIT do not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"port {port} is in use; choose another with --port") from None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Processes:
    """Running child servers, the last one started last."""

    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, arguments: list[str], *, ready: str, log: Path | None = None, timeout_s: float = 60.0) -> None:
        """``bestroute ARGUMENTS`` in a child process (its output to ``log``), once ``ready``
        answers 200."""
        wait_ready(ready, self.launch(arguments, log=log), timeout_s)

    def launch(self, arguments: list[str], *, log: Path | None = None) -> subprocess.Popen[bytes]:
        """``bestroute ARGUMENTS`` in a child process, not waited for (see ``wait_ready``)."""
        output = open(log, "wb") if log is not None else None  # noqa: SIM115 -- closed once the child has it
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "bestroute", *arguments],
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
            )
        finally:
            if output is not None:
                output.close()  # the child has its own copy
        self.running.append(process)
        return process

    def wait(self) -> None:
        """Until the last child exits."""
        self.running[-1].wait()

    def stop(self) -> None:
        for process in reversed(self.running):
            process.terminate()
        for process in self.running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here, as Ctrl-C does, so a demo stops its children on
    either (the default action would end the process and leave them holding their ports)."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until ``url`` answers 200; ConfigError if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"the process behind {url} exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise ConfigError(f"{url} did not answer within {timeout_s:.0f}s")
