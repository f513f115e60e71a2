"""
Reading WebSocket clients' requests safely: JSON with a nesting limit and no NaN or
infinities, and error reasons that quote the client's values short and escaped, so that
every bad request can be answered with an ``error`` frame (with a ``code``).

The nesting limit is :data:`~twisted_event_dispatcher.channels.message.MAX_DEPTH` on the
*data* a request carries (``data``, an ``ack``'s ``reply``), which sits one level inside
the request object: a frame may nest :data:`MAX_FRAME_DEPTH` levels, and data nested
exactly ``MAX_DEPTH`` levels passes (the control plane checks the data itself). A frame
nested deeper is still parsed, up to :data:`PARSE_DEPTH` levels, so its error frame can
carry its type and ``ref``; one nested deeper than that is refused unread.
"""

from __future__ import annotations

import json
import math
import reprlib
from typing import Any

from ..channels.message import MAX_DEPTH, nested_deeper_than

__all__ = ["MAX_FRAME_DEPTH", "PARSE_DEPTH", "BadRequest", "clip", "parse_request", "show"]

#: How deeply a request frame may nest: its data's limit, plus the request object around it.
MAX_FRAME_DEPTH = MAX_DEPTH + 1
#: Frames nested deeper than this are refused without being parsed (the parser recurses
#: once per level); those between the two are parsed only to echo their type and ``ref``.
PARSE_DEPTH = 2 * MAX_DEPTH


class BadRequest(Exception):
    """
    A client request that gets an ``error`` frame, with ``code`` (``bad_request`` unless
    a more specific one applies: ``limit``, ``unknown_channel``).
    """

    code = "bad_request"
    #: The refused frame, when it could be parsed (its type and ``ref`` are echoed).
    request: dict[str, Any] | None = None

    def __init__(
        self, message: str, code: str | None = None, request: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.request = request


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


_TOO_DEEP = (
    f"data must not nest deeper than {MAX_DEPTH} levels "
    f"(a request, around it: {MAX_FRAME_DEPTH})"
)
#: Strict JSON: NaN, infinities and numbers out of a double's range are refused (browsers'
#: ``JSON.parse`` would not read them back). Shared with the control socket's lines.
strict_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def parse_request(payload: bytes) -> dict[str, Any]:
    """A client's text frame as a JSON object, or :class:`BadRequest` saying why not."""
    try:
        text = payload.decode("utf-8")  # Autobahn already closed with 1007 if invalid
    except UnicodeDecodeError:
        raise BadRequest("a text frame must be valid UTF-8") from None
    too_deep = nested_deeper_than(text, MAX_FRAME_DEPTH)
    # Refused before parsing: the parser recurses once per level.
    if too_deep and nested_deeper_than(text, PARSE_DEPTH):
        raise BadRequest(_TOO_DEEP)
    try:
        request = strict_decoder.decode(text)
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    except ValueError as e:
        raise BadRequest(f"malformed JSON: {clip(str(e))}") from None
    if too_deep:
        raise BadRequest(_TOO_DEEP, request=request if isinstance(request, dict) else None)
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
