"""
The control socket's wire: lines parsed into requests (strict JSON objects, bounded
nesting), answers written as lines, the carrier of a watching connection (each line what a
WebSocket frame would carry), and telling a client's close from its half-close.
"""

from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from ..carriers._requests import clip, strict_decoder
from ..carriers.base import QueueingCarrier
from ..channels.base import Gap
from ..channels.message import MAX_DEPTH, Message, encode_json, nested_deeper_than
from ._channels import REMOVED
from ._control import ControlError

if TYPE_CHECKING:
    from ._control_socket import ControlProtocol

__all__ = ["MAX_LINE_DEPTH", "WatchCarrier", "encode_line", "parse_line", "peer_closed"]

_log = Logger(namespace="twisted_event_dispatcher.hub")


#: How deeply a line may nest: its object, and data of up to MAX_DEPTH levels in it.
MAX_LINE_DEPTH = MAX_DEPTH + 1
_TOO_DEEP = f"a line must not nest its data deeper than {MAX_DEPTH} levels"


def parse_line(line: bytes) -> dict[str, Any]:
    """A line as a JSON object, or :class:`ControlError` (``bad_request``) saying why not."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ControlError("bad_request", f"a line must be valid UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise ControlError("bad_request", "empty line: send one JSON object per line")
    # The line's object is one level: its data may nest MAX_DEPTH levels below it (the
    # plane checks the data itself).
    if nested_deeper_than(text, MAX_LINE_DEPTH):
        raise ControlError("bad_request", _TOO_DEEP)
    try:
        value = strict_decoder.decode(text)
    except RecursionError:
        raise ControlError("bad_request", _TOO_DEEP) from None
    except ValueError as e:
        raise ControlError("bad_request", f"malformed JSON: {clip(str(e))}") from None
    if not isinstance(value, dict):
        raise ControlError(
            "bad_request", f"a line must be a JSON object, got {type(value).__name__}"
        )
    return value


def encode_line(value: dict[str, Any]) -> bytes:
    """``value`` as one line of JSON."""
    # Data (a payload, a reply) was checked at MAX_DEPTH; the line adds one level.
    return encode_json(value, MAX_LINE_DEPTH).encode("utf-8") + b"\n"


class WatchCarrier(QueueingCarrier):
    """A watching control connection: each line is what a WebSocket frame would carry."""

    def __init__(self, protocol: ControlProtocol, max_queue: int, overflow: str) -> None:
        super().__init__(max_queue, overflow)
        self.protocol = protocol
        transport: Any = protocol.transport
        self._transport = transport
        self._close_when_flushed = False

    def _write_message(self, message: Message) -> None:
        self._transport.write(message.encoded(WatchCarrier, _message_line))

    def _write_control(self, frame: Any) -> None:
        self._transport.write(frame)

    def _gap_frame(self, channel: str, event: str, gap: Gap) -> bytes:
        return encode_line({
            "type": "gap", "channel": channel, "event": event, "since": gap.since,
            "epoch": gap.epoch, "oldest": gap.oldest, "reason": gap.reason,
        })

    def notify_gap(self, channel: str, event: str, gap: Gap) -> None:
        super().notify_gap(channel, event, gap)
        if gap.reason == REMOVED:  # the channel is gone: nothing follows
            self._close_when_flushed = True
            self._maybe_close()

    def _write_dropped(self, count: int) -> None:
        self._write_control(encode_line({"type": "dropped", "count": count}))

    def _overflowed(self) -> None:
        _log.info(
            "closing control connection {peer}: not reading, {n} lines queued ({policy})",
            peer=self.protocol.peer, n=self.max_queue, policy=self.overflow,
        )
        self._transport.abortConnection()
        self.connection_lost()

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self.protocol.pause_reading("writes")

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if not self.closed:
            self.protocol.resume_reading("writes")
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._close_when_flushed and not self.queued and not self.closed:
            self.connection_lost()
            self._transport.loseConnection()


def _message_line(message: Message) -> bytes:
    return message.json.encode("utf-8") + b"\n"


def peer_closed(transport: Any) -> bool | None:
    """
    Whether the client closed its UNIX socket (not only its writing side): ``poll()``
    reports ``POLLHUP`` only once both directions are shut. None when it cannot be told
    (TCP: a close and a half-close look the same until a write fails).
    """
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if not isinstance(handle, socket.socket) or not hasattr(select, "poll"):
        return None
    try:
        if handle.family != socket.AF_UNIX:
            return None
        poller = select.poll()
        poller.register(handle.fileno(), 0)  # (POLLHUP is always reported)
        return any(events & select.POLLHUP for _, events in poller.poll(0))
    except (OSError, ValueError):  # (the socket is closed already)
        return True
