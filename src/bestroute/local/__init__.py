"""Local models: GGUF files shipped in PyPI packages, served by llama.cpp."""

from ..backends import PACKAGED_MODELS, PackagedModel, model_path
from ._server import serve_local

__all__ = [
    "PACKAGED_MODELS",
    "PackagedModel",
    "model_path",
    "serve_local",
]
