"""The option executor: one implementation of best-of-n, verify and escalate. Offline evaluation
and the gateway feed it the same samples and get the same record; fed hostile samples it never
raises. Hand-made data (conftest.multisample_dir): small answers 42, 42, 7, 9; tiny "3"; big
(the reference) 42."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import aiohttp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import Script, upstream

from bestroute import RouterError, load_dataset
from bestroute.backends import BackendConfig, CircuitBreaker, CircuitConfig, Deadline, RetryConfig, Upstream
from bestroute.reward import load_selector
from bestroute.selection import (
    Call,
    Consensus,
    Drawn,
    Execution,
    Judgment,
    MajorityVote,
    Option,
    SelectionCache,
    execute,
    judgment,
    run_now,
    run_recorded,
)
from bestroute.serving._arms import Arms
from bestroute.serving._judging import GatewayJudge, InProcessSelector
from bestroute.serving._metrics import GatewayMetrics
from bestroute.serving._planning import Attempt
from bestroute.serving._sampling import Sampler
from bestroute.serving.protocol import ChatCompletionRequest

REFERENCE = Option("big")
PRICES = {"small": (0.1, 0.2), "tiny": (0.01, 0.02), "big": (5.0, 15.0)}
# Every kind of option, each on a path the hand-made samples decide (kept, escalated, continued).
OPTIONS = {
    "plain best-of-n": Option("small", 3),
    "accept, else reference (escalates)": Option("small", 3, accept=1.0),
    "accept, else reference (kept)": Option("small", 3, accept=0.6),
    "staged on doubt (kept at once)": Option("small", 2, accept=1.0, then=Option("small", 4, accept=0.6)),
    "staged on doubt (on to the reference)": Option("small", 3, accept=1.0, then=Option("small", 4, accept=0.6)),
    "staged to verify": Option.mixture(
        ("small", "tiny"), gate=0.5, then=Option.mixture(("small", "tiny"), n=2, accept=0.5)
    ),
    "staged to verify (straight to the reference)": Option.mixture(
        ("small", "tiny"), gate=1.0, then=Option.mixture(("small", "tiny"), n=2, accept=0.5)
    ),
    "mixture": Option.mixture(("small", "tiny")),
    "mixture, else reference": Option.mixture(("small", "tiny"), accept=1.0),
}


@pytest.fixture(scope="module")
def data(multisample_dir):
    return load_dataset(multisample_dir)


def comparable(execution: Execution) -> Execution:
    """The record without what only a live run has: wall times, and each sample's share of a
    call's output (an upstream that returns n choices reports only their total)."""

    def call(drawn: Drawn) -> Drawn:
        return replace(
            drawn,
            latency_s=0.0,
            output_tokens=(sum(drawn.output_tokens),),
            cost_usd=float(f"{drawn.cost_usd:.12e}"),  # one price formula offline, per sample; online, per call
        )

    stages = tuple(replace(stage, calls=tuple(call(d) for d in stage.calls)) for stage in execution.stages)
    return replace(execution, stages=stages)


