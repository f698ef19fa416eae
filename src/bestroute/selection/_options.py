"""Routing options: (model, n) pairs, mixtures of models, and staged options that keep their
pick, go on to a larger stage or ask the reference, by the selector's confidence."""

from dataclasses import dataclass
from typing import Literal

from .._exceptions import RouterError

# What a stage does with its pick; "failed": a call it made failed, so it gave no answer.
Verdict = Literal["keep", "next", "reference", "failed"]


@dataclass(frozen=True)
class Option:
    """A routing option: ``n`` samples from ``model``, best one kept.

    A *mixture* samples ``n`` from each model of ``mix`` (``model`` is then their names joined
    by "+") and keeps the best of all. An *escalating* option (``accept`` set) keeps its pick
    only when the selector's confidence in it is >= ``accept``; otherwise the request goes on to
    ``then``, a larger stage that draws only the samples it adds and judges them together with
    those already drawn, or, when ``then`` is None, to the reference, and pays for every stage.
    A stage with a ``then`` goes on to it only when its confidence is >= ``gate`` (below that,
    straight to the reference); with ``accept`` None it never keeps its own pick, so the
    samples so far only decide whether more are worth drawing (verify before accepting). A last
    stage without ``accept`` keeps its pick: the reference is never asked.

    A *calibrated* option's thresholds compare the router's acceptance model's probability that
    the pick is as good as the reference's answer (see ``AcceptanceModel``), not the selector's
    own confidence; all its stages are calibrated."""

    model: str
    n: int = 1
    mix: tuple[str, ...] = ()
    accept: float | None = None
    then: "Option | None" = None
    gate: float = 0.0
    calibrated: bool = False

    def __post_init__(self) -> None:
        if not self.model or len(self.mix) == 1:
            raise RouterError(f"an option names one model, or a mixture of two or more, got {self.model!r}")
        if self.accept is not None and not 0.0 <= self.accept <= 1.0:
            raise RouterError(f"acceptance threshold must be in [0, 1], got {self.accept}")
        if self.mix and self.model != "+".join(self.mix):
            raise RouterError(f"a mixture's model name is its models joined by '+', got {self.model!r}")
        if not 0.0 <= self.gate <= 1.0:
            raise RouterError(f"a stage's gate must be in [0, 1], got {self.gate}")
        if self.gate and self.then is None:
            raise RouterError("a gate says when to go on to the next stage; this option has none")
        if self.then is not None:
            if self.accept is None and not self.gate:
                raise RouterError(f"a stage that always goes on to {self.then.label!r} is that stage alone")
            later = self.then
            if later.calibrated != self.calibrated:
                raise RouterError("the stages of an option are all calibrated or none is")
            if later.models[: len(self.models)] != self.models or later.n < self.n or later.samples <= self.samples:
                raise RouterError(
                    f"next stage {later.label!r} must draw more samples than {self.label!r}, its models first"
                )

    @classmethod
    def mixture(
        cls,
        models: tuple[str, ...],
        *,
        n: int = 1,
        accept: float | None = None,
        then: "Option | None" = None,
        gate: float = 0.0,
        calibrated: bool = False,
    ) -> "Option":
        return cls("+".join(models), n, tuple(models), accept, then, gate, calibrated)

    @property
    def models(self) -> tuple[str, ...]:
        return self.mix or (self.model,)

    @property
    def stages(self) -> tuple["Option", ...]:
        """This option and the stages it may go on to, in order."""
        return (self,) + (self.then.stages if self.then is not None else ())

    @property
    def judged(self) -> bool:
        """The selector's confidence decides what this stage does with its pick."""
        return self.accept is not None or self.then is not None

    @property
    def escalates(self) -> bool:
        """Some stage may send the request to the reference."""
        return self.stages[-1].accept is not None or any(stage.gate for stage in self.stages)

    @property
    def single(self) -> bool:
        """One response of one model, kept as it is."""
        return self.n == 1 and not self.mix and self.accept is None

    @property
    def composite(self) -> bool:
        """Mixes models, or judges its pick (keeps it, escalates or goes on): more than drawing n
        samples of one model."""
        return bool(self.mix) or self.judged

    @property
    def samples(self) -> int:
        """Responses drawn by this stage: n from each model."""
        return self.n * len(self.models)

    @property
    def label(self) -> str:
        base = self.model if self.n == 1 else f"{self.model} x{self.n}"
        at = "p>=" if self.calibrated else ">="
        if self.then is None:
            return base if self.accept is None else f"{base} {at}{self.accept:.2f} else reference"
        kept = "" if self.accept is None else f" {at}{self.accept:.2f} else"
        gated = f" if {at}{self.gate:.2f}:" if self.gate else ""
        return f"{base}{kept}{gated} {self.then.label}"


def stage_verdict(stage: Option, confidence: float | None) -> Verdict:
    """What one stage does with its pick: "keep" it, go on to the "next" stage, or ask the
    "reference". No confidence (a selector that failed) keeps nothing and goes on nowhere."""
    if stage.accept is None and stage.then is None:
        return "keep"
    if confidence is not None and stage.accept is not None and confidence >= stage.accept - 1e-9:
        return "keep"
    if confidence is not None and stage.then is not None and confidence >= stage.gate - 1e-9:
        return "next"
    return "reference"
