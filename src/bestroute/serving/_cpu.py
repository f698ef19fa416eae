"""CPU-bound work of a request (routing a prompt, judging samples) off the event loop: in a
bounded worker pool, unless it is small enough that handing it to a thread costs more than doing
it (a short prompt's features take a few hundred microseconds; a thread hop and the GIL hand-off
add about as much to every request)."""

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")

# Below this many characters of input, work runs inline: features of 2,000 characters take
# about 1 ms here, consensus over answers of that size far less.
INLINE_CHARS = 2_000


async def run_cpu(pool: Executor, chars: float, work: Callable[[], T], *, timeout: float | None = None) -> T:
    """``work()``, inline when its input is at most INLINE_CHARS characters, else in ``pool``
    (awaited, so the event loop serves other requests meanwhile), waited for at most ``timeout``
    seconds (TimeoutError; the worker thread finishes it unseen). Inline work never yields to the
    loop, so no timer could interrupt it: only the pool's wait has one."""
    if chars <= INLINE_CHARS:
        return work()
    async with asyncio.timeout(timeout):
        return await asyncio.get_running_loop().run_in_executor(pool, work)
