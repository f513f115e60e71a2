"""
Runs one event through its phases.

Handlers of a phase are started one after another in sort order and run concurrently; the
next phase starts once every result of the current one has settled. A handler's result may
be a plain value, a Deferred, a coroutine or another awaitable. Plain values (and
Deferreds that have already fired) are recorded on the spot: a firing whose handlers are
all synchronous completes inside ``start()`` without creating a Deferred per handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from contextvars import ContextVar
from inspect import iscoroutine
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._registration import Registration
from .errors import HandlerTimeoutError
from .results import FireResult

_log = Logger(namespace="twisted_event_dispatcher")

#: The dispatcher whose handler is running in the current context (None outside handlers).
#: Coroutine handlers inherit it, so ``fire_event`` can tell a cascade from inside a
#: handler apart from a fresh event while the dispatcher is stopping.
current_host: ContextVar[object | None] = ContextVar(
    "twisted_event_dispatcher_current_host", default=None
)

_PLAIN = frozenset({bool, int, float, str, bytes, tuple, list, dict, set, frozenset})
_T = TypeVar("_T")


class PhaseHost(Protocol):
    """What a firing needs from its dispatcher."""

    @property
    def phases(self) -> tuple[str, ...]: ...

    _abort_indices: frozenset[int]

    @property
    def _clock(self) -> IReactorTime: ...

    def _count_call(self, registration: Registration) -> None: ...

    def _landed(self) -> None:
        """A firing that had to wait (counted in flight) has finished."""


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def as_deferred(value: object) -> Deferred[Any] | None:
    """The Deferred standing for ``value``, or None if ``value`` is a plain result."""
    if isinstance(value, Deferred):
        return value
    if iscoroutine(value):
        return Deferred.fromCoroutine(value)
    if hasattr(type(value), "__await__"):
        return Deferred.fromCoroutine(_await(value))  # type: ignore[arg-type]
    return None


class Firing:
    """The state of one event moving through its phases."""

    __slots__ = (
        "host",
        "event",
        "keywords",
        "entries",
        "pos",
        "raw",
        "pending",
        "cancelled",
        "looping",
        "failed",
        "aborted_phase",
        "deferred",
    )

    def __init__(
        self,
        host: PhaseHost,
        event: Any,
        keywords: dict[str, Any],
        entries: Sequence[Registration],
    ) -> None:
        self.host = host
        self.event = event
        self.keywords = keywords
        self.entries = entries
        self.pos = 0
        self.raw: list[tuple[Registration, Any, bool, Any]] = []
        self.pending: dict[int, Deferred[Any]] = {}
        self.cancelled = False
        self.looping = False
        self.failed = False
        self.aborted_phase: str | None = None
        self.deferred: Deferred[FireResult] | None = None

    def start(self) -> FireResult | None:
        """Run as far as possible; the result if finished, else None (see ``deferred``)."""
        if self._step():
            return FireResult(self.event, self.keywords, self.raw, self.aborted_phase)
        self.deferred = Deferred(self._cancel)
        return None

    def _step(self) -> bool:
        """Run phases until one has to wait; True when the whole firing is done."""
        entries = self.entries
        count = len(entries)
        i = self.pos
        raw = self.raw
        event = self.event
        token = current_host.set(self.host)
        try:
            while i < count and not self.cancelled:
                phase_index = entries[i].phase_index
                self.looping = True
                while i < count:
                    reg = entries[i]
                    if reg.phase_index != phase_index:
                        break
                    i += 1
                    if not reg.active:
                        continue
                    fn = reg.fn
                    if fn is None:
                        assert reg.ref is not None
                        fn = reg.ref()
                        if fn is None:
                            continue
                    if reg.times is not None:
                        self.host._count_call(reg)
                    try:
                        result = fn(event)
                    except Exception:
                        failure = Failure()
                        raw.append((reg, fn, False, failure))
                        self._log_failure(reg, fn, failure)
                        continue
                    if result is None or type(result) in _PLAIN:
                        raw.append((reg, fn, True, result))
                        continue
                    d = as_deferred(result)
                    if d is None:
                        raw.append((reg, fn, True, result))
                        continue
                    if d.called and not d.paused:
                        # Already fired and not waiting on another Deferred, so every
                        # callback has run and ``result`` is final: a success is taken
                        # without a callback round trip (failures still take the errback
                        # path below, which consumes and logs them).
                        value = d.result
                        if (
                            value is None
                            or type(value) in _PLAIN
                            or not isinstance(value, (Failure, Deferred))
                        ):
                            raw.append((reg, fn, True, value))
                            continue
                    slot = len(raw)
                    raw.append((reg, fn, True, None))
                    if reg.timeout is not None and not d.called:
                        d.addTimeout(
                            reg.timeout, self.host._clock, onTimeoutCancel=_TimedOut(reg, fn)
                        )
                    self.pending[slot] = d
                    d.addCallbacks(
                        self._settled,
                        self._settled_failure,
                        callbackArgs=(slot,),
                        errbackArgs=(slot,),
                    )
                self.looping = False
                if self.pending:
                    self.pos = i
                    return False
                if self._aborts(phase_index):
                    return True
            return True
        finally:
            self.looping = False
            current_host.reset(token)

    def _settled(self, value: object, slot: int) -> None:
        reg, fn, _, _ = self.raw[slot]
        self.raw[slot] = (reg, fn, True, value)
        self._one_settled(slot)

    def _settled_failure(self, failure: Failure, slot: int) -> None:
        reg, fn, _, _ = self.raw[slot]
        self.raw[slot] = (reg, fn, False, failure)
        if not (self.cancelled and failure.check(CancelledError)):
            self._log_failure(reg, fn, failure)
        self._one_settled(slot)

    def _one_settled(self, slot: int) -> None:
        del self.pending[slot]
        if not self.pending and not self.looping:
            self._resume()

    def _cancel(self, deferred: Deferred[FireResult]) -> None:
        """
        Cancelling ``fire_event``'s Deferred cancels the handlers still running in the
        current phase and skips the later phases; the Deferred fails with CancelledError.
        """
        self.cancelled = True
        for d in list(self.pending.values()):
            d.cancel()

    def _aborts(self, phase_index: int) -> bool:
        """At the end of a phase: True if a failure in it cancels the later phases."""
        if self.cancelled:
            return True
        if not self.failed:
            return False
        self.failed = False
        if phase_index in self.host._abort_indices:
            self.aborted_phase = self.host.phases[phase_index]
            return True
        return False

    def _resume(self) -> None:
        # The phase that was waiting has just settled; it ended at ``pos``.
        if self._aborts(self.entries[self.pos - 1].phase_index) or self._step():
            assert self.deferred is not None
            if not self.cancelled:
                self.deferred.callback(
                    FireResult(self.event, self.keywords, self.raw, self.aborted_phase)
                )
            self.host._landed()

    def _log_failure(self, reg: Registration, fn: object, failure: Failure) -> None:
        self.failed = True
        _log.failure(
            "event handler {handler!r} (id {handler_id}) failed in phase {phase!r} "
            "for event {event!r}: {error}",
            failure=failure,
            error=f"{getattr(failure.type, '__name__', failure.type)}: "
            f"{failure.getErrorMessage()}",
            handler=fn,
            handler_id=reg.id,
            phase=reg.phase,
            event=self.event,
        )


class _TimedOut:
    """``onTimeoutCancel`` for ``addTimeout``: turn the cancellation into a timeout error."""

    __slots__ = ("reg", "fn")

    def __init__(self, reg: Registration, fn: object) -> None:
        self.reg = reg
        self.fn = fn

    def __call__(self, value: object, timeout: float) -> object:
        if isinstance(value, Failure) and value.check(CancelledError):
            assert self.reg.timeout is not None
            return Failure(HandlerTimeoutError(self.fn, self.reg.phase, self.reg.timeout))
        return value
