"""The `bestroute` command line."""

import contextlib
import enum
import functools
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ._exceptions import BestRouteError, ConfigError
from .data import RoutingDataset, Split, demo_data_path, load_dataset, split_prompts
from .evaluation import DEFAULT_ROUTERS, evaluate, markdown_table, write_results
from .features import DOMAIN_QUANTILE, make_extractor
from .routers import CAUTION, ROUTERS, load_router

if TYPE_CHECKING:
    from .collection import CollectReport
    from .routers import BestRouteRouter, Router

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    help="bestroute: route each LLM request to a (model, n) option.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect routing data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
log_app = typer.Typer(help="The gateway's decision log.", no_args_is_help=True)
local_app = typer.Typer(help="Local GGUF models shipped in PyPI packages.", no_args_is_help=True)
app.add_typer(local_app, name="local")
app.add_typer(log_app, name="log")
batch_app = typer.Typer(
    help="Batch jobs on Ray (the scale extra: pip install 'bestroute[scale]').", no_args_is_help=True
)
app.add_typer(batch_app, name="batch")
replay_app = typer.Typer(help="Replay backends: recorded answers behind an OpenAI endpoint.", no_args_is_help=True)
app.add_typer(replay_app, name="replay")
console = Console()

GUARD_HELP = (
    "The out-of-domain guard: a prompt farther from the training prompts than --guard-quantile of the "
    "validation prompts goes to the reference."
)
GUARD_QUANTILE_HELP = (
    "Share of in-domain (validation) prompts the guard keeps inside, in (0, 1]: lower flags more of an unseen "
    "domain and more false alarms (docs/results.md, 'Out-of-domain guard')."
)


def _domain_quantile(guard: bool, quantile: float) -> float | None:
    """The routers' ``domain_quantile``: None without the guard; a bad quantile is one line."""
    if not 0 < quantile <= 1:
        raise BestRouteError(f"--guard-quantile must be in (0, 1], got {quantile}")
    return quantile if guard else None


SAMPLE_HELP = (
    "Read only a deterministic sample of about this fraction of the prompts (0-1; memory shrinks alike): "
    "for logs too large to hold; its cost in AUC is in docs/results.md."
)
DataPath = Annotated[Path, typer.Option("--data", help="Routing-data directory or RouterBench table.")]


SELECTOR_HELP = (
    "Best-of-n selector: auto (consensus, or a reward model fitted on the train split, or semantic "
    "consensus where answers are free text, whichever picks better on validation), consensus, "
    "majority, semantic:SIMILARITY, reward-model:PATH."
)


def _resolve_selector(
    selector: str, data: RoutingDataset, split: Split, reward_model_path: Path, features: str
) -> tuple[str, dict[str, float]]:
    if selector != "auto":
        return selector, {}
    from .reward import choose_selector

    reward_model_path.parent.mkdir(parents=True, exist_ok=True)
    spec, quality = choose_selector(data, split, reward_model_path.resolve(), features=features)
    return str(spec), quality


@contextlib.contextmanager
def _steps(title: str) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr for a long command, gone when it ends, and nothing where stderr
    is not a terminal (a log or a pipe): the callback takes (what is running, steps done, steps
    in all)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    stderr = Console(stderr=True)
    with Progress(
        *columns, TextColumn("{task.description}"), console=stderr, transient=True, disable=not stderr.is_terminal
    ) as bar:
        task = bar.add_task("", total=None)

        def show(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)
            bar.refresh()  # every step is drawn, however fast it goes (steps are few)

        yield show


def _one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    """A command whose BestRouteError is one plain line on stderr and exit status 2."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except BestRouteError as exc:
            _fail(exc)

    return run


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"--port: {port} is not a port (1 to 65535)")


def _fail(exc: Exception) -> NoReturn:
    # One plain line (no wrapping) so scripts and people can read it.
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@data_app.command("describe")
@_one_line_errors
def describe(
    path: Annotated[Path, typer.Argument(help="Routing-data directory or RouterBench table.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Models, quality and cost per 1k prompts, and the per-prompt oracle. Model names are shown
    whole: they are copied into gateway configurations exactly."""
    data = load_dataset(path)
    summary = data.describe()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{path}: {summary['prompts']} prompts, {len(data.models)} models")
    widest = max(len(m) for m in [*data.models, "per-prompt oracle"])
    table.add_column("model", no_wrap=True, min_width=widest)  # never cut: a truncated name cannot be copied
    for column in ("prompts", "samples", "quality", "cost per 1k ($)"):
        table.add_column(column, justify="right")
    for row in sorted(summary["models"], key=lambda r: -r["quality"]):
        table.add_row(
            row["model"], str(row["prompts"]), str(row["samples"]), f"{row['quality']:.4f}", f"{row['cost_per_1k']:.4f}"
        )
    oracle = summary["oracle"]
    table.add_section()
    table.add_row(
        "per-prompt oracle", str(summary["prompts"]), "1", f"{oracle['quality']:.4f}", f"{oracle['cost_per_1k']:.4f}"
    )
    console.print(table)


