"""
The hub's bridge from its dispatcher to its channel: the ``after``-phase handler that
publishes every event ``POST /events`` fires.

Unlike :func:`~twisted_event_dispatcher.bridge.bridge`, it treats the channel's expected
refusals as answers, not as failures: while the channel's backend (Redis) is unreachable
or does not answer, publishing fails with ``ChannelUnavailableError``, and data the
channel cannot carry with ``InvalidDataError``. The handler then returns a
:class:`NotPublished` saying why, which ``POST /events`` answers (503 with
``Retry-After``, or 400). The dispatcher logs a failing handler with its traceback, once
per event: during an outage that would be a traceback for every request, hundreds a
second, about a condition that is handled. Instead an outage is logged as one warning,
then at most one count every :data:`WARN_EVERY` seconds, and its end once. Any other
exception still fails the handler, and is logged with its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..channels.message import Message
from ..errors import ChannelUnavailableError, InvalidDataError

__all__ = ["WARN_EVERY", "NotPublished", "Publisher"]

_log = Logger(namespace="twisted_event_dispatcher.hub")

#: Seconds between two warnings about events refused during one outage.
WARN_EVERY = 60.0


@dataclass(frozen=True)
class NotPublished:
    """An event the channel refused, for a reason the client is told: nothing was stored."""

    #: The HTTP status to answer: 503 (channel unavailable) or 400 (data refused).
    code: int
    #: What went wrong, for the client.
    reason: str


class Publisher:
    """
    Publishes ``event["data"]`` under ``event["event"]`` to ``channel``; the Message, or
    a :class:`NotPublished` (see the module). ``clock`` times the outage warnings.
    """

    def __init__(self, channel: Any, clock: IReactorTime, warn_every: float = WARN_EVERY):
        self.channel = channel
        self.clock = clock
        self.warn_every = warn_every
        #: Events refused because the channel was unavailable, since the process started.
        self.refused = 0
        self._reported = 0  # self.refused at the last warning
        self._outage_refused = 0  # refused since the current outage began
        self._warned_at: float | None = None  # None: no outage now

    def __repr__(self) -> str:
        return f"<hub publisher to channel {getattr(self.channel, 'name', self.channel)!r}>"

    def __call__(self, event: Any) -> Deferred[Message | NotPublished] | NotPublished:
        try:
            d: Deferred[Any] = self.channel.publish(event["event"], event["data"])
        except InvalidDataError as e:
            return NotPublished(400, f"'data': {e}")
        return d.addCallbacks(self._published, self._failed)

    def _published(self, message: Message) -> Message:
        if self._warned_at is not None:
            _log.info(
                "channel {name}: publishing works again; {count} event(s) were refused "
                "(503) while it was unavailable",
                name=self.channel.name, count=self._outage_refused,
            )
            self._warned_at = None
            self._outage_refused = 0
        return message

    def _failed(self, failure: Failure) -> NotPublished | Failure:
        if not failure.check(ChannelUnavailableError):
            return failure  # unexpected: the dispatcher logs it with its traceback
        error = failure.getErrorMessage()
        self.refused += 1
        self._outage_refused += 1
        now = self.clock.seconds()
        if self._warned_at is None:
            _log.warn(
                "channel {name} is unavailable: events are refused (503) until it is back. "
                "First: {error}",
                name=self.channel.name, error=error,
            )
            self._warned_at, self._reported = now, self.refused
        elif now - self._warned_at >= self.warn_every:
            _log.warn(
                "channel {name} is still unavailable: {count} more event(s) refused (503) "
                "in the last {seconds:.0f} s. Last: {error}",
                name=self.channel.name, count=self.refused - self._reported,
                seconds=now - self._warned_at, error=error,
            )
            self._warned_at, self._reported = now, self.refused
        return NotPublished(503, f"the channel is unavailable, retry later: {error}")
