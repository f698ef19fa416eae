"""Text that any encoder takes: JSON may carry lone UTF-16 surrogates ("\\ud800"), which Python
keeps in a str but UTF-8 encoders (tokenizers, hashes, database drivers) refuse."""

import json
import re
from typing import Any

_SURROGATES = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (the replacement character)."""
    return text if text.isascii() else _SURROGATES.sub("\ufffd", text)


def json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects written in ``text`` (a model's answer may wrap one in prose), outermost
    first; spans that do not parse are skipped."""
    found = []
    for blob in re.findall(r"\{.*\}", text, flags=re.DOTALL):
        try:
            parsed = json.loads(blob)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            found.append(parsed)
    return found
