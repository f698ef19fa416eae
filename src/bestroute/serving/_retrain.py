"""Retraining from traffic (`bestroute retrain`): the decision log's older requests become routing
data (``log export``: drawn samples, shadow answers, feedback), a router with the serving router's
hyperparameters is trained on them (and on the original routing data, if given), both routers are
estimated on the newer requests from their logged propensities (``log evaluate``), and the new
artifact replaces the serving one only when it is better there. The gateway reloads a replaced
artifact by itself."""

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._exceptions import ConfigError
from ..data import RoutingDataWriter, find_table, iter_rows, load_dataset, split_prompts, write_catalog
from ..policy import OffPolicyEstimates
from ..routers import Router, load_router
from ._config import GatewayConfig
from ._log import LogEvaluation, evaluate_log, export_log, newest_share_start, open_database


@dataclass(frozen=True)
class RetrainReport:
    """What `bestroute retrain` did: the requests logged before ``cutoff`` trained the candidate
    (``prompts`` of them had a label), both routers were estimated on those from ``cutoff`` on,
    and ``written`` is where the candidate went (None: the serving router was kept)."""

    cutoff: float
    prompts: int
    responses: int
    left_out: int
    serving: LogEvaluation
    candidate: LogEvaluation
    better: bool
    written: Path | None


def point(estimates: OffPolicyEstimates) -> float:
    """The estimate a comparison uses: doubly robust where the candidate's predictions allow it,
    else self-normalised."""
    return (estimates.dr or estimates.snips).value


def is_better(candidate: LogEvaluation, serving: LogEvaluation, *, tolerance: float = 0.0) -> bool:
    """Whether the candidate is no worse on one figure and better on the other: cheaper at a
    quality at most ``tolerance`` lower, or of higher quality at no higher cost."""
    quality = point(candidate.quality) - point(serving.quality)
    cost = point(candidate.cost_per_1k) - point(serving.cost_per_1k)
    return (quality >= -tolerance and cost < 0) or (quality > 0 and cost <= 0)


def retrain(
    config: GatewayConfig,
    *,
    holdout: float = 0.3,
    min_quality: float | None = None,
    tolerance: float = 0.0,
    with_data: Path | None = None,
    out: Path | None = None,
    seed: int = 0,
) -> RetrainReport:
    """Retrain ``config``'s router from its decision log and write it to ``out`` (default: over
    the serving artifact, which is kept beside it as ``.previous``) if it is better on the newest
    ``holdout`` share of the routed traffic. Routers are compared where the gateway would serve
    them: at ``threshold`` if the configuration sets one, else at ``min_quality``'s knob, else at
    each one's default."""
    if not 0 < holdout < 1:
        raise ConfigError(f"--holdout must be between 0 and 1 (not {holdout:g})")
    if config.router is None:
        raise ConfigError("the configuration names no router artifact (key: router): retrain starts from it")
    serving = load_router(config.router)
    engine = open_database(config.decision_log.url)
    try:
        cutoff = newest_share_start(engine, holdout)
    finally:
        engine.dispose()
    with tempfile.TemporaryDirectory(prefix="bestroute-retrain-") as tmp:
        traffic = Path(tmp) / "traffic"
        prompts, responses, left_out = export_log(config, traffic, until=cutoff)
        data_dir = _with(traffic, with_data, config) if with_data is not None else traffic
        data = load_dataset(data_dir)
        split = split_prompts(data.prompt_ids, seed=seed)
        candidate = _unfitted_copy(serving).fit(data, split.train, split.val)
        candidate_path = Path(tmp) / "candidate.bestroute"
        candidate.save(candidate_path)
        knob = config.threshold
        serving_figures = evaluate_log(config, str(config.router), min_quality=min_quality, knob=knob, since=cutoff)
        candidate_figures = evaluate_log(config, str(candidate_path), min_quality=min_quality, knob=knob, since=cutoff)
        better = is_better(candidate_figures, serving_figures, tolerance=tolerance)
        written = _install(candidate_path, out or config.router) if better else None
    return RetrainReport(
        cutoff=cutoff,
        prompts=prompts,
        responses=responses,
        left_out=left_out,
        serving=serving_figures,
        candidate=candidate_figures,
        better=better,
        written=written,
    )


def _unfitted_copy(router: Router) -> Router:
    """A new router of ``router``'s class with its hyperparameters (scikit-learn's ``clone``)."""
    return type(router)(**router.get_params())


def _with(traffic: Path, original: Path, config: GatewayConfig) -> Path:
    """The traffic's routing data and ``original``'s (exchange format) in one directory beside it."""
    merged = traffic.with_name("merged")
    with RoutingDataWriter(merged) as writer:
        for directory in (original, traffic):
            prompts = [row for _, row in iter_rows(find_table(directory, "prompts"))]
            responses = [row for _, row in iter_rows(find_table(directory, "responses"))]
            writer.add(prompts, responses)
    write_catalog(merged, {b.name: b.price for b in config.backends})
    return merged


def _install(candidate: Path, target: Path) -> Path:
    """Put ``candidate`` at ``target`` in one rename (a reader sees the old file or the new one,
    never half of one), keeping the file it replaces as ``target.previous``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(target.name + ".new")
    shutil.copyfile(candidate, staged)
    if target.exists():
        shutil.copyfile(target, target.with_name(target.name + ".previous"))
    os.replace(staged, target)
    return target
