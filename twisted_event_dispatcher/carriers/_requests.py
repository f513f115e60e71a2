"""
Reading WebSocket clients' requests safely: JSON with a nesting limit and no NaN or
infinities, and error reasons that quote the client's values short and escaped, so that
every bad request can be answered with an ``error`` frame.
"""

from __future__ import annotations

import json
import math
import reprlib
from typing import Any

from ..channels.message import MAX_DEPTH, nested_deeper_than

__all__ = ["BadRequest", "clip", "parse_request", "show"]


class BadRequest(Exception):
    """A client request that gets an ``error`` frame."""


# Client values quoted in error reasons: short, and escaped by repr() (a lone surrogate
# shows as '\ud800'), so the error frame can always be encoded.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = _short.maxlong = 60
_short.maxlevel, _short.maxlist, _short.maxdict = 2, 4, 4
show = _short.repr
#: Longest ``reason`` of an ``error`` frame, in characters.
_MAX_REASON = 300


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def parse_request(payload: bytes) -> dict[str, Any]:
    """A client's text frame as a JSON object, or :class:`BadRequest` saying why not."""
    try:
        text = payload.decode("utf-8")  # Autobahn already closed with 1007 if invalid
    except UnicodeDecodeError:
        raise BadRequest("a text frame must be valid UTF-8") from None
    # Refused before parsing: the parser recurses once per level.
    if nested_deeper_than(text, MAX_DEPTH):
        raise BadRequest(f"a request must not nest deeper than {MAX_DEPTH} levels")
    try:
        request = _decoder.decode(text)
    except RecursionError:
        raise BadRequest(f"a request must not nest deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise BadRequest(f"malformed JSON: {clip(str(e))}") from None
    if not isinstance(request, dict):
        raise BadRequest("a request must be a JSON object")
    return request


def clip(reason: str) -> str:
    """``reason`` shortened, with anything that has no UTF-8 form escaped."""
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 3] + "..."
    if not reason.isascii():
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
    return reason
