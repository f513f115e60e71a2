"""
Message: one published event, as channels store it and carriers deliver it.

A message is immutable and JSON-ready: its data was encoded once when it was published,
and every wire form a carrier needs (a WebSocket frame, an SSE block) is built once per
message and cached on it, however many clients receive it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

from ..errors import InvalidDataError

__all__ = ["MAX_DEPTH", "Message", "encode_json", "json_depth", "nested_deeper_than"]

_T = TypeVar("_T")

#: Deepest nesting of arrays and objects accepted in event data (and in any JSON the
#: hub reads): deeper documents are refused before they are parsed into handlers or stored.
MAX_DEPTH: Final = 64

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# Brackets, and string literals (whose brackets do not nest) consumed whole, left to right:
# an unterminated string runs to the end, so any text is scanned in linear time.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def json_depth(text: str) -> int:
    """
    How deeply arrays and objects nest in ``text`` (0 for a scalar), counted without
    parsing: usable on untrusted input before ``json.loads``, in linear time.
    """
    depth = deepest = 0
    for token in _TOKENS.findall(text):
        if token == "[" or token == "{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif token == "]" or token == "}":
            depth -= 1
    return deepest


def nested_deeper_than(text: str, limit: int) -> bool:
    """
    Whether ``text`` nests arrays and objects deeper than ``limit``: counted only when it
    holds more brackets than that (C-speed counts), which small documents never do.
    """
    return text.count("[") + text.count("{") > limit and json_depth(text) > limit


def encode_json(value: object, max_depth: int = MAX_DEPTH) -> str:
    """
    Compact JSON that is valid UTF-8 when encoded, or :class:`InvalidDataError` saying
    why not: a value JSON cannot hold, NaN or an infinity (browsers' ``JSON.parse``
    rejects them), a lone surrogate in a string (no UTF-8 form: the frame could never be
    written), or nesting deeper than ``max_depth``.
    """
    try:
        text = _encoder.encode(value)
    except RecursionError:
        raise InvalidDataError(
            f"data must be JSON-encodable: nested deeper than {max_depth} levels"
        ) from None
    except (TypeError, ValueError) as e:
        why = "NaN and infinities have no JSON form" if "Out of range float" in str(e) else e
        raise InvalidDataError(f"data must be JSON-encodable: {why}") from None
    if not text.isascii():  # O(1) for ASCII text; otherwise prove it has a UTF-8 form
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidDataError(
                f"data must be valid Unicode: a lone surrogate {text[e.start]!r} at "
                f"character {e.start} of its JSON has no UTF-8 form"
            ) from None
    if nested_deeper_than(text, max_depth):
        raise InvalidDataError(f"data is nested deeper than {max_depth} levels")
    return text


class Message:
    """
    One event published on a channel.

    :ivar id: the offset: increases with every message of the channel.
    :ivar epoch: the channel's epoch; offsets are only comparable within one epoch.
    :ivar channel: the channel's name.
    :ivar event: the event name (the key it was published under).
    :ivar data: the JSON-compatible payload.
    """

    __slots__ = ("id", "epoch", "channel", "event", "data", "data_json", "_cache")

    def __init__(
        self, id: int, epoch: str, channel: str, event: str, data: Any, data_json: str
    ) -> None:
        self.id = id
        self.epoch = epoch
        self.channel = channel
        self.event = event
        self.data = data
        #: ``data`` as compact JSON, encoded once at publish time.
        self.data_json = data_json
        self._cache: dict[object, Any] = {}

    def as_dict(self) -> dict[str, Any]:
        """The message as the ``event`` frame of the WebSocket protocol."""
        return {
            "type": "event",
            "id": self.id,
            "epoch": self.epoch,
            "channel": self.channel,
            "event": self.event,
            "data": self.data,
        }

    @property
    def json(self) -> str:
        """The ``event`` frame as JSON, built once (the data is not encoded again)."""
        cached: str | None = self._cache.get("json")
        if cached is None:
            cached = self._cache["json"] = (
                f'{{"type":"event","id":{self.id},"epoch":{encode_json(self.epoch)},'
                f'"channel":{encode_json(self.channel)},"event":{encode_json(self.event)},'
                f'"data":{self.data_json}}}'
            )
        return cached

    def encoded(self, key: object, encode: Callable[[Message], _T]) -> _T:
        """``encode(self)``, computed once per ``key`` (a carrier's wire form)."""
        try:
            result: _T = self._cache[key]
        except KeyError:
            result = self._cache[key] = encode(self)
        return result

    def __repr__(self) -> str:
        return f"<Message {self.channel}#{self.id} ({self.epoch}) {self.event!r}>"