def test_the_gateway_and_offline_evaluation_make_the_same_record(data):
    """Every option kind, run by the gateway's source and judge on real upstream servers that
    answer with the recorded samples, gives the record offline evaluation gives."""
    cache = SelectionCache(data, load_selector("consensus"))
    i = 1
    prompt = data.texts[i]
    recorded = {m: [data.responses[i, data.model_index(m), k] for k in range(4 if m != "big" else 2)] for m in PRICES}
    scripts = {m: Script(answers=texts) for m, texts in recorded.items()}
    scripts["big"].usage = {"prompt_tokens": 10, "completion_tokens": 20}  # as recorded; small and tiny: 10 + 5 each

    async def online(servers: dict[str, str]) -> dict[str, Execution]:
        runs = {}
        pool = ThreadPoolExecutor(2)
        async with aiohttp.ClientSession() as session:
            upstreams = {
                m: Upstream(
                    BackendConfig(
                        name=m,
                        base_url=url + "/v1",
                        supports_n=True,
                        max_n=8,
                        input_usd_per_mtok=PRICES[m][0],
                        output_usd_per_mtok=PRICES[m][1],
                    ),
                    RetryConfig(),
                    session,
                    CircuitBreaker(CircuitConfig()),
                )
                for m, url in servers.items()
            }
            sampler = Sampler(
                arms=Arms(upstreams, {}),
                selector=InProcessSelector(cache.selector, pool),
                reference="big",
                metrics=GatewayMetrics(),
            )
            request = ChatCompletionRequest(model="bestroute", messages=[{"role": "user", "content": prompt}])
            for name, option in OPTIONS.items():
                for script in scripts.values():
                    script._next = 0  # each run draws from the first recorded sample
                run = await sampler.run(
                    request, Attempt(option, option.label), routed=True, deadline=Deadline.after(30)
                )
                assert run.error is None, run.error
                runs[name] = run.execution
        pool.shutdown()
        return runs

    with upstream(scripts["small"]) as s, upstream(scripts["tiny"]) as t, upstream(scripts["big"]) as b:
        live = asyncio.run(online({"small": s.url, "tiny": t.url, "big": b.url}))
    verdicts = set()
    for name, option in OPTIONS.items():
        offline = run_recorded(cache, i, option, REFERENCE)
        assert comparable(live[name]) == comparable(offline), name
        verdicts |= {stage.verdict for stage in offline.stages}
        assert offline.samples == sum(c.call.samples for c in offline.calls)
    assert verdicts == {"keep", "next", "reference"}  # every path a stage can take was taken


class TextSource:
    """Samples from a list of texts, cycled; calls to ``failing`` models fail."""

    def __init__(self, texts: list[str | None], failing: frozenset[str] = frozenset()) -> None:
        self.texts, self.failing, self.calls = texts, failing, 0

    async def draw(self, calls):
        drawn = []
        for call in calls:
            self.calls += 1
            if call.model in self.failing:
                drawn.append(Drawn(call, cost_usd=0.5, error=f"backend {call.model!r}: HTTP 503"))
                continue
            texts = tuple(self.texts[(call.first + k) % len(self.texts)] for k in range(call.samples))
            drawn.append(Drawn(call, texts=texts, input_tokens=3, output_tokens=(2,) * call.samples, cost_usd=1.0))
        return drawn


class SelectorJudge:
    def __init__(self, selector) -> None:
        self.selector = selector

    async def judge(self, samples, *, signals=False):
        texts = [s.text for s in samples]
        agreement, scores = self.selector.judge("", texts, np.zeros(len(texts)))
        return judgment(self.selector, agreement, scores)


