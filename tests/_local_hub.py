"""
The event hub in the test process (a real HubService on 127.0.0.1, port 0), with what it
logs: faster than a subprocess when a test sends many requests, and the log is at hand.
"""

from __future__ import annotations

import gc
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import provider

from tests._clients import WSClient, connect_ws
from twisted_event_dispatcher.hub import Hub, HubService


class LocalHub:
    """A running hub, its port, and every event it logged while running."""

    def __init__(self, hub: Hub, service: HubService, port: int) -> None:
        self.hub = hub
        self.service = service
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.logged: list[dict[str, Any]] = []
        self.observe = log_observer(self.logged)

    @property
    def log_text(self) -> str:
        return "\n".join(formatEvent(event) for event in self.logged)

    def problems(self) -> list[str]:
        """Tracebacks, errors and critical messages logged so far."""
        gc.collect()  # "Unhandled error in Deferred" is logged when the Deferred is collected
        return [
            formatEvent(event) + (f"\n{event['log_failure']}" if "log_failure" in event else "")
            for event in self.logged
            if "log_failure" in event
            or event.get("isError")
            or event.get("log_level") in (LogLevel.error, LogLevel.critical)
        ]

    async def subscriber(self, event: str = "*") -> WSClient:
        """A WebSocket client subscribed to ``event``."""
        ws = await connect_ws(self.port, path="/ws")
        ws.send_json({"type": "subscribe", "event": event})
        await ws.wait_type("subscribed")
        return ws

    async def stop(self) -> None:
        try:
            await self.service.stopService()
        finally:
            globalLogPublisher.removeObserver(self.observe)


def log_observer(sink: list[dict[str, Any]]) -> ILogObserver:
    """A log observer that appends every event to ``sink``."""

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        sink.append(event)

    return cast(ILogObserver, observe)


async def start_local_hub(*keywords: str, **options: Any) -> LocalHub:
    """Start ``Hub(keywords, **options)`` under a HubService on 127.0.0.1."""
    hub = Hub(keywords, **options)
    service = HubService(hub, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    local = LocalHub(hub, service, 0)
    globalLogPublisher.addObserver(local.observe)
    service.startService()
    try:
        address: Any = (await service.ready).getHost()
    except BaseException:
        globalLogPublisher.removeObserver(local.observe)
        raise
    local.port = address.port
    local.url = f"http://127.0.0.1:{local.port}/"
    return local


__all__ = ["LocalHub", "log_observer", "start_local_hub"]
