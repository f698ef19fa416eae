"""Logged traffic as routing data: every answered request with a stored prompt and a label
(feedback, or a shadow check with its answer) becomes a prompt, and each sample its answering
option drew, and the shadow's answer, becomes a response, read from the database in batches so
memory stays flat in the number of rows."""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, RowMapping, Select, exists, or_, select

from ..._exceptions import BestRouteError
from ...backends import estimate_tokens
from ...data import RoutingDataWriter, arm_parts, write_catalog
from ...selection import AnswerSpec, equivalent, read_answer
from .._config import GatewayConfig
from .database import open_database
from .schema import calls, decisions, feedback, shadows

BATCH = 1000


def export_log(
    config: GatewayConfig,
    out: Path,
    *,
    batch: int = BATCH,
    until: float | None = None,
    format: Literal["jsonl", "parquet"] = "jsonl",
) -> tuple[int, int, int]:
    """Write the answered requests (logged before ``until``; None: all) that have a stored prompt
    and a label as routing data in the exchange format (JSONL, or Parquet with ``format``), read
    and written ``batch`` requests at a time. A label is feedback, or a shadow check
    whose answer is stored. Each sample the answering option drew is a response row (its call's
    input tokens, its own output tokens), and so is the shadow's answer, as a response of the
    backend it asked. Qualities:

    - with feedback, the mean feedback for every sample whose final answer is the one the client
      got (the kept sample, those that agree with it, and the shadow's if it agreed); another
      answer's quality is unknown, so it is left out;
    - without feedback, the shadow's backend is taken as right: its answer has quality 1, and
      each sample 1 if its final answer is the shadow's, else 0. That is the label BEST-Route
      learns, whether an option's answer is as good as the reference's.

    Final answers are read as the gateway's selector reads them (``selector.answer``). Returns
    (prompts, responses written, samples left out)."""
    engine = open_database(config.decision_log.url)
    spec = config.selector.answer
    prompts = responses = left_out = 0
    try:
        with RoutingDataWriter(out, format=format) as writer:
            for rows in _labelled_batches(engine, batch, until):
                ids = [row["id"] for row in rows]
                scores, drawn, checks = feedback_of(engine, ids), _calls_of(engine, ids), _shadows_of(engine, ids)
                for row in rows:
                    samples = _samples(drawn.get(row["id"], []))
                    if not samples:
                        continue
                    given = scores.get(row["id"])
                    quality = sum(given) / len(given) if given else None
                    written, skipped = _responses(row["id"], samples, quality, checks.get(row["id"]), spec)
                    if not written:
                        continue
                    writer.add([{"prompt_id": row["id"], "prompt": row["prompt"]}], written)
                    prompts, responses, left_out = prompts + 1, responses + len(written), left_out + skipped
    finally:
        engine.dispose()
    if not prompts:
        for name in ("prompts.jsonl", "responses.jsonl.gz", "prompts.parquet", "responses.parquet"):
            (out / name).unlink(missing_ok=True)
        raise BestRouteError(
            "no logged request has both a stored prompt and a label; turn on decision_log.store_prompts, "
            "and post feedback to /v1/feedback or turn on shadow checks (shadow.rate)"
        )
    write_catalog(out, {b.name: b.price for b in config.backends})
    return prompts, responses, left_out


def _labelled_batches(engine: Engine, batch: int, until: float | None) -> Iterator[Sequence[RowMapping]]:
    """Answered decisions with a stored prompt and feedback or a stored shadow answer, ``batch``
    at a time, by id."""
    checked = exists().where(
        shadows.c.decision_id == decisions.c.id, shadows.c.agreed.is_not(None), shadows.c.response.is_not(None)
    )
    query = select(decisions.c.id, decisions.c.prompt).where(
        decisions.c.status == 200,
        decisions.c.prompt.is_not(None),
        or_(exists().where(feedback.c.decision_id == decisions.c.id), checked),
        *([decisions.c.created_at < until] if until is not None else []),
    )
    return keyset_pages(engine, query, decisions.c.id, batch)