@app.command()
@_one_line_errors
def train(
    data_path: Annotated[
        Path | None,
        typer.Option("--data", help="Routing-data directory or RouterBench table; default: the embedded demo data."),
    ] = None,
    router: Annotated[str, typer.Option(help=f"One of: {', '.join(ROUTERS)}.")] = "best-route",
    out: Annotated[Path, typer.Option(help="Artifact file to write.")] = Path("router.bestroute"),
    features: Annotated[str, typer.Option(help="auto, static, minilm or lexical.")] = "auto",
    reference: Annotated[str | None, typer.Option(help="Reference model (default: best on validation).")] = None,
    max_n: Annotated[int, typer.Option("--max-n", help="Largest n of a best-of-n option.")] = 5,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    selector: Annotated[str, typer.Option(help=SELECTOR_HELP)] = "auto",
    guard: Annotated[bool, typer.Option("--guard/--no-guard", help=GUARD_HELP)] = True,
    guard_quantile: Annotated[float, typer.Option(help=GUARD_QUANTILE_HELP)] = DOMAIN_QUANTILE,
    sample: Annotated[float | None, typer.Option(help=SAMPLE_HELP)] = None,
    features_from: Annotated[
        Path | None,
        typer.Option(help="Fit on the vectors `bestroute batch features` made of these prompts (same --features)."),
    ] = None,
) -> None:
    """Fit a router on the train split and save it as one artifact file."""
    if router not in ROUTERS:
        raise BestRouteError(f"unknown router {router!r}; choose one of {', '.join(ROUTERS)}")
    with _steps(f"train {router}") as progress:
        progress("reading the data", 0, 4)
        data = load_dataset(data_path or demo_data_path(), sample=sample)
        split = split_prompts(data.prompt_ids, seed=seed)
        progress("choosing the best-of-n selector on validation" if selector == "auto" else "selector", 1, 4)
        selector, _ = _resolve_selector(selector, data, split, out.with_suffix(".reward.bestroute"), features)
        progress(f"fitting on {len(split.train)} prompts, calibrating on {len(split.val)}", 2, 4)
        fitted = ROUTERS[router](
            features=features,
            reference=reference,
            max_n=max_n,
            seed=seed,
            selector=selector,
            domain_quantile=_domain_quantile(guard, guard_quantile),
        )
        extractor = made = None
        if features_from is not None:
            from .batch import read_features

            extractor = make_extractor(features)
            made = read_features(features_from, data.prompt_ids, extractor)
        fitted.fit(data, split.train, split.val, features=made, extractor=extractor)
        progress("saving", 3, 4)
        fitted.save(out)
    console.print(
        f"saved {router} router ({len(fitted.options_)} options, reference "
        f"{fitted.reference_.model}, features {fitted.extractor_.name}) to {out}"
    )


