"""The embedded demo data: routing data the project collected from two local models."""

from importlib.resources import files
from pathlib import Path


def demo_data_path() -> Path:
    """Directory of the embedded dataset (exchange format; see its README.md)."""
    return Path(str(files("bestroute").joinpath("demo_data")))
