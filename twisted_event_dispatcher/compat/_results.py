"""
What blinker's ``send`` and ``send_async`` do with results that are not ready yet.

blinker's ``send`` returns ``[(receiver, result), ...]`` at once, so a receiver that returns
a Deferred or a coroutine would hand back an unfinished result that nobody waits for: that
is refused with :class:`AsyncResultError`, which names the receiver and the two ways that
wait (``send_async``, or the Deferred-aware :class:`twisted_event_dispatcher.signals.Signal`).

``send_async`` awaits what blinker awaits and then any Deferred that comes out of it, so
its results are never Deferreds. Under Twisted (``Deferred.fromCoroutine``,
``ensureDeferred``, pytest-twisted) a Deferred is awaited directly; inside an asyncio task
it is awaited through :meth:`~twisted.internet.defer.Deferred.asFuture`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from inspect import iscoroutine
from typing import Any

from twisted.internet.defer import Deferred

_WAYS = (
    "use 'await signal.send_async(...)', which awaits Deferreds and coroutines, or "
    "twisted_event_dispatcher.signals.Signal, whose send() returns a Deferred that waits "
    "for them"
)


class AsyncResultError(RuntimeError):
    """
    ``send`` met a receiver whose result is not ready: an ``async def`` receiver (without
    ``_async_wrapper``), or one that returned a Deferred or a coroutine. A RuntimeError, as
    blinker's own refusal of coroutine functions.

    :ivar receiver: the receiver.
    :ivar result: what it returned (a Deferred, still running; a coroutine is closed
        unstarted), or None if it was not called.
    """

    def __init__(self, message: str, receiver: Callable[..., Any], result: object = None) -> None:
        super().__init__(message)
        self.receiver = receiver
        self.result = result


def _name(receiver: Callable[..., Any]) -> str:
    name = getattr(receiver, "__qualname__", None) or type(receiver).__qualname__
    module = getattr(receiver, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def coroutine_function_refused(receiver: Callable[..., Any]) -> AsyncResultError:
    """The error for an ``async def`` receiver met by ``send`` without ``_async_wrapper``."""
    return AsyncResultError(
        f"Cannot send to a coroutine function: receiver {_name(receiver)} is async, and "
        "send() returns the results at once; pass _async_wrapper= to run it, or "
        f"{_WAYS}",
        receiver,
    )


def sync_function_refused(receiver: Callable[..., Any]) -> AsyncResultError:
    """The error for a plain receiver met by ``send_async`` without ``_sync_wrapper``."""
    return AsyncResultError(
        f"Cannot send to a non-coroutine function: receiver {_name(receiver)} is not async; "
        "send_async() needs _sync_wrapper= to turn it into a coroutine function (as in "
        "blinker; a Deferred it returns is then awaited)",
        receiver,
    )


def check_ready(receiver: Callable[..., Any], result: object) -> None:
    """Raise :class:`AsyncResultError` if ``result`` is a Deferred or a coroutine."""
    if isinstance(result, Deferred):
        kind = "a Deferred"
    elif iscoroutine(result):
        kind = "a coroutine"
        result.close()  # never started: closing it keeps "never awaited" warnings away
    else:
        return
    raise AsyncResultError(
        f"receiver {_name(receiver)} returned {kind}, but send() returns the results at "
        f"once and would hand back an unfinished one; {_WAYS}",
        receiver,
        result,
    )


def _in_asyncio_task() -> bool:
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no asyncio loop runs in this thread
        return False


def _awaitable(value: Any) -> Any:
    """``value`` ready to be awaited by whoever drives the current coroutine."""
    if isinstance(value, Deferred) and _in_asyncio_task():
        return value.asFuture(asyncio.get_running_loop())
    return value


async def settle(awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable``, then any Deferred that comes out of it."""
    result = await _awaitable(awaitable)
    while isinstance(result, Deferred):
        result = await _awaitable(result)
    return result
