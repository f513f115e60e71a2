"""A private redis-server on a free 127.0.0.1 port, started and stopped by the tests."""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from tests._deps import require_binary
from twisted_event_dispatcher.channels.redis import RedisStreamChannel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and b"Ready to accept connections" in self.output:
            self.ready.callback(None)

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"redis-server died:\n{self.output.decode()}"))
        self.ended.callback(None)


class RedisServer:
    """
    ``redis-server`` with its own port and directory; ``persistent`` keeps an AOF. Every
    Redis test makes one first: without a redis-server on PATH the test skips, saying how
    to install it (fails in CI; tests/_deps.py).
    """

    def __init__(self, password: str | None = None, persistent: bool = True) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.password = password
        self.persistent = persistent
        self.dir = tempfile.mkdtemp(prefix="ted-redis-")
        self.process: _Output | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
            "--save", "", "--daemonize", "no", "--protected-mode", "no",
            "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = _Output()
        reactor.spawnProcess(self.process, self.binary, args, env={})
        await self.process.ready

    async def kill(self, signal: str = "KILL") -> None:
        assert self.process is not None and self.process.transport is not None
        self.process.transport.signalProcess(signal)
        await self.process.ended

    def signal(self, name: str) -> None:
        """Send the server a signal (``STOP`` and ``CONT`` make it hang and resume)."""
        assert self.process is not None and self.process.transport is not None
        self.process.transport.signalProcess(getattr(signal, f"SIG{name}"))

    async def restart(self) -> None:
        await self.kill()
        await deferLater(reactor, 0.2, lambda: None)
        await self.start()

    async def stop(self) -> None:
        if self.process is not None and not self.process.ended.called:
            await self.kill("TERM")
        shutil.rmtree(self.dir, ignore_errors=True)


async def channel_on(redis: RedisServer, name: str = "news", **options: Any) -> RedisStreamChannel:
    """A connected channel on ``redis`` that checks its epoch every 0.2 s when idle."""
    channel = RedisStreamChannel(name, url=redis.url, block=200, **options)
    await channel.connect()
    return channel


async def until(condition: Callable[[], bool], limit: float = 10) -> None:
    """Wait until ``condition()`` holds (polling); AssertionError after ``limit`` s."""
    for _ in range(int(limit / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not reached in time")


__all__ = ["RedisServer", "channel_on", "free_port", "until"]
