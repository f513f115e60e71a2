"""
Blocking access to a dispatcher from ordinary threaded code, through crochet.

Twisted objects belong to the reactor thread. :class:`BlockingEventDispatcher` runs each
call there with :func:`crochet.run_in_reactor` and blocks the calling thread until the
returned Deferred fires, re-raising the handler's or dispatcher's exception on failure::

    from twisted_event_dispatcher.sync import BlockingEventDispatcher
    users = BlockingEventDispatcher(dispatcher)      # calls crochet.setup()
    result = users.fire_event(event, user="alice")   # a FireResult, in this thread

An application that runs the reactor itself (twistd, or a reactor started by hand) calls
``crochet.no_setup()`` first, which makes ``setup()`` a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import crochet
from twisted.python import threadable

from ._registration import Handler
from .errors import ReactorThreadError, SyncTimeoutError
from .interfaces import IEventDispatcher
from .results import FireResult

__all__ = ["BlockingEventDispatcher", "call_blocking"]


def call_blocking(
    function: Callable[..., object], *args: Any, timeout: float, **kwargs: Any
) -> Any:
    """
    Call ``function(*args, **kwargs)`` in the reactor thread and wait for its result.

    :raises ReactorThreadError: called from the reactor thread, where waiting would
        deadlock the reactor.
    :raises SyncTimeoutError: no result within ``timeout`` seconds; the pending Deferred
        is cancelled.
    """
    if threadable.isInIOThread():
        raise ReactorThreadError(
            f"{getattr(function, '__name__', function)!r} was called through the blocking "
            "facade from the reactor thread, where waiting would deadlock; call the "
            "EventDispatcher directly and use its Deferred instead"
        )
    eventual = crochet.run_in_reactor(function)(*args, **kwargs)
    try:
        result = eventual.wait(timeout)
    except crochet.TimeoutError:
        eventual.cancel()
        raise SyncTimeoutError(
            f"{getattr(function, '__name__', function)!r} did not finish within {timeout:g}s"
        ) from None
    return result


class BlockingEventDispatcher:
    """
    The :class:`~twisted_event_dispatcher.interfaces.IEventDispatcher` API, blocking.

    :param dispatcher: the dispatcher to drive (it lives in the reactor thread).
    :param timeout: seconds each call may wait before raising :class:`SyncTimeoutError`.
    :param setup: call :func:`crochet.setup` (start the reactor in a thread if nothing
        runs it yet).
    """

    def __init__(self, dispatcher: Any, timeout: float = 10.0, setup: bool = True) -> None:
        if not IEventDispatcher.providedBy(dispatcher):
            raise TypeError(f"{dispatcher!r} does not provide IEventDispatcher")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if setup:
            crochet.setup()
        self.dispatcher = dispatcher
        self.timeout = timeout

    def add_event_handler(self, handler: Handler, phase: str, /, **options: Any) -> int:
        """Register a handler (options and match spec as for the dispatcher); its id."""
        result: int = call_blocking(
            self.dispatcher.add_event_handler, handler, phase, timeout=self.timeout, **options
        )
        return result

    def remove_event_handler(self, handler_id: int) -> None:
        """Remove a handler by id."""
        call_blocking(self.dispatcher.remove_event_handler, handler_id, timeout=self.timeout)

    def fire_event(self, event: Any, /, **keywords: Any) -> FireResult:
        """Fire an event and wait until every phase has finished."""
        result: FireResult = call_blocking(
            self.dispatcher.fire_event, event, timeout=self.timeout, **keywords
        )
        return result

    def start(self) -> None:
        """Start the dispatcher."""
        call_blocking(self.dispatcher.start, timeout=self.timeout)

    def stop(self) -> None:
        """Stop the dispatcher and wait for the events in flight."""
        call_blocking(self.dispatcher.stop, timeout=self.timeout)

    @property
    def running(self) -> bool:
        """Whether the dispatcher is running."""
        return bool(self.dispatcher.running)
