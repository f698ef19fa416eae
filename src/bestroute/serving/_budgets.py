"""Per client key: requests per minute and USD per UTC day, answered with 429 and Retry-After.

Per process by default. With ``budgets.shared``, every replica counts what all replicas did, read
from the decision log's database they share (requests of the last minute and today's cost per
key, every ``refresh_s``), plus what it admitted itself since that read: a replica may overshoot
by what the others admitted within one refresh."""

import asyncio
import logging
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from ._config import BudgetConfig, BudgetLimits
from ._errors import RateLimited
from ._log import DecisionLog

_logger = logging.getLogger(__name__)
WINDOW_S = 60.0


@dataclass
class _Usage:
    """One key's requests (admission times) and spend, on top of the last shared snapshot:
    ``pending_usd`` was spent while the snapshot was being read, ``spent_usd`` after."""

    admitted: deque[float] = field(default_factory=deque)
    spent_usd: float = 0.0
    pending_usd: float = 0.0


class Budgets:
    def __init__(self, config: BudgetConfig, log: DecisionLog) -> None:
        self.config, self.log = config, log
        self._usage: defaultdict[str | None, _Usage] = defaultdict(_Usage)
        self._day = _utc_day(time.time())
        # From the shared database, as of ``_snapshot_at``: requests in the last minute, spend today.
        self._shared_requests: dict[str | None, int] = {}
        self._shared_spent: dict[str | None, float] = {}
        self._snapshot_at = -math.inf

    @property
    def active(self) -> bool:
        limits = [self.config.requests_per_minute, self.config.usd_per_day]
        limits += [v for k in self.config.per_key.values() for v in (k.requests_per_minute, k.usd_per_day)]
        return any(v is not None for v in limits)

    def limits(self, client: str | None) -> BudgetLimits:
        own = self.config.per_key.get(client or "")
        return BudgetLimits(
            requests_per_minute=own.requests_per_minute if own and own.requests_per_minute is not None
            else self.config.requests_per_minute,
            usd_per_day=own.usd_per_day if own and own.usd_per_day is not None else self.config.usd_per_day)

    def admit(self, client: str | None) -> None:
        """Count a request of ``client``, or raise RateLimited if it is over a limit."""
        now = time.time()
        self._roll_day(now)
        limits, usage = self.limits(client), self._usage[client]
        while usage.admitted and usage.admitted[0] <= now - WINDOW_S:
            usage.admitted.popleft()
        if limits.usd_per_day is not None:
            spent = self._shared_spent.get(client, 0.0) + usage.pending_usd + usage.spent_usd
            if spent >= limits.usd_per_day:
                midnight = (self._day + 1) * 86_400
                raise RateLimited(f"this API key has spent its {limits.usd_per_day:g} USD for today (UTC)",
                                  retry_after=midnight - now, code="insufficient_quota")
        if limits.requests_per_minute is not None:
            recent = self._shared_requests.get(client, 0) + sum(t > self._snapshot_at for t in usage.admitted)
            if recent >= limits.requests_per_minute:
                wait = usage.admitted[0] + WINDOW_S - now if usage.admitted else self.config.refresh_s
                raise RateLimited(f"this API key is over its {limits.requests_per_minute} requests per minute",
                                  retry_after=wait, code="rate_limit_exceeded")
        usage.admitted.append(now)

    def charge(self, client: str | None, cost_usd: float) -> None:
        self._roll_day(time.time())
        self._usage[client].spent_usd += cost_usd

    def _roll_day(self, now: float) -> None:
        day = _utc_day(now)
        if day != self._day:
            self._day = day
            self._shared_spent = {}
            for usage in self._usage.values():
                usage.spent_usd = usage.pending_usd = 0.0

    async def share(self) -> None:
        """Read every replica's usage from the database every ``refresh_s``, until cancelled."""
        while True:
            started = time.time()
            for usage in self._usage.values():
                usage.pending_usd, usage.spent_usd = usage.pending_usd + usage.spent_usd, 0.0
            try:
                requests, spent = await asyncio.to_thread(
                    self.log.usage_by_client, since=started - WINDOW_S, day_start=self._day * 86_400.0)
            except SQLAlchemyError as exc:  # keep the last snapshot: budgets hold, a little stale
                _logger.warning("budgets: cannot read the shared usage (%s)", type(exc).__name__)
            else:
                self._shared_requests, self._shared_spent, self._snapshot_at = requests, spent, started
                for usage in self._usage.values():  # the database holds it now: not counted twice
                    usage.pending_usd = 0.0
            await asyncio.sleep(self.config.refresh_s)


def _utc_day(timestamp: float) -> int:
    return int(timestamp // 86_400)

