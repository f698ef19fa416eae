"""The final answer of a response, as agreement-based selectors and reference checks compare it."""

import json
import re

from .._text import json_object

_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def extract_answer(response: str | None) -> str:
    """The final answer of a response, normalised: a JSON ``answer`` field, the tool calls of a
    tool-call answer (names and arguments, whole), a '####' or 'answer is' marker, else the last
    number, else the last non-empty line."""
    if not response:
        return ""
    text = response.strip()
    parsed = json_object(text)
    if parsed is not None and "answer" in parsed:
        return _normalise_answer(str(parsed["answer"]))
    if parsed is not None and list(parsed) == ["tool_calls"]:  # the gateway's text of a tool-call answer
        return json.dumps(parsed["tool_calls"], sort_keys=True)
    marker = re.search(r'(?:####|answer is|"answer"\s*:)\s*"?([^"\n]+)', text, flags=re.IGNORECASE)
    if marker:
        return _normalise_answer(marker.group(1))
    numbers = _NUMBER.findall(text)
    if numbers:
        return _normalise_answer(numbers[-1])
    lines = text.splitlines()
    return _normalise_answer(lines[-1]) if lines else ""  # whitespace only: no answer


def _normalise_answer(answer: str) -> str:
    answer = answer.strip().strip(".").strip().lower()
    try:
        value = float(answer.replace(",", "").replace("$", ""))
    except ValueError:
        return answer
    return repr(int(value)) if value.is_integer() else repr(value)
