"""The request path's JSON (orjson, the standard library where orjson reads or writes otherwise)
reads every document as ``json`` does and writes what ``json`` reads back unchanged."""

import asyncio
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bestroute import _json
from bestroute.serving._cpu import INLINE_CHARS, run_cpu

# Text with lone surrogates, integers beyond 64 bits, NaN and the infinities: where orjson and
# json part ways.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 3, max_value=2**64 + 3)
    | st.integers(min_value=-(2**63) - 3, max_value=-(2**63) + 3)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters())
)
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12
)


def _same(a: object, b: object) -> bool:
    """Equal, with NaN equal to NaN and an int never equal to a float."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[attr-defined,index]
    return a == b


@settings(max_examples=400)
@given(documents, st.booleans())
def test_loads_reads_what_json_reads(document, ascii_only):
    raw = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert _same(_json.parse_json(raw), json.loads(raw))


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_loads_refuses_what_json_refuses(raw):
    try:
        expected = json.loads(raw)
    except (ValueError, RecursionError):
        with pytest.raises((ValueError, RecursionError)):
            _json.parse_json(raw)
    else:
        assert _same(_json.parse_json(raw), expected)


def test_loads_keeps_long_integers_exact():
    # orjson alone reads these as floats
    assert _json.parse_json(b"[18446744073709551616, -9223372036854775809]") == [2**64, -(2**63) - 1]
    assert type(_json.parse_json(b"123456789012345678901234567890")) is int


def _nulled(document: object) -> object:
    """``document`` with NaN and the infinities as None (orjson writes them as null)."""
    if isinstance(document, float) and not math.isfinite(document):
        return None
    if isinstance(document, list):
        return [_nulled(v) for v in document]
    if isinstance(document, dict):
        return {k: _nulled(v) for k, v in document.items()}
    return document


@settings(max_examples=400)
@given(documents)
def test_dumps_writes_what_reads_back(document):
    try:
        orjson.dumps(document)
    except TypeError:  # json writes it, with every non-ASCII character escaped; NaN is an error
        if _nulled(document) != document:  # a NaN or an infinity (NaN is unequal to itself too)
            with pytest.raises(ValueError):
                _json.json_bytes(document)
            return
        raw = _json.json_bytes(document)
        assert raw.isascii()
    else:
        raw = _json.json_bytes(document)
    assert _same(json.loads(raw), json.loads(json.dumps(_nulled(document))))


def test_dumps_takes_what_orjson_refuses():
    assert json.loads(_json.json_bytes({"big": 2**70, "lone": "a\ud800b"})) == {"big": 2**70, "lone": "a\ud800b"}
    assert _json.json_bytes({"x": float("nan")}) == b'{"x":null}'
    with pytest.raises(ValueError):
        _json.json_bytes([2**70, float("nan")])


def test_run_cpu_times_out_only_the_pool_wait():
    def slow() -> str:
        time.sleep(0.3)
        return "done"

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            with pytest.raises(TimeoutError):
                await run_cpu(pool, INLINE_CHARS + 1, slow, timeout=0.05)
            assert await run_cpu(pool, INLINE_CHARS + 1, slow, timeout=5) == "done"
            # inline work never yields to the loop: a timer could not stop it, and none is set
            assert await run_cpu(pool, INLINE_CHARS, slow, timeout=0.05) == "done"

    asyncio.run(main())
