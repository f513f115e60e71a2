"""
The control-socket transport of the hub client: newline-delimited JSON on a UNIX socket
(or any Twisted client endpoint), as eric-sse's ``SocketClient`` speaks to its server.

One connection carries the one-shot verbs, pipelined: each request gets an ``"i"`` ref
and its answer, which may come out of order, is matched by it. A listen or a watch turns
its connection into that stream, so each gets a connection of its own. A connection lost
fails the calls awaiting an answer (:class:`HubConnectionError`); the next call opens a
new one. Nothing is sent twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from ._client_errors import HubConnectionError, error_from_answer
from ._client_link import Feed, Limits, ProtocolViolation, Sink, encode_line
from .channels.message import encode_json

__all__ = ["SocketLink"]

_log = Logger(namespace="twisted_event_dispatcher.client")


class ControlConnection(LineOnlyReceiver):
    """One connection to the control socket: pipelined calls, then maybe a stream."""

    delimiter = b"\n"

    def __init__(self, limits: Limits, where: str) -> None:
        self.MAX_LENGTH = limits.max_line
        self.limits = limits
        self.where = where
        self.alive = False
        #: Where the lines go once the connection is a listen or a watch.
        self.sink: Sink | None = None
        self._pending: dict[int, tuple[dict[str, Any], Deferred[dict[str, Any]]]] = {}
        self._next_ref = 0
        # Why the connection ended, when we know better than "connection lost".
        self._reason: HubConnectionError | None = None
        self._closed: list[Deferred[None]] = []
        #: Called once the connection is lost (the link forgets it).
        self.on_lost: Callable[[ControlConnection], None] | None = None

    def connectionMade(self) -> None:
        self.alive = True

    def call(self, text: str, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Send the encoded ``request`` with a ref; its answer fires the Deferred."""
        if not self.alive:
            return fail(self._lost_error())
        refused = self.limits.pending_refusal(len(self._pending), request.get("v"))
        if refused is not None:
            return fail(refused)
        ref = self._next_ref
        self._next_ref += 1

        def cancel(_: Deferred[dict[str, Any]]) -> None:
            # The answer, if it still comes, is ignored.
            self._pending.pop(ref, None)

        d: Deferred[dict[str, Any]] = Deferred(cancel)
        self._pending[ref] = (request, d)
        assert self.transport is not None
        self.transport.write(f'{text[:-1]},"i":{ref}}}\n'.encode())
        return d

    def send(self, line: dict[str, Any]) -> bool:
        """Write one line (an ack on a listening connection); False if it is gone."""
        if not self.alive or self.transport is None:
            return False
        self.transport.write(encode_json(line).encode("utf-8") + b"\n")
        return True

    def lineReceived(self, line: bytes) -> None:
        try:
            frame = json.loads(line)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            self._violation(f"the hub sent a line that is not a JSON object: {line[:80]!r}")
            return
        if "i" in frame:
            ref = frame["i"]
            if type(ref) is int and ref in self._pending:
                request, d = self._pending.pop(ref)
                if "error" in frame:
                    d.errback(error_from_answer(frame, request))
                else:
                    d.callback(frame)
            return  # (else the answer to a call that was cancelled: nobody waits for it)
        sink = self.sink
        if "error" in frame:
            if sink is not None:
                sink.problem(frame)
            else:
                # Not an answer to a call: about the connection itself (too many control
                # connections, a line too long). It is closed next; say why then.
                self._reason = HubConnectionError(
                    f"the hub at {self.where} refused the connection: {frame['error']}"
                )
            return
        if sink is None:
            _log.warn("ignoring a line the hub sent unasked: {line!r}", line=line[:200])
        elif len(frame) == 1 and "end" in frame:
            sink.end(str(frame["end"]))
        else:
            sink.item(frame)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._violation(
            f"the hub sent a line longer than the client's max_line ({self.MAX_LENGTH} bytes)"
        )

    def _violation(self, message: str) -> None:
        _log.error("closing the connection to {where}: {message}", where=self.where,
                   message=message)
        self._reason = ProtocolViolation(message)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _lost_error(self) -> HubConnectionError:
        return self._reason or HubConnectionError(
            f"the connection to the hub at {self.where} was lost before the answer came; "
            "the request may or may not have been carried out"
        )

    def close(self) -> Deferred[None]:
        """Close the connection; fires once it is closed."""
        if not self.alive:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        self._reason = self._reason or HubConnectionError("the client closed the connection")
        assert self.transport is not None
        self.transport.loseConnection()
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.alive = False
        error = self._lost_error()
        pending, self._pending = self._pending, {}
        for _, answer in pending.values():
            answer.errback(error)
        sink, self.sink = self.sink, None
        if sink is not None:
            # A stream's connection: no call of it was awaiting an answer.
            sink.lost(self._reason or HubConnectionError(
                f"the connection to the hub at {self.where} was lost"
            ))
        closed, self._closed = self._closed, []
        for waiting in closed:
            waiting.callback(None)
        if self.on_lost is not None:
            self.on_lost(self)


