"""
Helpers for testing code that uses twisted_event_dispatcher, in the spirit of
``treq.testing``: no reactor needed for code whose handlers settle synchronously or on a
:class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import ICarrier

__all__ = [
    "DeferredHandler",
    "RecordingCarrier",
    "RecordingHandler",
    "assert_no_result",
    "captured_failures",
    "failure_result_of",
    "success_result_of",
]

_T = TypeVar("_T")


def success_result_of(d: Deferred[_T]) -> _T:
    """The result of an already-succeeded Deferred; ``AssertionError`` otherwise."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if not outcome:
        raise AssertionError(f"{d!r} has no result yet")
    if isinstance(outcome[0], Failure):
        raise AssertionError(f"{d!r} failed: {outcome[0].getTraceback()}")
    result: _T = outcome[0]
    return result


def failure_result_of(d: Deferred[Any], *expected: type[BaseException]) -> Failure:
    """The Failure of an already-failed Deferred, checked against ``expected`` types."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if not outcome:
        raise AssertionError(f"{d!r} has no result yet")
    failure = outcome[0]
    if not isinstance(failure, Failure):
        raise AssertionError(f"{d!r} succeeded with {failure!r}, a failure was expected")
    if expected and not failure.check(*expected):
        raise AssertionError(
            f"{d!r} failed with {failure.type!r}, expected one of {expected!r}:\n"
            f"{failure.getTraceback()}"
        )
    return failure


def assert_no_result(d: Deferred[Any]) -> None:
    """Assert that ``d`` has not fired (without consuming a result it might get later)."""
    outcome: list[Any] = []

    def peek(result: object) -> object:
        outcome.append(result)
        return result

    d.addBoth(peek)
    if outcome:
        raise AssertionError(f"{d!r} already has a result: {outcome[0]!r}")


@contextmanager
def captured_failures() -> Iterator[Sequence[LogEvent]]:
    """Collect the ``twisted.logger`` events that carry a failure while the block runs."""
    with capturedLogs() as events:
        failures: list[LogEvent] = []
        yield failures
    failures.extend(e for e in events if "log_failure" in e)


class RecordingHandler:
    """
    A handler that records every event it is called with and returns ``result`` (or raises
    ``exception``). Its ``events`` list shows what was dispatched, in order.
    """

    def __init__(self, result: object = None, exception: BaseException | None = None) -> None:
        self.result = result
        self.exception = exception
        self.events: list[Any] = []

    def __call__(self, event: Any) -> object:
        self.events.append(event)
        if self.exception is not None:
            raise self.exception
        return self.result

    def __repr__(self) -> str:
        return f"<RecordingHandler {len(self.events)} call(s)>"


class DeferredHandler:
    """
    A handler that returns a new, unfired Deferred per call, so a test decides when (and
    how) each call finishes: ``calls`` holds ``(event, deferred)`` pairs in call order.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Deferred[Any]]] = []

    def __call__(self, event: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((event, d))
        return d

    @property
    def events(self) -> list[Any]:
        """The events this handler was called with."""
        return [event for event, _ in self.calls]

    def succeed_all(self, value: object = None) -> None:
        """Fire every still-pending Deferred with ``value``."""
        for _, d in self.calls:
            if not d.called:
                d.callback(value)

    def __repr__(self) -> str:
        pending = sum(1 for _, d in self.calls if not d.called)
        return f"<DeferredHandler {len(self.calls)} call(s), {pending} pending>"


@implementer(ICarrier)
class RecordingCarrier:
    """
    A carrier that keeps what it is given: ``messages`` (delivered, in order) and
    ``gaps`` (``(channel, event, gap)`` notices, in order). Subscribe it to a channel to
    test code that publishes, without a network. ``close()`` behaves like a client going
    away: channels drop it.
    """

    def __init__(self) -> None:
        self.closed = False
        self.messages: list[Any] = []
        self.gaps: list[tuple[str, str, Any]] = []
        self._close_callbacks: list[Any] = []

    def deliver(self, message: Any) -> None:
        self.messages.append(message)

    def notify_gap(self, channel: str, event: str, gap: Any) -> None:
        self.gaps.append((channel, event, gap))

    def on_close(self, callback: Any) -> None:
        if self.closed:
            callback(self)
        elif callback not in self._close_callbacks:
            self._close_callbacks.append(callback)

    def close(self) -> None:
        self.closed = True
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            callback(self)

    @property
    def events(self) -> list[tuple[str, Any]]:
        """``(event, data)`` of every delivered message."""
        return [(m.event, m.data) for m in self.messages]
