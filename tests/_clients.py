"""Real network clients for the tests: an Autobahn WebSocket client and a raw SSE client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure


class _Waiters:
    """Frames received so far, and Deferreds waiting for one that matches."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self._waiting: list[tuple[Callable[[Any], bool], Deferred[Any]]] = []
        self._seen = 0

    def add(self, frame: Any) -> None:
        self.frames.append(frame)
        for predicate, d in list(self._waiting):
            if predicate(frame):
                self._waiting.remove((predicate, d))
                d.callback(frame)

    def wait(
        self, predicate: Callable[[Any], bool], timeout: float = 5, start: int = 0
    ) -> Deferred[Any]:
        """The first frame from index ``start`` on (received or future) matching."""
        for frame in self.frames[start:]:
            if predicate(frame):
                return Deferred.fromCoroutine(_now(frame))
        d: Deferred[Any] = Deferred()
        self._waiting.append((predicate, d))
        d.addTimeout(timeout, reactor)
        return d

    def fail_all(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.errback(reason)


async def _now(value: Any) -> Any:
    return value


class WSClient(WebSocketClientProtocol):
    """Collects JSON text frames (binary ones as bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.inbox = _Waiters()
        self.opened: Deferred[WSClient] = Deferred()
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.inbox.add(payload if isBinary else json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((wasClean, code, reason))

    def send_json(self, payload: Any) -> None:
        self.sendMessage(json.dumps(payload).encode())  # type: ignore[no-untyped-call]

    def wait(
        self, predicate: Callable[[Any], bool], timeout: float = 5, start: int = 0
    ) -> Deferred[Any]:
        return self.inbox.wait(predicate, timeout, start)

    def wait_type(self, kind: str, timeout: float = 5, start: int = 0) -> Deferred[Any]:
        return self.wait(lambda f: isinstance(f, dict) and f.get("type") == kind, timeout, start)

    def events(self) -> list[Any]:
        return [f for f in self.inbox.frames if isinstance(f, dict) and f.get("type") == "event"]


async def connect_ws(
    port: int, path: str = "/", origin: str | None = None, headers: dict[str, str] | None = None
) -> WSClient:
    """Open a WebSocket to 127.0.0.1:``port``; the client once the handshake is done."""
    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{port}{path}", origin=origin, headers=headers or {}
    )
    factory.protocol = WSClient
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    protocol = await endpoint.connect(factory)
    assert isinstance(protocol, WSClient)
    return await protocol.opened


class SSEClient(Protocol):
    """A raw HTTP/1.1 client for ``text/event-stream``: the status, headers and events."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = b""
        self.head: bytes | None = None
        self.status: int | None = None
        self.body = b""
        self.chunked = False
        self.text = b""
        self.inbox = _Waiters()
        self.finished: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None:
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.status = int(self.head.split(b" ", 2)[1])
            self.chunked = b"transfer-encoding: chunked" in self.head.lower()
            self.text = b""
        if self.chunked:
            decoded, self.buffer = _dechunk(self.buffer)
        else:
            decoded, self.buffer = self.buffer, b""
        self.body += decoded
        self.text += decoded
        *blocks, self.text = self.text.split(b"\n\n")
        for block in blocks:
            self.inbox.add(_parse_block(block))

    def connectionLost(self, reason: Failure | None = None) -> None:
        reason = reason or Failure(ConnectionError("connection lost"))
        self.inbox.fail_all(reason)
        if not self.finished.called:
            self.finished.callback(None)

    def header(self, name: str) -> str | None:
        assert self.head is not None
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode()
        return None

    def wait(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 5
    ) -> Deferred[Any]:
        return self.inbox.wait(predicate, timeout)

    def events(self, name: str | None = None) -> list[dict[str, str]]:
        return [
            b for b in self.inbox.frames
            if "data" in b and (name is None or b.get("event") == name)
        ]


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    """Decode the complete chunks at the start of ``data``; (decoded, the rest)."""
    out = []
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if len(rest) < size + 2:
            break
        out.append(rest[:size])
        data = rest[size + 2 :]
    return b"".join(out), data


def _parse_block(block: bytes) -> dict[str, str]:
    """One SSE block: its fields (``data`` lines joined), comments under ``comment``."""
    fields: dict[str, str] = {}
    for line in block.decode().split("\n"):
        if line.startswith(":"):
            fields["comment"] = line[1:].strip()
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        fields[key] = fields[key] + "\n" + value if key in fields else value
    return fields


async def connect_sse(port: int, target: str, headers: dict[str, str] | None = None) -> SSEClient:
    """GET ``target`` from 127.0.0.1:``port`` and stream the response."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: text/event-stream",
        "Connection: close",  # one request per connection: a refusal ends it
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = SSEClient(request)
    from twisted.internet.protocol import Factory

    await endpoint.connect(Factory.forProtocol(lambda: client))
    return client
