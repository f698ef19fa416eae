"""Reloading what the gateway serves while serving: SIGHUP, a change to a file it names, or
POST /admin/reload. A new ChatService is swapped in; requests in flight finish on the one they
started with. A file that does not load is refused with one log line and the running ones keep
serving."""

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import BestRouteError, ConfigError
from ._config import load_config
from ._loading import Loaded, load_serving

if TYPE_CHECKING:
    from .serving import ChatService

_logger = logging.getLogger(__name__)
# Changing these needs a restart: they shape the server, its keys and its log, not a request.
RESTART_ONLY = ("decision_log", "limits", "client_api_keys_env", "admin")


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
                kept = {k: getattr(self.current.config, k) for k in RESTART_ONLY}
                loaded = dataclasses.replace(loaded, config=loaded.config.model_copy(update=kept))
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
