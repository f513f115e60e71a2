"""
QueueingCarrier: the part every carrier shares — a bounded outgoing queue driven by the
transport's flow control, an overflow policy, and close notification.

The carrier registers itself as the transport's streaming producer (``IPushProducer``).
While the transport keeps up, items are written at once; when its buffer fills, Twisted
calls :meth:`pauseProducing` and items wait in the queue; :meth:`resumeProducing` writes
them out. The queue is bounded: past ``max_queue`` the policy either drops the oldest
messages (the client is told how many it missed before the next one it gets) or
disconnects the client. So a slow client never slows the others, nor grows memory
without bound.

Control frames (answers to the client's requests, gap notices) count towards
``max_queue`` but are never dropped: a client that is not told it missed something must
not miss it. Under ``drop_oldest`` the oldest queued *message* makes room, or, when none
is queued, the message arriving is the one dropped (and counted). A control frame may go
:attr:`~QueueingCarrier.control_headroom` past ``max_queue`` (0 here; the WebSocket
carrier allows the answers its connection may owe, and stops reading its requests instead
of refusing them); past that the client is disconnected like a slow client under
``disconnect``. The overflow hook runs before the queue is dropped, so a carrier may
still write what it owed (:meth:`~QueueingCarrier._owed_controls`) before its close.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from ..channels.base import Gap
from ..channels.message import Message
from ..interfaces import ICarrier

__all__ = ["DISCONNECT", "DROP_OLDEST", "QueueingCarrier", "check_queue_options"]

#: Overflow policy: drop the oldest queued items and tell the client how many it missed.
DROP_OLDEST: Final = "drop_oldest"
#: Overflow policy: close the connection of a client that cannot keep up.
DISCONNECT: Final = "disconnect"
POLICIES: Final = (DROP_OLDEST, DISCONNECT)

_log = Logger(namespace="twisted_event_dispatcher.carriers")


def check_queue_options(max_queue: object, overflow: object) -> None:
    """Validate a carrier's queue bound and overflow policy (also used by factories)."""
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
        raise ValueError(f"max_queue must be an int >= 1, got {max_queue!r}")
    if overflow not in POLICIES:
        raise ValueError(f"overflow must be one of {POLICIES}, got {overflow!r}")


