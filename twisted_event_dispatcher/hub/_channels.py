"""
HubChannels: the hub's channels, created and removed at run time (the control plane's
``c`` and ``rc`` verbs), with the hub's default channel always there and a bound on how
many exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..channels import ChannelRegistry
from ..channels._names import check_count, check_event_name
from ..channels.base import Channel, Gap
from ..errors import ChannelExistsError, ChannelLimitError, DefaultChannelError

__all__ = ["HubChannels"]

_log = Logger(namespace="twisted_event_dispatcher.hub")

#: The ``Gap.reason`` subscribers of a removed channel are told: no message will follow.
REMOVED = "removed"


class HubChannels:
    """
    The hub's channels by name.

    :param registry: where they are kept (the hub's own :class:`ChannelRegistry`; the
        WebSocket and SSE carriers look names up there).
    :param make: ``make(name)`` builds a channel of the hub's backend (not connected).
    :param default: the default channel (registered already): requests that name no
        channel use it; it cannot be removed.
    :param max_channels: channels that may exist at once, the default one included.
    """

    def __init__(
        self,
        registry: ChannelRegistry,
        make: Callable[[str], Channel],
        default: Channel,
        *,
        max_channels: int = 100,
    ) -> None:
        check_count(max_channels, "max_channels")
        self.registry = registry
        self.default = default
        self.max_channels = max_channels
        #: Builds a channel of the hub's backend, not registered nor connected (``make(name)``).
        self.make = make
        self._creating: set[str] = set()
        #: Called with a channel's name once it is removed (carriers forget it).
        self.removed_callbacks: list[Callable[[str], object]] = []

    def get(self, name: str | None = None) -> Channel:
        """
        The channel called ``name`` (the default channel if None).

        :raises TypeError, ValueError: ``name`` is not a valid channel name.
        :raises UnknownChannelError: there is no such channel (a ``KeyError``).
        """
        if name is None:
            return self.default
        return self.registry[check_event_name(name, "channel name")]

    def names(self) -> list[str]:
        """Every channel's name, the default one first, then in creation order."""
        return self.registry.get_all_ids()

    def __len__(self) -> int:
        return len(self.registry)

    def create(self, name: str | None = None) -> Deferred[Channel]:
        """
        Create (and, on Redis, connect) a channel called ``name``, or a generated name if
        None; fires with it.

        :raises TypeError, ValueError: ``name`` is not a valid channel name (at once).
        :return: fails with :class:`~twisted_event_dispatcher.errors.ChannelExistsError`
            or :class:`~twisted_event_dispatcher.errors.ChannelLimitError` (nothing is
            created), or with the backend's error if it cannot connect.
        """
        if name is not None:
            name = check_event_name(name, "channel name")
        return Deferred.fromCoroutine(self._create(name))

    async def _create(self, name: str | None) -> Channel:
        if name is None:
            name = uuid.uuid4().hex
        if name in self.registry or name in self._creating:
            raise ChannelExistsError(name)
        if len(self.registry) + len(self._creating) >= self.max_channels:
            raise ChannelLimitError(self.max_channels)
        channel = self.make(name)
        self._creating.add(name)
        try:
            connect = getattr(channel, "connect", None)
            if connect is not None:
                await connect()
        except BaseException:
            disconnect = getattr(channel, "disconnect", None)
            if disconnect is not None:
                disconnect()
            raise
        finally:
            self._creating.discard(name)
        self.registry.register(channel)
        _log.info("channel {name} created", name=name)
        return channel

    def remove(self, name: str) -> Deferred[None]:
        """
        Remove the channel called ``name``: its subscribers are told (a ``gap`` with reason
        ``"removed"``) and unsubscribed, the consumers of its listeners in this hub end
        (``"closed"``), a Redis channel is disconnected. On Redis, the stream and the
        listeners stay in Redis for the other hubs of the channel.

        :raises TypeError, ValueError: ``name`` is not a valid channel name.
        :raises UnknownChannelError: no such channel.
        :raises DefaultChannelError: it is the hub's default channel.
        """
        name = check_event_name(name, "channel name")
        if name == self.default.name:
            raise DefaultChannelError(name)
        channel = self.registry.rm(name)
        return Deferred.fromCoroutine(self._close(channel))

    async def _close(self, channel: Channel) -> None:
        last: int | None = getattr(channel, "last_id", None)
        gap = Gap(last if last is not None else 0, REMOVED, channel.epoch, None)
        for event in list(channel._subscribers):
            for carrier in channel.subscribers(event):
                try:
                    carrier.notify_gap(channel.name, event, gap)
                except Exception:
                    _log.failure("telling a carrier that {name} was removed failed",
                                 name=channel.name)
                channel.unsubscribe(event, carrier)
        for callback in list(self.removed_callbacks):
            try:
                callback(channel.name)
            except Exception:
                _log.failure("a removed-channel callback failed for {name}", name=channel.name)
        disconnect = getattr(channel, "disconnect", None)
        if disconnect is not None:
            await disconnect()
        elif channel._mailboxes is not None:
            await channel._mailboxes.close()
        _log.info("channel {name} removed", name=channel.name)

    def close_all(self) -> Deferred[Any]:
        """Disconnect every channel (the hub is stopping)."""
        return Deferred.fromCoroutine(self._close_all())

    async def _close_all(self) -> None:
        for name in self.names():
            channel = self.registry.get(name)
            disconnect = getattr(channel, "disconnect", None)
            if disconnect is not None:
                await disconnect()
