"""
Real network clients for the tests: an Autobahn WebSocket client, a raw WebSocket client
(any frame, malformed ones included; it can stop reading) and a raw SSE client.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
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


# -- raw WebSocket ---------------------------------------------------------------------

#: WebSocket opcodes.
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def ws_frame(
    opcode: int,
    payload: bytes = b"",
    fin: bool = True,
    mask: bytes | None = None,
    rsv: int = 0,
    masked: bool = True,
) -> bytes:
    """
    One client-to-server frame: masked, as RFC 6455 requires (a random key if ``mask`` is
    None), unless ``masked`` is False; ``rsv`` sets the reserved bits (a violation).
    """
    key = (os.urandom(4) if mask is None else mask) if masked else b""
    n = len(payload)
    bit = 0x80 if masked else 0
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0x0F])
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if key and key != b"\0\0\0\0" and n:
        stream = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
            n, "big"
        )
    return head + key + payload


def parse_frames(data: bytes | bytearray | memoryview) -> tuple[list[tuple[int, bytes]], int]:
    """The complete server-to-client (unmasked) frames at the start of ``data`` as
    ``(opcode, payload)``, and how many bytes they took."""
    frames = []
    at = 0
    while len(data) - at >= 2:
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        head = 2
        if length == 126:
            if len(data) - at < 4:
                break
            (length,) = struct.unpack_from("!H", data, at + 2)
            head = 4
        elif length == 127:
            if len(data) - at < 10:
                break
            (length,) = struct.unpack_from("!Q", data, at + 2)
            head = 10
        if len(data) - at < head + length:
            break
        frames.append((opcode, bytes(data[at + head : at + head + length])))
        at += head + length
    return frames, at


class RawWSClient(Protocol):
    """
    A WebSocket client that sends raw bytes (so any frame, malformed ones included) and
    keeps what it receives after the handshake in :attr:`data`. With ``parse``, complete
    frames also go to :attr:`inbox` as ``(opcode, payload)``; a close frame is answered.
    """

    def __init__(self, port: int, path: str = "/", parse: bool = True) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.parse = parse
        self.head: bytes | None = None
        self.data = bytearray()
        self.inbox = _Waiters()
        self.close_code: int | None = None
        self.opened: Deferred[RawWSClient] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._parsed = 0
        self._wanted: list[tuple[int, Deferred[None]]] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.head is None:
            self.data += data
            if b"\r\n\r\n" not in self.data:
                return
            head, _, rest = bytes(self.data).partition(b"\r\n\r\n")
            self.head, self.data = head, bytearray(rest)
            if not head.startswith(b"HTTP/1.1 101"):
                self.opened.errback(ConnectionError(f"handshake failed: {head!r}"))
                return
            self.opened.callback(self)
        else:
            self.data += data
        if self.parse:
            with memoryview(self.data) as view:
                frames, used = parse_frames(view[self._parsed :])
            self._parsed += used
            for opcode, payload in frames:
                if opcode == OP_CLOSE and self.close_code is None:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                    self.send_frame(OP_CLOSE, payload[:2])
                self.inbox.add((opcode, payload))
        for wanted in list(self._wanted):
            if len(self.data) >= wanted[0]:
                self._wanted.remove(wanted)
                wanted[1].callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        reason = reason or Failure(ConnectionError("connection lost"))
        self.lost.callback(None)  # first: whoever a failure below wakes sees it
        if not self.opened.called:
            self.opened.errback(reason)
        self.inbox.fail_all(reason)
        wanted, self._wanted = self._wanted, []
        for _, d in wanted:
            d.errback(reason)

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True) -> None:
        assert self.transport is not None
        self.transport.write(ws_frame(opcode, payload, fin))

    def send_json(self, payload: Any) -> None:
        self.send_frame(OP_TEXT, json.dumps(payload).encode())

    def wait_bytes(self, count: int, timeout: float = 10) -> Deferred[None]:
        """Fires once :attr:`data` holds ``count`` bytes."""
        d: Deferred[None] = Deferred()
        if len(self.data) >= count:
            d.callback(None)
            return d
        self._wanted.append((count, d))
        d.addTimeout(timeout, reactor)
        return d

    def wait_json(
        self, predicate: Callable[[Any], bool], timeout: float = 5, start: int = 0
    ) -> Deferred[Any]:
        """The first text frame (decoded) from index ``start`` on matching ``predicate``."""

        def match(frame: tuple[int, bytes]) -> bool:
            return frame[0] == OP_TEXT and predicate(json.loads(frame[1]))

        d = self.inbox.wait(match, timeout, start)
        d.addCallback(lambda frame: json.loads(frame[1]))
        return d

    def texts(self) -> list[Any]:
        """Every text frame received so far, decoded."""
        return [json.loads(p) for op, p in self.inbox.frames if op == OP_TEXT]

    def stop_reading(self) -> None:
        """Stop reading: the kernel's receive buffer fills, then the server's."""
        transport: Any = self.transport
        transport.pauseProducing()

    def resume_reading(self) -> None:
        transport: Any = self.transport
        transport.resumeProducing()


async def connect_raw_ws(
    port: int, path: str = "/", parse: bool = True, receive_buffer: int | None = None
) -> RawWSClient:
    """
    A :class:`RawWSClient` connected to 127.0.0.1:``port``, once the handshake is done;
    with a socket receive buffer of ``receive_buffer`` bytes (set before connecting, so
    that the TCP window stays that small) if given.
    """
    from twisted.internet.protocol import Factory

    client = RawWSClient(port, path, parse)
    factory = Factory.forProtocol(lambda: client)
    if receive_buffer is None:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        await endpoint.connect(factory)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))  # the kernel accepts: no reactor turn needed
            sock.setblocking(False)
            reactor.adoptStreamConnection(  # type: ignore[attr-defined]
                sock.fileno(), socket.AF_INET, factory
            )
    return await client.opened
