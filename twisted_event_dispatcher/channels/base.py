"""
Channel: named publish/subscribe with offsets, an epoch and a bounded history; and the
per-process registry that makes channels singletons per name.

Subclasses store messages (:class:`~.memory.MemoryChannel` in this process; a Redis
stream for several processes) and call :meth:`Channel._fan_out` for every message that
reaches this process, in offset order; the base class does validation, subscriptions and
fan-out to carriers.
"""

from __future__ import annotations

import math
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import (
    ChannelClassError,
    ChannelExistsError,
    InvalidDataError,
    ReservedTypeError,
    UnknownChannelError,
)
from ..interfaces import ICarrier, IChannel
from .message import Message, encode_json

if TYPE_CHECKING:
    from ..listeners._backend import Mailboxes
    from ..listeners._requests import PendingRequests
    from ..listeners.listener import Listener

__all__ = [
    "WILDCARD",
    "Channel",
    "ChannelRegistry",
    "Gap",
    "Subscription",
    "check_event_name",
]

#: Subscribe to this event name to receive every event of a channel.
WILDCARD = "*"
#: Longest event or channel name accepted.
MAX_NAME_LENGTH = 200
#: Largest encoded data a channel accepts by default, in UTF-8 bytes (1 MiB).
MAX_DATA_SIZE = 1024 * 1024

#: The message types ``start`` and ``stop`` (``listeners.mail.CONTROL_TYPES``; repeated
#: here because the listeners package imports this module).
_CONTROL_TYPES = frozenset({"start", "stop"})

_log = Logger(namespace="twisted_event_dispatcher.channels")


