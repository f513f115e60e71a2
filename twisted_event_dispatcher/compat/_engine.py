"""
The engine under a blinker-style signal: a :class:`~twisted_event_dispatcher.signals.Signal`
that keys senders as blinker does and announces nothing.

The blinker layer keeps blinker's bookkeeping (``receivers``, ``_by_sender``, ...) for
introspection; deciding which receivers a send calls, in which order, once each, and
dropping the ones whose receiver or sender was collected is this engine's work, the same
:class:`~._registry.HandlerRegistry` and :class:`~._matching.MatchIndex` as every signal
and dispatcher of the project.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from ..signals import Signal

T = TypeVar("T")

#: blinker's id of ``ANY`` in its bookkeeping (``blinker.base.ANY_ID``).
ANY_ID = 0


def make_id(obj: object) -> Hashable:
    """blinker's bookkeeping id: bound methods by their parts, str/int by value, else id."""
    if inspect.ismethod(obj):
        return id(obj.__func__), id(obj.__self__)
    if isinstance(obj, str | int):
        return obj
    return id(obj)


def make_ref(obj: T, callback: Callable[[weakref.ref[T]], None] | None = None) -> weakref.ref[T]:
    """A weak reference to ``obj`` (a :class:`weakref.WeakMethod` for a bound method)."""
    if inspect.ismethod(obj):
        return weakref.WeakMethod(obj, callback)  # type: ignore[arg-type, return-value]
    return weakref.ref(obj, callback)


def engine_key(sender: object) -> Hashable:
    """
    The engine's key of a sender: ``str`` and ``int`` by value, any other object by
    identity, hashable or not (blinker accepts unhashable senders, e.g. dataclasses).
    """
    if isinstance(sender, str | int):
        return sender
    return (id(sender),)


class Engine(Signal):
    """
    Matches and orders the receivers of one blinker-style signal.

    Receivers are registered weakly whenever they can be weakly referenced: whether a
    receiver is held strongly is decided by the blinker layer's ``receivers`` mapping (as in
    blinker, the last ``connect`` of a receiver decides), which holds strong receivers.
    """

    _sender_key = staticmethod(engine_key)

    def _notify(self, announcement: Signal | None, **kwargs: Any) -> None:
        """The blinker layer sends its own meta-signals: the project's stay silent."""

    def clear(self) -> None:
        """Disconnect every receiver from every sender."""
        with self._lock:
            for registration in list(self._handlers):
                self._handlers.remove(registration)
