"""The gateway's JSON responses, written by orjson (``bestroute._json.json_bytes``): a completion's
body is written once per request, and the standard library's encoder was a tenth of the
gateway's own time per request."""

from typing import Any

from fastapi.responses import JSONResponse as _StarletteJSONResponse

from .._json import json_bytes


class JSONResponse(_StarletteJSONResponse):
    """Starlette's ``JSONResponse`` with its body written by ``bestroute._json.json_bytes``."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)
