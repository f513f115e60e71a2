"""
Connection limits of the hub's HTTP server: how many connections may be open at once, how
long a client may take to send a request, and whether the file descriptor limit allows it.

Without them a client that opens connections and never finishes a request (slowloris)
holds a socket per connection for as long as it trickles bytes, and enough idle sockets
exhaust the process's file descriptors: then nobody, not even a well-behaved client, can
connect.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site
from zope.interface import implementer

from ..channels.message import encode_json
from ._security import SECURITY_HEADERS

__all__ = ["ConnectionLimit", "HeaderTimeoutChannel", "descriptor_shortfall", "limit"]

_log = Logger(namespace="twisted_event_dispatcher.hub")

#: File descriptors kept free besides the connections: accepting (to refuse) one more,
#: Redis reconnects, log files.
SPARE_DESCRIPTORS = 8

#: Seconds between two warnings about refused connections (the first is logged at once).
WARN_EVERY = 60.0


_SECURITY_LINES = "".join(
    f"{name.decode()}: {value.decode()}\r\n" for name, value in SECURITY_HEADERS.items()
)


def _response(
    code: int, reason: str, error: str, extra: str = "", error_code: str | None = None
) -> bytes:
    body = encode_json({"error": error, **({"code": error_code} if error_code else {})}).encode()
    return (
        f"HTTP/1.1 {code} {reason}\r\nconnection: close\r\ncontent-type: application/json\r\n"
        f"cache-control: no-store\r\n{_SECURITY_LINES}{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


class HeaderTimeoutChannel(HTTPChannel):
    """
    An ``HTTPChannel`` that gives each request ``header_timeout`` seconds to arrive whole
    (request line, headers and body) from its start: the connection being opened, or the
    first byte of the next request on a kept-alive connection. A client still sending
    then gets ``408`` and is disconnected.

    Twisted's own idle timeout (``Site(timeout=...)``, 60 s) restarts on every byte, so a
    client that sends one byte every few seconds would hold the connection forever. Once
    a request is received this deadline no longer applies: SSE streams and WebSockets stay
    open as long as they like, and between two requests on a kept-alive connection
    Twisted's idle timeout applies.
    """

    def __init__(self, header_timeout: float | None = 10.0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.header_timeout = header_timeout
        self._deadline: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None

    def _arm(self) -> None:
        if self._deadline is None and self.header_timeout is not None:
            call_later: Any = self.callLater  # set by the Site: its reactor's
            self._deadline = call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        # While a request is handled, what arrives is buffered for the next one: only
        # between requests does a byte start the next request's deadline.
        if not self._handlingRequest:
            self._arm()
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:
        # a pipelined request, replayed from the buffer once the previous one is done
        self._arm()
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        # LineReceiver would drop the connection without a word.
        transport: Any = self.transport
        if transport is not None:
            transport.write(
                _response(
                    431,
                    "Request Header Fields Too Large",
                    f"a request line or header is longer than {self.MAX_LENGTH} bytes",
                )
            )
        self.loseConnection()  # type: ignore[no-untyped-call]

    def _expired(self) -> None:
        self._deadline = None
        transport: Any = self.transport
        if transport is None:
            return
        if transport.disconnecting:
            # Already answered and closing (a 413 for a body over the limit), but the
            # client does not read its answer: it must not hold the socket either.
            transport.abortConnection()
            return
        _log.info(
            "closing connection from {peer}: no complete request within {timeout} s",
            peer=str(transport.getPeer()),
            timeout=self.header_timeout,
        )
        transport.write(
            _response(
                408,
                "Request Timeout",
                f"the request did not arrive within {self.header_timeout:g} seconds",
            )
        )
        self.loseConnection()  # type: ignore[no-untyped-call]
        # a client that does not read its 408 must not hold the socket either
        call_later: Any = self.callLater
        self._abort = call_later(self.abortTimeout, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class _Refused(Protocol):
    """A connection over the limit: answered ``503`` and closed at once, never read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            _response(
                503,
                "Service Unavailable",
                f"too many connections (the limit is {self.limit}); try again later",
                "retry-after: 1\r\n",
            )
        )
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class ConnectionLimit(WrappingFactory):
    """
    Wraps a server factory: at most ``max_connections`` of its connections are open at
    once. One more is accepted, answered ``503 Service Unavailable`` (with
    ``Retry-After``) and closed straight away, so it costs a file descriptor only for a
    moment and the connections already open are not affected. The first refusal is
    logged as a warning, then at most one summary every :data:`WARN_EVERY` seconds.
    """

    def __init__(
        self, wrapped: Any, max_connections: int, clock: IReactorTime | None = None
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.max_connections = max_connections
        self.clock: IReactorTime = clock
        #: Connections refused since the process started.
        self.refused = 0
        self._reported = 0
        self._warned_at: float | None = None

    def acceptableProtocols(self) -> list[bytes]:
        """
        ALPN: HTTP/1.1, which the hub's connections speak. Without it a TLS ``--listen``
        (``ssl:``) would fail the handshake of every client that offers ALPN, browsers
        included (Twisted finds no protocol in common behind a wrapping factory).
        """
        return [b"http/1.1"]

    @property
    def open_connections(self) -> int:
        """Connections open now (the refused ones are never counted)."""
        return len(self.protocols)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        if len(self.protocols) < self.max_connections:
            return super().buildProtocol(addr)
        self.refused += 1
        now = self.clock.seconds()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            _log.warn(
                "refusing new connections: {limit} are open, the --max-connections limit "
                "({count} refused since the last report)",
                limit=self.max_connections,
                count=self.refused - self._reported,
            )
            self._warned_at = now
            self._reported = self.refused
        refused: IProtocol = _Refused(self.max_connections)
        return refused


def limit(
    site: Site,
    *,
    max_connections: int | None,
    header_timeout: float | None,
    clock: IReactorTime | None = None,
) -> Any:
    """
    The factory to listen with so that ``site`` keeps these limits: its connections get
    a :class:`HeaderTimeoutChannel` (this sets ``site.protocol``), and past
    ``max_connections`` new ones are refused (:class:`ConnectionLimit`). None disables
    a limit. The header deadline runs on the site's reactor, like Twisted's idle timeout.
    """
    if header_timeout is not None:
        if not header_timeout > 0:
            raise ValueError(f"header_timeout must be positive, got {header_timeout!r}")

        def channel() -> HeaderTimeoutChannel:
            return HeaderTimeoutChannel(header_timeout)

        site.protocol = channel  # type: ignore[assignment]
    if max_connections is None:
        return site
    return ConnectionLimit(site, max_connections, clock)


def _open_descriptors() -> int | None:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory))
        except OSError:
            continue
    return None