def check_event_name(name: object, what: str = "event name", wildcard: bool = False) -> str:
    """
    Validate an event (or channel) name: a non-empty str of at most 200 characters, with
    no control characters (names travel in SSE ``event:`` lines and JSON), not starting
    with ``_`` (reserved for control messages) and, unless ``wildcard``, not ``"*"``.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if not name.isprintable():
        if any("\ud800" <= c <= "\udfff" for c in name):
            raise ValueError(f"{what} {name!r} contains a lone surrogate (not valid Unicode)")
        raise ValueError(f"{what} {name!r} contains control characters")
    if name.startswith("_"):
        raise ValueError(f"{what} {name!r} starts with '_', which is reserved")
    if name == WILDCARD and not wildcard:
        raise ValueError(f"{what} '*' is only valid when subscribing")
    return name


class Gap(NamedTuple):
    """Why the messages after ``since`` cannot be replayed; the client should reload."""

    #: The offset the client asked to resume after.
    since: int
    #: ``"epoch"``: offsets started over; ``"expired"``: the history no longer reaches
    #: back that far; ``"unknown"``: the channel never had that offset.
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
class Channel(ABC):
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
        self._mailboxes: Mailboxes | None = None
        self._requests: PendingRequests | None = None
        # Listener handles: the same object for an id while it is in use (its actions live
        # on it); the ones this channel registered are kept until removed through it.
        self._handles: weakref.WeakValueDictionary[str, Listener] = (
            weakref.WeakValueDictionary()
        )
        self._registered: dict[str, Listener] = {}

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
        check_event_name(key)
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

    # -- listeners -----------------------------------------------------------------------

    @property
    def mailboxes(self) -> Mailboxes:
        """
        The channel's listeners and their mailboxes (made by :meth:`_make_mailboxes` on
        first use); replies to this process's requests reach :meth:`request` through it.
        """
        if self._mailboxes is None:
            from ..listeners._requests import PendingRequests

            mailboxes = self._make_mailboxes()
            self._requests = PendingRequests(self)
            mailboxes.on_reply = self._requests.on_reply
            self._mailboxes = mailboxes
        return self._mailboxes

    def _make_mailboxes(self) -> Mailboxes:
        """The backend's :class:`~twisted_event_dispatcher.listeners.Mailboxes`."""
        raise NotImplementedError(f"{type(self).__name__} has no listener backend")

    def add_listener(
        self,
        listener_id: str | None = None,
        *,
        group: str | None = None,
        mailbox_size: int = 1000,
        ack_timeout: float = 30.0,
    ) -> Deferred[Listener]:
        """
        Register a listener (running, with an empty mailbox) and fire with its handle.

        :param listener_id: its id (a generated one if None); unique on the channel.
        :param group: the group whose messages it takes a share of (see
            :meth:`dispatch_group`).
        :param mailbox_size: the bound on its own mailbox (queued + unacknowledged).
        :param ack_timeout: seconds its consumer has to acknowledge a group message
            before the message goes back to the group.
        :raises TypeError, ValueError: a bad name or option (at once; nothing changes).
        :return: fails with :class:`~twisted_event_dispatcher.errors.ListenerExistsError`
            when the id is taken.
        """
        if listener_id is not None:
            check_event_name(listener_id, "listener id")
        if group is not None:
            check_event_name(group, "group name")
        check_count(mailbox_size, "mailbox_size")
        check_seconds(ack_timeout, "ack_timeout")

        def registered(new_id: str) -> Listener:
            handle = self.listener(new_id)
            handle.group = group
            self._registered[new_id] = handle
            return handle

        return self.mailboxes.register(listener_id, group, mailbox_size, ack_timeout).addCallback(
            registered
        )

    def listener(self, listener_id: str) -> Listener:
        """
        The handle of listener ``listener_id``: no I/O and no check that it exists (an
        unknown id fails when the handle is used). The same handle while it is in use, so
        the actions set on it are the ones :meth:`~.Listener.serve` runs.
        """
        check_event_name(listener_id, "listener id")
        handle = self._handles.get(listener_id)
        if handle is None:
            from ..listeners.listener import Listener

            handle = self._handles[listener_id] = Listener(self, listener_id)
        return handle

    def remove_listener(self, listener_id: str) -> Deferred[None]:
        """
        Remove a listener: its own mailbox is discarded, its unacknowledged group messages
        go back to the group, its consumer ends (reason ``"removed"``).
        Fails with :class:`~twisted_event_dispatcher.errors.UnknownListenerError`.
        """
        check_event_name(listener_id, "listener id")

        def removed(_: None) -> None:
            self._registered.pop(listener_id, None)

        return self.mailboxes.remove(listener_id).addCallback(removed)

    def listener_ids(self, group: str | None = None) -> Deferred[list[str]]:
        """Every listener's id (of ``group`` only, if given), in registration order."""
        if group is not None:
            check_event_name(group, "group name")
        return self.mailboxes.listener_ids(group)

    def broadcast(self, event: str, data: Any = None) -> Deferred[Message]:
        """
        Publish to the live subscribers (as :meth:`publish`) and copy the message into every
        listener's mailbox, in one order for all. A full mailbox gets a ``_missed`` notice
        (with the count) instead of the copy; the broadcast itself never fails for it.
        """
        check_event_name(event)
        _check_not_control(event, "broadcast")
        return self.mailboxes.put_all(event, data, self._encode(data))

    def dispatch(self, listener_id: str, event: str, data: Any = None) -> Deferred[str | None]:
        """
        Put a message into one listener's mailbox; fires with its mail id. ``start`` and
        ``stop`` (with no data) start or stop the listener instead and fire with None.
        Fails with :class:`~twisted_event_dispatcher.errors.UnknownListenerError` or
        :class:`~twisted_event_dispatcher.errors.MailboxFullError` (nothing stored).
        """
        if type(listener_id) is not str or listener_id not in self._registered:
            check_event_name(listener_id, "listener id")  # (registered ones were checked)
        check_event_name(event)
        if event in _CONTROL_TYPES:
            if data is not None:
                raise ReservedTypeError(
                    f"{event!r} starts or stops a listener and takes no data, got {data!r}"
                )
            running: Deferred[Any] = self.mailboxes.set_running(listener_id, event == "start")
            return running
        result: Deferred[Any] = self.mailboxes.put(listener_id, event, data, self._encode(data))
        return result

    def dispatch_group(
        self, group: str, event: str, data: Any = None, *, policy: str = "round-robin"
    ) -> Deferred[str]:
        """
        Put a message into ``group``'s queue: exactly one running member takes it (the next
        in turn with a free slot: ``"round-robin"``; or ``"least-busy"``). Fails with
        :class:`~twisted_event_dispatcher.errors.UnknownGroupError` (no member) or
        :class:`~twisted_event_dispatcher.errors.MailboxFullError` (the queue is full).
        """
        check_event_name(group, "group name")
        check_event_name(event)
        _check_not_control(event, "dispatch_group")
        _check_policy(policy)
        return self.mailboxes.put_group(group, event, data, self._encode(data), policy)

    def request(
        self,
        target: str,
        event: str,
        data: Any = None,
        *,
        group: bool = False,
        timeout: float = 10.0,
    ) -> Deferred[Any]:
        """
        Dispatch a request to listener ``target`` (or, with ``group=True``, to one member of
        group ``target``) and fire with its action's return value.

        Fails with :class:`~twisted_event_dispatcher.errors.RemoteActionError` (the action
        raised, or there is none for ``event``), with
        :class:`~twisted_event_dispatcher.errors.RequestTimeoutError` after ``timeout``
        seconds without a reply (the action may still run), or as :meth:`dispatch` does.
        Cancelling the Deferred forgets the request (a late reply is ignored).
        """
        if not isinstance(group, bool):
            raise TypeError(f"group must be a bool, got {type(group).__name__}")
        check_event_name(target, "group name" if group else "listener id")
        check_event_name(event)
        _check_not_control(event, "request")
        check_seconds(timeout, "timeout")
        data_json = self._encode(data)
        mailboxes = self.mailboxes
        assert self._requests is not None  # made with the mailboxes
        requests = self._requests
        correlation = uuid.uuid4().hex
        answer = requests.add(correlation, target, event, timeout)
        if group:
            sent = mailboxes.put_group(
                target, event, data, data_json,
                reply_to=mailboxes.reply_address, correlation=correlation,
            )
        else:
            sent = mailboxes.put(
                target, event, data, data_json,
                reply_to=mailboxes.reply_address, correlation=correlation,
            )
        sent.addErrback(requests.fail, correlation)
        return answer


def check_count(value: object, what: str) -> int:
    """An int >= 1 (not a bool): a bound or a count of slots."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


def check_seconds(value: object, what: str) -> float:
    """A finite number of seconds > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _check_not_control(event: str, where: str) -> None:
    if event in _CONTROL_TYPES:
        raise ReservedTypeError(
            f"{event!r} is reserved: it starts or stops one listener, through "
            f"dispatch(listener_id, {event!r}), not {where}"
        )


def _check_policy(policy: object) -> None:
    from ..listeners._backend import POLICIES

    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")


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
