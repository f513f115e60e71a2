"""
Hub: the event hub's parts wired together — an EventDispatcher bridged to a channel, the
WebSocket and SSE carriers, the HTTP resources — and HubService, which runs it.
"""

from __future__ import annotations

import time
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import Request, Site

from ..bridge import bridge
from ..carriers.sse import SSEResource
from ..carriers.websocket import EventWebSocketFactory
from ..channels import ChannelRegistry, MemoryChannel
from ..dispatcher import EventDispatcher
from .resources import (
    EventsResource,
    HealthResource,
    HubRequest,
    static_root,
    token_of,
    token_ok,
)

__all__ = ["LOOPBACK_ORIGINS", "Hub", "HubService"]

_log = Logger(namespace="twisted_event_dispatcher.hub")

#: Origins the WebSocket endpoint accepts unless told otherwise: pages served from this
#: machine (the demo page among them).
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")


class Hub:
    """
    The hub's parts. Use :attr:`site` in any Twisted program, or run a
    :class:`HubService`.

    :param keywords: match-spec keywords ``POST /events`` may send.
    :param history: messages the channel keeps for clients that resume.
    :param token: if given, required by ``POST /events``, ``/ws`` and ``/sse`` (an
        ``Authorization: Bearer`` header, or a ``token`` query parameter).
    :param origins: origins allowed to open ``/ws`` (default: loopback pages).
    """

    def __init__(
        self,
        keywords: tuple[str, ...] = (),
        *,
        channel_name: str = "events",
        history: int = 1000,
        redis_url: str | None = None,
        token: str | None = None,
        origins: tuple[str, ...] = (),
        max_body: int = 65536,
        max_frame: int = 65536,
        clock: IReactorTime | None = None,
    ) -> None:
        self.token = token
        self.max_body = max_body
        self.started = time.time()
        self.channels = ChannelRegistry()
        self.channel: Any
        if redis_url is None:
            self.backend = "memory"
            self.channel = self.channels.get(channel_name, MemoryChannel, history_size=history)
        else:
            from ..channels.redis import RedisStreamChannel

            self.backend = "redis"
            self.channel = self.channels.get(
                channel_name, RedisStreamChannel, history_size=history, url=redis_url
            )
        self.dispatcher = EventDispatcher(keywords, clock=clock)
        self.bridge_id: int | None = None
        self.websocket = EventWebSocketFactory(
            channels=self.channels,
            default_channel=channel_name,
            allowed_origins=origins or LOOPBACK_ORIGINS,
            max_message_size=max_frame,
            authorize=self._authorize_websocket,
        )
        self.sse = SSEResource(
            channels=self.channels,
            default_channel=channel_name,
            authorize=self._authorize_sse,
            clock=clock,
        )
        root = static_root()
        root.putChild(b"events", EventsResource(self))
        root.putChild(b"health", HealthResource(self))
        root.putChild(b"ws", WebSocketResource(self.websocket))
        root.putChild(b"sse", self.sse)
        self.site = Site(root)

        class BoundedRequest(HubRequest):
            pass

        BoundedRequest.max_body = max_body
        self.site.requestFactory = BoundedRequest

    def start(self) -> Deferred[None]:
        """Connect the channel (Redis), start dispatching, bridge events to the channel."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self.backend == "redis":
            await self.channel.connect()
        self.dispatcher.start()
        self.bridge_id = await bridge(
            self.dispatcher,
            self.channel,
            key=lambda event: event["event"],
            serialize=lambda event: event["data"],
        )

    def stop(self) -> Deferred[Any]:
        """Disconnect the channel's backend (after the dispatcher drained)."""
        if self.backend == "redis":
            d: Deferred[Any] = self.channel.disconnect()
            return d
        return Deferred.fromCoroutine(_nothing())

    def _authorize_websocket(self, request: ConnectionRequest) -> None:
        given = token_of(
            request.headers.get("authorization"),
            [p.encode() for p in request.params.get("token", [])],
        )
        if not token_ok(self.token, given):
            raise ConnectionDeny(401, "a valid token is required")

    def _authorize_sse(self, request: Request) -> str | None:
        given = token_of(request.getHeader("authorization"), (request.args or {}).get(b"token"))
        return None if token_ok(self.token, given) else "a valid token is required"

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` reports."""
        channel_ok = self.backend != "redis" or self.channel.connected
        return {
            "status": ("ok" if channel_ok else "degraded")
            if self.dispatcher.running
            else "stopping",
            "uptime": round(time.time() - self.started, 3),
            "channel": {
                "name": self.channel.name,
                "backend": self.backend,
                "epoch": self.channel.epoch,
                "last_id": self.channel.last_id,
                "history_size": self.channel.history_size,
                "subscribers": self.channel.carrier_count,
                **({"redis": self.channel.health()} if self.backend == "redis" else {}),
            },
            "connections": {
                "websocket": len(self.websocket.connections),
                "sse": len(self.sse.streams),
            },
            "handlers": self.dispatcher.handler_count,
            "in_flight": self.dispatcher.in_flight_count,
            "auth": self.token is not None,
        }

    def close_clients(self) -> None:
        """Close every WebSocket (1001, going away) and end every SSE stream."""
        self.websocket.close_all()
        self.sse.close_all()


async def _nothing() -> None:
    return None


class HubService(Service):
    """
    Runs a :class:`Hub` on an endpoint. Stopping (SIGTERM/SIGINT under twistd or
    ``serve``) stops accepting connections, drains the events in flight, then closes the
    clients with a going-away code.
    """

    def __init__(self, hub: Hub, endpoint: IStreamServerEndpoint, clock: Any = None) -> None:
        self.hub = hub
        self.endpoint = endpoint
        self.clock = clock
        self.port: IListeningPort | None = None
        #: Set by the twistd plugin when ``--log-level`` asks for a filtered observer.
        self.log_observer: Any = None
        #: ``http://host:port/`` once listening on TCP.
        self.url: str | None = None
        self.ready: Deferred[IListeningPort] = Deferred()

    def setServiceParent(self, parent: Any) -> None:
        # twistd asks its application for an ILogObserver component before it starts
        # logging: that is where --log-level can take effect under twistd.
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        d = self.hub.start()
        d.addCallback(lambda _: self.endpoint.listen(self.hub.site))

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            address: Any = port.getHost()
            host = getattr(address, "host", None)
            where = f"http://{host}:{address.port}/" if host else str(address)
            self.url = where
            _log.info("event hub listening on {where}", where=where)
            self.ready.callback(port)
            return port

        def failed(failure: Any) -> None:
            _log.critical("event hub could not start: {error}", error=failure.getErrorMessage())
            self.ready.errback(failure)
            from twisted.internet import reactor

            reactor.stop()

        d.addCallbacks(listening, failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        _log.info("event hub stopping: no new connections, draining events in flight")
        if self.port is not None:
            stopped = self.port.stopListening()
            if stopped is not None:
                await stopped
        await self.hub.dispatcher.stop()
        self.hub.close_clients()
        await self.hub.stop()
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        # give the clients a moment to answer the close handshake
        for _ in range(100):
            if not self.hub.websocket.connections and not self.hub.sse.streams:
                break
            await deferLater(clock, 0.02, lambda: None)
        _log.info("event hub stopped")


