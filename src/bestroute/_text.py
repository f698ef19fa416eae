"""Text that any encoder takes: JSON may carry lone UTF-16 surrogates ("\\ud800"), which Python
keeps in a str but UTF-8 encoders (tokenizers, hashes, database drivers) refuse."""

import re

_SURROGATES = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (the replacement character)."""
    return text if text.isascii() else _SURROGATES.sub("\ufffd", text)
