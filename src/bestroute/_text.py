"""Text that any encoder takes: JSON may carry lone UTF-16 surrogates ("\\ud800"), which Python
keeps in a str but UTF-8 encoders (tokenizers, hashes, database drivers) refuse."""

import json
import re
from typing import Any

_SURROGATES = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (the replacement character)."""
    return text if text.isascii() else _SURROGATES.sub("\ufffd", text)


def json_object(text: str) -> dict[str, Any] | None:
    """The JSON object a model's answer writes, maybe wrapped in prose: the text from its first
    "{" to its last "}", if that parses as an object."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        parsed = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None
