"""Logged traffic as routing data: every answered request with a stored prompt and feedback
becomes a prompt, and each sample its answering option drew becomes a response, read from the
database in batches so memory stays flat in the number of rows."""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, RowMapping, exists, select

from ..._exceptions import BestRouteError
from ...data import RoutingDataWriter, arm_parts, write_catalog
from ...selection import equivalent, read_answer
from .._config import GatewayConfig
from .schema import calls, decisions, feedback, open_database

BATCH = 1000


def export_log(config: GatewayConfig, out: Path, *, batch: int = BATCH) -> tuple[int, int, int]:
    """Write answered requests that have a stored prompt and feedback as routing data in the
    exchange format. Each sample the answering option drew is a response row (its call's input
    tokens, its own output tokens); its quality is the mean feedback when its final answer is
    the answer the client got (the kept sample, and those that agree with it), and unknown
    otherwise, so it is left out. Returns (prompts, responses written, samples left out)."""
    engine = open_database(config.decision_log.url)
    prompts = responses = left_out = 0
    try:
        with RoutingDataWriter(out) as writer:
            for rows in _answered_batches(engine, batch):
                ids = [row["id"] for row in rows]
                scores, drawn = _feedback_of(engine, ids), _calls_of(engine, ids)
                for row in rows:
                    samples = _samples(drawn.get(row["id"], []))
                    if not samples:
                        continue
                    quality = sum(scores[row["id"]]) / len(scores[row["id"]])
                    written, skipped = _responses(row["id"], samples, quality)
                    writer.add([{"prompt_id": row["id"], "prompt": row["prompt"]}], written)
                    prompts, responses, left_out = prompts + 1, responses + len(written), left_out + skipped
    finally:
        engine.dispose()
    if not prompts:
        (out / "prompts.jsonl").unlink(missing_ok=True)
        (out / "responses.jsonl.gz").unlink(missing_ok=True)
        raise BestRouteError(
            "no logged request has both a stored prompt and feedback; turn on "
            "decision_log.store_prompts and post feedback to /v1/feedback"
        )
    write_catalog(out, {b.name: b.price for b in config.backends})
    return prompts, responses, left_out


def _answered_batches(engine: Engine, batch: int) -> Iterator[Sequence[RowMapping]]:
    """Answered decisions with a stored prompt and feedback, ``batch`` at a time, by id."""
    query = (
        select(decisions.c.id, decisions.c.prompt)
        .where(
            decisions.c.status == 200,
            decisions.c.prompt.is_not(None),
            exists().where(feedback.c.decision_id == decisions.c.id),
        )
        .order_by(decisions.c.id)
    )
    after = ""
    while True:
        with engine.connect() as connection:
            rows = connection.execute(query.where(decisions.c.id > after).limit(batch)).mappings().all()
        if not rows:
            return
        yield rows
        after = rows[-1]["id"]


def _feedback_of(engine: Engine, ids: list[str]) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {}
    with engine.connect() as connection:
        for decision_id, quality in connection.execute(
            select(feedback.c.decision_id, feedback.c.quality).where(feedback.c.decision_id.in_(ids))
        ):
            scores.setdefault(decision_id, []).append(quality)
    return scores


def _calls_of(engine: Engine, ids: list[str]) -> dict[str, list[RowMapping]]:
    found: dict[str, list[RowMapping]] = {}
    query = select(calls).where(calls.c.decision_id.in_(ids)).order_by(calls.c.decision_id, calls.c.id)
    with engine.connect() as connection:
        for row in connection.execute(query).mappings():
            found.setdefault(row["decision_id"], []).append(row)
    return found


def _samples(drawn: list[RowMapping]) -> list[tuple[str, str | None, int, int, bool]]:
    """(model, response, one call's input tokens, output tokens, kept) of each sample the
    answering attempt (the one whose call holds the kept sample) drew, in the order drawn."""
    answering = next((row["attempt"] for row in drawn if row["kept"] is not None), None)
    samples = []
    for row in drawn:
        if row["attempt"] != answering or row["error"] is not None or row["responses"] is None:
            continue
        per_call = row["input_tokens"] // max(row["requests"], 1)
        for k, (text, tokens) in enumerate(zip(row["responses"], row["sample_tokens"] or [], strict=False)):
            samples.append((row["model"], text, per_call, int(tokens), row["kept"] == k))
    return samples


def _responses(
    prompt_id: str, samples: list[tuple[str, str | None, int, int, bool]], quality: float
) -> tuple[list[dict[str, Any]], int]:
    """The response rows of one prompt, numbered per model from 0, and how many samples were left out."""
    answer = next(read_answer(text) for _, text, _, _, kept in samples if kept)
    rows: list[dict[str, Any]] = []
    numbers: dict[str, int] = {}
    left_out = 0
    for model, text, input_tokens, output_tokens, kept in samples:
        if not kept and not equivalent(read_answer(text), answer):
            left_out += 1
            continue
        backend, strategy = arm_parts(model)  # a strategy's call is of the arm backend@strategy
        rows.append(
            {
                "prompt_id": prompt_id,
                "model": backend,
                "sample": numbers.setdefault(model, 0),
                "quality": quality,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "response": text,
            }
            | ({"strategy": strategy} if strategy is not None else {})
        )
        numbers[model] += 1
    return rows, left_out
