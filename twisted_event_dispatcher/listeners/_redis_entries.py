"""
The Redis listener backend's key names, and the checks that turn a stream entry back
into a :class:`~.mail.Mail` or a reply.

Any program that can reach Redis can write into these streams too, so nothing read is
trusted: an entry becomes a mail only if it looks exactly like one the scripts wrote
(known fields, a valid event name, JSON data that ``encode_json`` would have produced,
a reply address of this channel's own). Anything else is reported as a reason (a str),
and the reader skips it, logs it and deletes it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from ..channels.base import check_event_name
from ..channels.message import MAX_DEPTH, encode_json, nested_deeper_than
from ..errors import InvalidDataError
from .mail import MESSAGE_TYPE_MISSED, Mail

__all__ = ["Keys", "parse_mail", "parse_reply"]

#: The ``s`` field of an own mailbox entry -> Mail.source.
_SOURCES: Final = {"d": "dispatch", "b": "broadcast", "m": "missed"}
_CORRELATION: Final = re.compile(r"[0-9A-Za-z_-]{1,64}")
_OFFSET: Final = re.compile(r"[0-9]{1,18}")


class Keys:
    """
    The names of a channel's listener keys. They live under their own root,
    ``<prefix>_l<len(name)>:<name>``: a channel name never starts with ``_``, so no
    channel's stream can be one of them, and the length keeps two channels apart
    (``news`` and ``news:mb:x`` cannot share a key).
    """

    def __init__(self, prefix: str, channel: str) -> None:
        self.root = f"{prefix}_l{len(channel)}:{channel}"
        #: Sorted set of listener ids, in registration order.
        self.index = f"{self.root}:L"
        self.reply_prefix = f"{self.root}:r:"
        self._reply = re.compile(re.escape(self.reply_prefix) + "[0-9a-f]{32}")

    def mailbox(self, listener_id: str) -> str:
        return f"{self.root}:mb:{listener_id}"

    def group(self, group: str) -> str:
        return f"{self.root}:g:{group}"

    def members(self, group: str) -> str:
        return f"{self.root}:m:{group}"

    def control(self, token: str) -> str:
        return f"{self.root}:c:{token}"

    def is_reply_address(self, address: object) -> bool:
        """True for a reply stream of this channel (``<root>:r:<32 hex digits>``)."""
        return isinstance(address, str) and self._reply.fullmatch(address) is not None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_no_constants)


def decode_data(data_json: str) -> Any:
    """
    The value of ``data_json``, or ValueError if ``encode_json`` could not have written
    it (not JSON, NaN, too deep, a line break, a lone surrogate).
    """
    if nested_deeper_than(data_json, MAX_DEPTH):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if "\n" in data_json or "\r" in data_json:
        raise ValueError("it has a line break")
    try:
        data = _decoder.decode(data_json)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if "\\u" in data_json and "\\ud" in data_json.lower():
        try:
            encode_json(data)
        except InvalidDataError as e:
            raise ValueError(str(e)) from None
    return data


def _fields(fields: object) -> dict[str, str] | str:
    if not isinstance(fields, list) or len(fields) % 2:
        return "its fields are not name/value pairs"
    values = dict(zip(fields[::2], fields[1::2]))
    for name, value in values.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return f"its field {name!r} is not UTF-8 text"
    return values


def parse_mail(
    entry_id: object,
    fields: object,
    deliveries: int,
    *,
    keys: Keys,
    channel: str,
    listener: str,
    group: str | None,
) -> Mail | str:
    """
    The mail an entry of a listener's mailbox (``group`` None) or of ``group``'s queue
    holds, or why it is not one. Never raises: a stream may hold anything.
    """
    try:
        return _parse(entry_id, fields, deliveries, keys, channel, listener, group)
    except Exception as e:  # a check that did not foresee some input: still not ours
        return f"unreadable ({type(e).__name__}: {e})"


def _parse(
    entry_id: object,
    fields: object,
    deliveries: int,
    keys: Keys,
    channel: str,
    listener: str,
    group: str | None,
) -> Mail | str:
    if not isinstance(entry_id, str):
        return f"its id {entry_id!r} is not a stream id"
    values = _fields(fields)
    if isinstance(values, str):
        return values
    event, data_json = values.get("e"), values.get("d")
    if event is None or data_json is None:
        return "it has no field 'e' or 'd'"
    if group is None:
        source = _SOURCES.get(values.get("s", ""))
        if source is None:
            return f"its source {values.get('s')!r} is not d, b or m"
    else:
        source = "group"
    if source == "missed":
        if event != MESSAGE_TYPE_MISSED:
            return f"a missed notice with the event {event[:80]!r}"
    else:
        try:
            check_event_name(event)
        except ValueError as e:
            return f"bad event name: {e}"
    try:
        data = decode_data(data_json)
    except ValueError as e:
        return f"its data is not valid JSON ({e})"
    offset = None
    if source == "broadcast":
        text = values.get("o", "")
        if not _OFFSET.fullmatch(text):
            return f"a broadcast copy whose offset {text[:40]!r} is not a number"
        offset = int(text)
    reply_to, correlation = values.get("r"), values.get("c")
    if (reply_to is None) != (correlation is None) or (
        reply_to is not None and source not in ("dispatch", "group")
    ):
        return "a request needs both 'r' and 'c' (and is dispatched)"
    if reply_to is not None:
        if not keys.is_reply_address(reply_to):
            return f"its reply address {reply_to[:120]!r} is not one of this channel's"
        assert correlation is not None
        if not _CORRELATION.fullmatch(correlation):
            return f"its correlation {correlation[:80]!r} is not an id"
    return Mail(
        entry_id, listener, channel, event, data, data_json, deliveries=max(deliveries, 1),
        source=source, group=group, reply_to=reply_to, correlation=correlation, offset=offset,
    )


def parse_reply(fields: object) -> tuple[str, bool, str] | str:
    """(correlation, ok, value JSON) of a reply stream's entry, or why it is not a reply."""
    try:
        values = _fields(fields)
        if isinstance(values, str):
            return values
        correlation, ok, value = values.get("c"), values.get("k"), values.get("v")
        if correlation is None or not _CORRELATION.fullmatch(correlation):
            return f"its correlation {correlation!r:.80} is not an id"
        if ok not in ("0", "1"):
            return f"its outcome {ok!r:.40} is not 0 or 1"
        if value is None:
            return "it has no value"
        decode_data(value)
    except Exception as e:
        return f"unreadable ({type(e).__name__}: {e})"
    return correlation, ok == "1", value
