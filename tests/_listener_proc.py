"""
A listener's consumer in another OS process, for tests/test_listeners_redis.py.

Run as ``python -m tests._listener_proc URL CHANNEL LISTENER MODE``; it attaches to the
listener (registered by the test) on a RedisStreamChannel and prints one JSON line per
event: ``{"ready": pid}`` once attached, ``{"mail": {...}}`` per mail, ``{"ended":
reason}`` when its consumer ends. MODE: ``consume`` (each mail acknowledged), ``hold``
(never acknowledged: the process is killed mid-message), ``serve`` (actions ``add``,
``pid`` and ``fail`` answer requests).

The test side: :func:`spawn_listener` and :class:`ListenerProcess`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["ListenerProcess", "spawn_listener"]


# -- the test side ---------------------------------------------------------------------------


class ListenerProcess(ProcessProtocol):
    """The child's JSON lines (``events``), waits on them, and its end."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self._buffer = b""
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.output += line + b"\n"
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self._check()

    def _check(self) -> None:
        for waiter in list(self._waiters):
            if waiter[0]():
                self._waiters.remove(waiter)
                waiter[1].callback(None)
            elif self.ended.called:
                self._waiters.remove(waiter)
                waiter[1].errback(
                    AssertionError(f"the listener process ended:\n{self.output.decode()}")
                )

    async def wait(self, condition: Callable[[], bool], timeout: float = 15.0) -> None:
        """Until ``condition()`` holds (checked on each line); fails after ``timeout`` s."""
        if condition():
            return
        waiter: Deferred[None] = Deferred()
        self._waiters.append((condition, waiter))
        self._check()
        try:
            await waiter.addTimeout(timeout, reactor)
        except Exception:
            raise AssertionError(
                f"not reached; events {self.events}, output:\n{self.output.decode()}"
            ) from None

    @property
    def mails(self) -> list[dict[str, Any]]:
        return [event["mail"] for event in self.events if "mail" in event]

    def kill(self, signal: str = "KILL") -> None:
        if not self.ended.called and self.transport is not None:
            self.transport.signalProcess(signal)

    async def stop(self) -> None:
        self.kill("TERM")
        await self.ended


async def spawn_listener(url: str, channel: str, listener_id: str, mode: str) -> ListenerProcess:
    """Start a child attached to ``listener_id``; fires once it is attached."""
    process = ListenerProcess()
    args = [sys.executable, "-m", "tests._listener_proc", url, channel, listener_id, mode]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reactor.spawnProcess(process, sys.executable, args, env=env, path=ROOT)
    await process.wait(lambda: any("ready" in event for event in process.events))
    return process


# -- the child -------------------------------------------------------------------------------


def _say(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _main(url: str, channel_name: str, listener_id: str, mode: str) -> None:
    from twisted_event_dispatcher.channels.redis import RedisStreamChannel
    from twisted_event_dispatcher.listeners import Mail

    channel = RedisStreamChannel(channel_name, url=url, block=200)
    await channel.connect()
    listener = channel.listener(listener_id)

    def record(mail: Mail) -> Any:
        _say(mail={
            "id": mail.id, "event": mail.event, "data": mail.data, "source": mail.source,
            "deliveries": mail.deliveries, "offset": mail.offset,
        })
        return Deferred() if mode == "hold" else None

    def fail(mail: Mail) -> None:
        raise ValueError(f"cannot {mail.data}")

    if mode == "serve":
        listener.set_action("add", lambda mail: sum(mail.data))
        listener.set_action("pid", lambda mail: os.getpid())
        listener.set_action("fail", fail)
        consumer = await listener.serve(max_in_flight=16)
    else:
        consumer = await listener.consume(record, max_in_flight=4)
    _say(ready=os.getpid())
    _say(ended=await consumer.done)
    await channel.disconnect()


def main() -> None:
    from twisted.internet import task

    url, channel, listener_id, mode = sys.argv[1:5]
    task.react(lambda _: Deferred.fromCoroutine(_main(url, channel, listener_id, mode)))


if __name__ == "__main__":
    main()
