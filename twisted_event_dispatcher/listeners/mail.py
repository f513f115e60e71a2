"""
Mail: one message in a listener's mailbox, and what a listener looks like from outside.

A :class:`Mail` is what a consumer of a listener receives: the event and its data (encoded
once, before it was stored), the mailbox id it is acknowledged by, and how it got there
(dispatched to the listener, taken from its group's queue, or a copy of a broadcast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, NamedTuple

from twisted.internet.defer import Deferred, succeed

if TYPE_CHECKING:
    from ._backend import Attachment

__all__ = [
    "CONTROL_TYPES",
    "MESSAGE_TYPE_CLOSED",
    "MESSAGE_TYPE_MISSED",
    "MESSAGE_TYPE_START",
    "MESSAGE_TYPE_STOP",
    "ListenerInfo",
    "Mail",
]

#: Dispatched to a listener, starts it (as :meth:`Listener.start`); never stored.
MESSAGE_TYPE_START: Final = "start"
#: Dispatched to a listener, stops it (as :meth:`Listener.stop`); never stored.
MESSAGE_TYPE_STOP: Final = "stop"
#: Ends a processing stream (eric-sse's ``MESSAGE_TYPE_CLOSED``): a processing listener
#: finishes what it has started, publishes it, and stops consuming.
MESSAGE_TYPE_CLOSED: Final = "closed"
#: The event of the notice a listener gets in place of broadcasts its full mailbox could
#: not take: ``data`` is ``{"count": n, "reason": "mailbox full"}``.
MESSAGE_TYPE_MISSED: Final = "_missed"
#: Types with a meaning of their own when dispatched: never data for an action.
CONTROL_TYPES: Final = frozenset({MESSAGE_TYPE_START, MESSAGE_TYPE_STOP})

#: How a mail reached the mailbox.
SOURCES: Final = ("dispatch", "group", "broadcast", "missed")


class ListenerInfo(NamedTuple):
    """A listener's state, as :meth:`~.Listener.info` reports it."""

    id: str
    #: The group it takes group messages for (None: none).
    group: str | None
    running: bool
    #: Mail waiting in its own mailbox, not yet delivered to a consumer.
    queued: int
    #: Mail delivered to its consumer and not yet acknowledged.
    in_flight: int
    #: The bound on ``queued + in_flight`` of its own mailbox.
    mailbox_size: int
    #: Seconds a consumer has to acknowledge a group message before another member gets it.
    ack_timeout: float
    #: True while a consumer is attached (in this process or, on Redis, in any).
    attached: bool


class Mail:
    """
    One message delivered from a listener's mailbox to its consumer.

    :ivar id: the mailbox id (a str; unique within the listener's mailbox, or within the
        group's queue for ``source == "group"``); what :meth:`ack` acknowledges.
    :ivar listener: the id of the listener it was delivered to.
    :ivar channel: the channel's name.
    :ivar event: the message type (the event name).
    :ivar data: the JSON-compatible payload: decoded from ``data_json``, except that in
        memory the first delivery of a dispatched or group mail is the sender's own object
        (as ``publish`` gives in-process carriers).
    :ivar data_json: ``data`` as compact JSON, encoded once when it was dispatched.
    :ivar deliveries: 1 the first time; more when it is redelivered (at-least-once).
    :ivar source: ``"dispatch"``, ``"group"``, ``"broadcast"`` or ``"missed"``.
    :ivar group: the group it was dispatched to (``source == "group"``), else None.
    :ivar reply_to: where the reply to a request goes (None: not a request).
    :ivar correlation: the request's id, for its reply (None: not a request).
    :ivar offset: for a broadcast, its offset on the channel; else None.
    """

    __slots__ = (
        "id", "listener", "channel", "event", "data", "data_json", "deliveries", "source",
        "group", "reply_to", "correlation", "offset", "_attachment",
    )

    def __init__(
        self,
        id: str,
        listener: str,
        channel: str,
        event: str,
        data: Any,
        data_json: str,
        *,
        deliveries: int = 1,
        source: str = "dispatch",
        group: str | None = None,
        reply_to: str | None = None,
        correlation: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.id = id
        self.listener = listener
        self.channel = channel
        self.event = event
        self.data = data
        self.data_json = data_json
        self.deliveries = deliveries
        self.source = source
        self.group = group
        self.reply_to = reply_to
        self.correlation = correlation
        self.offset = offset
        self._attachment: Attachment | None = None

    @property
    def is_request(self) -> bool:
        """True if the sender waits for a reply (see ``Channel.request``)."""
        return self.correlation is not None

    def ack(self) -> Deferred[bool]:
        """
        Acknowledge: the mail is removed for good. Fires True, or False when it was no
        longer this consumer's to acknowledge (its ack deadline passed and it went to
        another member, the consumer was detached, or it was acknowledged already).
        """
        if self._attachment is None:
            return succeed(False)
        return self._attachment.ack(self)

    def __repr__(self) -> str:
        return (
            f"<Mail {self.channel}/{self.listener}#{self.id} {self.event!r} "
            f"source={self.source} deliveries={self.deliveries}>"
        )
