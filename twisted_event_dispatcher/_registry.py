"""
HandlerRegistry: the handlers of one dispatcher (or signal), by id and by match spec.

Shared by :class:`~twisted_event_dispatcher.EventDispatcher` and
:class:`~twisted_event_dispatcher.signals.Signal`, so that there is one dispatch engine:
this registry, :class:`~._matching.MatchIndex` and :func:`~._phases.run_phases`.

Weakly held handlers that are collected are not unregistered from inside the weakref
callback, which runs wherever the garbage collector happens to run (possibly in the middle
of an index update, or in another thread): the callback only marks the registration
inactive, so no firing calls it again, and queues it; the registry drops queued
registrations before its next read or change (:meth:`reap`; the hosts call it before
``index.lookup`` when ``_dead`` is not empty).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping

from ._matching import MatchIndex
from ._registration import Handler, Registration, sort_key


class HandlerRegistry:
    """Registrations by id and in a :class:`MatchIndex`; ids are never reused."""

    __slots__ = ("index", "_by_id", "_next_id", "_dead", "_on_remove")

    def __init__(self, on_remove: Callable[[Registration], None] | None = None) -> None:
        """``on_remove`` is told of every registration that leaves, whatever the cause."""
        self._on_remove = on_remove
        self.index: MatchIndex[Registration] = MatchIndex(sort_key)
        self._by_id: dict[int, Registration] = {}
        self._next_id = 1
        self._dead: list[Registration] = []

    def __len__(self) -> int:
        self.reap()
        return len(self._by_id)

    def __contains__(self, handler_id: object) -> bool:
        self.reap()
        return handler_id in self._by_id

    def __iter__(self) -> Iterator[Registration]:
        self.reap()
        return iter(list(self._by_id.values()))

    def get(self, handler_id: object) -> Registration | None:
        """The live registration with that id, or None."""
        self.reap()
        try:
            return self._by_id.get(handler_id)  # type: ignore[call-overload, no-any-return]
        except TypeError:  # unhashable id
            return None

    def add(
        self,
        handler: Handler,
        phase: str,
        phase_index: int,
        priority: int,
        spec: Mapping[str, Hashable],
        times: int | None,
        timeout: float | None,
        weak: bool,
    ) -> Registration:
        """
        Register ``handler``. The spec's keywords must already be validated by the caller;
        unhashable values raise TypeError before anything changes, and so does
        ``weak=True`` with a handler that cannot be weakly referenced.
        """
        if self._dead:
            self.reap()
        try:
            registration = Registration(
                self._next_id,
                handler,
                phase,
                phase_index,
                priority,
                spec,
                times,
                timeout,
                self.collected if weak else None,
            )
        except TypeError:
            raise TypeError(
                "weak=True needs a weakly referenceable handler; "
                f"{type(handler).__name__} objects are not"
            ) from None
        self.index.add(registration, spec)
        self._next_id += 1
        self._by_id[registration.id] = registration
        return registration

    def remove(self, registration: Registration) -> bool:
        """Unregister; False if it was not (or no longer) registered."""
        registration.active = False
        if self._by_id.pop(registration.id, None) is None:
            return False
        self.index.remove(registration)
        if self._on_remove is not None:
            self._on_remove(registration)
        return True

    def count_call(self, registration: Registration) -> None:
        """Count a call of a ``times=N`` handler; unregister it after its last one."""
        registration.calls += 1
        assert registration.times is not None
        if registration.calls >= registration.times:
            self.remove(registration)

    def reap(self) -> None:
        """Unregister the weakly held handlers that were collected."""
        while self._dead:
            self.remove(self._dead.pop())

    def collected(self, registration: Registration) -> None:
        """Mark a registration dead (its handler or sender was collected); reaped later."""
        registration.active = False
        self._dead.append(registration)
