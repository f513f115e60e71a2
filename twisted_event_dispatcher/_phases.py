"""
Runs one event through its phases.

Handlers of a phase are started one after another in sort order and run concurrently; the
next phase starts once every result of the current one has settled. A handler's result may
be a plain value, a Deferred, a coroutine or another awaitable. Plain values (and
Deferreds that have already fired) are recorded on the spot: a firing whose handlers are
all synchronous completes inside :func:`run_phases` without creating a Deferred per
handler, nor a :class:`Firing`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Awaitable, Sequence
from contextvars import ContextVar
from inspect import iscoroutine
from itertools import islice
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

    @property
    def _abort_indices(self) -> frozenset[int]: ...

    #: True if the host needs :data:`current_host` set while its handlers run.
    _tracks_context: bool
    #: How log messages name a handler and what it was called for.
    _log_terms: tuple[str, str]

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


def run_phases(
    host: PhaseHost,
    event: Any,
    keywords: dict[str, Any],
    entries: Sequence[Registration],
    call_kwargs: dict[str, Any] | None = None,
    firing: Firing | None = None,
) -> FireResult | Firing:
    """
    Run ``event`` through the phases of ``entries`` until done or until a phase has to wait.

    Handlers are called ``handler(event)``, or ``handler(event, **call_kwargs)`` when
    ``call_kwargs`` is given (signals: ``receiver(sender, **kwargs)``).

    Returns the :class:`FireResult` when every phase ran synchronously; otherwise the
    :class:`Firing` that holds the state and resumes when the phase's results settle. A
    firing whose handlers are all synchronous never creates a Firing nor a Deferred per
    handler.
    """
    count = len(entries)
    if firing is None:
        i = 0
        raw: list[tuple[Registration, Any, bool, Any]] = []
    else:
        # Resuming after the phase that ended at ``pos`` settled: apply the abort policy.
        i = firing.pos
        raw = firing.raw
        if firing.failed:
            firing.failed = False
            previous = entries[i - 1].phase_index
            if previous in host._abort_indices:
                return _finish(firing, event, keywords, raw, host.phases[previous])
    failed = False
    append = raw.append
    token = current_host.set(host) if host._tracks_context else None
    try:
        while i < count:
            phase_index = entries[i].phase_index
            # Entries are sorted by phase first: this phase ends where the next one starts.
            if entries[count - 1].phase_index == phase_index:
                end = count
            else:
                end = bisect_right(entries, phase_index, i, count, key=_phase_of)
            if firing is not None:
                firing.looping = True
            for reg in entries if i == 0 and end == count else islice(entries, i, end):
                if not reg.active:
                    continue
                if firing is not None and firing.cancelled:
                    break
                fn = reg.fn
                if fn is None:
                    assert reg.ref is not None
                    fn = reg.ref()
                    if fn is None:
                        continue
                if reg.times is not None:
                    host._count_call(reg)
                try:
                    result = fn(event) if call_kwargs is None else fn(event, **call_kwargs)
                except Exception:
                    failure = Failure()
                    append((reg, fn, False, failure))
                    log_failure(host, reg, fn, event, failure)
                    failed = True
                    continue
                if result is None or type(result) in _PLAIN:
                    append((reg, fn, True, result))
                    continue
                d = as_deferred(result)
                if d is None:
                    append((reg, fn, True, result))
                    continue
                if d.called and not d.paused:
                    # Already fired and not waiting on another Deferred, so every callback
                    # has run and ``result`` is final: a success is taken without a
                    # callback round trip (failures take the errback path below, which
                    # consumes and logs them).
                    value = d.result
                    if (
                        value is None
                        or type(value) in _PLAIN
                        or not isinstance(value, (Failure, Deferred))
                    ):
                        append((reg, fn, True, value))
                        continue
                if firing is None:
                    firing = Firing(host, event, keywords, entries, raw, call_kwargs)
                    firing.looping = True
                slot = len(raw)
                append((reg, fn, True, None))
                if reg.timeout is not None and not d.called:
                    d.addTimeout(reg.timeout, host._clock, onTimeoutCancel=_TimedOut(reg, fn))
                firing.pending[slot] = d
                d.addCallbacks(
                    firing._settled,
                    firing._settled_failure,
                    callbackArgs=(slot,),
                    errbackArgs=(slot,),
                )
            i = end
            if firing is not None:
                firing.looping = False
                if firing.cancelled:
                    return firing
                if firing.pending:
                    firing.pos = i
                    firing.failed = firing.failed or failed
                    return firing
                failed = failed or firing.failed
                firing.failed = False
            if failed:
                failed = False
                if phase_index in host._abort_indices:
                    return _finish(firing, event, keywords, raw, host.phases[phase_index])
        return _finish(firing, event, keywords, raw, None)
    finally:
        if token is not None:
            current_host.reset(token)


def _phase_of(registration: Registration) -> int:
    return registration.phase_index


def _finish(
    firing: Firing | None,
    event: Any,
    keywords: dict[str, Any],
    raw: list[tuple[Registration, Any, bool, Any]],
    aborted_phase: str | None,
) -> FireResult | Firing:
    result = FireResult(event, keywords, raw, aborted_phase)
    if firing is None:
        return result
    firing.result = result
    return firing


def log_failure(
    host: PhaseHost, reg: Registration, fn: object, event: object, failure: Failure
) -> None:
    """Log a handler's failure, once, with the handler, phase and event."""
    handler_kind, event_kind = host._log_terms
    _log.failure(
        "{handler_kind} {handler!r} (id {handler_id}) failed in phase {phase!r} "
        "for {event_kind} {event!r}: {error}",
        handler_kind=handler_kind,
        event_kind=event_kind,
        failure=failure,
        error=f"{getattr(failure.type, '__name__', failure.type)}: "
        f"{failure.getErrorMessage()}",
        handler=fn,
        handler_id=reg.id,
        phase=reg.phase,
        event=event,
    )


