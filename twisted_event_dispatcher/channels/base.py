"""
Channel: named publish/subscribe with offsets, an epoch and a bounded history; and the
per-process registry that makes channels singletons per name.

Subclasses store messages (:class:`~.memory.MemoryChannel` in this process; a Redis
stream for several processes) and call :meth:`Channel._fan_out` for every message that
reaches this process, in offset order; the base class does validation, subscriptions and
fan-out to carriers.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import (
    ChannelClassError,
    ChannelExistsError,
    InvalidDataError,
    UnknownChannelError,
)
from ..interfaces import ICarrier, IChannel
from ._listening import ListenerMethods
from ._names import (
    MAX_NAME_LENGTH,
    WILDCARD,
    check_count,
    check_event_name,
    check_seconds,
)
from .message import Message, encode_json

__all__ = [
    "MAX_NAME_LENGTH",
    "WILDCARD",
    "Channel",
    "ChannelRegistry",
    "Gap",
    "Subscription",
    "check_count",
    "check_event_name",
    "check_seconds",
]

#: Largest encoded data a channel accepts by default, in UTF-8 bytes (1 MiB).
MAX_DATA_SIZE = 1024 * 1024

_log = Logger(namespace="twisted_event_dispatcher.channels")


class Gap(NamedTuple):
    """Why the messages after ``since`` cannot be replayed; the client should reload."""

    #: The offset the client asked to resume after.
    since: int
    #: ``"epoch"``: offsets started over; ``"expired"``: the history no longer reaches
    #: back that far; ``"unknown"``: the channel never had that offset; ``"removed"``: the
    #: hub removed the channel (the last notice: nothing follows).
    reason: str
    #: The channel's epoch now.
    epoch: str
    #: The oldest offset still in the history (None when the history is empty).
    oldest: int | None


class Subscription(NamedTuple):
    """What ``subscribe`` did: the messages to replay first, or the gap."""

    channel: str
    event: str
    epoch: str
    #: The channel's latest offset when the subscription began (None: no message yet).
    last_id: int | None
    #: Messages after ``since`` to deliver before any live one, oldest first.
    replay: tuple[Message, ...]
    gap: Gap | None


@implementer(IChannel)
class Channel(ListenerMethods, ABC):
    """
    Base class: subscriptions, validation and fan-out.

    A carrier whose ``deliver`` raises is isolated: the failure is logged once, the
    carrier is dropped from every subscription of the channel, and the other carriers
    get the message as usual; ``publish`` is not affected.

    Listeners (ids with mailboxes, groups, requests) are on every channel too: see
    :meth:`add_listener`, :meth:`dispatch`, :meth:`broadcast` and :meth:`request`. They
    validate and encode at once (bad input raises before anything changes) and delegate to
    :attr:`mailboxes`, the backend's storage.

    :param name: the channel's name.
    :param history_size: how many recent messages to keep for resuming clients.
    :param clock: the reactor's time (the global reactor if None): ack deadlines and
        request timeouts run on it (a ``Clock`` in tests).
    """

    #: Largest data :meth:`publish` accepts, in bytes of its UTF-8 JSON; set it on a
    #: channel (or a subclass) to change the bound.
    max_data_size: int = MAX_DATA_SIZE

    def __init__(
        self, name: str, history_size: int = 1000, *, clock: IReactorTime | None = None
    ) -> None:
        check_event_name(name, "channel name")
        if isinstance(history_size, bool) or not isinstance(history_size, int):
            raise TypeError(f"history_size must be an int, got {history_size!r}")
        if history_size < 0:
            raise ValueError(f"history_size must be >= 0, got {history_size}")
        self.name = name
        self.history_size = history_size
        self.epoch = uuid.uuid4().hex[:16]
        self._subscribers: dict[str, dict[ICarrier, None]] = {}
        self._carriers: dict[ICarrier, set[str]] = {}
        self._clock = clock
        ListenerMethods.__init__(self)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} epoch={self.epoch} "
            f"carriers={len(self._carriers)}>"
        )

    @property
    def clock(self) -> IReactorTime:
        """The channel's time: the ``clock`` it was given, or the global reactor."""
        if self._clock is None:
            from twisted.internet import reactor

            return reactor
        return self._clock

    # -- publishing ----------------------------------------------------------------------

    def publish(self, key: str, data: Any = None) -> Deferred[Message]:
        """
        Publish ``data`` under event name ``key``; see :class:`IChannel`. The data is
        encoded (and refused with :class:`~twisted_event_dispatcher.errors.InvalidDataError`)
        before anything is stored: a stored message can always be delivered.
        """
        key = check_event_name(key)
        return self._publish(key, data, self._encode(data))

    def _encode(self, data: Any) -> str:
        """
        ``data`` as compact JSON, or :class:`~twisted_event_dispatcher.errors.InvalidDataError`
        (not JSON, or larger than :attr:`max_data_size` bytes): every way in (publish,
        broadcast, dispatch, request) checks data the same way, before anything is stored.
        """
        data_json = encode_json(data)
        # len() counts characters; UTF-8 takes at most 4 bytes for one.
        if len(data_json) * 4 > self.max_data_size:
            size = len(data_json.encode("utf-8"))
            if size > self.max_data_size:
                raise InvalidDataError(
                    f"data is {size} bytes as JSON; channel {self.name!r} accepts at most "
                    f"{self.max_data_size}"
                )
        return data_json

    @abstractmethod
    def _publish(self, key: str, data: Any, data_json: str) -> Deferred[Message]:
        """Store the message, fan it out (now or when it comes back), fire with it."""

    def _fan_out(self, message: Message) -> None:
        """Deliver ``message`` to every carrier subscribed to its event or to ``"*"``."""
        named = self._subscribers.get(message.event)
        everything = self._subscribers.get(WILDCARD)
        if named and everything:
            targets: Any = {**named, **everything}  # each carrier once
        else:
            targets = named or everything
            if not targets:
                return
        # A copy: a delivery may close a carrier, which unsubscribes it (see on_close).
        for carrier in list(targets):
            try:
                carrier.deliver(message)
            except Exception:
                self._carrier_failed(carrier, "delivering", message)

    def _carrier_failed(self, carrier: ICarrier, doing: str, what: object) -> None:
        """A carrier raised: log it (once: it is dropped) and unsubscribe it everywhere."""
        _log.failure(
            "channel {name}: carrier {carrier!r} failed {doing} {what!r}; dropping it",
            name=self.name, carrier=carrier, doing=doing, what=what,
        )
        self.unsubscribe_all(carrier)

    def _notify_gap(self, reason: str, since: int, oldest: int | None) -> None:
        """
        Tell every subscribed carrier that the messages after offset ``since`` (of the
        epoch they were reading) will not reach them: ``reason`` as in :class:`Gap`,
        ``oldest`` the first offset they will get next, if known. Called by subclasses
        when their backend lost or skipped messages; never only a log line.
        """
        for event, carriers in list(self._subscribers.items()):
            gap = Gap(since, reason, self.epoch, oldest)
            for carrier in list(carriers):
                try:
                    carrier.notify_gap(self.name, event, gap)
                except Exception:
                    self._carrier_failed(carrier, "notifying", gap)

    # -- subscribing ---------------------------------------------------------------------

    def subscribe(
        self, event: str, carrier: ICarrier, since: int | None = None, epoch: str | None = None
    ) -> Deferred[Subscription]:
        """Subscribe ``carrier`` to ``event``; see :class:`IChannel`."""
        check_event_name(event, wildcard=True)
        if not ICarrier.providedBy(carrier):
            raise TypeError(f"{carrier!r} does not provide ICarrier")
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int) or since < 0
        ):
            raise ValueError(f"since must be an offset (an int >= 0), got {since!r}")
        if epoch is not None and not isinstance(epoch, str):
            raise TypeError(f"epoch must be a str, got {type(epoch).__name__}")
        return self._subscribe(event, carrier, since, epoch)

    @abstractmethod
    def _subscribe(
        self, event: str, carrier: ICarrier, since: int | None, epoch: str | None
    ) -> Deferred[Subscription]:
        """Compute the replay (or gap), then :meth:`_add` the carrier, atomically."""

    def _add(self, event: str, carrier: ICarrier) -> None:
        if carrier.closed:
            # Gone while an asynchronous subscribe (a Redis resume) was on its way: its
            # close callbacks have run already, so it would never be unsubscribed.
            return
        events = self._carriers.get(carrier)
        if events is None:
            events = self._carriers[carrier] = set()
            carrier.on_close(self.unsubscribe_all)
        events.add(event)
        self._subscribers.setdefault(event, {})[carrier] = None

    def unsubscribe(self, event: str, carrier: ICarrier) -> bool:
        """Unsubscribe ``carrier`` from ``event``; False if it was not subscribed."""
        subscribers = self._subscribers.get(event)
        if subscribers is None or carrier not in subscribers:
            return False
        del subscribers[carrier]
        if not subscribers:
            del self._subscribers[event]
        events = self._carriers[carrier]
        events.discard(event)
        if not events:
            del self._carriers[carrier]
        return True

    def unsubscribe_all(self, carrier: ICarrier) -> int:
        """Remove every subscription of ``carrier``; how many there were."""
        events = self._carriers.get(carrier, set())
        for event in list(events):
            self.unsubscribe(event, carrier)
        return len(events)

    def subscribers(self, event: str) -> list[ICarrier]:
        """The carriers subscribed to exactly ``event`` (``"*"`` for the wildcard ones)."""
        return list(self._subscribers.get(event, ()))

    @property
    def carrier_count(self) -> int:
        """Number of distinct carriers with at least one subscription."""
        return len(self._carriers)

