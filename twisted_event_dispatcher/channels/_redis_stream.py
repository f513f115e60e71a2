"""
The entries of a channel's Redis stream: the Lua script that writes them, and the checks
that turn one back into a :class:`~.message.Message`.

Any program that can reach Redis can also add entries to the stream. So a reader trusts
nothing it reads: an entry becomes a message only if it looks exactly like one the script
wrote (id ``<offset>-0``; fields ``e``, ``d``, ``p``; a valid event name; JSON data that
:func:`~.message.encode_json` would have produced; an epoch made of letters and digits).
Anything else is reported by :func:`parse_entry` as a reason, and skipped by the reader.
"""

from __future__ import annotations

import json
from typing import Any, Final

from ..errors import InvalidDataError
from .base import check_event_name
from .message import MAX_DEPTH, Message, encode_json, nested_deeper_than

__all__ = ["PUBLISH_SCRIPT", "entry_offset", "parse_entry"]

#: KEYS: stream, epoch, offset counter. ARGV: MAXLEN, a new epoch (used if there is none),
#: a deadline (milliseconds of Redis' clock), then event name and data JSON for each
#: message. Returns the epoch, then the offsets.
#: Past the deadline the script stores nothing and answers an ``EXPIRED`` error: the
#: publisher has given up by then (answered 503), so a Redis that hung with the call
#: queued must not store it when it wakes up.
#: An entry another program added with a higher id than the counter would make XADD fail
#: for every later publish: the script then moves the counter past the stream's last id.
PUBLISH_SCRIPT: Final = """
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[3]) then
  return redis.error_reply('EXPIRED this publish reached Redis after its deadline; ' ..
                           'nothing was stored')
end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[3])
end
local offsets = {epoch}
for i = 4, #ARGV, 2 do
  local offset = redis.call('INCR', KEYS[3])
  local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], offset .. '-0',
                            'e', ARGV[i], 'd', ARGV[i + 1], 'p', epoch)
  if type(added) == 'table' and added.err then
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then
        redis.call('SET', KEYS[3], string.match(info[j + 1], '^(%d+)'))
      end
    end
    offset = redis.call('INCR', KEYS[3])
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], offset .. '-0',
               'e', ARGV[i], 'd', ARGV[i + 1], 'p', epoch)
  end
  offsets[#offsets + 1] = offset
end
return offsets
"""

#: Longest epoch accepted in an entry (ours are 16 hex digits).
_MAX_EPOCH: Final = 64


def entry_offset(entry_id: object) -> int | None:
    """The offset part of a stream entry id ``"<offset>-<sequence>"``; None if not an id."""
    if not isinstance(entry_id, str):
        return None
    offset, _, sequence = entry_id.partition("-")
    if not (offset.isascii() and offset.isdigit() and sequence.isascii() and sequence.isdigit()):
        return None
    return int(offset)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: Built once: ``json.loads`` with options builds a decoder per call.
_decoder = json.JSONDecoder(parse_constant=_no_constants)


def parse_entry(entry_id: object, fields: object, channel: str) -> Message | str:
    """
    The message a stream entry holds, or why it is not a message of this channel (a
    reason for the log). Never raises: a stream may hold anything.
    """
    try:
        return _parse(entry_id, fields, channel)
    except Exception as e:  # a check that did not foresee some input: still not ours
        return f"unreadable ({type(e).__name__}: {e})"


#: Event names and epochs already found valid (bounded): most entries repeat a few.
_EVENTS: dict[str, None] = {}
_EPOCHS: dict[str, None] = {}
_MAX_REMEMBERED: Final = 4096


def _parse(entry_id: object, fields: object, channel: str) -> Message | str:
    if not isinstance(entry_id, str):
        return f"its id {entry_id!r} is not '<offset>-0'"
    offset_text, _, sequence = entry_id.partition("-")
    if sequence != "0" or not (offset_text.isascii() and offset_text.isdigit()):
        return f"its id {entry_id!r} is not '<offset>-0'"
    offset = int(offset_text)
    if offset < 1:
        return f"its id {entry_id!r} is not '<offset>-0'"
    if not isinstance(fields, list) or len(fields) % 2:
        return "its fields are not name/value pairs"
    values = dict(zip(fields[::2], fields[1::2]))
    event, data_json, epoch = values.get("e"), values.get("d"), values.get("p")
    if not (isinstance(event, str) and isinstance(data_json, str) and isinstance(epoch, str)):
        for name, value in (("e", event), ("d", data_json), ("p", epoch)):
            if value is None:
                return f"it has no field {name!r}"
            if not isinstance(value, str):
                return f"its field {name!r} is not UTF-8 text"
    assert isinstance(event, str) and isinstance(data_json, str) and isinstance(epoch, str)
    if event not in _EVENTS:
        try:
            check_event_name(event)
        except ValueError as e:
            return f"bad event name: {e}"
        _remember(_EVENTS, event)
    if epoch not in _EPOCHS:
        if not (epoch.isascii() and epoch.isalnum() and len(epoch) <= _MAX_EPOCH):
            return f"its epoch {epoch[:80]!r} is not letters and digits"
        _remember(_EPOCHS, epoch)
    # What encode_json would have refused: deep nesting, NaN and infinities, lone
    # surrogates; and line breaks, which compact JSON never has (SSE lines).
    if nested_deeper_than(data_json, MAX_DEPTH):
        return f"its data is nested deeper than {MAX_DEPTH} levels"
    if "\n" in data_json or "\r" in data_json:
        return "its data has a line break"
    try:
        data = _decoder.decode(data_json)
    except (ValueError, RecursionError) as e:
        return f"its data is not JSON ({e})"
    if "\\u" in data_json and "\\ud" in data_json.lower():
        try:
            encode_json(data)
        except InvalidDataError as e:
            return f"its data is not valid Unicode ({e})"
    return Message(offset, epoch, channel, event, data, data_json)


def _remember(valid: dict[str, None], text: str) -> None:
    if len(valid) >= _MAX_REMEMBERED:
        valid.clear()
    valid[text] = None
