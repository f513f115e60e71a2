"""An asynchronous line client of the hub's control socket (newline-delimited JSON), for tests."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure


class LineClient(Protocol):
    """
    A control connection: :meth:`send` a dict (or raw bytes, sent as they are plus a
    newline), :meth:`next` the next line not read yet (parsed JSON, or the raw bytes if
    it is not JSON), :meth:`request` both. :attr:`closed` fires when the hub closes.
    """

    def __init__(self) -> None:
        self.lines: list[Any] = []
        self.read = 0  # lines handed out by next()
        self.closed: Deferred[None] = Deferred()
        self._buffer = b""
        self._waiting: list[Deferred[None]] = []

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append(raw)
        self._wake()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.closed.called:
            self.closed.callback(None)
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def send(self, value: Any) -> None:
        """Write ``value`` as one line (a dict as JSON; bytes as they are)."""
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        assert self.transport is not None
        self.transport.write(raw + b"\n")

    async def next(self, timeout: float = 5.0) -> Any:
        """The next line; ``TimeoutError`` after ``timeout`` s, ``EOFError`` if closed."""
        while self.read >= len(self.lines):
            if self.closed.called:
                raise EOFError(f"the hub closed the connection; lines: {self.lines!r}")
            waiter: Deferred[None] = Deferred()
            self._waiting.append(waiter)
            waiter.addTimeout(timeout, reactor)
            try:
                await waiter
            except Exception:
                raise TimeoutError(
                    f"no line within {timeout} s; lines so far: {self.lines!r}"
                ) from None
        line = self.lines[self.read]
        self.read += 1
        return line

    async def request(self, value: Any, timeout: float = 5.0) -> Any:
        """Send ``value``, return the next line."""
        self.send(value)
        return await self.next(timeout)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until the hub closes the connection."""
        # (a waiter is made only to be awaited: one left over once closed would time out
        # unobserved, logged as "Unhandled error in Deferred" during a later test)
        while not self.closed.called:
            waiter: Deferred[None] = Deferred()
            self._waiting.append(waiter)
            waiter.addTimeout(timeout, reactor)
            await waiter

    def close(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def pause_reading(self) -> None:
        """Stop reading what the hub writes (as a client that does not keep up)."""
        transport: Any = self.transport
        transport.pauseProducing()

    def resume_reading(self) -> None:
        transport: Any = self.transport
        transport.resumeProducing()


async def connect_control(path: str) -> LineClient:
    """A :class:`LineClient` connected to the unix socket ``path``."""
    client = LineClient()
    await connectProtocol(UNIXClientEndpoint(reactor, path), client)
    return client


__all__ = ["LineClient", "connect_control"]
