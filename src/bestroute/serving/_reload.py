"""Loading what the gateway serves — the configuration, its router artifact and selector — and
reloading them while serving: SIGHUP, a change to either file, or POST /admin/reload. A new
ChatService is swapped in; requests in flight finish on the one they started with. A file that
does not load is refused with one log line and the running ones keep serving."""

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import BestRouteError, ConfigError
from ..reward import load_selector
from ..routers import Router, load_router
from ..selection import IN_PROCESS, Selector, SelectorSpec
from ._config import GatewayConfig, load_config

if TYPE_CHECKING:
    from .serving import ChatService

_logger = logging.getLogger(__name__)
# Changing these needs a restart: they shape the server, its keys and its log, not a request.
RESTART_ONLY = ("decision_log", "limits", "client_api_keys_env", "admin")


@dataclass(frozen=True)
class ArtifactInfo:
    """Which router artifact is serving: its path, a digest of its bytes, and when it was loaded."""

    path: Path
    sha256: str
    loaded_at: str

    @classmethod
    def of(cls, path: Path) -> "ArtifactInfo":
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cls(path, digest, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def describe(self) -> dict[str, str]:
        return {"path": str(self.path), "sha256": self.sha256[:16], "loaded_at": self.loaded_at}


@dataclass(frozen=True)
class Loaded:
    """A configuration with its router and selector, checked and loaded."""

    config: GatewayConfig
    router: Router
    in_process_selector: Selector | None  # loaded before start-up; None for a service kind
    backend_keys: dict[str, str | None]
    artifact: ArtifactInfo


def load_serving(config: GatewayConfig) -> Loaded:
    """Load and check what ``config`` serves; any problem is a one-line BestRouteError."""
    if config.router is None:
        raise ConfigError("the configuration names no router artifact (key: router)")
    artifact = config.router
    router = load_router(artifact)
    if not router.servable:
        raise ConfigError(f"router {router.name!r} cannot serve requests; train best-route or another router")
    backends = {b.name for b in config.backends}
    if router.reference_.model not in backends:
        raise ConfigError(f"the router's reference model {router.reference_.model!r} has no backend")
    active = [o for o, on in zip(router.options_, router.active_, strict=True) if on]
    for option in active:
        missing = [m for m in option.stages[-1].mix if m not in backends]
        if missing:
            raise ConfigError(f"the router's option {option.label!r} mixes {missing[0]!r}, which has no backend")
    if config.threshold is not None and router.knob == "threshold" and config.threshold > 1:
        raise ConfigError(
            f"threshold: {config.threshold:g} is not between 0 and 1 (router {router.name!r} "
            "routes on a predicted-quality threshold)"
        )
    trained_with = _selector_of(router)
    if "selector" not in config.model_fields_set:
        config = config.model_copy(update={"selector": trained_with})
    escalating = [o for o in active if o.judged]
    if escalating and config.selector != trained_with:
        raise ConfigError(
            f"the router's option {escalating[0].label!r} escalates on the confidence of the selector "
            f"it was trained with ({router.selector}); the configuration's selector "
            f"({config.selector.kind}) would make its thresholds meaningless: remove `selector`"
        )
    in_process = load_selector(config.selector) if config.selector.kind in IN_PROCESS else None
    backend_keys = {b.name: b.api_key() for b in config.backends}  # a missing variable fails here
    return Loaded(config, router, in_process, backend_keys, ArtifactInfo.of(artifact))


def _selector_of(router: Router) -> SelectorSpec:
    """The selector the router's labels were estimated with, where the gateway can run it: best
    of n is then picked online the way it was scored offline (the oracle bound cannot run:
    consensus)."""
    spec = SelectorSpec.parse(router.selector)
    if spec.path is not None and not spec.path.is_file():
        raise ConfigError(
            f"the router was trained with the reward model {spec.path}, which does not exist; "
            "restore it or set `selector` in the configuration"
        )
    return SelectorSpec() if spec.kind == "oracle" else spec


class Reloader:
    """Reloads ``config_path`` (and the files it names) into ``app.state.service`` with ``build``."""

    def __init__(
        self,
        app: Any,
        config_path: Path | None,
        loaded: Loaded,
        build: Callable[[Loaded, "ChatService | None"], "ChatService"],
    ) -> None:
        self.app, self.config_path, self.build = app, config_path, build
        self.current = loaded
        self.loaded_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self._lock = asyncio.Lock()
        self._seen = self._stamps()

    async def reload(self, reason: str) -> "ChatService":
        """Load the files again and swap the service in; BestRouteError (the old one keeps serving)."""
        async with self._lock:
            self._seen = self._stamps()
            path = self.config_path
            if path is None:
                raise ConfigError("the gateway was started without a configuration file to reload")
            try:
                loaded = await asyncio.to_thread(lambda: load_serving(load_config(path)))
            except BestRouteError as exc:
                _logger.error("reload (%s) refused: %s; still serving %s", reason, exc, self.current.artifact.path)
                raise
            changed = [key for key in RESTART_ONLY if getattr(loaded.config, key) != getattr(self.current.config, key)]
            if changed:
                _logger.warning(
                    "reload (%s): %s changed and takes effect at the next restart", reason, ", ".join(changed)
                )
                loaded = Loaded(
                    loaded.config.model_copy(update={k: getattr(self.current.config, k) for k in RESTART_ONLY}),
                    loaded.router,
                    loaded.in_process_selector,
                    loaded.backend_keys,
                    loaded.artifact,
                )
            service = self.build(loaded, self.app.state.service)
            self.app.state.service, self.current = service, loaded
            self.loaded_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            _logger.warning(
                "reload (%s): serving %s (sha256 %s)", reason, loaded.artifact.path, loaded.artifact.sha256[:16]
            )
            return service

    async def _reload_logged(self, reason: str) -> None:
        with contextlib.suppress(BestRouteError):  # already logged; the old files keep serving
            await self.reload(reason)

    def on_sighup(self) -> None:
        """Reload on SIGHUP (only where the server runs in the main thread, as `bestroute serve` does)."""
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(self._reload_logged("SIGHUP"))
            )

    async def watch(self, poll_s: float) -> None:
        """Reload when the configuration file or a file it names changes (checked every ``poll_s``)."""
        while True:
            await asyncio.sleep(poll_s)
            if self._stamps() != self._seen:
                await self._reload_logged("a file changed")

    def _stamps(self) -> list[tuple[int, int] | None]:
        config = self.current.config
        paths = [self.config_path, config.router, config.selector.path]
        return [_stamp(p) for p in paths]


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
