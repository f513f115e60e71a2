"""One registered handler: its callable (strong or weak), phase, ordering and options."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from types import MethodType
from typing import Any

Handler = Callable[[Any], object]


class Registration:
    """
    A handler as stored in the index.

    ``sort_key`` is ``(phase index, priority, id)``: one sort of the matching entries puts
    the phases in order and, within a phase, lower priority first, then registration order.
    Identity hashing keeps index operations cheap; ids are never reused.
    """

    __slots__ = (
        "id",
        "phase",
        "phase_index",
        "priority",
        "sort_key",
        "spec",
        "fn",
        "ref",
        "times",
        "calls",
        "timeout",
        "active",
        "__weakref__",
    )

    def __init__(
        self,
        handler_id: int,
        handler: Handler,
        phase: str,
        phase_index: int,
        priority: int,
        spec: Mapping[str, Any],
        times: int | None,
        timeout: float | None,
        on_collected: Callable[[Registration], None] | None,
    ) -> None:
        """``on_collected`` given: hold ``handler`` weakly and call it when collected."""
        self.id = handler_id
        self.phase = phase
        self.phase_index = phase_index
        self.priority = priority
        self.sort_key = (phase_index, priority, handler_id)
        self.spec = spec
        self.times = times
        self.calls = 0
        self.timeout = timeout
        self.active = True
        self.fn: Handler | None
        self.ref: Callable[[], Handler | None] | None
        if on_collected is not None:
            self.fn = None
            me = weakref.ref(self)

            def collected(_: object) -> None:
                registration = me()
                if registration is not None and registration.active:
                    on_collected(registration)

            if isinstance(handler, MethodType):
                self.ref = weakref.WeakMethod(handler, collected)
            else:
                self.ref = weakref.ref(handler, collected)
        else:
            self.fn = handler
            self.ref = None

    @property
    def handler(self) -> Handler | None:
        """The callable, or None if it was weakly referenced and has been collected."""
        if self.fn is not None:
            return self.fn
        assert self.ref is not None
        return self.ref()

    def __repr__(self) -> str:
        return f"<Registration {self.id} {self.phase} {self.handler!r} {self.spec!r}>"


def sort_key(registration: Registration) -> tuple[int, int, int]:
    """Key for :class:`~twisted_event_dispatcher._matching.MatchIndex`."""
    return registration.sort_key
