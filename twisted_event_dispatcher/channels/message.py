"""
Message: one published event, as channels store it and carriers deliver it.

A message is immutable and JSON-ready: its data was encoded once when it was published,
and every wire form a carrier needs (a WebSocket frame, an SSE block) is built once per
message and cached on it, however many clients receive it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Message", "encode_json"]

_T = TypeVar("_T")

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_json(value: object) -> str:
    """
    Compact JSON, or ``TypeError`` naming what cannot be encoded (NaN and infinities are
    refused too: browsers' ``JSON.parse`` rejects them).
    """
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"data must be JSON-encodable: {e}") from None


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