def keyset_pages(engine: Engine, query: Select[Any], key: Any, batch: int) -> Iterator[Sequence[RowMapping]]:
    """The rows of ``query`` (which selects ``key``, a unique column), ``batch`` at a time in
    ``key``'s order. Each page is a query of its own (``key > last``, by the index, no OFFSET),
    so memory is one page, no cursor stays open between pages and rows written meanwhile do
    not shift the pages."""
    ordered = query.order_by(key)
    after: Any = None
    while True:
        page = ordered if after is None else ordered.where(key > after)
        with engine.connect() as connection:
            rows = connection.execute(page.limit(batch)).mappings().all()
        if not rows:
            return
        yield rows
        after = rows[-1][key.name]


def logged_prompts(url: str, *, batch: int = BATCH) -> Iterator[list[tuple[str, str | None]]]:
    """Every logged request's id and stored prompt (None where ``decision_log.store_prompts`` was
    off), ``batch`` at a time by id: what ``bestroute batch route`` reads from a decision log."""
    engine = open_database(url)
    try:
        for rows in keyset_pages(engine, select(decisions.c.id, decisions.c.prompt), decisions.c.id, batch):
            yield [(row["id"], row["prompt"]) for row in rows]
    finally:
        engine.dispose()


def _shadows_of(engine: Engine, ids: list[str]) -> dict[str, RowMapping]:
    """Each decision's first shadow check that came out, with its stored answer."""
    found: dict[str, RowMapping] = {}
    query = (
        select(shadows)
        .where(shadows.c.decision_id.in_(ids), shadows.c.agreed.is_not(None), shadows.c.response.is_not(None))
        .order_by(shadows.c.id)
    )
    with engine.connect() as connection:
        for row in connection.execute(query).mappings():
            found.setdefault(row["decision_id"], row)
    return found


def feedback_of(engine: Engine, ids: list[str]) -> dict[str, list[float]]:
    """Each decision's feedback scores."""
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
    prompt_id: str,
    samples: list[tuple[str, str | None, int, int, bool]],
    quality: float | None,
    shadow: RowMapping | None,
    spec: AnswerSpec,
) -> tuple[list[dict[str, Any]], int]:
    """The response rows of one prompt (its samples, then the shadow's answer), numbered per
    model from 0, and how many were left out; ``quality`` is the mean feedback (None: none)."""
    answer = next(read_answer(text, spec) for _, text, _, _, kept in samples if kept)
    truth = read_answer(shadow["response"], spec) if shadow is not None and quality is None else None
    drawn = [(model, text, i, o, kept, read_answer(text, spec)) for model, text, i, o, kept in samples]
    if shadow is not None:
        inputs = shadow["input_tokens"] if shadow["input_tokens"] is not None else samples[0][2]
        outputs = (
            shadow["output_tokens"] if shadow["output_tokens"] is not None else estimate_tokens(shadow["response"])
        )
        drawn.append(
            (shadow["against"], shadow["response"], inputs, outputs, False, read_answer(shadow["response"], spec))
        )
    rows: list[dict[str, Any]] = []
    numbers: dict[str, int] = {}
    left_out = 0
    for model, text, input_tokens, output_tokens, kept, read in drawn:
        if truth is not None:  # no feedback: the shadow's backend is right
            score = 1.0 if equivalent(read, truth) else 0.0
        elif quality is not None and (kept or equivalent(read, answer)):
            score = quality
        else:  # a different answer from the one the feedback rated: its quality is unknown
            left_out += 1
            continue
        backend, strategy = arm_parts(model)  # a strategy's call is of the arm backend@strategy
        rows.append(
            {
                "prompt_id": prompt_id,
                "model": backend,
                "sample": numbers.setdefault(model, 0),
                "quality": score,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "response": text,
            }
            | ({"strategy": strategy} if strategy is not None else {})
        )
        numbers[model] += 1
    return rows, left_out
