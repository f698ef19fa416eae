"""Running an option: the one implementation of best-of-n, verify and escalate.

:func:`execute` runs an option's stages in order: it asks a :class:`SampleSource` for the samples
a stage adds (every call of a stage at once), asks a :class:`Judge` to pick among all the stage
has drawn, applies the stage's rule (:func:`stage_verdict`), and goes on to the next stage, keeps
the pick, or asks the reference. It does no I/O of its own and returns an :class:`Execution`, a
frozen record of every call, stage and verdict. Offline evaluation feeds it recorded samples
(:func:`run_now`), the gateway feeds it upstream calls; whatever else needs to run an option
(replay, shadow checks, batch routing) supplies a source of its own.

The executor is a coroutine so that a source may await its calls; a source that never suspends
(recorded samples) runs it to its end at once, without an event loop (:func:`run_now`).
"""

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .._exceptions import RouterError
from ._confidence import Signals
from ._options import Option, Verdict, stage_verdict

REFERENCE_STAGE = "reference"
T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """What the executor asks a source for: ``samples`` responses of ``model``, numbered from ``first``."""

    model: str
    first: int
    samples: int


@dataclass(frozen=True)
class Drawn:
    """What one call returned: the responses (``samples`` of them unless it failed), tokens (the
    input over all the requests the call took, the output per response), cost and wall time.
    A failed call (``error`` set) returned no responses; what it was charged stays."""

    call: Call
    texts: tuple[str | None, ...] = ()
    input_tokens: int = 0
    output_tokens: tuple[int, ...] = ()
    cost_usd: float = 0.0
    latency_s: float = 0.0
    requests: int = 1  # HTTP requests: 1, or one per sample where the backend ignores n; 0 if not sent
    error: str | None = None
    tokens_estimated: bool = False  # the source reported no token counts; they are estimates

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Sample:
    """One drawn response: sample ``number`` of ``model``."""

    model: str
    number: int
    text: str | None


@dataclass(frozen=True)
class Judgment:
    """A judge's pick among a stage's samples (an index into them) and its confidence in it
    (None: it gives none, or it failed; ``note`` says which); ``signals`` when they were asked
    for and the judge can give them."""

    picked: int
    confidence: float | None
    note: str | None = None
    signals: Signals | None = None


@dataclass(frozen=True)
class StageRecord:
    """One stage as it ran: its calls, the sample it picked, its confidence and what it did."""

    label: str
    models: tuple[str, ...]
    n: int
    calls: tuple[Drawn, ...]
    picked: Sample | None
    confidence: float | None
    verdict: Verdict

    @property
    def cost_usd(self) -> float:
        return sum(call.cost_usd for call in self.calls)


@dataclass(frozen=True)
class Execution:
    """The record of one option's run: every stage in order (an escalation's call to the
    reference as a last stage named "reference"), the sample kept, and the notes of anything
    that went wrong on the way (a judge that failed). ``answer`` is None when a call failed
    (``error``): the option gave no answer, and what it drew is still paid for."""

    option: Option
    stages: tuple[StageRecord, ...]
    answer: Sample | None
    notes: tuple[str, ...] = ()
    error: str | None = None

    @property
    def calls(self) -> tuple[Drawn, ...]:
        return tuple(call for stage in self.stages for call in stage.calls)

    @property
    def escalated(self) -> bool:
        """The reference was asked (and answered, unless ``error`` says otherwise)."""
        return any(stage.label == REFERENCE_STAGE for stage in self.stages)

    @property
    def accepted(self) -> bool:
        """The option answered with its own pick."""
        return self.answer is not None and not self.escalated

    @property
    def confidence(self) -> float | None:
        """The last judged stage's confidence in its pick."""
        judged = [s.confidence for s in self.stages if s.label != REFERENCE_STAGE and s.verdict != "failed"]
        return judged[-1] if judged else None

    @property
    def cost_usd(self) -> float:
        # Summed stage by stage, as offline evaluation always has, so its figures do not move.
        total = 0.0
        for stage in self.stages:
            total += stage.cost_usd
        return total

    @property
    def samples(self) -> int:
        """Responses drawn over all calls."""
        return sum(len(call.texts) for call in self.calls)

    @property
    def input_tokens(self) -> int:
        return sum(call.input_tokens for call in self.calls)

    @property
    def output_tokens(self) -> int:
        return sum(sum(call.output_tokens) for call in self.calls)


class SampleSource(Protocol):
    """Where an option's samples come from: recorded data, upstream backends, a replay."""

    async def draw(self, calls: Sequence[Call]) -> Sequence[Drawn]:
        """One ``Drawn`` per call, in order; a call that fails is a ``Drawn`` with ``error``
        (never an exception), so every call's cost is accounted for."""
        ...


