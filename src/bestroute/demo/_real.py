"""`bestroute demo`: the real loop in about a minute. Train the escalating router on the embedded
slice of real routing data (11 LLMs on GSM8K and CRUXEval), serve the models' recorded answers
with replay backends behind the gateway, send the held-out prompts through it with the openai
client, score each answer against the reference answer, post it as feedback, and compare the
routed traffic with always asking the reference and with the cheapest model."""

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import ConfigError
from ..data import RoutingDataset, split_prompts
from ..routers import EscalatingBestRouteRouter
from ._processes import Processes, check_port, free_port, start_gateway

MIN_RELATIVE_QUALITY = 0.995  # the serving knob: the threshold that kept 99.5% of the reference's quality on validation


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """Where to write and which port the gateway takes."""

    out: Path
    port: int = 8000

    def check(self) -> None:
        check_port(self.port)


@dataclass(frozen=True)
class Trained:
    router: EscalatingBestRouteRouter
    artifact: Path
    knob: float
    test: np.ndarray  # the held-out prompts


def train(data: RoutingDataset, settings: DemoSettings, echo: Callable[[str], None]) -> Trained:
    """The escalating router on the train split, its knob chosen on validation."""
    split = split_prompts(data.prompt_ids)
    settings.out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    router = EscalatingBestRouteRouter().fit(data, split.train, split.val)
    artifact = settings.out / "router.bestroute"
    router.save(artifact)
    knob = router.knob_for(min_relative_quality=MIN_RELATIVE_QUALITY)
    echo(
        f"trained best-route-escalate on {len(split.train)} prompts: {int(router.active_.sum())} options, "
        f"reference {router.reference_.model}, threshold {knob:g} ({time.perf_counter() - tic:.0f} s)"
    )
    return Trained(router, artifact, knob, split.test)


def serve(
    data_dir: Path, data: RoutingDataset, trained: Trained, settings: DemoSettings, echo: Callable[[str], None]
) -> Processes:
    """The replay backends (one process for every model) and the gateway over them."""
    processes = Processes()
    try:
        replay_port = free_port()
        replay_url = f"http://127.0.0.1:{replay_port}/v1"
        processes.start(
            ["replay", "serve", "--data", str(data_dir), "--port", str(replay_port)],
            ready=replay_url + "/models",
            log=settings.out / "replay.log",
        )
        echo(f"replay backends: {len(data.models)} models at {replay_url}")
        backends = [
            {
                "name": model,
                "base_url": replay_url,
                "input_usd_per_mtok": data.prices[model].input_usd_per_mtok,
                "output_usd_per_mtok": data.prices[model].output_usd_per_mtok,
                "supports_n": True,
            }
            for model in data.models
        ]
        config_path = start_gateway(
            processes,
            out=settings.out,
            port=settings.port,
            artifact=trained.artifact,
            threshold=trained.knob,
            backends=backends,
            selector=trained.router.selector,
            log=settings.out / "gateway.log",
        )
        echo(
            f"gateway: http://127.0.0.1:{settings.port}/v1 (config {config_path}); "
            f"dashboard: http://127.0.0.1:{settings.port}/dashboard"
        )
    except BaseException:
        processes.stop()
        raise
    return processes


@dataclass(frozen=True)
class Answered:
    """One held-out prompt as the gateway answered it."""

    prompt: int
    option: str
    model: str
    quality: float
    cost_usd: float
    escalated: bool


def send(
    data: RoutingDataset, trained: Trained, settings: DemoSettings, progress: Callable[[int, int], None]
) -> list[Answered]:
    """Each held-out prompt through the gateway with the openai client; each answer scored
    against the prompt's reference answer (the recorded quality of that response) and posted as
    feedback."""
    try:
        from openai import OpenAI
    except ImportError as exc:
        raise ConfigError("the demo's client needs the openai package: pip install openai") from exc
    import httpx

    base = f"http://127.0.0.1:{settings.port}"
    client = OpenAI(base_url=base + "/v1", api_key="not-needed", timeout=60, max_retries=0)
    answered = []
    for done, i in enumerate(trained.test, start=1):
        completion = client.chat.completions.create(
            model="bestroute", messages=[{"role": "user", "content": data.texts[i]}]
        )
        details = (completion.model_extra or {})["bestroute"]
        quality = _recorded_quality(data, int(i), completion.model, completion.choices[0].message.content)
        httpx.post(base + "/v1/feedback", json={"id": completion.id, "quality": quality}, timeout=10).raise_for_status()
        escalation = details["escalation"] or {}
        answered.append(
            Answered(
                int(i),
                details["option"],
                completion.model,
                quality,
                details["cost_usd"],
                bool(escalation.get("escalated")),
            )
        )
        progress(done, len(trained.test))
    return answered


