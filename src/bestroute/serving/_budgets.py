"""Per client key: requests per minute and USD per UTC day, answered with 429 and Retry-After.

Per process by default. With ``budgets.shared``, a replica adds to its own usage what the other
replicas did, read from the decision log's database they share every ``refresh_s`` (their
requests of the last minute and their cost today per key, the latter from the log's daily client
rollup; a replica's rows are told apart by the replica id its completion ids start with). A key
can so overshoot by what the other replicas admitted since the last read."""

import asyncio
import logging
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field

from ._config import BudgetConfig, BudgetLimits
from ._errors import RateLimited
from ._log import REPLICA_ID_CHARS, DecisionLog, first_line, usage_by_client

_logger = logging.getLogger(__name__)
WINDOW_S = 60.0


@dataclass
class _Usage:
    """One key's requests in this replica (admission times, the last minute) and spend today."""

    admitted: deque[float] = field(default_factory=deque)
    spent_usd: float = 0.0


class Budgets:
    def __init__(self, config: BudgetConfig, log: DecisionLog) -> None:
        self.log = log
        self.configure(config)
        self.replica = uuid.uuid4().hex[:REPLICA_ID_CHARS]
        self._usage: defaultdict[str | None, _Usage] = defaultdict(_Usage)
        self._day = _utc_day(time.time())
        # The other replicas' requests in the last minute and spend today, per key, as last read.
        self._others_requests: dict[str | None, int] = {}
        self._others_spent: dict[str | None, float] = {}

    def configure(self, config: BudgetConfig) -> None:
        """Take (new) limits; what was used so far still counts."""
        self.config = config
        limits = [config.requests_per_minute, config.usd_per_day]
        limits += [v for k in config.per_key.values() for v in (k.requests_per_minute, k.usd_per_day)]
        self.active = any(v is not None for v in limits)

    def limits(self, client: str | None) -> BudgetLimits:
        own = self.config.per_key.get(client or "")
        return BudgetLimits(
            requests_per_minute=own.requests_per_minute
            if own and own.requests_per_minute is not None
            else self.config.requests_per_minute,
            usd_per_day=own.usd_per_day if own and own.usd_per_day is not None else self.config.usd_per_day,
        )

    def admit(self, client: str | None) -> None:
        """Count a request of ``client``, or raise RateLimited if it is over a limit."""
        now = time.time()
        self._roll_day(now)
        limits, usage = self.limits(client), self._usage[client]
        while usage.admitted and usage.admitted[0] <= now - WINDOW_S:
            usage.admitted.popleft()
        spent = self._others_spent.get(client, 0.0) + usage.spent_usd
        if limits.usd_per_day is not None and spent >= limits.usd_per_day:
            midnight = (self._day + 1) * 86_400
            raise RateLimited(
                f"this API key has spent its {limits.usd_per_day:g} USD for today (UTC)",
                retry_after=midnight - now,
                code="insufficient_quota",
            )
        recent = self._others_requests.get(client, 0) + len(usage.admitted)
        if limits.requests_per_minute is not None and recent >= limits.requests_per_minute:
            wait = usage.admitted[0] + WINDOW_S - now if usage.admitted else self.config.refresh_s
            raise RateLimited(
                f"this API key is over its {limits.requests_per_minute} requests per minute",
                retry_after=wait,
                code="rate_limit_exceeded",
            )
        usage.admitted.append(now)

    def charge(self, client: str | None, cost_usd: float) -> None:
        self._roll_day(time.time())
        self._usage[client].spent_usd += cost_usd

    def _roll_day(self, now: float) -> None:
        day = _utc_day(now)
        if day != self._day:
            self._day = day
            self._others_spent = {}
            for usage in self._usage.values():
                usage.spent_usd = 0.0

    async def share(self) -> None:
        """Read the other replicas' usage from the database every ``refresh_s``, until cancelled."""
        while True:
            if not self.active:  # no limits (yet; a reload may set some): nothing to read
                self._others_requests, self._others_spent = {}, {}
                await asyncio.sleep(self.config.refresh_s)
                continue
            try:
                self._others_requests, self._others_spent = await asyncio.to_thread(
                    usage_by_client,
                    self.log.engine,
                    since=time.time() - WINDOW_S,
                    day_start=self._day * 86_400.0,
                    except_replica=self.replica,
                )
            except Exception as exc:  # noqa: BLE001 -- keep the last reading and go on: budgets hold, a little stale
                _logger.warning("budgets: cannot read the shared usage (%s: %s)", type(exc).__name__, first_line(exc))
            await asyncio.sleep(self.config.refresh_s)


def _utc_day(timestamp: float) -> int:
    return int(timestamp // 86_400)
