"""
A raw HTTP/1.1 client over TCP for the tests that need to send bytes no HTTP library
would (non-UTF-8 headers, any ``Host``, raw bytes in the query string): one request per
connection, the status, headers and body of the answer, or how the connection ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure


@dataclass
class Answer:
    """What came back: ``status`` None means the connection closed without a response."""

    status: int | None = None
    phrase: bytes = b""
    headers: dict[bytes, list[bytes]] = field(default_factory=dict)
    body: bytes = b""
    #: The answer was a ``text/event-stream`` that the client hung up on.
    streaming: bool = False

    def header(self, name: str) -> bytes | None:
        values = self.headers.get(name.lower().encode())
        return values[-1] if values else None


class _Client(Protocol):
    def __init__(self, request: bytes, until: bytes) -> None:
        self.request = request
        self.until = until
        self.data = b""
        self.answer = Answer()
        self.done: Deferred[Answer] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._parse()
        # An event stream stays open: once it has started (and said enough), hang up;
        # so does a connection that was not closed after a complete answer.
        length = self.answer.header("content-length")
        complete = self.answer.status == 101 or (
            length is not None and len(self.answer.body) >= int(length)
        )
        if complete or (self.answer.streaming and self.until in self.answer.body):
            transport: Any = self.transport
            transport.abortConnection()

    def _parse(self) -> None:
        head, sep, rest = self.data.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        self.answer.status = int(parts[1])
        self.answer.phrase = parts[2] if len(parts) > 2 else b""
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        self.answer.headers = headers
        chunked = b"chunked" in b"".join(headers.get(b"transfer-encoding", []))
        self.answer.body = _dechunk(rest) if chunked else rest
        content_type = b"".join(headers.get(b"content-type", []))
        self.answer.streaming = content_type.startswith(b"text/event-stream")

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.callback(self.answer)


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0 or len(rest) < size:
            out.append(rest[:size])
            break
        out.append(rest[:size])
        data = rest[size + 2 :]
    return b"".join(out)


async def send(port: int, request: bytes, timeout: float = 5, until: bytes = b"") -> Answer:
    """
    Send ``request`` (complete raw bytes) to 127.0.0.1:``port``; the answer once it is
    complete (or the server closed the connection), or, for an event stream, once its
    body contains ``until``.
    """
    client = _Client(request, until)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoint.connect(Factory.forProtocol(lambda: client))
    client.done.addTimeout(timeout, reactor)
    return await client.done


def request(
    method: str,
    target: bytes | str,
    headers: Sequence[tuple[bytes | str, bytes | str]] = (),
    body: bytes = b"",
    host: bytes | str | None = "127.0.0.1",
) -> bytes:
    """Raw request bytes: ``Connection: close`` and ``Content-Length`` (if a body) added."""

    def raw(value: bytes | str) -> bytes:
        return value if isinstance(value, bytes) else value.encode("utf-8")

    lines = [raw(method) + b" " + raw(target) + b" HTTP/1.1"]
    if host is not None:
        lines.append(b"Host: " + raw(host))
    lines += [raw(name) + b": " + raw(value) for name, value in headers]
    lines.append(b"Connection: close")
    if body or method == "POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


__all__ = ["Answer", "request", "send"]