def _recorded_quality(data: RoutingDataset, i: int, model: str, text: str | None) -> float:
    """How good the answer is: the quality recorded for that response (1 when its final answer
    matches the prompt's reference answer)."""
    j = data.model_index(model)
    for k in range(data.responses.shape[2]):
        if data.responses[i, j, k] == text:
            return float(data.quality[i, j, k])
    raise ConfigError(f"the gateway returned an answer {model!r} never gave to prompt {data.prompt_ids[i]!r}")


def summarize(data: RoutingDataset, trained: Trained, answered: list[Answered], wall_s: float) -> dict[str, Any]:
    """Routed traffic against always the reference and the cheapest model, and what offline
    evaluation says the same router does on the same prompts at the same knob."""
    router, test = trained.router, trained.test
    ref = router.reference_index_
    singles = [
        o for o, option in enumerate(router.options_) if option.single and router.outcomes_.available[test, o].all()
    ]
    cheapest = min(singles, key=lambda o: float(router.outcomes_.cost[test, o].mean()))
    assessed = router.assess([data.texts[i] for i in test])
    decisions = router.decide(assessed, trained.knob)
    offline = {
        "accuracy": float(router.outcomes_.quality[test, decisions].mean()),
        "cost_per_1k": float(router.outcomes_.cost[test, decisions].mean() * 1000),
        "escalation_rate": float((router.outcomes_.accepted[test, decisions] == 0).mean()),
    }

    def single(o: int) -> dict[str, Any]:
        return {
            "model": router.options_[o].model,
            "accuracy": float(router.outcomes_.quality[test, o].mean()),
            "cost_per_1k": float(router.outcomes_.cost[test, o].mean() * 1000),
            "escalation_rate": 0.0,
        }

    return {
        "routed": {
            "accuracy": float(np.mean([a.quality for a in answered])),
            "cost_per_1k": float(np.mean([a.cost_usd for a in answered]) * 1000),
            "escalation_rate": float(np.mean([a.escalated for a in answered])),
        },
        "offline": offline,
        "reference": single(ref),
        "cheapest": single(cheapest),
        "threshold": trained.knob,
        "options_used": sorted({a.option for a in answered}),
        "requests": len(answered),
        "wall_s": round(wall_s, 1),
    }


def table(summary: dict[str, Any]) -> str:
    rows = [
        ("routed by bestroute", summary["routed"]),
        (f"always {summary['reference']['model']} (reference)", summary["reference"]),
        (f"always {summary['cheapest']['model']} (cheapest)", summary["cheapest"]),
    ]
    lines = ["| traffic | accuracy | cost per 1k prompts | escalated |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {r['accuracy']:.3f} | ${r['cost_per_1k']:.4f} | {r['escalation_rate']:.0%} |" for name, r in rows
    ]
    saved = 1 - summary["routed"]["cost_per_1k"] / summary["reference"]["cost_per_1k"]
    agrees = all(
        math.isclose(summary["routed"][k], summary["offline"][k], rel_tol=1e-9, abs_tol=1e-12)
        for k in summary["offline"]
    )
    lines.append(
        f"\n{summary['requests']} held-out prompts ({summary['wall_s']} s in all, training included): "
        f"{saved:.0%} cheaper than always asking the "
        f"reference, at {summary['routed']['accuracy'] - summary['reference']['accuracy']:+.3f} accuracy."
    )
    lines.append(
        "`bestroute eval`'s simulation of the same router on the same prompts at the same threshold: "
        + ("the same figures." if agrees else f"different figures ({summary['offline']}).")
    )
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], out: Path) -> Path:
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    return path
