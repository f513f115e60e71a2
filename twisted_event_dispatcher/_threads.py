"""
Hand calls made outside the reactor thread over to it.

Twisted objects belong to the thread running the reactor. A dispatcher method called from
another thread (a crochet user's main thread, a worker) must not touch the handler
registry or run handlers there; instead the call is queued with ``callFromThread`` and its
result arrives through a Deferred fired in the reactor thread (crochet's ``wait_for`` and
``run_in_reactor`` consume it there).
"""

from __future__ import annotations

from collections.abc import Callable
from threading import get_ident
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python import threadable

_T = TypeVar("_T")


def foreign_thread() -> bool:
    """True when a reactor has registered its thread and the caller is another thread."""
    io_thread = getattr(threadable, "ioThread", None)
    return io_thread is not None and io_thread != get_ident()


def call_from_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Queue ``function(*args, **kwargs)`` for the reactor thread."""
    from twisted.internet import reactor

    cast(IReactorFromThreads, reactor).callFromThread(function, *args, **kwargs)


def in_reactor(
    function: Callable[..., Deferred[_T] | _T], *args: Any, **kwargs: Any
) -> Deferred[_T]:
    """Run ``function`` in the reactor thread; a Deferred (fired there) with its result."""
    result: Deferred[_T] = Deferred()

    def run() -> None:
        maybeDeferred(function, *args, **kwargs).chainDeferred(result)  # type: ignore[arg-type]

    call_from_thread(run)
    return result
