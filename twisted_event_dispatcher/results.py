"""What ``fire_event`` reports: every handler's outcome, per phase, and whether it aborted."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from twisted.python.failure import Failure

from .errors import HandlerTimeoutError

__all__ = ["FireResult", "HandlerOutcome"]


class HandlerOutcome(NamedTuple):
    """The outcome of one handler call during one firing."""

    handler_id: int
    #: The handler that was called.
    handler: Callable[[Any], object] | None
    phase: str
    #: True if the handler returned (or its Deferred/coroutine produced) a value.
    succeeded: bool
    #: The value on success, the :class:`~twisted.python.failure.Failure` otherwise.
    result: Any

    @property
    def failure(self) -> Failure | None:
        """The Failure if the handler failed, else None."""
        return None if self.succeeded else self.result

    @property
    def timed_out(self) -> bool:
        """True if the handler was cancelled because it exceeded its timeout."""
        return not self.succeeded and self.result.check(HandlerTimeoutError) is not None


class FireResult:
    """
    The result of one ``fire_event``: the event, its keywords, and each handler's outcome
    in the order the handlers were started.

    Outcome objects are built on first access; the firing itself only records raw tuples,
    which keeps the per-handler cost of a firing low.
    """

    __slots__ = ("event", "keywords", "aborted_phase", "_raw", "_outcomes")

    def __init__(
        self,
        event: Any,
        keywords: Mapping[str, Any],
        raw: list[tuple[Any, Any, bool, Any]],
        aborted_phase: str | None,
    ) -> None:
        self.event = event
        self.keywords = keywords
        #: Name of the phase whose failure stopped later phases, or None.
        self.aborted_phase = aborted_phase
        self._raw = raw
        self._outcomes: tuple[HandlerOutcome, ...] | None = None

    @property
    def outcomes(self) -> tuple[HandlerOutcome, ...]:
        """Every handler that was called, in start order (phase, priority, registration)."""
        if self._outcomes is None:
            self._outcomes = tuple(
                HandlerOutcome(reg.id, handler, reg.phase, ok, value)
                for reg, handler, ok, value in self._raw
            )
        return self._outcomes

    def handler_results(self) -> list[tuple[Callable[[Any], object] | None, Any]]:
        """``[(handler, result or Failure), ...]`` in start order (what signals return)."""
        return [(handler, value) for _, handler, _, value in self._raw]

    def for_phase(self, phase: str) -> tuple[HandlerOutcome, ...]:
        """The outcomes of one phase."""
        return tuple(o for o in self.outcomes if o.phase == phase)

    @property
    def results(self) -> list[Any]:
        """The successful handlers' return values, in start order."""
        return [o.result for o in self.outcomes if o.succeeded]

    @property
    def failures(self) -> list[HandlerOutcome]:
        """The outcomes of handlers that failed (including timeouts)."""
        return [o for o in self.outcomes if not o.succeeded]

    @property
    def succeeded(self) -> bool:
        """True if every handler that was called succeeded and no phase was aborted."""
        return self.aborted_phase is None and all(ok for _, _, ok, _ in self._raw)

    @property
    def aborted(self) -> bool:
        """True if a failure stopped later phases (see ``abort_on_failure``)."""
        return self.aborted_phase is not None

    @property
    def handler_count(self) -> int:
        """Number of handlers called."""
        return len(self._raw)

    def raise_first_failure(self) -> None:
        """Re-raise the first handler failure, if any (handy in tests and sync code)."""
        for _, _, ok, value in self._raw:
            if not ok:
                value.raiseException()

    def __repr__(self) -> str:
        failed = sum(1 for _, _, ok, _ in self._raw if not ok)
        aborted = f" aborted in {self.aborted_phase!r}" if self.aborted_phase else ""
        return (
            f"<FireResult {self.event!r}: {len(self._raw)} handler(s), "
            f"{failed} failed{aborted}>"
        )

