"""What the carrier tests share: a private channel registry and a listening port."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from twisted_event_dispatcher.channels import ChannelRegistry, MemoryChannel


def make_channels(history_size: int = 100) -> ChannelRegistry:
    """A registry with the channels the tests use: ``news`` and ``sports``."""
    channels = ChannelRegistry()
    channels.get_or_create("news", history_size=history_size)
    channels.get_or_create("sports")
    return channels


class SlowResume(MemoryChannel):
    """Resumes of event ``b`` complete when ``gate`` fires, as a Redis resume may."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate: Deferred[None] = Deferred()

    def _subscribe(
        self, event: str, carrier: Any, since: int | None, epoch: str | None
    ) -> Deferred[Any]:
        if event != "b":
            return super()._subscribe(event, carrier, since, epoch)
        later = Deferred.fromCoroutine(self._later())
        return later.addCallback(
            lambda _: super(SlowResume, self)._subscribe(event, carrier, since, epoch)
        )

    async def _later(self) -> None:
        await self.gate


class LocalServer:
    """A carrier endpoint listening on 127.0.0.1, with its channels and its clients."""

    def __init__(self, port: Any, channels: ChannelRegistry) -> None:
        self.listening = port
        self.port: int = port.getHost().port
        self.channels = channels
        self.clients: list[Any] = []

    @property
    def news(self) -> MemoryChannel:
        return self.channels.get("news")  # type: ignore[no-any-return]

    async def stop(self, abort: bool = False) -> None:
        for client in self.clients:
            if client.transport is not None:
                if abort:
                    client.transport.abortConnection()
                else:
                    client.transport.loseConnection()
        await self.listening.stopListening()
        await deferLater(reactor, 0, lambda: None)
