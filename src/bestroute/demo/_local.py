"""The whole loop on this machine, with no network: train BEST-Route on the embedded data,
evaluate it, serve the local models behind the gateway, and answer requests through it."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import ConfigError
from ..data import RoutingDataset, split_prompts
from ..evaluation import evaluate, markdown_table, write_results
from ..reward import choose_selector
from ..routers import BestRouteRouter
from ._processes import Processes, check_port, free_port, start_gateway, wait_ready

# Questions of the embedded data's kinds, none of them in it.
DEMO_QUESTIONS = (
    "What is the capital of Sweden? Answer with the city name only.",
    'What is the opposite of the word "ancient"? Answer with one word.',
    (
        'Extract the name of the person from this sentence: "On Sunday Peter fixed the old bicycle." '
        "Answer with the name only."
    ),
    (
        'Is the sentiment of this review positive or negative?\nReview: "The battery died after a day and '
        'support never answered."\nAnswer with one word: positive or negative.'
    ),
)


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """Where to write, which ports, and how hard to run the local models."""

    out: Path
    port: int = 8000
    max_n: int = 5
    threads: int = 1  # per local model server; two servers share the machine's cores
    max_tokens: int = 24  # as the embedded data was sampled
    questions: tuple[str, ...] = DEMO_QUESTIONS
    startup_timeout_s: float = 300.0  # Gemma's file is assembled from package chunks on first use

    def check(self) -> None:
        check_port(self.port)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def train_and_evaluate(
    data: RoutingDataset, settings: LoopSettings, echo: Callable[[str], None]
) -> tuple[Path, str, float]:
    """Fit the router (and its selector) on ``data`` and evaluate it against the same router
    restricted to n = 1. Returns the artifact, the selector and the serving threshold."""
    split = split_prompts(data.prompt_ids)
    settings.out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    spec, quality = choose_selector(data, split, (settings.out / "reward.bestroute").resolve())
    echo(f"selector: {spec.kind} (kept-sample quality on validation: {quality})")
    selector = str(spec)
    router = BestRouteRouter(max_n=settings.max_n, selector=selector).fit(data, split.train, split.val)
    artifact = settings.out / "router.bestroute"
    router.save(artifact)
    threshold = _threshold_at_reference_cost(router, split.val)
    echo(
        f"trained best-route: {len(router.options_)} options, reference {router.reference_.model}, "
        f"serving threshold {threshold:g} ({time.perf_counter() - tic:.0f}s)"
    )
    for max_n, name in ((settings.max_n, "eval"), (1, "eval-n1")):
        results = evaluate(
            data,
            routers=["best-route", "n-label", "knn", "oracle"] if max_n > 1 else ["best-route"],
            max_n=max_n,
            selector=selector,
        )
        write_results(results, settings.out / name)
        echo(f"\n## best-route with n <= {max_n} ({settings.out / name})\n" + markdown_table(results))
    return artifact, selector, threshold


def _threshold_at_reference_cost(router: BestRouteRouter, rows: np.ndarray) -> float:
    """The validation operating point of highest quality that costs no more than the reference."""
    reference_cost = float(router.outcomes_.cost[rows, router.reference_index_].mean() * 1000)
    return router.knob_for(max_cost_per_1k=reference_cost)


def start(
    data: RoutingDataset,
    settings: LoopSettings,
    artifact: Path,
    selector: str,
    threshold: float,
    echo: Callable[[str], None],
) -> Processes:
    """Start one llama.cpp server per model of ``data`` (local models, at once), then the gateway
    over them."""
    processes = Processes()
    try:
        backends: list[dict[str, Any]] = []
        launched = []
        for model in data.models:
            port = free_port()
            arguments = ["local", "serve", "--model", model, "--port", str(port), "--threads", str(settings.threads)]
            launched.append(processes.launch(arguments, log=settings.out / f"{model}.log"))  # llama.cpp is chatty
            price = data.prices[model]
            backends.append(
                {
                    "name": model,
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "input_usd_per_mtok": price.input_usd_per_mtok,
                    "output_usd_per_mtok": price.output_usd_per_mtok,
                    "max_n": 8,
                    "supports_n": False,
                    "timeout_s": 300,
                }
            )
        for backend, process in zip(backends, launched, strict=True):
            wait_ready(backend["base_url"] + "/models", process, settings.startup_timeout_s)
            echo(f"local model {backend['name']} serving at {backend['base_url']}")
        config_path = start_gateway(
            processes,
            out=settings.out,
            port=settings.port,
            artifact=artifact,
            threshold=threshold,
            backends=backends,
            selector=selector,
        )
        echo(f"gateway serving at {settings.gateway_url} (config {config_path})")
    except BaseException:
        processes.stop()
        raise
    return processes


def ask(settings: LoopSettings, echo: Callable[[str], None]) -> list[dict[str, Any]]:
    """Send the demo questions through the gateway with the official openai client."""
    try:
        from openai import OpenAI
    except ImportError as exc:
        raise ConfigError("the demo's client needs the openai package: pip install openai") from exc
    client = OpenAI(base_url=settings.gateway_url, api_key="not-needed", timeout=600)
    answers = []
    for question in settings.questions:
        tic = time.perf_counter()
        completion = client.chat.completions.create(
            model="bestroute",
            messages=[{"role": "user", "content": question}],
            max_tokens=settings.max_tokens,
            temperature=0.8,
        )
        decision = (completion.model_extra or {})["bestroute"]
        answer = {
            "question": question,
            "answer": completion.choices[0].message.content,
            "model": completion.model,
            "n": decision["n"],
            "selector": decision["selector"],
            "cost_usd": decision["cost_usd"],
            "seconds": round(time.perf_counter() - tic, 2),
        }
        answers.append(answer)
        echo(
            f"\nQ: {question}\nA: {answer['answer']!r}\n   model {answer['model']}, best of {answer['n']}"
            f"{' by ' + answer['selector'] if answer['selector'] else ''}, ${answer['cost_usd']:.8f}, "
            f"{answer['seconds']}s"
        )
    return answers
