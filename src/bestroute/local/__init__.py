"""Local models: GGUF files shipped in PyPI packages, served by llama.cpp."""

from ._loop import Loop, LoopSettings, ask, start, train_and_evaluate
from ._models import PACKAGED_MODELS, PackagedModel, model_path
from ._server import serve_local

__all__ = [
    "PACKAGED_MODELS",
    "Loop",
    "LoopSettings",
    "PackagedModel",
    "ask",
    "model_path",
    "serve_local",
    "start",
    "train_and_evaluate",
]
