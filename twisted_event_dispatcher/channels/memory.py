"""MemoryChannel: a channel inside one process; publishing pushes to carriers at once."""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from ..interfaces import ICarrier
from .base import WILDCARD, Channel, Gap, Subscription
from .message import Message

if TYPE_CHECKING:
    from ..listeners._backend import Mailboxes

__all__ = ["MemoryChannel"]


class MemoryChannel(Channel):
    """
    Messages live in a bounded in-memory history; offsets are 1, 2, 3, ... within an
    epoch, and the epoch is new for every channel object (so a restarted process tells
    resuming clients that their gap cannot be filled). Its listeners' mailboxes are
    in this process too (:class:`~twisted_event_dispatcher.listeners.MemoryMailboxes`).
    """

    def __init__(
        self, name: str, history_size: int = 1000, *, clock: IReactorTime | None = None
    ) -> None:
        super().__init__(name, history_size, clock=clock)
        self._history: deque[Message] = deque(maxlen=history_size)
        self._next_id = 1

    @property
    def last_id(self) -> int | None:
        """The latest offset, or None before the first message."""
        return self._next_id - 1 or None

    def _make_mailboxes(self) -> Mailboxes:
        from ..listeners.memory import MemoryMailboxes

        return MemoryMailboxes(self)

    def _publish(self, key: str, data: Any, data_json: str) -> Deferred[Message]:
        message = Message(self._next_id, self.epoch, self.name, key, data, data_json)
        self._next_id += 1
        if self.history_size:
            self._history.append(message)
        self._fan_out(message)
        return succeed(message)

    def _subscribe(
        self, event: str, carrier: ICarrier, since: int | None, epoch: str | None
    ) -> Deferred[Subscription]:
        replay: tuple[Message, ...] = ()
        gap = None
        if since is not None:
            gap = self._gap(since, epoch)
            if gap is None:
                history = self._history
                start = since + 1 - history[0].id if history else 0
                replay = tuple(
                    m for m in islice(history, start, None)
                    if event == WILDCARD or m.event == event
                )
        self._add(event, carrier)
        return succeed(Subscription(self.name, event, self.epoch, self.last_id, replay, gap))

    def _gap(self, since: int, epoch: str | None) -> Gap | None:
        last = self._next_id - 1
        oldest = self._history[0].id if self._history else None
        if epoch is not None and epoch != self.epoch:
            return Gap(since, "epoch", self.epoch, oldest)
        if since > last:
            return Gap(since, "unknown", self.epoch, oldest)
        first_needed = since + 1
        if first_needed <= last and (oldest is None or first_needed < oldest):
            return Gap(since, "expired", self.epoch, oldest)
        return None