@implementer(ICarrier, IPushProducer)
class QueueingCarrier(ABC):
    """
    Base class of carriers. Subclasses write with :meth:`_write_message` and
    :meth:`_write_control`, tell the client about drops in :meth:`_write_dropped`, close
    in :meth:`_overflowed`, and call :meth:`connection_lost` when the client is gone.

    :param max_queue: how many items may wait while the client is not reading.
    :param overflow: :data:`DROP_OLDEST` or :data:`DISCONNECT`.
    """

    #: How many control frames may wait past ``max_queue`` before the client is closed
    #: (control frames are never dropped).
    control_headroom = 0

    def __init__(self, max_queue: int = 1000, overflow: str = DROP_OLDEST) -> None:
        check_queue_options(max_queue, overflow)
        self.max_queue = max_queue
        self.overflow = overflow
        self.closed = False
        self._queue: deque[Message | Any] = deque()
        # Control frames that were ahead of dropped messages: written before the queue.
        self._held: deque[Any] = deque()
        self._paused = False
        # True while items can be written at once: open, not paused, nothing queued.
        self._writable = True
        self._dropped = 0
        # Control frames in _queue and _held (answers, notices: never dropped).
        self._controls = 0
        self._close_callbacks: list[Callable[[Any], object]] = []

    # -- ICarrier ------------------------------------------------------------------------

    def deliver(self, message: Message) -> None:
        """Write ``message`` now, or queue it while the client is not reading."""
        if self._writable:
            self._write_message(message)
        elif not self.closed:
            self._enqueue(message)

    def send_control(self, frame: Any) -> None:
        """Write a control frame (an answer to the client), in order with messages."""
        if self._writable:
            self._write_control(frame)
        elif not self.closed:
            self._enqueue(frame)

    def notify_gap(self, channel: str, event: str, gap: Gap) -> None:
        """Tell the client what it will not get (a ``gap`` frame), in order with messages."""
        self.send_control(self._gap_frame(channel, event, gap))

    def on_close(self, callback: Callable[[Any], object]) -> None:
        """
        Call ``callback(self)`` once when the client is gone. A callback registered
        again (a channel the client left and subscribed to again) is kept once, so a
        subscribe/unsubscribe loop cannot grow the list.
        """
        if self.closed:
            callback(self)
        elif callback not in self._close_callbacks:
            self._close_callbacks.append(callback)

    @property
    def queued(self) -> int:
        """Items waiting for the client to read (messages and control frames)."""
        return len(self._queue) + len(self._held)

    @property
    def queued_controls(self) -> int:
        """Control frames (answers, notices) among :attr:`queued`."""
        return self._controls

    # -- IPushProducer -------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        self._writable = False

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self.connection_lost()

    # -- for subclasses ------------------------------------------------------------------

    def connection_lost(self) -> None:
        """The client is gone: drop the queue and tell whoever asked (channels)."""
        if self.closed:
            return
        self.closed = True
        self._writable = False
        self._queue.clear()
        self._held.clear()
        self._controls = 0
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                _log.failure("close callback {callback!r} failed", callback=callback)

    def _enqueue(self, item: Message | Any) -> None:
        self._writable = False
        queue = self._queue
        message = isinstance(item, Message)
        bound = self.max_queue if message else self.max_queue + self.control_headroom
        if len(queue) + len(self._held) >= bound and not (
            self.overflow == DROP_OLDEST and self._drop_oldest_message()
        ):
            if message and self.overflow == DROP_OLDEST:
                # Nothing but control frames queued (now in _held): this message is the
                # oldest that may go; the notice follows the frames that were ahead of it.
                self._dropped += 1
                return
            self._overflowed()
            queue.clear()
            self._held.clear()
            self._controls = 0
            return
        queue.append(item)
        if not message:
            self._controls += 1

    def _drop_oldest_message(self) -> bool:
        """
        Drop the oldest queued message and count it; the control frames ahead of it move
        to ``_held`` (each at most once: amortized O(1)). False if no message is queued.
        """
        queue = self._queue
        while queue:
            item = queue.popleft()
            if isinstance(item, Message):
                self._dropped += 1
                return True
            self._held.append(item)
        return False

    def _flush(self) -> None:
        queue, held = self._queue, self._held
        while (held or queue) and not self._paused and not self.closed:
            if held:
                self._controls -= 1
                self._write_control(held.popleft())
                continue
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                self._write_dropped(dropped)
                continue
            item = queue.popleft()
            if isinstance(item, Message):
                self._write_message(item)
            else:
                self._controls -= 1
                self._write_control(item)
        self._writable = not (held or queue or self._paused or self.closed)

    @abstractmethod
    def _write_message(self, message: Message) -> None:
        """Write one message to the client."""

    @abstractmethod
    def _write_control(self, frame: Any) -> None:
        """Write one control frame to the client."""

    @abstractmethod
    def _gap_frame(self, channel: str, event: str, gap: Gap) -> Any:
        """The control frame that tells the client about ``gap``."""

    @abstractmethod
    def _write_dropped(self, count: int) -> None:
        """Tell the client that ``count`` messages were dropped because it was too slow."""

    def _owed_controls(self) -> list[Any]:
        """The control frames still queued, in order (for :meth:`_overflowed`)."""
        return [*self._held, *(i for i in self._queue if not isinstance(i, Message))]

    @abstractmethod
    def _overflowed(self) -> None:
        """
        The queue is full under the DISCONNECT policy, or full of control frames under
        DROP_OLDEST (nothing may be dropped): close the connection. Called while the
        queue still holds what was owed (:meth:`_owed_controls`); it is dropped after.
        """
