"""The cost-quality figure of an evaluation."""

from pathlib import Path
from typing import Any


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """All routers' curves, the single models as points, the oracle dashed."""
    # Imported here: `import bestroute` must not pull in matplotlib (nor switch its backend for
    # the caller's process) for anything but drawing a figure.
    import matplotlib.figure

    fig = matplotlib.figure.Figure(figsize=(9, 6))
    ax = fig.subplots()
    for name, result in results["routers"].items():
        curve = sorted(result["curve"])
        if not curve:
            continue
        xs, ys = zip(*curve)
        oracle = result.get("upper_bound", name == "oracle")  # results written before the flag name it
        ax.plot(
            xs,
            ys,
            label=name,
            linewidth=2 if name == "best-route" else 1.2,
            linestyle="--" if oracle else "-",
            color="black" if oracle else None,
        )
    models = results["single_models"]
    ax.scatter(
        [m["cost_per_1k"] for m in models],
        [m["quality"] for m in models],
        s=14,
        color="grey",
        label="single models",
        zorder=3,
    )
    ref = results["reference"]
    ax.scatter(
        [ref["cost_per_1k"]],
        [ref["quality"]],
        marker="*",
        s=160,
        color="red",
        label=f"reference ({ref['model']})",
        zorder=4,
    )
    ax.set_xscale("log")
    ax.set_xlabel("cost per 1k prompts (USD, log scale)")
    ax.set_ylabel("quality (test split)")
    ax.set_title(f"cost-quality on {results['data']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)  # a Figure made without pyplot is freed with it: nothing to close
