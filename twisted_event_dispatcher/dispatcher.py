"""
EventDispatcher: allowed keywords, handler registry, lifecycle and buffering.

Matching lives in :mod:`._matching`, running an event through its phases in
:mod:`._phases`; this module holds the state that ties them together.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from threading import get_ident
from typing import Any, Final

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python import threadable
from zope.interface import implementer

from ._matching import check_hashable
from ._phases import Firing, current_host, run_phases
from ._registration import Handler, Registration
from ._registry import HandlerRegistry
from ._threads import call_from_thread, foreign_thread, in_reactor
from .errors import (
    BufferFullError,
    KeywordInUseError,
    ReservedKeywordError,
    UnknownHandlerError,
    UnknownKeywordError,
    UnknownPhaseError,
)
from .interfaces import IEventDispatcher
from .results import FireResult

__all__ = ["DEFAULT_PHASES", "RESERVED_KEYWORDS", "EventDispatcher"]

#: The phases a dispatcher runs when none are given, in order.
DEFAULT_PHASES: Final = ("before", "during", "after")

# twisted.python.threadable, typed loosely: its stub declares ioThread as always None.
_threadable: Any = threadable

#: Option names of ``add_event_handler``; they cannot be match-spec keywords.
RESERVED_KEYWORDS: Final = frozenset({"phase", "priority", "times", "once", "weak", "timeout"})



class _Buffered:
    """An event fired while stopped: what to dispatch, and the caller's Deferred."""

    __slots__ = ("event", "keywords", "deferred", "dispatched")

    def __init__(self, event: Any, keywords: dict[str, Any]) -> None:
        self.event = event
        self.keywords = keywords
        self.deferred: Deferred[FireResult]
        self.dispatched: Deferred[FireResult] | None = None


class _Unset:
    def __repr__(self) -> str:
        return "<default>"


_UNSET: Final = _Unset()


def _check_names(names: Iterable[object]) -> frozenset[str]:
    names = tuple(names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"match-spec keywords must be str, got {type(name).__name__}")
        if not name.isidentifier():
            raise ValueError(f"match-spec keyword {name!r} is not a Python identifier")
    reserved = RESERVED_KEYWORDS.intersection(names)
    if reserved:
        raise ReservedKeywordError(reserved, RESERVED_KEYWORDS)
    return frozenset(names)  # type: ignore[arg-type]


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    return float(timeout)


