"""
The storage contract behind listeners: one :class:`Mailboxes` per channel, kept in the
channel's backend (memory: deques in this process; Redis: streams and consumer groups).

Everything a user calls (``Channel.dispatch``, :class:`~.listener.Listener`, actions,
requests, processing pools) is written once, over this contract. The front validates
and encodes **before** calling it: a backend receives checked names, an encoded
``data_json`` and no control types (``start``/``stop`` arrive as :meth:`set_running`).

Semantics every backend keeps (the tests run against both):

* A listener has an id (unique per channel), an optional group, a ``running`` flag
  (created running), its own bounded mailbox, and at most one attached consumer.
* :meth:`put` appends to the listener's own mailbox, or fails with
  :class:`~twisted_event_dispatcher.errors.MailboxFullError` when ``queued + in_flight``
  would pass its ``mailbox_size``; nothing is stored then.
* :meth:`put_group` appends to the group's queue (bounded by ``group_size``); exactly one
  running, attached member takes each group mail. Memory: ``"round-robin"`` rotates over
  the members with a free slot, ``"least-busy"`` picks the one with the fewest in flight.
  Redis: the consumer group hands each entry to the next member reading (Redis serves
  blocked readers first come, first served, and a member with no free slot does not read).
* :meth:`put_all` publishes on the channel (an offset, live subscribers) and copies the
  message into every listener's own mailbox, in one step (one order for all). A full
  mailbox does not refuse a broadcast: it gets (or increments) one ``_missed`` notice at
  its tail instead, so the listener learns how many it missed, in order.
* Delivery: while the listener is running and attached, mail goes to the sink in order
  (own mailbox in order; group mail in order of the group's queue), at most
  ``max_in_flight`` unacknowledged at a time. A stopped listener's mail waits.
* Redelivery (``deliveries`` + 1): own mail not acknowledged when its consumer detaches
  (or its process dies) goes to the next consumer attached to that listener, before newer
  mail; group mail not acknowledged within ``ack_timeout``, or when its member is stopped,
  removed or detached (or its process dies), goes back to the group for another member.
  :meth:`Attachment.release` gives a mail back at once (a failed handler).
* Removing a listener discards its own mailbox, gives its unacknowledged group mail
  back to the group, detaches its consumer (``sink.detached("removed")``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from ..channels.message import Message
from .mail import ListenerInfo, Mail

__all__ = ["Attachment", "MailSink", "Mailboxes", "ReplyHandler"]

#: Group dispatch policies.
POLICIES = ("round-robin", "least-busy")


class MailSink(Protocol):
    """Where an attachment delivers: the consumer side (a handler, a stream, a pool)."""

    def mail(self, mail: Mail) -> None:
        """One mail, in order; ``mail.ack()`` acknowledges it through the attachment."""

    def detached(self, reason: str) -> None:
        """
        The attachment ended without :meth:`Attachment.detach` (``"removed"``: the
        listener was removed; ``"replaced"``: another consumer attached to it;
        ``"closed"``: the channel's backend was closed; ``"failed"``: this sink's
        :meth:`mail` raised, which is logged once). Called once; nothing follows.
        """


class ReplyHandler(Protocol):
    def __call__(self, correlation: str, ok: bool, value_json: str) -> None:
        """A reply arrived for the request ``correlation`` (see :meth:`Mailboxes.reply`)."""


class Attachment(ABC):
    """A consumer attached to one listener: acknowledges, gives back, detaches."""

    listener_id: str

    @abstractmethod
    def ack(self, mail: Mail) -> Deferred[bool]:
        """Remove ``mail`` for good; False if it was not pending on this attachment."""

    @abstractmethod
    def release(self, mail: Mail) -> Deferred[bool]:
        """Give ``mail`` back for redelivery now (deliveries + 1); False if not pending."""

    @abstractmethod
    def detach(self) -> Deferred[None]:
        """Stop delivering; unacknowledged mail is redelivered (see the module doc)."""

    def holds(self, mail: Mail) -> bool:
        """
        Whether ``mail`` is still this consumer's to acknowledge, as far as this process
        knows: False once it was acknowledged, given back (its listener stopped, its ack
        deadline passed) or the attachment ended. A sink that buffers mail (a stream)
        skips what it no longer holds. The default, for a backend that cannot tell
        without a round trip: True.
        """
        return True


class Mailboxes(ABC):
    """
    The listeners of one channel and their mailboxes. Every method returns a Deferred
    (fired at once in memory); errors are the exceptions of
    :mod:`twisted_event_dispatcher.errors` through it.
    """

    #: Bound on a group's queue (mail not yet taken by a member).
    group_size: int = 10_000

    #: Called with every reply addressed to :attr:`reply_address` (set by the channel).
    on_reply: ReplyHandler | None = None

    @property
    @abstractmethod
    def reply_address(self) -> str:
        """Where replies to this process's requests go (opaque to the front)."""

    @abstractmethod
    def register(
        self, listener_id: str | None, group: str | None, mailbox_size: int, ack_timeout: float
    ) -> Deferred[str]:
        """
        A new listener (running, empty mailbox): ``listener_id`` or a generated one.
        :raises ListenerExistsError: the id is taken.
        """

    @abstractmethod
    def remove(self, listener_id: str) -> Deferred[None]:
        """See the module doc. :raises UnknownListenerError:"""

    @abstractmethod
    def listener_ids(self, group: str | None = None) -> Deferred[list[str]]:
        """Every listener's id (of ``group`` only, if given), in registration order."""

    @abstractmethod
    def info(self, listener_id: str) -> Deferred[ListenerInfo]:
        """:raises UnknownListenerError:"""

    @abstractmethod
    def set_running(self, listener_id: str, running: bool) -> Deferred[None]:
        """
        Start or stop a listener (idempotent). Stopping gives its unacknowledged group mail
        back to the group and holds its own mail (in flight too) for when it starts again.
        :raises UnknownListenerError:
        """

    @abstractmethod
    def put(
        self,
        listener_id: str,
        event: str,
        data: Any,
        data_json: str,
        reply_to: str | None = None,
        correlation: str | None = None,
    ) -> Deferred[str]:
        """
        Append to the listener's own mailbox; fires with the mail id.
        :raises UnknownListenerError:
        :raises MailboxFullError:
        """

    @abstractmethod
    def put_group(
        self,
        group: str,
        event: str,
        data: Any,
        data_json: str,
        policy: str = "round-robin",
        reply_to: str | None = None,
        correlation: str | None = None,
    ) -> Deferred[str]:
        """
        Append to the group's queue; fires with the mail id.
        :raises UnknownGroupError: the group has no member.
        :raises MailboxFullError: the group's queue holds ``group_size`` mails.
        """

    @abstractmethod
    def put_all(self, event: str, data: Any, data_json: str) -> Deferred[Message]:
        """Broadcast (see the module doc); fires with the channel's message."""

    @abstractmethod
    def attach(self, listener_id: str, sink: MailSink, max_in_flight: int) -> Deferred[Attachment]:
        """
        Attach a consumer; a consumer already attached to the listener is detached first
        (its sink gets ``detached("replaced")``) and its unacknowledged mail goes to this one.
        :raises UnknownListenerError:
        """

    @abstractmethod
    def reply(self, reply_to: str, correlation: str, ok: bool, value_json: str) -> Deferred[None]:
        """
        Send a request's outcome to ``reply_to`` (the requester's :attr:`reply_address`,
        maybe in another process), where :attr:`on_reply` gets it. ``value_json``: the
        action's return value as JSON, or (``ok`` False) ``{"type": ..., "message": ...}``.
        """

    @abstractmethod
    def close(self) -> Deferred[None]:
        """Detach every consumer of this process (``sink.detached("closed")``); stop reading."""
