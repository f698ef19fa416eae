"""Blueprints: a reasoning guide for one task, written once by a large model from a few of the
task's prompts, which a blueprint strategy then puts in front of every prompt a small model gets."""

import aiohttp

from .._exceptions import ConfigError, DataError
from ..backends import CircuitBreaker, Upstream, UpstreamSettings
from ..strategies import Strategy

REQUEST = """Below are example questions of one task. Write a reasoning guide of at most {words} words \
that a much smaller model can follow to answer any question of this task correctly: the steps to \
take, the mistakes to avoid, and the exact form of the final answer. Do not answer the examples; \
write only the guide.

{examples}"""


async def write_blueprint(
    config: UpstreamSettings,
    backend: str,
    prompts: list[str],
    *,
    name: str,
    template: str = "{blueprint}\n\n{prompt}",
    words: int = 150,
    max_tokens: int = 600,
) -> Strategy:
    """Ask ``backend`` (the large model) for a guide from the example ``prompts`` and return the
    blueprint strategy ``name`` that inserts it (ConfigError or DataError for bad input)."""
    found = config.backend(backend)
    if found is None:
        raise ConfigError(f"--backend: {backend!r} is not a configured backend")
    if not prompts:
        raise DataError("no example prompts to write a blueprint from")
    examples = "\n\n".join(f"Example {k + 1}:\n{text.strip()}" for k, text in enumerate(prompts))
    body = {
        "messages": [{"role": "user", "content": REQUEST.format(words=words, examples=examples)}],
        "temperature": 0.0,
        "max_tokens": max_tokens,
    }
    async with aiohttp.ClientSession() as session:
        upstream = Upstream(found, config.retries, session, CircuitBreaker(config.circuit_breaker), found.api_key())
        completion = await upstream.complete(body, 1)
    guide = completion.texts[0].strip()
    if not guide:
        raise DataError(f"backend {backend!r} wrote an empty guide")
    return Strategy(name=name, template=template, blueprint=guide)
