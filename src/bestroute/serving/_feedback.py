"""POST /v1/feedback: a quality score for an answered request, from the client that sent it."""

import asyncio
import time
from collections import OrderedDict

from sqlalchemy.exc import SQLAlchemyError

from ._errors import LogUnavailable, ModelNotFound
from ._log import DecisionLog, FeedbackRow, decision_owner
from .protocol import FeedbackRequest


class AnsweredRequests:
    """Ids this replica answered recently, with their client keys' fingerprints, so feedback on
    them is checked without a database round trip. Bounded: the oldest are forgotten first (the
    decision log still has them)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._owners: OrderedDict[str, str | None] = OrderedDict()

    def add(self, request_id: str, client: str | None) -> None:
        self._owners[request_id] = client
        if len(self._owners) > self.capacity:
            self._owners.popitem(last=False)

    def get(self, request_id: str) -> tuple[bool, str | None]:
        if request_id in self._owners:
            return True, self._owners[request_id]
        return False, None


class FeedbackService:
    """Feedback is queued in the decision log behind its decision, so it is never lost to an
    outage and never waits for the database when this replica answered the request. A request
    another replica answered is looked up in the shared database a few times, backing off, for
    up to ``wait_s`` (that replica's writer commits within its batch window)."""

    def __init__(self, log: DecisionLog, answered: AnsweredRequests, *, wait_s: float = 1.0) -> None:
        self.log, self.answered, self.wait_s = log, answered, wait_s

    async def record(self, feedback: FeedbackRequest, client: str | None) -> None:
        found, owner = self.answered.get(feedback.id)
        if not found:
            found, owner = await self._look_up(feedback.id)
        if not found or owner != client:  # another key's request is as unknown as a made-up id
            raise ModelNotFound(f"no answered request with id {feedback.id!r} for this API key", param="id")
        self.log.write(
            FeedbackRow(
                decision_id=feedback.id, quality=feedback.quality, comment=feedback.comment, created_at=time.time()
            )
        )

    async def _look_up(self, request_id: str) -> tuple[bool, str | None]:
        give_up, pause = time.monotonic() + self.wait_s, 0.05
        while True:
            try:
                found = await asyncio.to_thread(decision_owner, self.log.engine, request_id)
            except SQLAlchemyError:
                raise LogUnavailable(
                    "the decision log's database is unavailable; send the feedback again later"
                ) from None
            if found[0] or time.monotonic() + pause > give_up:
                return found
            await asyncio.sleep(pause)
            pause *= 2
