"""Conversation affinity: which conversation a routed turn continues and the model it is on.

A conversation is named by a header (scoped to the client's key) or recognised by its earlier
messages: every answered routed turn is logged with the key its messages and its answer hash to
(a chain of SHA-256 over the messages, in order), and a later turn whose messages up to its last
assistant message hash to that key continues it. A replica remembers the turns it answered;
another finds them in the decision log (``latest_turn``)."""

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ._config import AffinityConfig
from ._cpu import run_cpu
from ._log import latest_turn
from .protocol import ChatCompletionRequest, ChatMessage

KEY_CHARS = 32  # 128 bits of SHA-256: no two turns collide by chance
# json.dumps(..., ensure_ascii=False) makes an encoder a call; the same bytes from one made once
_MESSAGE_ENCODER = json.JSONEncoder(ensure_ascii=False)

AffinityOutcome = Literal["kept", "escalated", "moved"]


@dataclass(frozen=True)
class Pin:
    """A conversation and the model that answered its latest routed turn."""

    conversation: str
    model: str
    at: float  # time.time() of that turn


@dataclass(frozen=True)
class Turn:
    """A routed request's place in its conversation, found before it is planned.

    ``conversation`` is known when a header names it or an earlier turn was found; ``history``
    is the chain digest of all its messages, from which the key of the next turn is made once
    this one is answered; ``pin`` is the model the conversation is on (None: a new conversation).
    """

    conversation: str | None
    history: str
    pin: Pin | None


@dataclass(frozen=True)
class Affinity:
    """What affinity did to a planned turn: kept it on the pinned model, saw the router escalate
    past it, or moved it (``reason``: the model cannot serve the turn)."""

    conversation: str
    pinned: str
    outcome: AffinityOutcome
    reason: str | None = None

    def note(self) -> str:
        because = f": {self.reason}" if self.reason else ""
        return f"affinity {self.outcome} ({self.pinned}, conversation {self.conversation}){because}"


def _message_bytes(role: str, text: str, tool_calls: Any) -> bytes:
    """A message as the chain hashes it: its role, text and tool calls' names and arguments (what
    a client sends back unchanged; ids and null fields vary between SDKs)."""
    calls = []
    if isinstance(tool_calls, list):
        for call in tool_calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                calls.append([str(function.get("name")), str(function.get("arguments"))])
    return _MESSAGE_ENCODER.encode([role, text, calls]).encode("utf-8", "surrogatepass")


def _link(digest: str, message: bytes) -> str:
    return hashlib.sha256(digest.encode() + message).hexdigest()[:KEY_CHARS]


def _chain(client: str | None, messages: list[ChatMessage]) -> tuple[str, str | None]:
    """The chain digest of all ``messages`` and of those up to the last assistant message (None:
    there is none, so this is a conversation's first turn)."""
    digest = hashlib.sha256(b"bestroute-conversation\x00" + (client or "").encode()).hexdigest()[:KEY_CHARS]
    earlier = None
    for message in messages:
        extra = message.model_extra or {}
        digest = _link(digest, _message_bytes(message.role, message.text(), extra.get("tool_calls")))
        if message.role == "assistant":
            earlier = digest
    return digest, earlier


def next_turn_key(history: str, answer: Mapping[str, Any]) -> str:
    """The key the next turn's earlier messages hash to: ``history`` continued by the answer
    (the message as the client got it, or as a stream's chunks assembled it)."""
    content = answer.get("content")
    shown = content if isinstance(content, str) else ChatMessage(role="assistant", content=content).text()
    return _link(history, _message_bytes("assistant", shown, answer.get("tool_calls")))


class Conversations:
    """The conversations of one gateway process: the turns it answered, remembered (at most
    ``cache_size`` conversations, least recently used first out), and the decision log for
    every replica's turns. A reload keeps this store; each call takes the settings in force.

    Parameters
    ----------
    engine : callable
        The decision log's database.
    pool : Executor
        Where a long conversation's hash chain is computed (off the event loop).
    """

    def __init__(self, engine: Callable[[], Engine], pool: Executor) -> None:
        self._engine, self._pool = engine, pool
        self._pins: OrderedDict[str, Pin] = OrderedDict()  # by conversation id and by next-turn key

    async def find(
        self, config: AffinityConfig, request: ChatCompletionRequest, headers: Mapping[str, str], client: str | None
    ) -> Turn | None:
        """The turn ``request`` is (None: affinity is off)."""
        if not config.enabled:
            return None
        # Hashing a long conversation (JSON of every message, then SHA-256) is CPU work like routing.
        chars = sum(len(m.content) if isinstance(m.content, str) else len(m.text()) for m in request.messages)
        history, earlier = await run_cpu(self._pool, chars, lambda: _chain(client, request.messages))
        named = headers.get(config.header)
        if named is not None:
            conversation = hashlib.sha256(f"{client or ''}\x00{named}".encode()).hexdigest()[:KEY_CHARS]
            return Turn(conversation, history, await self._pin(config, conversation=conversation))
        if earlier is None or not config.by_history:
            return Turn(None, history, None)
        pin = await self._pin(config, turn_key=earlier)
        return Turn(pin.conversation if pin else None, history, pin)

    async def _pin(
        self, config: AffinityConfig, *, conversation: str | None = None, turn_key: str | None = None
    ) -> Pin | None:
        """The newer of this replica's memory of the conversation and the log's latest turn of it
        (another replica's move, or this one's turns from before a restart)."""
        key = conversation or turn_key
        assert key is not None
        since = time.time() - config.ttl_s
        remembered = self._pins.get(key)
        try:
            found = await asyncio.to_thread(
                latest_turn, self._engine(), since=since, conversation=conversation, turn_key=turn_key
            )
        except SQLAlchemyError:
            found = None  # the log is away: this replica's memory is all there is
        logged = Pin(*found) if found is not None else None
        pins = [p for p in (remembered, logged) if p is not None and p.at >= since]
        return max(pins, key=lambda p: p.at) if pins else None

    def remember(self, config: AffinityConfig, conversation: str, model: str, turn_key: str) -> None:
        """An answered routed turn: its conversation is on ``model`` now, and its next turn's key
        leads there."""
        pin = Pin(conversation, model, time.time())
        for key in (conversation, turn_key):
            self._pins[key] = pin
            self._pins.move_to_end(key)
        while len(self._pins) > 2 * config.cache_size:
            self._pins.popitem(last=False)
