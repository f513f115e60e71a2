"""
The requests of one channel waiting for their reply: correlation id -> Deferred, each
with a timeout on the channel's clock.

``Channel.request`` adds an entry *before* it dispatches (in memory the action may answer
before ``put`` returns); the backend's ``on_reply`` (this table's :meth:`on_reply`) settles
it. A reply that arrives late (after the timeout, or a cancel) or was never asked for is
ignored with a debug line: the requester has already been told.

A request whose ``put`` has not been confirmed when its timeout comes (Redis did not
answer) fails with a :class:`~twisted_event_dispatcher.errors.RequestTimeoutError` that
says so rather than blaming the listener: the request may never have reached it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import RemoteActionError, RequestTimeoutError

if TYPE_CHECKING:
    from ..channels.base import Channel

__all__ = ["PendingRequests"]

_log = Logger(namespace="twisted_event_dispatcher.listeners")


class _Pending:
    __slots__ = ("answer", "timer", "target", "event", "timeout", "stored")

    def __init__(
        self, answer: Deferred[Any], timer: IDelayedCall, target: str, event: str, timeout: float
    ) -> None:
        self.answer = answer
        self.timer = timer
        self.target = target
        self.event = event
        self.timeout = timeout
        self.stored = False  # the put was confirmed (the request is in the mailbox)


class PendingRequests:
    """The requests of ``channel`` that wait for a reply."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, correlation: str, target: str, event: str, timeout: float) -> Deferred[Any]:
        """A Deferred for the reply to ``correlation``; cancelling it forgets the request."""

        def cancel(_: Deferred[Any]) -> None:
            pending = self._pending.pop(correlation, None)
            if pending is not None and pending.timer.active():
                pending.timer.cancel()

        answer: Deferred[Any] = Deferred(cancel)
        timer = self._channel.clock.callLater(timeout, self._expire, correlation)
        self._pending[correlation] = _Pending(answer, timer, target, event, timeout)
        return answer

    def _take(self, correlation: str) -> _Pending | None:
        pending = self._pending.pop(correlation, None)
        if pending is not None and pending.timer.active():
            pending.timer.cancel()
        return pending

    def _expire(self, correlation: str) -> None:
        pending = self._pending.pop(correlation, None)
        if pending is not None:
            error = RequestTimeoutError(pending.target, pending.event, pending.timeout)
            if not pending.stored:
                error.args = (
                    f"no reply within {pending.timeout:g} s (the request may not have "
                    "reached the listener: Redis did not answer)",
                )
            pending.answer.errback(error)

    def sent(self, result: object, correlation: str) -> object:
        """The request's ``put`` was confirmed: it is in the mailbox (a timeout is not Redis')."""
        pending = self._pending.get(correlation)
        if pending is not None:
            pending.stored = True
        return result

    def fail_all(self, error: Exception) -> None:
        """Fail every request waiting for its reply with ``error`` (its channel is gone)."""
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if entry.timer.active():
                entry.timer.cancel()
            entry.answer.errback(error)

    def fail(self, failure: Failure, correlation: str) -> None:
        """The request could not be sent (unknown listener, full mailbox, ...)."""
        pending = self._take(correlation)
        if pending is not None:
            pending.answer.errback(failure)

    def on_reply(self, correlation: str, ok: bool, value_json: str) -> None:
        """A reply: fire the request's Deferred with the value, or the remote error."""
        pending = self._take(correlation)
        if pending is None:
            _log.debug(
                "channel {channel}: reply to unknown or expired request {correlation} ignored",
                channel=self._channel.name, correlation=correlation,
            )
            return
        try:
            value = json.loads(value_json)
        except (ValueError, RecursionError):  # (nested past the parser's stack)
            pending.answer.errback(
                RemoteActionError("InvalidReply", f"the reply is not JSON: {value_json[:200]!r}")
            )
            return
        if ok:
            pending.answer.callback(value)
            return
        if isinstance(value, dict):
            remote_type, message = value.get("type"), value.get("message")
        else:
            remote_type, message = None, None
        pending.answer.errback(
            RemoteActionError(
                remote_type if isinstance(remote_type, str) else "Error",
                message if isinstance(message, str) else "",
            )
        )