class _SocketFeed:
    """A listen or watch on a connection of its own."""

    def __init__(self, connection: ControlConnection, answer: dict[str, Any]) -> None:
        self.connection = connection
        self.answer = answer

    @property
    def alive(self) -> bool:
        return self.connection.alive

    def send(self, line: dict[str, Any]) -> bool:
        return self.connection.send(line)

    def pause(self) -> None:
        if self.connection.alive and self.connection.transport is not None:
            self.connection.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume(self) -> None:
        if self.connection.alive and self.connection.transport is not None:
            self.connection.transport.resumeProducing()  # type: ignore[attr-defined]

    def close(self) -> Deferred[None]:
        self.connection.sink = None  # it is closing: no "lost" for it
        return self.connection.close()


class SocketLink:
    """The control-socket transport (see the module docstring)."""

    def __init__(self, endpoint: IStreamClientEndpoint, where: str, limits: Limits) -> None:
        self.endpoint = endpoint
        self.where = where
        self.limits = limits
        self._calls: ControlConnection | None = None
        self._connecting: list[Deferred[ControlConnection]] | None = None
        self._connections: set[ControlConnection] = set()
        self._closed = False

    def connect(self) -> Deferred[ControlConnection]:
        """
        The connection for one-shot calls, opened now if there is none (``HubClient.connect``
        checks the hub is there with it; the first call then uses it).
        """
        return self._connection()

    def _new_connection(self) -> Deferred[ControlConnection]:
        """A new connection (it is closed with the link)."""
        if self._closed:
            return fail(HubConnectionError("the client is closed"))
        factory = Factory.forProtocol(lambda: ControlConnection(self.limits, self.where))
        d: Deferred[Any] = self.endpoint.connect(factory)

        def made(connection: ControlConnection) -> ControlConnection:
            if self._closed:
                connection.close()
                raise HubConnectionError("the client is closed")
            self._connections.add(connection)
            connection.on_lost = self._connections.discard
            return connection

        def failed(failure: Failure) -> Failure:
            if failure.check(HubConnectionError):
                return failure
            return Failure(HubConnectionError(
                f"cannot connect to the hub at {self.where}: {failure.getErrorMessage()}"
            ))

        d.addCallbacks(made, failed)
        return d

    def _connection(self) -> Deferred[ControlConnection]:
        """The connection for one-shot calls, opened if there is none (shared while opening)."""
        connection = self._calls
        if connection is not None and connection.alive:
            return succeed(connection)
        waiting: Deferred[ControlConnection] = Deferred()
        if self._connecting is not None:
            self._connecting.append(waiting)
            return waiting
        self._connecting = [waiting]

        def done(result: ControlConnection | Failure) -> None:
            waiters, self._connecting = self._connecting or [], None
            if isinstance(result, ControlConnection):
                self._calls = result
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)

        self._new_connection().addBoth(done)
        return waiting

    def call(self, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        text = encode_line(request, self.limits)
        connection = self._calls
        if connection is not None and connection.alive:
            return connection.call(text, request)  # the hot path: no extra Deferred
        return self._connection().addCallback(lambda c: c.call(text, request))

    def open(self, request: dict[str, Any], sink: Sink) -> Deferred[Feed]:
        text = encode_line(request, self.limits)

        async def opening() -> Feed:
            connection = await self._new_connection()
            connection.sink = sink
            try:
                answer = await connection.call(text, request)
            except BaseException:
                connection.sink = None
                connection.close()
                raise
            return _SocketFeed(connection, answer)

        return Deferred.fromCoroutine(opening())

    def close(self) -> Deferred[None]:
        self._closed = True
        connections, self._connections = self._connections, set()
        closing = [c.close() for c in connections]

        async def closed() -> None:
            for d in closing:
                await d

        return Deferred.fromCoroutine(closed())