class Firing:
    """
    The state of an event whose phase had to wait for a Deferred or coroutine.

    ``deferred`` is what ``fire_event`` returned; it fires with the FireResult once the
    remaining phases have run. Cancelling it cancels the handlers still running in the
    current phase and skips the later phases (it then fails with CancelledError).
    """

    __slots__ = (
        "host",
        "event",
        "keywords",
        "entries",
        "call_kwargs",
        "pos",
        "raw",
        "pending",
        "cancelled",
        "looping",
        "failed",
        "result",
        "deferred",
    )

    def __init__(
        self,
        host: PhaseHost,
        event: Any,
        keywords: dict[str, Any],
        entries: Sequence[Registration],
        raw: list[tuple[Registration, Any, bool, Any]],
        call_kwargs: dict[str, Any] | None,
    ) -> None:
        self.host = host
        self.call_kwargs = call_kwargs
        self.event = event
        self.keywords = keywords
        self.entries = entries
        self.raw = raw
        self.pos = 0
        self.pending: dict[int, Deferred[Any]] = {}
        self.cancelled = False
        self.looping = False
        self.failed = False
        self.result: FireResult | None = None
        self.deferred: Deferred[FireResult] = Deferred(self._cancel)

    def _settled(self, value: object, slot: int) -> None:
        reg, fn, _, _ = self.raw[slot]
        self.raw[slot] = (reg, fn, True, value)
        self._one_settled(slot)

    def _settled_failure(self, failure: Failure, slot: int) -> None:
        reg, fn, _, _ = self.raw[slot]
        self.raw[slot] = (reg, fn, False, failure)
        if not (self.cancelled and failure.check(CancelledError)):
            log_failure(self.host, reg, fn, self.event, failure)
        self.failed = True
        self._one_settled(slot)

    def _one_settled(self, slot: int) -> None:
        del self.pending[slot]
        if not self.pending and not self.looping:
            self._resume()

    def _cancel(self, deferred: Deferred[FireResult]) -> None:
        self.cancelled = True
        for d in list(self.pending.values()):
            d.cancel()

    def _resume(self) -> None:
        """The waiting phase has settled: run the rest, then report."""
        if not self.cancelled:
            run_phases(
                self.host, self.event, self.keywords, self.entries, self.call_kwargs, self
            )
        if self.pending:
            return  # a later phase is waiting, or cancelled handlers have not settled yet
        if not self.cancelled:
            assert self.result is not None
            self.deferred.callback(self.result)
        self.host._landed()


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