@implementer(IEventDispatcher)
class EventDispatcher:
    """
    Fire events through ordered phases to handlers chosen by match spec.

    :param allowed_match_spec_keywords: the keywords match specs and ``fire_event`` may
        use (more can be added later with :meth:`add_match_spec_keywords`).
    :param phases: phase names in the order they run.
    :param abort_on_failure: ``False`` (default) runs every phase whatever fails; ``True``
        lets a failure in any phase cancel the later phases; an iterable of phase names
        limits that to those phases (``("before",)`` makes ``before`` handlers a veto).
    :param buffer_size: how many events may wait while the dispatcher is not running.
    :param handler_timeout: default ``timeout`` for handlers that do not set one.
    :param clock: the ``IReactorTime`` used for timeouts (the global reactor by default;
        a :class:`twisted.internet.task.Clock` in tests).
    """

    # fire_event must recognise events fired from inside its own handlers (see stop()).
    _tracks_context = True
    _log_terms = ("event handler", "event")

    def __init__(
        self,
        allowed_match_spec_keywords: Iterable[str] = (),
        phases: Sequence[str] = DEFAULT_PHASES,
        *,
        abort_on_failure: bool | Iterable[str] = False,
        buffer_size: int = 1000,
        handler_timeout: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if isinstance(allowed_match_spec_keywords, str):
            raise TypeError("allowed_match_spec_keywords must be an iterable of str, not a str")
        if isinstance(phases, str):
            raise TypeError("phases must be a sequence of str, not a str")
        phases = tuple(phases)
        if not phases:
            raise ValueError("a dispatcher needs at least one phase")
        for phase in phases:
            if not isinstance(phase, str):
                raise TypeError(f"phase names must be str, got {type(phase).__name__}")
        if len(set(phases)) != len(phases):
            raise ValueError(f"phase names must be unique, got {phases!r}")
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int):
            raise TypeError(f"buffer_size must be an int, got {buffer_size!r}")
        if buffer_size < 0:
            raise ValueError(f"buffer_size must be >= 0, got {buffer_size}")
        self._phases: tuple[str, ...] = phases
        self._phase_index = {name: i for i, name in enumerate(phases)}
        if abort_on_failure is True:
            self._abort_indices = frozenset(range(len(phases)))
        elif abort_on_failure is False:
            self._abort_indices = frozenset()
        else:
            if isinstance(abort_on_failure, str):
                abort_on_failure = (abort_on_failure,)
            self._abort_indices = frozenset(self._index_of(p) for p in abort_on_failure)
        self._allowed = _check_names(allowed_match_spec_keywords)
        self._handler_timeout = _check_timeout(handler_timeout)
        self._buffer_size = buffer_size
        self._explicit_clock = clock
        self._handlers = HandlerRegistry()
        self._buffer: deque[_Buffered] = deque()
        self._in_flight = 0
        self._stop_waiters: list[Deferred[None]] = []
        self.running = False

    # -- introspection -------------------------------------------------------------------

    @property
    def phases(self) -> tuple[str, ...]:
        """Phase names in the order they run."""
        return self._phases

    @property
    def allowed_match_spec_keywords(self) -> frozenset[str]:
        """The keywords match specs and ``fire_event`` may use."""
        return self._allowed

    @property
    def handler_count(self) -> int:
        """Number of handlers currently registered."""
        return len(self._handlers)

    @property
    def buffered_count(self) -> int:
        """Number of events waiting for ``start()``."""
        return len(self._buffer)

    @property
    def in_flight_count(self) -> int:
        """Number of dispatched events still waiting on a handler."""
        return self._in_flight

    @property
    def _clock(self) -> IReactorTime:
        if self._explicit_clock is None:
            from twisted.internet import reactor

            return reactor
        return self._explicit_clock

    def has_handler(self, handler_id: int) -> bool:
        """True if a handler with that id is currently registered."""
        return handler_id in self._handlers

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<EventDispatcher {state} phases={self._phases!r} "
            f"keywords={sorted(self._allowed)!r} handlers={len(self._handlers)}>"
        )

    # -- keywords ------------------------------------------------------------------------

    def add_match_spec_keywords(self, *names: str) -> None:
        """Allow more match-spec keywords."""
        self._allowed = self._allowed | _check_names(names)

    def remove_match_spec_keywords(self, *names: str) -> None:
        """Disallow keywords; refused while a registered handler's spec names one."""
        unknown = set(names) - self._allowed
        if unknown:
            raise UnknownKeywordError(unknown, self._allowed, "remove_match_spec_keywords")
        self._handlers.reap()
        in_use = self._handlers.index.keywords_in_use().intersection(names)
        if in_use:
            raise KeywordInUseError(in_use)
        self._allowed = self._allowed - frozenset(names)

    def _check_keywords(self, keywords: dict[str, Any], where: str) -> None:
        if not keywords.keys() <= self._allowed:
            raise UnknownKeywordError(keywords.keys() - self._allowed, self._allowed, where)
        check_hashable(keywords, where)

    def _index_of(self, phase: object) -> int:
        try:
            return self._phase_index[phase]  # type: ignore[index]
        except (KeyError, TypeError):
            raise UnknownPhaseError(phase, self._phases) from None

    # -- handlers ------------------------------------------------------------------------

    def add_event_handler(
        self,
        handler: Handler,
        phase: str,
        /,
        *,
        priority: int = 0,
        times: int | None = None,
        once: bool = False,
        weak: bool = False,
        timeout: float | None | _Unset = _UNSET,
        **match_spec: Any,
    ) -> Deferred[int]:
        """Register ``handler`` for ``phase``; see :class:`IEventDispatcher`."""
        io_thread = _threadable.ioThread  # foreign_thread(), inlined
        if io_thread is not None and io_thread != get_ident():
            return in_reactor(
                self.add_event_handler,
                handler,
                phase,
                priority=priority,
                times=times,
                once=once,
                weak=weak,
                timeout=timeout,
                **match_spec,
            )
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        phase_index = self._phase_index.get(phase) if isinstance(phase, str) else None
        if phase_index is None:
            raise UnknownPhaseError(phase, self._phases)
        if type(priority) is not int and (
            isinstance(priority, bool) or not isinstance(priority, int)
        ):
            raise TypeError(f"priority must be an int, got {priority!r}")
        if once:
            if times not in (None, 1):
                raise ValueError(f"once=True contradicts times={times!r}")
            times = 1
        if times is not None:
            if isinstance(times, bool) or not isinstance(times, int):
                raise TypeError(f"times must be an int or None, got {times!r}")
            if times < 1:
                raise ValueError(f"times must be >= 1, got {times}")
        timeout = self._handler_timeout if timeout is _UNSET else _check_timeout(timeout)
        if match_spec:
            self._check_keywords(match_spec, "add_event_handler")
        registration = self._handlers.add(
            handler, phase, phase_index, priority, match_spec, times, timeout, weak
        )
        return succeed(registration.id)

    def remove_event_handler(self, handler_id: int) -> Deferred[None]:
        """Remove a handler by id; see :class:`IEventDispatcher`."""
        io_thread = _threadable.ioThread  # foreign_thread(), inlined
        if io_thread is not None and io_thread != get_ident():
            return in_reactor(self.remove_event_handler, handler_id)
        registration = self._handlers.get(handler_id)
        if registration is None:
            raise UnknownHandlerError(handler_id)
        self._handlers.remove(registration)
        return succeed(None)

    def _count_call(self, registration: Registration) -> None:
        self._handlers.count_call(registration)

    # -- firing --------------------------------------------------------------------------

    def fire_event(self, event: Any, /, **keywords: Any) -> Deferred[FireResult]:
        """Fire ``event`` for the handlers matching ``keywords``; see IEventDispatcher."""
        if keywords:
            if not keywords.keys() <= self._allowed:
                raise UnknownKeywordError(
                    keywords.keys() - self._allowed, self._allowed, "fire_event"
                )
            try:
                hash(tuple(keywords.values()))
            except TypeError:
                check_hashable(keywords, "fire_event")
        io_thread = _threadable.ioThread  # foreign_thread(), inlined on this hot path
        if io_thread is not None and io_thread != get_ident():
            return in_reactor(self._fire_checked, event, keywords)
        if self.running or current_host.get() is self:
            return self._dispatch(event, keywords)
        return self._enqueue(event, keywords)

    def _fire_checked(self, event: Any, keywords: dict[str, Any]) -> Deferred[FireResult]:
        if self.running or current_host.get() is self:
            return self._dispatch(event, keywords)
        return self._enqueue(event, keywords)

    def _dispatch(self, event: Any, keywords: dict[str, Any]) -> Deferred[FireResult]:
        handlers = self._handlers
        if handlers._dead:
            handlers.reap()
        outcome = run_phases(self, event, keywords, handlers.index.lookup(keywords))
        if type(outcome) is FireResult:
            return succeed(outcome)
        assert isinstance(outcome, Firing)
        if outcome.result is not None:  # every Deferred had already fired (e.g. failed)
            return succeed(outcome.result)
        self._in_flight += 1
        return outcome.deferred

    def _landed(self) -> None:
        self._in_flight -= 1
        if not self._in_flight and self._stop_waiters:
            waiters, self._stop_waiters = self._stop_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _enqueue(self, event: Any, keywords: dict[str, Any]) -> Deferred[FireResult]:
        if len(self._buffer) >= self._buffer_size:
            return fail(BufferFullError(self._buffer_size))
        item = _Buffered(event, keywords)
        self._buffer.append(item)
        item.deferred = Deferred(lambda d: self._cancel_buffered(item))
        return item.deferred

    def _cancel_buffered(self, item: _Buffered) -> None:
        # Still waiting: drop it. Already dispatched: cancel the firing itself.
        if item.dispatched is None:
            self._buffer.remove(item)
        else:
            item.dispatched.cancel()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start dispatching; buffered events are dispatched in the order fired."""
        if foreign_thread():
            call_from_thread(self.start)
            return
        if self.running:
            return
        self.running = True
        buffer = self._buffer
        while buffer and self.running:
            item = buffer.popleft()
            item.dispatched = self._dispatch(item.event, item.keywords)
            item.dispatched.chainDeferred(item.deferred)

    def stop(self) -> Deferred[None]:
        """Stop dispatching; the Deferred fires once the events in flight have finished."""
        if foreign_thread():
            return in_reactor(self.stop)
        self.running = False
        if not self._in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stop_waiters.append(waiter)
        return waiter

