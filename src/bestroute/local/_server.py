"""Serve a local GGUF model behind an OpenAI-compatible endpoint with llama.cpp's server."""

from collections.abc import Callable

from .._exceptions import ConfigError
from ..backends import PACKAGED_MODELS, model_path


def serve_local(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8101,
    threads: int = 2,
    context: int = 2048,
    access_log: bool = False,
    announce: Callable[[str], None] = lambda _: None,
) -> None:
    """Run llama-cpp-python's server for ``model`` (blocks). The served model id is ``model``.

    llama.cpp's server returns one choice even when asked for n: configure such a backend with
    ``supports_n: false`` so the gateway sends n requests. ``announce`` gets the start-up line
    (the address, the model and its file) before the model loads.
    """
    try:
        import uvicorn
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as exc:
        raise ConfigError(
            "local models need the extra: see scripts/install.sh (pip install "
            "'bestroute[local]' with the CMAKE_ARGS given there)"
        ) from exc
    path = model_path(model)
    announce(
        f"local model {model} ({path}, {threads} threads, context {context} tokens) "
        f"at http://{host}:{port}/v1 once it has loaded"
    )
    packaged = PACKAGED_MODELS.get(model)
    app = create_app(
        server_settings=ServerSettings(host=host, port=port),
        model_settings=[
            ModelSettings(
                model=str(path),
                model_alias=model,
                n_ctx=context,
                n_threads=threads,
                verbose=False,
                chat_format=packaged.chat_format if packaged else None,
            )
        ],
    )
    uvicorn.run(app, host=host, port=port, log_level="info" if access_log else "warning", access_log=access_log)
