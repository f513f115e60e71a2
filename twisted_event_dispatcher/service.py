"""An ``IService`` wrapper so a dispatcher starts and drains with a twistd application."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from .dispatcher import EventDispatcher

__all__ = ["EventDispatcherService"]


class EventDispatcherService(Service):
    """
    Starts the dispatcher with the service and drains it on stop.

    ``stopService`` returns the dispatcher's ``stop()`` Deferred, so ``twistd`` (or any
    ``MultiService`` parent) waits for the events in flight before the reactor stops.
    """

    def __init__(self, dispatcher: EventDispatcher, name: str | None = None) -> None:
        self.dispatcher = dispatcher
        if name is not None:
            self.setName(name)  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.dispatcher.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return self.dispatcher.stop()
