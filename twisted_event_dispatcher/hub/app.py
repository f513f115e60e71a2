"""
Hub: the event hub's parts wired together — an EventDispatcher bridged to a channel, the
WebSocket and SSE carriers, the HTTP resources — and HubService, which runs it.
"""

from __future__ import annotations

import math
import time
from typing import Any

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import Request, Site

from .._rate import RateLimiter
from ..carriers.base import DROP_OLDEST
from ..carriers.sse import SSEResource
from ..carriers.websocket import LOOPBACK_ORIGINS, EventWebSocketFactory
from ..channels import ChannelRegistry, MemoryChannel
from ..channels._names import check_count, check_event_name
from ..channels.base import Channel
from ..dispatcher import EventDispatcher
from ._channel_resources import ChannelsResource
from ._channels import HubChannels
from ._control import ControlPlane
from ._control_socket import ControlFactory, listen_control
from ._limits import descriptor_shortfall, limit
from ._publish import Publisher
from ._security import Guard, GuardedSite
from .options import is_loopback
from .resources import (
    EventsResource,
    HealthResource,
    HubRequest,
    WebSocketEndpoint,
    request_token,
    static_root,
    token_of,
    token_ok,
)

__all__ = ["LOOPBACK_ORIGINS", "Hub", "HubService"]

_log = Logger(namespace="twisted_event_dispatcher.hub")