class Judge(Protocol):
    """Picks one of a stage's samples, and says how sure it is."""

    async def judge(self, samples: Sequence[Sample], *, signals: bool = False) -> Judgment:
        """Never raises for what the samples hold: a judge that fails returns a Judgment with
        no confidence and a note. With ``signals``, the Judgment carries the stage's signals
        (for a calibrated stage), or none if the judge cannot give them."""
        ...


def stage_calls(option: Option) -> list[tuple[Call, ...]]:
    """Per stage, the calls it adds: for each of its models, the samples it draws beyond those
    the stage before drew."""
    calls: list[tuple[Call, ...]] = []
    before: dict[str, int] = {}
    for stage in option.stages:
        calls.append(
            tuple(
                Call(m, before.get(m, 0), stage.n - before.get(m, 0))
                for m in stage.models
                if stage.n > before.get(m, 0)
            )
        )
        before = {m: stage.n for m in stage.models}
    return calls


def stage_keys(stage: Option) -> list[tuple[str, int]]:
    """The (model, sample number) pairs a stage is judged on, in judging order (model-major)."""
    return [(model, k) for model in stage.models for k in range(stage.n)]


async def execute(
    option: Option,
    *,
    source: SampleSource,
    judge: Judge,
    reference: str | None,
    acceptance: Callable[[Signals], float] | None = None,
) -> Execution:
    """Run ``option``: stage by stage, draw what the stage adds, judge all it has drawn, and keep
    the pick, go on, or ask ``reference`` (the reference model's name; None for an option that
    never escalates). A calibrated option's confidence is ``acceptance`` (the router's
    acceptance model) of the stage's signals. The first call that fails ends the run with that
    call's error."""
    if option.escalates and reference is None:
        raise RouterError(f"option {option.label!r} escalates, but no reference was given")
    if option.calibrated and acceptance is None:
        raise RouterError(f"option {option.label!r} is calibrated, but no acceptance model was given")
    drawn: dict[tuple[str, int], str | None] = {}
    stages: list[StageRecord] = []
    notes: list[str] = []
    for stage, calls in zip(option.stages, stage_calls(option), strict=True):
        results = tuple(await source.draw(calls))
        error = _failure(results)
        if error is not None:
            stages.append(StageRecord(stage.label, stage.models, stage.n, results, None, None, "failed"))
            return Execution(option, tuple(stages), None, tuple(notes), error=error)
        for result in results:
            drawn |= {(result.call.model, result.call.first + k): text for k, text in enumerate(result.texts)}
        samples = [Sample(m, k, drawn[m, k]) for m, k in stage_keys(stage)]
        judged = len(samples) > 1 or stage.judged
        judgment = await judge.judge(samples, signals=stage.calibrated) if judged else Judgment(0, None)
        if not 0 <= judgment.picked < len(samples):  # a judge's bug must not lose the samples paid for
            judgment = Judgment(0, None, f"the judge picked sample {judgment.picked} of {len(samples)}")
        if judgment.note is not None:
            notes.append(judgment.note)
        if stage.calibrated and acceptance is not None:  # no signals (a judge that failed): no confidence
            calibrated = acceptance(judgment.signals) if judgment.signals is not None else None
            judgment = Judgment(judgment.picked, calibrated, judgment.note, judgment.signals)
        verdict = stage_verdict(stage, judgment.confidence)
        picked = samples[judgment.picked]
        stages.append(StageRecord(stage.label, stage.models, stage.n, results, picked, judgment.confidence, verdict))
        if verdict == "keep":
            return Execution(option, tuple(stages), picked, tuple(notes))
        if verdict == "reference":
            break
    if reference is None:  # only a stage whose judge failed asks the reference of an option that never does
        raise RouterError(f"option {option.label!r} has no confident pick and no reference to ask")
    (answer,) = await source.draw((Call(reference, 0, 1),))
    error = _failure((answer,))
    if error is not None:
        stages.append(StageRecord(REFERENCE_STAGE, (reference,), 1, (answer,), None, None, "failed"))
        return Execution(option, tuple(stages), None, tuple(notes), error=error)
    kept = Sample(reference, 0, answer.texts[0])
    stages.append(StageRecord(REFERENCE_STAGE, (reference,), 1, (answer,), kept, None, "keep"))
    return Execution(option, tuple(stages), kept, tuple(notes))


def _failure(results: Sequence[Drawn]) -> str | None:
    """Why a stage's calls gave no usable samples: the first failed call's error, or a call that
    returned fewer samples than it was asked for; None if all answered."""
    for result in results:
        if result.error is not None:
            return result.error
        if len(result.texts) < result.call.samples:
            return f"{result.call.model}: returned {len(result.texts)} of {result.call.samples} samples"
    return None


def run_now(work: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (the executor fed recorded samples), without
    an event loop; RuntimeError if it does suspend (its source awaited real I/O)."""
    try:
        work.send(None)
    except StopIteration as done:
        return done.value
    work.close()
    raise RuntimeError("run_now: the coroutine suspended; run it in an event loop instead")