@app.command()
@_one_line_errors
def route(
    artifact: Annotated[Path, typer.Argument(help="Router artifact from `bestroute train`.")],
    prompt: Annotated[str, typer.Argument(help="The prompt to route.")],
    threshold: Annotated[float | None, typer.Option(help="Raw knob (threshold or cost penalty).")] = None,
    min_quality: Annotated[
        float | None,
        typer.Option(help="Operating point: at least this fraction of the reference's quality, e.g. 0.99."),
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option(help="Operating point: at most this many USD per 1k prompts.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the routing decision for one prompt: option, predicted scores, expected cost per 1k
    prompts. Without --threshold, --min-quality or --max-cost it routes at --min-quality 0.99 (the
    cheapest validation point within 1% of the reference's quality). The table lists the servable
    options; options pruned in training (dominated on validation) are left out."""
    router = load_router(artifact)
    knob = threshold
    if min_quality is not None or max_cost is not None:
        knob = router.knob_for(min_relative_quality=min_quality, max_cost_per_1k=max_cost)
    decision = router.route([prompt], knob=knob)[0]
    if as_json:
        console.print_json(json.dumps(decision))
        return
    console.print(
        f"option: [bold]{decision['option']}[/bold]   {router.knob}: {decision[router.knob]:.4g}   "
        f"expected cost per 1k prompts: ${1000 * decision['expected_cost_usd']:.4f}"
    )
    if decision["out_of_domain"]:
        console.print("out of domain: far from the training prompts, so the reference answers it")
    table = Table("option", "score", "expected cost per 1k ($)")
    expected = router.assess([prompt], guard=False).cost[0]  # each option's, on this prompt
    for o, option in enumerate(router.options_):
        if router.active_[o]:
            table.add_row(option.label, f"{decision['scores'][option.label]:.4f}", f"{1000 * expected[o]:.4f}")
    console.print(table)


@app.command()
@_one_line_errors
def explain(artifact: Annotated[Path, typer.Argument(help="Router artifact from `bestroute train`.")]) -> None:
    """The validation operating table: knob, quality relative to the reference, cost per 1k."""
    router = load_router(artifact)
    if not router.table_:
        _fail(BestRouteError("this router has no validation table"))
    table = Table(
        title=f"{router.name}: reference {router.reference_.model}; validation operating points",
        caption="route with --min-quality 0.99 or --max-cost 0.5 instead of a raw knob",
    )
    for column in (router.knob, "quality", "vs reference", "cost per 1k ($)"):
        table.add_column(column, justify="right")
    last = None
    for point in router.table_:
        key = (round(point.quality, 6), round(point.cost_per_1k, 6))
        if key == last:
            continue  # knob values that change nothing make the table longer, not clearer
        last = key
        table.add_row(
            f"{point.knob:.4g}", f"{point.quality:.4f}", f"{point.relative_quality:.2%}", f"{point.cost_per_1k:.4f}"
        )
    console.print(table)
    if router.acceptance_:
        accepted = Table(
            "escalating option",
            "prompts",
            "accepted",
            "quality of accepted",
            title="validation: how often each escalating option kept its own answer",
        )
        for row in router.acceptance_:
            quality = "—" if row["accepted_quality"] is None else f"{row['accepted_quality']:.4f}"
            accepted.add_row(row["option"], str(row["prompts"]), f"{row['accepted']:.1%}", quality)
        console.print(accepted)
    for change in getattr(router, "changes_", []):
        if "added" in change:
            console.print(
                f"onboarded {', '.join(change['added'])} from {change['prompts']} representative prompts "
                f"({change['options']} options, {len(change.get('twins', {}))} with the head of their twin); "
                "the table above is estimated on the representative prompts"
            )
        else:
            console.print(f"removed {', '.join(change['removed'])}")
    if router.accept_model_ is not None:
        weights = Table("signal", "weight", title="acceptance model of the calibrated options (p>=): logistic weights")
        for name, weight in router.accept_model_.weights().items():
            weights.add_row(name, f"{weight:+.3f}")
        console.print(weights)


@app.command()
@_one_line_errors
def calibration(
    artifact: Annotated[Path, typer.Argument(help="Router artifact from `bestroute train`.")],
    out: Annotated[Path, typer.Option(help="Directory to write prompts.jsonl into.")],
    prompts: Annotated[
        int | None, typer.Option(help="The first K representative prompts (default: all the router has).")
    ] = None,
) -> None:
    """Write the router's representative prompts, in order, for a new model to answer (for
    example with `bestroute collect --prompts OUT/prompts.jsonl`); `bestroute onboard` reads the
    answers."""
    from .data import write_prompts
    from .routers import representative_prompts

    chosen = representative_prompts(_onboardable(load_router(artifact)), prompts)
    write_prompts(out, _prompt_rows(chosen))
    console.print(f"wrote {chosen.n_prompts} representative prompts to {out / 'prompts.jsonl'}")


def _onboardable(router: "Router") -> "BestRouteRouter":
    from .routers import BestRouteRouter

    if not isinstance(router, BestRouteRouter):
        raise BestRouteError(f"only BEST-Route routers take new models or lose them; this is {router.name!r}")
    return router


def _prompt_rows(data: RoutingDataset) -> list[dict[str, str]]:
    rules = data.answer_rules or [(None, None)] * data.n_prompts
    rows = []
    for pid, text, task, reference, (kind, pattern) in zip(
        data.prompt_ids, data.texts, data.tasks, data.references, rules, strict=True
    ):
        row = {"prompt_id": pid, "prompt": text}
        extras = {"task": task, "reference": reference, "answer_type": kind, "answer_pattern": pattern}
        rows.append(row | {key: value for key, value in extras.items() if value is not None})
    return rows


@app.command()
@_one_line_errors
def onboard(
    artifact: Annotated[Path, typer.Argument(help="Router artifact from `bestroute train`.")],
    out: Annotated[Path, typer.Option(help="Artifact file to write: the router with the new model(s).")],
    data_path: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Routing data of the new model(s) on the router's representative prompts (`bestroute calibration`); "
            "with --collect, where the collected answers go (default: OUT.calibration).",
        ),
    ] = None,
    collect_config: Annotated[
        Path | None,
        typer.Option("--collect", help="Gateway YAML configuration: sample the new model's answers through it."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="With --collect: the configured backend to onboard.")] = None,
    prompts: Annotated[
        int | None, typer.Option(help="With --collect: ask the first K representative prompts (default: all).")
    ] = None,
    samples: Annotated[
        int | None, typer.Option(help="With --collect: samples per prompt (default: the router's max n).")
    ] = None,
    check: Annotated[str, typer.Option(help="With --collect: reference check of the answers.")] = "exact",
    max_tokens: Annotated[int, typer.Option(help="With --collect: longest response in tokens.")] = 512,
    caution: Annotated[
        float,
        typer.Option(
            help="Standard errors below its calibration labels' mean that a new option's mean prediction is set to "
            "(0: the mean itself; higher: new options chosen only where their answers are surely good).",
        ),
    ] = CAUTION,
) -> None:
    """Add new models to a trained BEST-Route router from their answers to its representative
    prompts, without retraining; the gateway serves the new artifact on reload."""
    import asyncio

    from .routers import onboard as add_models
    from .routers import representative_prompts

    router = _onboardable(load_router(artifact))
    if collect_config is None:
        if data_path is None:
            raise ConfigError("give --data (the new model's answers) or --collect CONFIG --model NAME")
        if model is not None or prompts is not None or samples is not None:
            raise ConfigError("--model, --prompts and --samples go with --collect")
        answers = load_dataset(data_path)
    else:
        if model is None:
            raise ConfigError("--collect needs --model: the configured backend to onboard")
        from .collection import CollectSettings, collect
        from .data import write_prompts
        from .serving import load_config

        directory = data_path or out.with_name(out.name + ".calibration")
        chosen = representative_prompts(router, prompts)
        write_prompts(directory, _prompt_rows(chosen))
        settings = CollectSettings(samples=samples or router.max_n, models=[model], check=check, max_tokens=max_tokens)
        report = asyncio.run(collect(load_config(collect_config), directory / "prompts.jsonl", directory, settings))
        console.print(
            f"collected {report.written} answers of {model} ({report.already_done} already there, "
            f"{report.failed} failed) into {directory}; {report.tokens:,} tokens, ${report.cost_usd:.4f}"
        )
        answers = load_dataset(directory)
    started = time.process_time()
    onboarded = add_models(router, answers, caution=caution)
    onboarded.save(out)
    change = onboarded.changes_[-1]
    console.print(
        f"onboarded {', '.join(change['added'])} from {change['prompts']} representative prompts: "
        f"{change['options']} new options ({len(onboarded.options_)} in all; {len(change['twins'])} started from "
        "the head of their twin, the same option with a model most like the new one), "
        f"{time.process_time() - started:.1f}s of CPU; saved to {out}"
    )


@app.command()
@_one_line_errors
def remove(
    artifact: Annotated[Path, typer.Argument(help="Router artifact from `bestroute train`.")],
    model: Annotated[list[str], typer.Option(help="A model to remove (repeat for more).")],
    out: Annotated[Path, typer.Option(help="Artifact file to write: the router without the model(s).")],
) -> None:
    """Remove models (retired by their vendor, say) from a trained BEST-Route router, without
    retraining: every option that samples one of them goes; the others keep their heads."""
    from .routers import remove as remove_models

    router = _onboardable(load_router(artifact))
    removed = remove_models(router, model)
    removed.save(out)
    console.print(
        f"removed {', '.join(model)}: {len(router.options_) - len(removed.options_)} options gone, "
        f"{len(removed.options_)} left; saved to {out}"
    )


@app.command("eval")
@_one_line_errors
def eval_command(
    data_path: Annotated[
        Path | None,
        typer.Option("--data", help="Routing-data directory or RouterBench table; default: the embedded demo data."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for results.json and curves.png.")] = Path("results"),
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    routers: Annotated[list[str] | None, typer.Option(help="Routers to evaluate (repeat); default all.")] = None,
    features: Annotated[str, typer.Option(help="auto, static, minilm or lexical.")] = "auto",
    max_n: Annotated[int, typer.Option("--max-n", help="Restrict options to n <= this.")] = 5,
    reference: Annotated[str | None, typer.Option(help="Reference model (default: best on validation).")] = None,
    selector: Annotated[str, typer.Option(help=SELECTOR_HELP + " Also: oracle (an upper bound).")] = "auto",
    guard: Annotated[bool, typer.Option("--guard/--no-guard", help=GUARD_HELP)] = True,
    guard_quantile: Annotated[float, typer.Option(help=GUARD_QUANTILE_HELP)] = DOMAIN_QUANTILE,
    train_sample: Annotated[
        float | None,
        typer.Option(help="Fit on the training prompts of `train --sample`'s sample of this fraction; test whole."),
    ] = None,
) -> None:
    """Sweep each router's knob on the test split; write results.json and curves.png."""
    names = [n.strip() for item in (routers or DEFAULT_ROUTERS) for n in item.split(",") if n.strip()]
    data = load_dataset(data_path or demo_data_path())
    split = split_prompts(data.prompt_ids, seed=seed)
    with _steps("eval") as progress:
        if selector == "auto":
            progress("choosing the best-of-n selector on validation", 0, 1)
        selector, choice = _resolve_selector(selector, data, split, out / "reward.bestroute", features)
        results = evaluate(
            data,
            routers=names,
            seed=seed,
            features=features,
            max_n=max_n,
            reference=reference,
            selector=selector,
            domain_quantile=_domain_quantile(guard, guard_quantile),
            train_sample=train_sample,
            log=lambda m: typer.echo(m, err=True),
            progress=progress,
        )
    if choice:
        results["selector_validation_quality"] = choice
    write_results(results, out)
    typer.echo(markdown_table(results))
    typer.echo(f"\nwrote {out / 'results.json'} and {out / 'curves.png'}")


@app.command()
@_one_line_errors
def serve(
    config: Annotated[Path, typer.Option(help="Gateway YAML configuration.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log a line per HTTP request.")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes sharing the port (one per core; docs/gateway.md).")
    ] = 1,
) -> None:
    """Run the OpenAI-compatible routing gateway."""
    from .serving import create_app, load_config, run_gateway, run_workers

    _check_port(port)
    gateway = create_app(load_config(config), config_path=config)  # checks every file once, here
    url = f"http://{host}:{port}/v1"
    if workers == 1:
        typer.echo(gateway.describe(url), err=True)
        run_gateway(gateway, host=host, port=port, access_log=access_log)
        return
    typer.echo(f"{gateway.describe(url)}; {workers} workers", err=True)
    del gateway  # each worker builds its own
    run_workers(config, host=host, port=port, workers=workers, access_log=access_log)


@batch_app.command("route")
@_one_line_errors
def batch_route(
    artifact: Annotated[Path, typer.Argument(help="Router artifact from `bestroute train`.")],
    source: Annotated[
        str,
        typer.Argument(
            help="JSONL or Parquet rows (a file or a directory) with a prompt or messages, or a decision "
            "log's database URL (sqlite:///decisions.db, postgresql+psycopg://...)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory to write the decisions to (Parquet).")],
    threshold: Annotated[float | None, typer.Option(help="Raw knob (threshold or cost penalty).")] = None,
    min_quality: Annotated[
        float | None, typer.Option(help="Operating point: at least this fraction of the reference's quality.")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option(help="Operating point: at most this many USD per 1k prompts.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Ray actors routing at once (each loads the artifact once).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Rows per routing call.")] = 1024,
    rows_per_file: Annotated[int, typer.Option(help="Rows per Parquet file written (about).")] = 65_536,
    ray_address: Annotated[
        str | None, typer.Option(help="A Ray cluster to run on (default: a local instance).")
    ] = None,
) -> None:
    """Route every row with a router artifact on Ray Data and write each decision (id, option,
    model, n, knob, scores, expected cost, out of domain) or the row's error as Parquet, in the
    input's order. Rows stream: memory stays flat in the number of rows. Without --threshold,
    --min-quality or --max-cost it routes at the artifact's default knob, as `bestroute route`."""
    from .batch import route_batch

    knob = threshold
    if min_quality is not None or max_cost is not None:
        knob = load_router(artifact).knob_for(min_relative_quality=min_quality, max_cost_per_1k=max_cost)
    report = route_batch(
        artifact,
        source,
        out,
        knob=knob,
        workers=workers,
        batch_size=batch_size,
        rows_per_file=rows_per_file,
        ray_address=ray_address,
    )
    typer.echo(f"{report.routed} rows routed, {report.failed} with an error; decisions in {report.out}")


@batch_app.command("features")
@_one_line_errors
def batch_features(
    data_path: Annotated[Path, typer.Argument(help="Routing-data directory whose prompts to make features of.")],
    out: Annotated[Path, typer.Option(help="New or empty directory to write the vectors to (Parquet).")],
    features: Annotated[str, typer.Option(help="auto, static, minilm or lexical: as `bestroute train`.")] = "auto",
    workers: Annotated[int, typer.Option(help="Ray actors at once (each builds the extractor once).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Prompts per call of the extractor.")] = 1024,
    rows_per_file: Annotated[int, typer.Option(help="Rows per Parquet file written (about).")] = 65_536,
    ray_address: Annotated[
        str | None, typer.Option(help="A Ray cluster to run on (default: a local instance).")
    ] = None,
) -> None:
    """Make every prompt's feature vector on Ray Data and write them as Parquet (prompt_id,
    features), for `bestroute train --features-from`: the step of training that grows with the
    prompts' text, on every core of a machine or a cluster."""
    from .batch import features_batch

    report = features_batch(
        data_path,
        out,
        features=features,
        workers=workers,
        batch_size=batch_size,
        rows_per_file=rows_per_file,
        ray_address=ray_address,
    )
    typer.echo(f"{report.prompts} prompts, {report.dim} {report.extractor} features each; vectors in {report.out}")


class ExportFormat(enum.StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"


@log_app.command("export")
@_one_line_errors
def export(
    config: Annotated[Path, typer.Option(help="Gateway YAML configuration (its decision_log.url).")],
    out: Annotated[Path, typer.Option(help="Directory to write routing data to.")],
    format: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl (prompts.jsonl, responses.jsonl.gz) or parquet.")
    ] = ExportFormat.jsonl,
) -> None:
    """Write logged requests with feedback or a shadow check as routing data in the exchange
    format (their drawn samples and the shadow's answer), a thousand requests at a time."""
    from .serving import export_log, load_config

    prompts, responses, left_out = export_log(load_config(config), out, format=format.value)
    typer.echo(
        f"wrote {prompts} prompts, {responses} responses to {out}; "
        f"left out {left_out} sample(s) whose final answer was not the one judged"
    )


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_s(text: str) -> float:
    """``30m``, ``24h``, ``7d`` as seconds; anything else is a one-line error."""
    number, unit = text[:-1], text[-1:]
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except (ValueError, KeyError):
        raise ConfigError(f"--since: {text!r} is not a duration such as 30m, 24h or 7d") from None
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"--since: {text!r} is not a positive duration")
    return seconds


@log_app.command("stats")
@_one_line_errors
def stats(
    config: Annotated[Path, typer.Option(help="Gateway YAML configuration (its decision_log.url and router).")],
    since: Annotated[str | None, typer.Option(help="Only the last 30m, 24h, 7d...; default: the whole log.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests, cost and escalations per option, feedback quality, and the saving against
    always asking the router's reference."""
    import dataclasses

    from .serving import load_config, log_stats

    start = time.time() - _duration_s(since) if since is not None else 0.0
    figures = log_stats(load_config(config), since=start)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(figures) | {"savings": figures.savings}, indent=2))
        return
    if not figures.requests:
        typer.echo("the decision log has no requests" + (f" in the last {since}" if since else ""))
        return
    table = Table(
        "option",
        "requests",
        "share",
        "cost ($)",
        "cost per 1k ($)",
        "escalated",
        "feedback",
        "quality",
        title=f"{figures.requests} requests ({figures.errors} failed)"
        + (f" in the last {since}" if since else "")
        + f", ${figures.cost_usd:.4f}",
    )
    for row in figures.options:
        table.add_row(
            row.option or "(failed)",
            str(row.requests),
            f"{row.requests / figures.requests:.1%}",
            f"{row.cost_usd:.4f}",
            f"{1000 * row.cost_usd / row.requests:.4f}",
            f"{row.escalated / row.requests:.1%}" if row.option else "—",
            str(row.feedback),
            "—" if row.quality is None else f"{row.quality:.3f}",
        )
    console.print(table)
    if figures.routed:
        saved = "—" if figures.savings is None else f"{figures.savings:.1%}"
        typer.echo(
            f"routed requests: {figures.routed}, ${figures.routed_cost_usd:.4f}; always the reference "
            f"({figures.reference}): ${figures.reference_cost_usd:.4f} (estimated); saved {saved}"
        )
    if figures.usage_estimated:
        typer.echo(f"{figures.usage_estimated} request(s) with estimated usage: their upstream reported no tokens")


@log_app.command("evaluate")
@_one_line_errors
def log_evaluate(
    candidate: Annotated[Path, typer.Argument(help="Router artifact to evaluate on the logged traffic.")],
    config: Annotated[Path, typer.Option(help="Gateway YAML configuration (its decision_log.url and backends).")],
    min_quality: Annotated[
        float | None, typer.Option(help="The candidate's operating point (default: its own, --min-quality 0.99).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Estimate a candidate router's quality and cost on the logged traffic from its propensities
    (inverse propensity, self-normalised and doubly robust, with 95% bootstrap intervals)."""
    import dataclasses

    from .serving import evaluate_log, load_config

    found = evaluate_log(load_config(config), str(candidate), min_quality=min_quality)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(found), indent=2))
        return
    table = Table(
        "estimator",
        "quality (95% interval)",
        "cost per 1k ($, 95% interval)",
        title=f"{found.candidate} at {found.knob:.4g} on {found.rows} logged requests ({found.labelled} with a "
        "quality: feedback, a shadow check, or the reference's own answer)",
    )
    for name in ("ips", "snips", "dr"):
        quality, cost = getattr(found.quality, name), getattr(found.cost_per_1k, name)
        if quality is None or cost is None:
            continue
        table.add_row(
            name,
            f"{quality.value:.4f} ({quality.lower:.4f}-{quality.upper:.4f})",
            f"{cost.value:.4f} ({cost.lower:.4f}-{cost.upper:.4f})",
        )
    table.add_section()
    table.add_row("logged traffic", f"{found.logged_quality:.4f}", f"{found.logged_cost_per_1k:.4f}")
    console.print(table)
    typer.echo(
        f"{found.quality.matched} labelled requests took the candidate's option (effective sample size "
        f"{found.quality.effective_size:.1f})"
    )


@app.command()
@_one_line_errors
def retrain(
    config: Annotated[
        Path, typer.Option(help="Gateway YAML configuration (its router, decision_log.url and backends).")
    ],
    holdout: Annotated[
        float, typer.Option(help="Newest share of the routed traffic the two routers are compared on.")
    ] = 0.3,
    min_quality: Annotated[
        float | None,
        typer.Option(help="Compare both at this knob (default: the config's threshold, else each router's own)."),
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Quality the new router may lose if it is cheaper (default: none).")
    ] = 0.0,
    with_data: Annotated[
        Path | None, typer.Option(help="Also train on this routing data (exchange format), e.g. the original.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where a better router goes (default: over the serving one, kept as .previous).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Retrain the router from the decision log: train on the older traffic (drawn samples,
    shadow answers, feedback), estimate both routers on the newer traffic from its propensities,
    and write the new one only if it is better there. The gateway reloads it by itself."""
    import dataclasses

    from .serving import load_config
    from .serving import retrain as retrain_router

    with console.status("exporting the log, training and evaluating"):
        report = retrain_router(
            load_config(config),
            holdout=holdout,
            min_quality=min_quality,
            tolerance=tolerance,
            with_data=with_data,
            out=out,
        )
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(report), indent=2, default=str))
        return
    table = Table(
        "router",
        "quality (95% interval)",
        "cost per 1k ($, 95% interval)",
        "rows it took",
        title=f"on the {report.serving.rows} routed requests logged since {_utc(report.cutoff)} UTC",
    )
    for name, found in (("serving", report.serving), ("retrained", report.candidate)):
        quality = found.quality.dr or found.quality.snips
        cost = found.cost_per_1k.dr or found.cost_per_1k.snips
        table.add_row(
            f"{name} ({found.candidate} at {found.knob:.4g})",
            f"{quality.value:.4f} ({quality.lower:.4f}-{quality.upper:.4f})",
            f"{cost.value:.4f} ({cost.lower:.4f}-{cost.upper:.4f})",
            str(found.quality.matched),
        )
    console.print(table)
    typer.echo(
        f"trained on {report.prompts} logged prompts before it ({report.responses} responses, "
        f"{report.left_out} samples of unknown quality left out)"
    )
    if report.written is not None:
        typer.echo(f"the retrained router is better: written to {report.written}")
    else:
        typer.echo("the retrained router is not better: the serving router stays")


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


@log_app.command("replay-dead-letters")
@_one_line_errors
def replay(
    config: Annotated[Path, typer.Option(help="Gateway YAML configuration (its decision_log).")],
) -> None:
    """Insert the rows of the dead-letter file into the decision log; rows still refused stay."""
    from .serving import load_config, replay_dead_letters

    settings = load_config(config).decision_log
    replayed, left = replay_dead_letters(settings.url, settings.dead_letter_path)
    typer.echo(
        f"replayed {replayed} rows into the decision log; {left} still refused, left in {settings.dead_letter_path}"
    )
    if left:
        raise typer.Exit(1)


@local_app.command("serve")
@_one_line_errors
def local_serve(
    model: Annotated[str, typer.Option(help="smollm2-135m, gemma3-270m, or a .gguf path.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8101,
    threads: Annotated[int, typer.Option(help="CPU threads for generation.")] = 2,
    context: Annotated[int, typer.Option(help="Context window in tokens (prompt and answer).")] = 2048,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log a line per HTTP request.")] = False,
) -> None:
    """Serve a local model behind an OpenAI-compatible endpoint (llama.cpp)."""
    from .local import serve_local

    _check_port(port)
    serve_local(
        model,
        host=host,
        port=port,
        threads=threads,
        context=context,
        access_log=access_log,
        announce=lambda m: typer.echo(m, err=True),
    )


@replay_app.command("serve")
@_one_line_errors
def replay_serve(
    data_path: DataPath,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8200,
    latency: Annotated[
        list[str] | None,
        typer.Option(
            "--latency",
            help="[MODEL=]BASE_MS[+PER_TOKEN_MS]: how long answers take (repeatable; no MODEL: every model).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Gateway YAML whose strategies shaped the data's model@strategy responses."),
    ] = None,
) -> None:
    """Serve every model of a routing dataset by name, answering with its recorded responses (a
    request shaped by a strategy of --config gets that strategy's)."""
    import uvicorn

    from .replay import ReplayData, create_replay_app, parse_latency

    _check_port(port)
    default, by_model = parse_latency(latency or [])
    strategies = []
    if config is not None:
        from .serving import load_config

        strategies = load_config(config).strategies
    data = load_dataset(data_path)
    replay = ReplayData(data, strategies)
    typer.echo(
        f"replaying {len(replay.backends)} models ({len(data.models)} arms) on {data.n_prompts} prompts "
        f"at http://{host}:{port}/v1",
        err=True,
    )
    uvicorn.run(
        create_replay_app(replay, latency=default, latencies=by_model), host=host, port=port, log_level="warning"
    )


@app.command()
@_one_line_errors
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the router, config, decision log and summary.")] = Path(
        "bestroute-demo"
    ),
    port: Annotated[int, typer.Option(help="Port of the gateway.")] = 8000,
    once: Annotated[bool, typer.Option("--once", help="Stop after the summary (or the local questions).")] = False,
    local: Annotated[
        bool, typer.Option("--local", help="The loop on two local models (llama.cpp; install.sh --local).")
    ] = False,
    threads: Annotated[int, typer.Option(help="--local: CPU threads per local model server.")] = 1,
) -> None:
    """Route real LLMs' recorded answers through the gateway: train the escalating router on the
    embedded slice of real routing data, serve the models with replay backends, send the held-out
    prompts through the gateway and compare with always asking the reference. --local runs the
    loop on local models instead."""
    from .demo import stop_on_sigterm

    with stop_on_sigterm():
        if local:
            _local_demo(out, port, once, threads)
        else:
            _real_demo(out, port, once)


def _real_demo(out: Path, port: int, once: bool) -> None:
    from rich.progress import Progress

    from .data import zeroeval_slice_path
    from .demo import DemoSettings, send, serve, summarize, table, train, write_summary

    tic = time.perf_counter()
    settings = DemoSettings(out=out, port=port)
    settings.check()
    data = load_dataset(zeroeval_slice_path())
    trained = train(data, settings, typer.echo)
    processes = serve(zeroeval_slice_path(), data, trained, settings, typer.echo)
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("held-out prompts through the gateway", total=len(trained.test))
            answered = send(data, trained, settings, lambda done, total: bar.update(task, completed=done))
        summary = summarize(data, trained, answered, time.perf_counter() - tic)
        path = write_summary(summary, out)
        typer.echo("\n" + table(summary))
        typer.echo(
            f"\nsummary: {path}; decision log: {out / 'decisions.db'} (with feedback); config: {out / 'gateway.yaml'}"
        )
        if not once:
            typer.echo(
                f'\nThe gateway keeps serving at http://127.0.0.1:{port}/v1 (model "bestroute"); Ctrl-C stops it.'
            )
            processes.wait()
    except KeyboardInterrupt:
        pass
    finally:
        processes.stop()


def _local_demo(out: Path, port: int, once: bool, threads: int) -> None:
    from .demo import LoopSettings, ask, start, train_and_evaluate

    settings = LoopSettings(out=out, port=port, threads=threads)
    settings.check()
    data = load_dataset(demo_data_path())
    artifact, selector, threshold = train_and_evaluate(data, settings, typer.echo)
    processes = start(data, settings, artifact, selector, threshold, typer.echo)
    try:
        ask(settings, typer.echo)
        if not once:
            typer.echo(
                f'\nThe gateway keeps serving at {settings.gateway_url} (model "bestroute"); '
                "Ctrl-C stops it and the local models."
            )
            processes.wait()
    except KeyboardInterrupt:
        pass
    finally:
        processes.stop()


@local_app.command("list")
@_one_line_errors
def local_list() -> None:
    """Packaged models and whether they are installed."""
    from .local import PACKAGED_MODELS, model_path

    for name, packaged in PACKAGED_MODELS.items():
        try:
            where = str(model_path(name))
        except BestRouteError as exc:
            where = f"not available ({exc})"
        typer.echo(f"{name}\t{packaged.description}\t{where}")


@app.command()
@_one_line_errors
def collect(
    prompts: Annotated[Path, typer.Option(help="JSONL or CSV: prompt, optional prompt_id, reference, check, task.")],
    config: Annotated[Path, typer.Option(help="Gateway YAML configuration (its backends).")],
    out: Annotated[Path, typer.Option(help="Output directory (exchange format); an existing one is resumed.")],
    samples: Annotated[int, typer.Option(help="Samples per prompt and model.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.8,
    max_tokens: Annotated[int, typer.Option(help="Longest response in tokens.")] = 64,
    models: Annotated[str | None, typer.Option(help="Comma-separated backends (default: all).")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight per backend.")] = 2,
    rate: Annotated[float | None, typer.Option(help="Requests started per second per backend.")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="Stop after spending this many USD.")] = None,
    budget_tokens: Annotated[int | None, typer.Option(help="Stop after this many tokens.")] = None,
    scorer: Annotated[str, typer.Option(help="reference, reward, judge or likelihood.")] = "reference",
    check: Annotated[str, typer.Option(help="Reference check for prompts that name none.")] = "exact",
    reward_url: Annotated[str | None, typer.Option(help="Reward-model endpoint (scorer reward).")] = None,
    judge: Annotated[str | None, typer.Option(help="Backend that judges (scorer judge).")] = None,
    likelihood_model: Annotated[
        str,
        typer.Option(
            help="Local model whose mean log-likelihood scores (scorer likelihood): smollm2-135m, gemma3-270m "
            "or a .gguf path."
        ),
    ] = "smollm2-135m",
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop sequence sent with every request (repeat for more).")
    ] = None,
    reference: Annotated[
        str | None, typer.Option(help="The reference model (or backend@strategy), named in models.json.")
    ] = None,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            help="A strategy of the configuration's `strategies` to sample every model under (repeat for more); "
            "default: the prompts as they are."
        ),
    ] = None,
) -> None:
    """Sample k responses per prompt and model (and strategy), score them and write routing data."""
    import asyncio

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from .collection import CollectSettings
    from .collection import collect as run_collect
    from .serving import load_config

    gateway_config = load_config(config)
    defined = {s.name: s for s in gateway_config.strategies}
    unknown = [name for name in strategy or [] if name not in defined]
    if unknown:
        raise ConfigError(
            f"--strategy: unknown strategy {unknown[0]!r}; the configuration defines "
            + (", ".join(defined) or "none (key: strategies)")
        )
    settings = CollectSettings(
        samples=samples,
        temperature=temperature,
        max_tokens=max_tokens,
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
        concurrency=concurrency,
        rate_per_s=rate,
        budget_usd=budget_usd,
        budget_tokens=budget_tokens,
        scorer=scorer,
        check=check,
        reward_url=reward_url,
        judge=judge,
        likelihood_model=likelihood_model,
        stop=tuple(stop or ()),
        reference=reference,
        strategies=tuple(defined[name] for name in dict.fromkeys(strategy or [])),
    )
    settings.check_against(gateway_config)
    columns = (
        TextColumn("collect"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[spent]}"),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("collect", total=None, spent="")

        def show(report: "CollectReport", total: int) -> None:
            bar.update(
                task,
                total=total,
                completed=report.written + report.failed,
                spent=f"{report.tokens:,} tokens ${report.cost_usd:.4f} failed {report.failed}",
            )

        report = asyncio.run(run_collect(gateway_config, prompts, out, settings, progress=show))
    for line in report.bad_lines:
        typer.echo(f"skipped {line}", err=True)
    typer.echo(
        f"{report.prompts} prompts; {report.written} samples written, {report.already_done} already there, "
        f"{report.failed} failed (rerun to retry); {report.tokens:,} tokens, ${report.cost_usd:.4f}"
        + ("; stopped at the budget" if report.stopped_by_budget else "")
    )


@app.command()
@_one_line_errors
def blueprint(
    config: Annotated[Path, typer.Option(help="Gateway YAML configuration (its backends).")],
    backend: Annotated[str, typer.Option(help="The large model that writes the guide.")],
    prompts: Annotated[Path, typer.Option(help="JSONL or CSV of the task's prompts (prompt, optional task).")],
    name: Annotated[str, typer.Option(help="Name of the blueprint strategy.")],
    task: Annotated[str | None, typer.Option(help="Only the prompts of this task.")] = None,
    examples: Annotated[int, typer.Option(help="How many prompts the large model sees.")] = 5,
    template: Annotated[
        str, typer.Option(help="The strategy's user template: {blueprint} and {prompt} are filled in.")
    ] = "{blueprint}\n\n{prompt}",
) -> None:
    """Have a large model write a reasoning guide for a task from a few of its prompts, once, and
    print the blueprint strategy to add under the configuration's `strategies`."""
    import asyncio

    import yaml
    from pydantic import ValidationError

    from .collection import read_prompts, write_blueprint
    from .serving import load_config
    from .strategies import Strategy

    if examples < 1:
        raise ConfigError("--examples must be at least 1")
    try:  # the name and template are checked before the large model is asked
        Strategy(name=name, template=template, blueprint="the guide")
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "name" if error["loc"] == ("name",) else "template"  # the placement check has no field
        raise ConfigError(f"--{option}: {error['msg'].removeprefix('Value error, ')}") from None
    rows, _ = read_prompts(prompts, needs_reference=False)
    chosen = [r["prompt"] for r in rows if task is None or r.get("task") == task][:examples]
    strategy = asyncio.run(write_blueprint(load_config(config), backend, chosen, name=name, template=template))
    typer.echo(yaml.safe_dump([strategy.model_dump(exclude_defaults=True)], sort_keys=False, allow_unicode=True))


@app.command("train-reward")
@_one_line_errors
def train_reward(
    data_path: Annotated[
        Path | None, typer.Option("--data", help="Routing data with response texts; default: the embedded demo data.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Reward-model artifact to write.")] = Path("reward.bestroute"),
    features: Annotated[str, typer.Option(help="auto, static, minilm or lexical.")] = "auto",
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
) -> None:
    """Train the proxy reward model on train prompts; report pairwise accuracy on test prompts."""
    import json as json_module

    from .reward import RewardModel, pairwise_accuracy

    data = load_dataset(data_path or demo_data_path())
    split = split_prompts(data.prompt_ids, seed=seed)
    model = RewardModel(features=features).fit(data, split.train)
    model.save(out)
    accuracy = pairwise_accuracy(data, split.test, model, seed=seed)
    typer.echo(f"saved reward model to {out}")
    typer.echo(
        "pairwise accuracy on held-out prompts: "
        + json_module.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in accuracy.items()})
    )