def descriptor_shortfall(
    max_connections: int, *, max_control_connections: int = 0, max_listens: int = 0
) -> str | None:
    """
    None if the process may open the descriptors its bounds allow (besides those it holds
    now and a few spare); otherwise a warning saying what to change. Past the file
    descriptor limit, accepting fails for everyone (``EMFILE``: even ``/health`` and
    ``POST /events`` are reset) until some close.

    :param max_connections: HTTP connections (``--max-connections``).
    :param max_control_connections: control socket connections
        (``--max-control-connections``; 0 without a control socket).
    :param max_listens: listens open at once (``--max-listens``) when each one holds a
        connection to Redis (a Redis hub; 0 on a memory hub, where a listen costs none).
    """
    try:
        import resource
    except ImportError:  # not on Unix: no such limit to check
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    in_use = _open_descriptors()
    if in_use is None:
        in_use = 16
    bounds = [
        (value, option, note)
        for value, option, note in (
            (max_connections, "--max-connections", ""),
            (max_control_connections, "--max-control-connections", ""),
            (max_listens, "--max-listens", " (one Redis connection each)"),
        )
        if value
    ]
    allowed = sum(value for value, _, _ in bounds)
    needed = allowed + in_use + SPARE_DESCRIPTORS
    if needed <= soft:
        return None
    named = " + ".join(f"{option} {value}{note}" for value, option, note in bounds)
    lower = " or ".join(option for _, option, _ in bounds)
    return (
        f"{named} need about {needed} file descriptors, but the limit (ulimit -n) is "
        f"{soft}: past about {max(soft - needed + allowed, 0)} open connections and listens "
        f"new ones would fail for everyone; raise the limit or lower {lower}"
    )