class Hub:
    """
    The hub's parts. Use :attr:`site` in any Twisted program, or run a
    :class:`HubService`.

    :param keywords: match-spec keywords ``POST /events`` may send.
    :param history: messages the channel keeps for clients that resume.
    :param token: if given, required by ``POST /events``, ``/ws`` and ``/sse`` (an
        ``Authorization: Bearer`` header, or a ``token`` query parameter).
    :param origins: browser origins allowed to use the hub (default: loopback pages): a
        request that carries another ``Origin`` (``null`` included) is refused with 403,
        on every path; requests without one (curl, services) are not affected.
    :param host_names: names a ``Host`` header may carry besides ``localhost`` and the
        hub's IP addresses (checked only without a token, against DNS rebinding; ``"*"``:
        any). :meth:`allow_host` adds one, e.g. the address the hub listens on.
    :param max_queue: messages queued for a WebSocket or SSE client that is not reading.
    :param overflow: what happens when that queue is full: ``"drop_oldest"`` (the client
        gets a ``dropped`` notice) or ``"disconnect"``.
    :param max_rate: ``POST /events`` per second from one client address, in bursts of
        as many (at least one); more are answered 429 with ``Retry-After``. ``0``: no limit.
    :param max_request_rate: requests a second on one WebSocket connection (subscribe,
        control verbs; ``ack`` and ``release`` are not counted), in bursts of as many; more
        get an ``error`` frame with code ``limit``. ``0``: no limit.
    :param max_channels: channels that may exist at once (the default one included).
    :param add_channels: channels created at start besides the default one (they come
        back with every restart, unlike those created at run time).
    :param max_listeners: listeners one channel may have.
    :param max_listens: listener streams open at once, over every transport (on Redis
        each holds a connection to Redis, hence a file descriptor).
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
        host_names: tuple[str, ...] = (),
        max_queue: int = 1000,
        overflow: str = DROP_OLDEST,
        max_body: int = 65536,
        max_frame: int = 65536,
        max_rate: float = 1000.0,
        max_request_rate: float = 1000.0,
        max_channels: int = 100,
        add_channels: tuple[str, ...] = (),
        max_listeners: int = 10000,
        max_listens: int = 1000,
        clock: IReactorTime | None = None,
    ) -> None:
        self.token = token
        if clock is None:
            from twisted.internet import reactor

            rate_clock: Any = reactor
        else:
            rate_clock = clock
        #: Bounds ``POST /events`` per client address (see ``max_rate``).
        self.post_rate = RateLimiter(max_rate, max(1, math.ceil(max_rate)), rate_clock)
        self.max_body = max_body
        #: Largest WebSocket message and control-socket line from a client, in bytes.
        self.max_frame = max_frame
        self.started = time.time()
        self.channels = ChannelRegistry()
        self.channel: Any
        self.backend = "memory" if redis_url is None else "redis"

        def make(name: str) -> Channel:
            if redis_url is None:
                return MemoryChannel(name, history_size=history, clock=clock)
            from ..channels.redis import RedisStreamChannel

            return RedisStreamChannel(name, history_size=history, url=redis_url)

        self.channel = self.channels.register(make(channel_name))
        #: The hub's channels: the default one (:attr:`channel`) and those made at run time.
        self.hub_channels = HubChannels(
            self.channels, make, self.channel, max_channels=max_channels
        )
        #: Listeners one channel may have (the control plane's ``r`` verb refuses more).
        self.max_listeners = check_count(max_listeners, "max_listeners")
        #: Listener streams open at once over every transport (each holds a Redis
        #: connection on Redis); read by the control plane.
        self.max_listens = check_count(max_listens, "max_listens")
        for name in add_channels:
            check_event_name(name, "channel name")
            if name == channel_name or add_channels.count(name) > 1:
                raise ValueError(f"channel {name!r} is given twice")
        if 1 + len(add_channels) > max_channels:
            raise ValueError(
                f"{1 + len(add_channels)} channels at start is more than max_channels "
                f"({max_channels})"
            )
        self.add_channels = add_channels
        #: Carries out the control verbs for every transport (control socket, WebSocket,
        #: ``POST /channels/...``).
        self.control = ControlPlane(self)
        self.dispatcher = EventDispatcher(keywords, clock=clock)
        #: The ``after``-phase handler that publishes each event to the channel.
        self.publisher = Publisher(self.channel, rate_clock)
        self.bridge_id: int | None = None
        self.websocket = EventWebSocketFactory(
            channels=self.channels,
            default_channel=channel_name,
            allowed_origins=origins or LOOPBACK_ORIGINS,
            max_queue=max_queue,
            overflow=overflow,
            max_message_size=max_frame,
            authorize=self._authorize_websocket,
            max_request_rate=max_request_rate,
            control=self.control,
        )
        self.sse = SSEResource(
            channels=self.channels,
            default_channel=channel_name,
            authorize=self._authorize_sse,
            max_queue=max_queue,
            overflow=overflow,
            clock=clock,
        )
        root = static_root()
        root.putChild(b"events", EventsResource(self))
        root.putChild(b"health", HealthResource(self))
        root.putChild(b"channels", ChannelsResource(self, self.control))
        root.putChild(b"ws", WebSocketEndpoint(self.websocket))
        root.putChild(b"sse", self.sse)
        #: Checks Origin and Host and the bytes of every request (see :mod:`._security`).
        self.guard = Guard(origins or LOOPBACK_ORIGINS, host_names, check_hosts=token is None)
        self.site: Site = GuardedSite(root, self.guard)

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
        for name in self.add_channels:
            await self.hub_channels.create(name)
        self.dispatcher.start()
        self.bridge_id = await self.dispatcher.add_event_handler(self.publisher, "after")

    def stop(self) -> Deferred[Any]:
        """Disconnect the channels' backend (after the dispatcher drained)."""
        return self.hub_channels.close_all()

    def allow_host(self, host: str) -> None:
        """Accept requests whose ``Host`` is ``host`` (an IP address or a name), any port."""
        self.guard.allow_address(host)

    def _authorize_websocket(self, request: ConnectionRequest) -> None:
        try:
            given = token_of(
                request.headers.get("authorization"),
                [p.encode("utf-8", "surrogateescape") for p in request.params.get("token", [])],
            )
        except ValueError as e:
            raise ConnectionDeny(400, str(e)) from None
        if not token_ok(self.token, given):
            raise ConnectionDeny(401, "a valid token is required")

    def _authorize_sse(self, request: Request) -> str | None:
        try:
            given = request_token(request)
        except ValueError as e:
            return str(e)
        return None if token_ok(self.token, given) else "a valid token is required"

    def health(self) -> dict[str, Any]:
        """
        What ``GET /health`` reports. ``status`` is ``"degraded"`` while either Redis
        connection (publishing or reading) is down, with the ``reason``.
        """
        redis = self.channel.health() if self.backend == "redis" else None
        reason = redis["problem"] if redis is not None else None
        status = "ok" if reason is None else "degraded"
        if not self.dispatcher.running:
            status = "stopping"
        return {
            "status": status,
            **({"reason": reason} if status == "degraded" else {}),
            "uptime": round(time.time() - self.started, 3),
            "channel": {
                "name": self.channel.name,
                "backend": self.backend,
                "epoch": self.channel.epoch,
                "last_id": self.channel.last_id,
                "history_size": self.channel.history_size,
                "subscribers": self.channel.carrier_count,
                **({"redis": redis} if redis is not None else {}),
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


class HubService(Service):
    """
    Runs a :class:`Hub` on an endpoint. Stopping (SIGTERM/SIGINT under twistd or
    ``serve``) stops accepting connections, drains the events in flight, then closes the
    clients with a going-away code.

    :param max_connections: connections open at once; one more is answered ``503`` and
        closed (None: no limit). A warning is logged if the file descriptor limit is lower.
    :param header_timeout: seconds a client has to send a whole request (headers and
        body) before it gets ``408`` and is disconnected (None: no limit). Streams (SSE,
        WebSocket) are not affected once their request is in.
    :param allow_public: serve on a non-loopback address without a token. By default the
        service checks the address it actually listens on and, if it is not a loopback
        one and the hub has no token, closes the port and fails :attr:`ready` (and stops
        the reactor).
    :param control: the control socket's endpoint (None: none), listened on once the hub
        started and before the HTTP endpoint; a TCP one must be on loopback.
    :param control_mode: the file mode of a unix control socket (only who may use it
        controls the hub: it has no token).
    :param max_control_connections: control connections open at once; one more gets an
        error line (``limit``) and is closed.
    """

    def __init__(
        self,
        hub: Hub,
        endpoint: IStreamServerEndpoint,
        clock: Any = None,
        *,
        max_connections: int | None = 1000,
        header_timeout: float | None = 10.0,
        allow_public: bool = False,
        control: IStreamServerEndpoint | None = None,
        control_mode: int = 0o600,
        max_control_connections: int = 100,
    ) -> None:
        self.hub = hub
        self.control = control
        self.control_mode = control_mode
        #: Serves the control socket (None without ``control``).
        self.control_factory: ControlFactory | None = None
        if control is not None:
            self.control_factory = ControlFactory(
                hub.control,
                max_line=hub.max_frame,
                max_connections=max_control_connections,
                max_queue=hub.websocket.max_queue,
                overflow=hub.websocket.overflow,
            )
        self.control_port: IListeningPort | None = None
        self.endpoint = endpoint
        self.clock = clock
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.allow_public = allow_public
        #: The factory the endpoint listens with: :attr:`Hub.site` behind the limits.
        self.factory: Any = None
        #: Stop the reactor when the hub cannot start (as ``serve`` and twistd need);
        #: :attr:`ready` fails either way.
        self.stop_reactor_on_failure = True
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
        self.factory = limit(
            self.hub.site,
            max_connections=self.max_connections,
            header_timeout=self.header_timeout,
            clock=self.clock,
        )
        d.addCallback(lambda _: Deferred.fromCoroutine(self._listen_control()))
        listened: Deferred[Any] = d.addCallback(lambda _: self.endpoint.listen(self.factory))

        def listening(port: IListeningPort) -> IListeningPort:
            address: Any = port.getHost()
            host = getattr(address, "host", None)
            bracketed = f"[{host}]" if host and ":" in host else host
            where = f"http://{bracketed}:{address.port}/" if host else str(address)
            if self._exposed(address):
                port.stopListening()
                raise RuntimeError(
                    f"refusing to serve on {where} without a token: it is not a loopback "
                    "address, so anyone who can reach it could fire events and read them; "
                    "give a --token, or bind 127.0.0.1"
                )
            self.port = port
            self.url = where
            if host:
                self.hub.allow_host(host)
            _log.info("event hub listening on {where}", where=where)
            control = self.control_factory
            shortfall = self.max_connections and descriptor_shortfall(
                self.max_connections,
                max_control_connections=control.max_connections if control else 0,
                max_listens=self.hub.max_listens if self.hub.backend == "redis" else 0,
            )
            if shortfall:
                _log.warn("{shortfall}", shortfall=shortfall)
            self.ready.callback(port)
            return port

        def failed(failure: Any) -> None:
            _log.critical("event hub could not start: {error}", error=failure.getErrorMessage())
            if self.control_port is not None:
                self.control_port.stopListening()
                self.control_port = None
            self.ready.errback(failure)
            if self.stop_reactor_on_failure:
                from twisted.internet import reactor

                reactor.stop()

        listened.addCallback(listening)
        listened.addErrback(failed)

    async def _listen_control(self) -> None:
        if self.control is not None and self.control_factory is not None:
            self.control_port = await listen_control(
                self.control, self.control_factory, self.control_mode
            )

    def _exposed(self, address: Any) -> bool:
        """Listening on ``address`` (what was bound) would serve the network without a token."""
        if self.allow_public or self.hub.token is not None:
            return False
        if not isinstance(address, (IPv4Address, IPv6Address)):
            return False  # a Unix socket: local
        return not is_loopback(address.host)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        _log.info("event hub stopping: no new connections, draining events in flight")
        if self.control_port is not None:
            control, self.control_port = self.control_port, None
            await maybeDeferred(control.stopListening)
        if self.port is not None:
            stopped = self.port.stopListening()
            if stopped is not None:
                await stopped
        await self.hub.dispatcher.stop()
        self.hub.close_clients()
        if self.control_factory is not None:
            self.control_factory.close_all()
        await self.hub.stop()
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        # give the clients a moment to answer the close handshake
        controls = self.control_factory.connections if self.control_factory else set()
        for _ in range(100):
            if not self.hub.websocket.connections and not self.hub.sse.streams and not controls:
                break
            await deferLater(clock, 0.02, lambda: None)
        _log.info("event hub stopped")