HOSTILE = st.one_of(
    st.none(),
    st.sampled_from(
        ["", " ", "\n", "\t\n ", "{", "}", "{}", '{"answer": null}', '{"tool_calls": []}', "####", "\ud800"]
    ),
    st.text(max_size=200),
    st.builds(lambda c, k: c * k, st.sampled_from(["7 ", "word ", "{", "\n"]), st.integers(5_000, 12_000)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(HOSTILE, min_size=1, max_size=6),
    name=st.sampled_from(sorted(OPTIONS)),
    selector=st.sampled_from([Consensus(), MajorityVote()]),
)
def test_hostile_samples_never_make_the_executor_raise(texts, name, selector):
    option = OPTIONS[name]
    execution = run_now(execute(option, source=TextSource(texts), judge=SelectorJudge(selector), reference="big"))
    assert execution.error is None and execution.answer is not None
    assert execution.cost_usd == pytest.approx(sum(c.cost_usd for c in execution.calls))
    drawn = {(c.call.model, c.call.first + k) for c in execution.calls for k in range(len(c.texts))}
    assert (execution.answer.model, execution.answer.number) in drawn
    assert execution.escalated == (execution.answer.model == "big" and "big" not in option.models)


def test_a_failed_call_ends_the_run_with_its_error_and_its_cost():
    escalating = OPTIONS["accept, else reference (escalates)"]
    source = TextSource(["1", "2", "3"], failing=frozenset({"big"}))
    execution = run_now(execute(escalating, source=source, judge=SelectorJudge(Consensus()), reference="big"))
    assert execution.answer is None and execution.error == "backend 'big': HTTP 503"
    assert [s.verdict for s in execution.stages] == ["reference", "failed"]
    assert execution.cost_usd == 1.5 and not execution.accepted  # the failed call's charge stays
    first = run_now(
        execute(
            escalating,
            source=TextSource(["x"], frozenset({"small"})),
            judge=SelectorJudge(Consensus()),
            reference="big",
        )
    )
    assert first.answer is None and len(first.stages) == 1 and first.stages[0].verdict == "failed"


def test_a_judge_that_fails_keeps_nothing_and_asks_the_reference():
    class Failing:
        async def judge(self, samples, *, signals=False):
            return Judgment(0, None, "selector: backend 'judge': HTTP 500; kept the first sample")

    execution = run_now(
        execute(Option("small", 3, accept=0.5), source=TextSource(["42"]), judge=Failing(), reference="big")
    )
    assert execution.escalated and execution.notes == ("selector: backend 'judge': HTTP 500; kept the first sample",)
    with pytest.raises(RouterError, match="no reference was given"):
        run_now(execute(Option("small", 3, accept=0.5), source=TextSource(["42"]), judge=Failing(), reference=None))


def test_run_now_refuses_a_coroutine_that_suspends():
    async def suspends() -> int:
        await asyncio.sleep(0)
        return 1

    with pytest.raises(RuntimeError, match="suspended"):
        run_now(suspends())


def test_the_gateway_judge_runs_off_the_event_loop_and_within_the_deadline():
    """A selector that takes long on long answers holds up neither the event loop nor the request
    past its deadline."""

    class Slow:
        spec = Consensus().spec
        confidence = "agreement"

        def judge(self, prompt, responses, quality, answer=None):
            import time

            time.sleep(0.5)
            return Consensus().judge(prompt, responses, quality)

    async def main() -> tuple[Judgment, int]:
        pool = ThreadPoolExecutor(1)
        judge = GatewayJudge(InProcessSelector(Slow(), pool), "q", Deadline.after(0.2))
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        long = "forty-two " * 200  # 2,000 characters each: judged in the pool, not inline
        verdict = await judge.judge([_sample(long), _sample(long)])
        ticker.cancel()
        pool.shutdown()
        return verdict, ticks

    verdict, ticks = asyncio.run(main())
    assert verdict.confidence is None and "deadline" in (verdict.note or "")
    assert ticks >= 10  # the loop kept running while the selector worked


def _sample(text: str):
    from bestroute.selection import Sample

    return Sample("small", 0, text)


def test_calls_per_stage_draw_only_what_they_add():
    from bestroute.selection import stage_calls

    staged = OPTIONS["staged to verify"]
    assert stage_calls(staged) == [
        (Call("small", 0, 1), Call("tiny", 0, 1)),
        (Call("small", 1, 1), Call("tiny", 1, 1)),
    ]


def test_a_source_or_judge_that_breaks_its_promise_fails_the_run_not_the_process():
    class Short:
        async def draw(self, calls):
            return [Drawn(call, texts=("only one",)) for call in calls]

    class OutOfRange:
        async def judge(self, samples, *, signals=False):
            return Judgment(len(samples) + 3, 0.9)

    short = run_now(execute(Option("small", 3), source=Short(), judge=SelectorJudge(Consensus()), reference="big"))
    assert short.answer is None and short.error == "small: returned 1 of 3 samples"
    kept = run_now(execute(Option("small", 3), source=TextSource(["a", "b", "c"]), judge=OutOfRange(), reference="big"))
    assert kept.answer is not None and kept.answer.number == 0 and kept.notes == ("the judge picked sample 6 of 3",)
