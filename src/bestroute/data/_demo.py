"""The embedded data: routing data the project collected from two local models, and a slice of
the zeroeval data (real LLMs) that `bestroute demo` routes."""

from importlib.resources import files
from pathlib import Path


def demo_data_path() -> Path:
    """Directory of the embedded dataset (exchange format; see its README.md)."""
    return Path(str(files("bestroute").joinpath("demo_data")))


def zeroeval_slice_path() -> Path:
    """Directory of the embedded slice of real routing data (11 LLMs, 500 prompts; see its README.md)."""
    return Path(str(files("bestroute").joinpath("zeroeval_slice")))
