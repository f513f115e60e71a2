"""Capturing what the process logs through twisted.logger, for tests that assert on it."""

from __future__ import annotations

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer


@implementer(ILogObserver)
class LogCapture:
    """Every twisted.logger event of the process, while installed."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def failures(self) -> list[LogEvent]:
        """The events that carry a traceback."""
        return [e for e in self.events if "log_failure" in e or e.get("isError")]

    def unhandled(self) -> list[str]:
        """
        What was logged as an unhandled error: a failing Deferred (or crochet
        EventualResult) that nobody observed, logged once garbage-collected, so maybe
        during a later test (``twisted.internet.defer.setDebugging(True)`` shows where
        it was made).
        """
        return [text for text in map(formatEvent, self.events) if "Unhandled error" in text]


__all__ = ["LogCapture"]