class ChannelRegistry:
    """
    Channels by name (eric-sse's ``ChannelContainer``): one per name in a process, so any
    component can get a channel by name and publish without having it injected.

    :meth:`get_or_create` (``get_channel``) creates a channel on first use and never resets
    it; :meth:`register` and :meth:`register_iterable` add channels built elsewhere;
    :meth:`get` and :meth:`rm` refuse unknown names with
    :class:`~twisted_event_dispatcher.errors.UnknownChannelError`.
    """

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def get_or_create(
        self, name: str, channel_class: type[Channel] | None = None, **options: Any
    ) -> Any:
        """
        The channel called ``name``, created with ``channel_class(name, **options)`` on
        first use (a :class:`~.memory.MemoryChannel` by default); later calls return it
        as it is (``options`` only apply at creation).

        :raises ChannelClassError: the name exists with another channel class.
        """
        if channel_class is None:
            from .memory import MemoryChannel

            channel_class = MemoryChannel
        existing = self._channels.get(name)
        if existing is not None:
            if type(existing) is not channel_class:
                raise ChannelClassError(name, type(existing), channel_class)
            return existing
        channel = channel_class(name, **options)
        self._channels[name] = channel
        return channel

    def register(self, channel: Channel) -> Channel:
        """
        Add a channel built elsewhere, under its own name; returns it.

        :raises TypeError: ``channel`` is not a :class:`Channel`.
        :raises ChannelExistsError: a channel of that name is registered already (even
            the same one: registering twice is a mistake worth hearing about).
        """
        if not isinstance(channel, Channel):
            raise TypeError(f"only a Channel can be registered, got {type(channel).__name__}")
        if channel.name in self._channels:
            raise ChannelExistsError(channel.name)
        self._channels[channel.name] = channel
        return channel

    def register_iterable(self, channels: Iterable[Channel]) -> list[Channel]:
        """
        Register several channels, all or none: every one is checked (type, names taken
        here or twice in ``channels``) before any is added.
        """
        channels = list(channels)
        seen: set[str] = set()
        for channel in channels:
            if not isinstance(channel, Channel):
                raise TypeError(
                    f"only a Channel can be registered, got {type(channel).__name__}"
                )
            if channel.name in self._channels or channel.name in seen:
                raise ChannelExistsError(channel.name)
            seen.add(channel.name)
        for channel in channels:
            self._channels[channel.name] = channel
        return channels

    def get(self, name: str) -> Any:
        """
        The channel called ``name``.

        :raises UnknownChannelError: no channel of that name is registered (a ``KeyError``).
        """
        return self[name]

    def rm(self, name: str) -> Channel:
        """
        Remove the channel called ``name`` from the registry and return it (it is not
        closed: disconnect a Redis channel yourself).

        :raises UnknownChannelError: no channel of that name is registered.
        """
        try:
            return self._channels.pop(name)
        except (KeyError, TypeError):
            raise UnknownChannelError(name) from None

    def get_all_ids(self) -> list[str]:
        """The names of every registered channel, in the order they were added."""
        return list(self._channels)

    def __getitem__(self, name: str) -> Channel:
        try:
            return self._channels[name]
        except (KeyError, TypeError):
            raise UnknownChannelError(name) from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._channels
        except TypeError:  # an unhashable "name"
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._channels))

    def __len__(self) -> int:
        return len(self._channels)

    def discard(self, name: str) -> None:
        """Forget a channel if it is registered (tests, or a channel no longer needed)."""
        self._channels.pop(name, None)
