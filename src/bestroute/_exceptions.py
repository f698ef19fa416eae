"""The exception hierarchy of bestroute.

BestRouteError
├── DataError        bad routing data (names the file and line)
├── FeatureError     a feature extractor cannot be built or run
├── ArtifactError    a router artifact cannot be saved or loaded
├── RouterError      a router is used wrongly (not fitted, unknown option, bad target)
├── ConfigError      the gateway configuration is invalid
├── UpstreamError    a backend did not answer usefully (bestroute.backends; its kinds live there)
└── GatewayError     an error the gateway answers a client with (bestroute.serving; its HTTP status)
"""


class BestRouteError(Exception):
    """Base class of every error bestroute raises on purpose."""


class DataError(BestRouteError):
    """Routing data is missing, malformed or inconsistent."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.line = line


class FeatureError(BestRouteError):
    """A feature extractor is unavailable or misconfigured."""


class ArtifactError(BestRouteError):
    """A router artifact is unreadable, of another version, or inconsistent."""


class RouterError(BestRouteError):
    """A router was asked for something it cannot do."""


class ConfigError(BestRouteError):
    """The gateway configuration is missing, malformed or inconsistent."""
