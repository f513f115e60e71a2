"""
MemoryMailboxes: the listeners of a channel kept in this process (deques and dicts).

Every operation is done when it returns: the Deferreds it returns have fired already
(``succeed``/``fail``), so code and doctests can use them without a running reactor.
Delivery to consumers is synchronous too, through one drain loop per channel: a consumer
that dispatches, acknowledges or attaches from inside its own handler only marks work to
do, which the loop already running does next, so mail is never delivered out of order or
re-entrantly. Only ack deadlines use the channel's clock.

A mail's ``data``: the first delivery of a dispatched or group mail (one recipient) is the
sender's own object, as :meth:`~..channels.base.Channel.publish` gives in-process carriers;
broadcast copies and redeliveries are decoded from the stored JSON, as from Redis.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..errors import (
    ListenerExistsError,
    MailboxFullError,
    UnknownGroupError,
    UnknownListenerError,
)
from ._backend import Attachment, Mailboxes, MailSink
from .mail import MESSAGE_TYPE_MISSED, ListenerInfo, Mail

if TYPE_CHECKING:
    from ..channels.base import Channel
    from ..channels.message import Message

__all__ = ["MemoryMailboxes"]

_log = Logger(namespace="twisted_event_dispatcher.listeners")

#: Data delivered as it was given: immutable, and equal to its JSON decoded.
_IMMUTABLE_JSON = frozenset({type(None), bool, int, float, str})
#: Sources whose first delivery has one recipient: it gets the sender's own object.
_SENDER_DATA = frozenset({"dispatch", "group"})


class _Entry:
    """A stored message (each delivery of it is a new :class:`Mail`)."""

    __slots__ = (
        "seq", "id", "event", "data", "data_json", "source", "group", "reply_to",
        "correlation", "offset", "deliveries", "policy", "last_member",
    )

    def __init__(
        self,
        seq: int,
        event: str,
        data: Any,
        data_json: str,
        source: str,
        group: str | None = None,
        reply_to: str | None = None,
        correlation: str | None = None,
        offset: int | None = None,
        policy: str = "round-robin",
    ) -> None:
        self.seq = seq
        self.id = str(seq)
        self.event = event
        self.data = data
        self.data_json = data_json
        self.source = source
        self.group = group
        self.reply_to = reply_to
        self.correlation = correlation
        self.offset = offset
        self.deliveries = 0
        self.policy = policy
        #: The member a group mail was last delivered to (a redelivery prefers another).
        self.last_member: _Member | None = None


class _Member:
    """One listener: its settings, own mailbox (not yet delivered) and consumer."""

    __slots__ = ("id", "group", "running", "mailbox_size", "ack_timeout", "queue", "attachment")

    def __init__(self, id: str, group: str | None, mailbox_size: int, ack_timeout: float):
        self.id = id
        self.group = group
        self.running = True
        self.mailbox_size = mailbox_size
        self.ack_timeout = ack_timeout
        self.queue: deque[_Entry] = deque()
        self.attachment: _MemoryAttachment | None = None

    def is_full(self) -> bool:
        held = len(self.queue)
        if self.attachment is not None:
            held += len(self.attachment.own)
        return held >= self.mailbox_size

    def can_take(self) -> bool:
        attachment = self.attachment
        return (
            self.running and attachment is not None
            and len(attachment.own) + len(attachment.group) < attachment.max_in_flight
        )


class _Group:
    __slots__ = ("name", "members", "queue", "turn")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[_Member] = []
        self.queue: deque[_Entry] = deque()
        #: Index in ``members`` of the next in turn.
        self.turn = 0


class _MemoryAttachment(Attachment):
    """A consumer of one listener: what it has been given and not acknowledged yet."""

    def __init__(
        self, boxes: MemoryMailboxes, member: _Member, sink: MailSink, max_in_flight: int
    ) -> None:
        self.listener_id = member.id
        self.member = member
        self.sink = sink
        self.max_in_flight = max_in_flight
        self.active = True
        #: Own mail in flight, by mail id, in delivery order.
        self.own: dict[str, tuple[Mail, _Entry | None]] = {}
        #: Group mail in flight, with its ack deadline.
        self.group: dict[str, tuple[Mail, _Entry, IDelayedCall]] = {}
        self._boxes = boxes

    def ack(self, mail: Mail) -> Deferred[bool]:
        return succeed(self._boxes._settle(self, mail, release=False))

    def release(self, mail: Mail) -> Deferred[bool]:
        return succeed(self._boxes._settle(self, mail, release=True))

    def detach(self) -> Deferred[None]:
        self._boxes._detach(self, None)
        return succeed(None)

    def holds(self, mail: Mail) -> bool:
        table = self.group if mail.source == "group" else self.own
        pending = table.get(mail.id)
        return pending is not None and pending[0] is mail

    def __repr__(self) -> str:
        return (
            f"<MemoryAttachment {self.listener_id!r} in_flight={len(self.own) + len(self.group)}"
            f"/{self.max_in_flight}{'' if self.active else ' detached'}>"
        )


def _entry_of(mail: Mail) -> _Entry:
    """The entry of a dispatched mail handed over without one (see ``put``), to requeue."""
    entry = _Entry(
        int(mail.id), mail.event, mail.data, mail.data_json, mail.source,
        reply_to=mail.reply_to, correlation=mail.correlation,
    )
    if type(mail.data) not in _IMMUTABLE_JSON:  # (its handler may have changed it)
        entry.data = json.loads(mail.data_json)
    entry.deliveries = mail.deliveries
    return entry


def _insert_in_order(queue: deque[_Entry], entry: _Entry) -> None:
    """Put a given-back entry before every newer one (they are near the front)."""
    index = next((i for i, queued in enumerate(queue) if queued.seq > entry.seq), len(queue))
    queue.insert(index, entry)


class MemoryMailboxes(Mailboxes):
    """
    The listeners of ``channel`` in this process; see :mod:`._backend` for the semantics.

    Group dispatch: ``"round-robin"`` gives each mail to the next member in registration
    order that is running, attached and has a free slot; ``"least-busy"`` to the one of
    those with the fewest mails in flight (ties: the next in turn). A redelivered group
    mail goes to another member than the last one when there is one that can take it.
    A member with free slots takes its own mail before group mail.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._members: dict[str, _Member] = {}
        self._groups: dict[str, _Group] = {}
        self._seq = 0
        # Members and groups with mail to hand out (an ordered set), and whether the
        # drain loop runs: work found while it runs is done by it, in order.
        self._dirty: dict[_Member | _Group, None] = {}
        self._draining = False
        # Broadcasts being published, and the published ones waiting to be copied (a
        # carrier may broadcast from inside the fan-out of another broadcast).
        self._publishing = 0
        self._to_copy: list[Message] = []
        self._address = f"memory:{uuid.uuid4().hex}"

    def __repr__(self) -> str:
        return f"<MemoryMailboxes {self._channel.name!r} listeners={len(self._members)}>"

    @property
    def reply_address(self) -> str:
        return self._address

    # -- registry ------------------------------------------------------------------------

    def _member(self, listener_id: str) -> _Member:
        member = self._members.get(listener_id)
        if member is None:
            raise UnknownListenerError(self._channel.name, listener_id)
        return member

    def register(
        self, listener_id: str | None, group: str | None, mailbox_size: int, ack_timeout: float
    ) -> Deferred[str]:
        if listener_id is None:
            listener_id = uuid.uuid4().hex
        elif listener_id in self._members:
            return fail(ListenerExistsError(self._channel.name, listener_id))
        member = _Member(listener_id, group, mailbox_size, ack_timeout)
        self._members[listener_id] = member
        if group is not None:
            record = self._groups.get(group)
            if record is None:
                record = self._groups[group] = _Group(group)
            record.members.append(member)
        return succeed(listener_id)

    def remove(self, listener_id: str) -> Deferred[None]:
        member = self._members.pop(listener_id, None)
        if member is None:
            return fail(UnknownListenerError(self._channel.name, listener_id))
        member.running = False  # nothing more is handed to it from here on
        attachment = member.attachment
        if attachment is not None:
            self._detach(attachment, None)
        member.queue.clear()  # its own mail given back by the detach: discarded
        self._dirty.pop(member, None)
        if member.group is not None:
            group = self._groups[member.group]
            index = group.members.index(member)
            del group.members[index]
            if index < group.turn:
                group.turn -= 1
            if group.members:
                group.turn %= len(group.members)
                self._wake(group)
            else:
                group.turn = 0
                if not group.queue:
                    # Queued group mail waits for the next member; an empty group goes.
                    del self._groups[member.group]
        if attachment is not None:  # told last: whatever it does sees the listener gone
            self._tell(attachment, "removed")
        return succeed(None)

    def listener_ids(self, group: str | None = None) -> Deferred[list[str]]:
        if group is None:
            return succeed(list(self._members))
        record = self._groups.get(group)
        return succeed([m.id for m in record.members] if record is not None else [])

    def info(self, listener_id: str) -> Deferred[ListenerInfo]:
        try:
            member = self._member(listener_id)
        except UnknownListenerError as e:
            return fail(e)
        attachment = member.attachment
        in_flight = len(attachment.own) + len(attachment.group) if attachment else 0
        return succeed(ListenerInfo(
            member.id, member.group, member.running, len(member.queue), in_flight,
            member.mailbox_size, member.ack_timeout, attachment is not None,
        ))

    def set_running(self, listener_id: str, running: bool) -> Deferred[None]:
        try:
            member = self._member(listener_id)
        except UnknownListenerError as e:
            return fail(e)
        if member.running == running:
            return succeed(None)
        member.running = running
        if running:
            self._wake(member)
        elif member.attachment is not None:
            self._give_back_group_mail(member.attachment)
        # (The handlers run above may have removed the group's last members: then it went.)
        group = self._groups.get(member.group) if member.group is not None else None
        if group is not None:
            self._wake(group)
        return succeed(None)

    # -- storing -------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def put(
        self,
        listener_id: str,
        event: str,
        data: Any,
        data_json: str,
        reply_to: str | None = None,
        correlation: str | None = None,
    ) -> Deferred[str]:
        member = self._members.get(listener_id)
        if member is None:
            return fail(UnknownListenerError(self._channel.name, listener_id))
        attachment = member.attachment
        queue = member.queue
        if (
            self._draining or queue or attachment is None or not member.running
            or len(attachment.own) + len(attachment.group) >= attachment.max_in_flight
            or len(attachment.own) >= member.mailbox_size
        ):
            if member.is_full():
                return fail(
                    MailboxFullError(self._channel.name, listener_id, member.mailbox_size)
                )
            entry = _Entry(
                self._next_seq(), event, data, data_json, "dispatch",
                reply_to=reply_to, correlation=correlation,
            )
            queue.append(entry)
            if member.can_take():
                self._wake(member)
            return succeed(entry.id)
        # The common case, inlined (the first step of _wake, _pump_own and _mail): nothing
        # waits before it and no drain loop runs, so it is handed over now, with the
        # sender's data (its first delivery); its _Entry is made only if it goes back.
        self._seq += 1
        mail_id = str(self._seq)
        mail = Mail(
            mail_id, member.id, self._channel.name, event, data, data_json,
            reply_to=reply_to, correlation=correlation,
        )
        mail._attachment = attachment
        attachment.own[mail_id] = (mail, None)
        self._draining = True
        try:
            self._hand(attachment, mail)
            if member.queue:
                self._pump_own(member)
            if self._dirty:
                self._drain()
        finally:
            self._draining = False
        return succeed(mail_id)

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
        record = self._groups.get(group)
        if record is None or not record.members:
            return fail(UnknownGroupError(self._channel.name, group))
        if len(record.queue) >= self.group_size:
            return fail(MailboxFullError(self._channel.name, group, self.group_size, group=True))
        entry = _Entry(
            self._next_seq(), event, data, data_json, "group", group=group,
            reply_to=reply_to, correlation=correlation, policy=policy,
        )
        record.queue.append(entry)
        self._wake(record)
        return succeed(entry.id)

    def put_all(self, event: str, data: Any, data_json: str) -> Deferred[Message]:
        # Memory's _publish has fanned out and fired by the time it returns, so the copies
        # follow the publication at once: one order for the carriers and the mailboxes.
        self._publishing += 1
        try:
            published = self._channel._publish(event, data, data_json)
        finally:
            self._publishing -= 1
        return published.addCallback(self._copy_in_order)

    def _copy_in_order(self, message: Message) -> Message:
        """Copy ``message`` now, or, published from inside another broadcast's fan-out,
        when that one is copied: the mailboxes get broadcasts in the order of offsets."""
        self._to_copy.append(message)
        if self._publishing:
            return message
        waiting = sorted(self._to_copy, key=lambda m: m.id)
        self._to_copy.clear()
        for each in waiting:
            self._copy_to_all(each)
        return message

    def _copy_to_all(self, message: Message) -> Message:
        members = list(self._members.values())
        for member in members:
            if not member.is_full():
                member.queue.append(_Entry(
                    self._next_seq(), message.event, message.data, message.data_json,
                    "broadcast", offset=message.id,
                ))
                continue
            # Full: one notice at the tail counts what it missed (the notice itself may
            # pass the bound by one; a dispatch would still be refused).
            tail = member.queue[-1] if member.queue else None
            if tail is not None and tail.source == "missed":
                count = tail.data["count"] + 1
            else:
                count = 1
                tail = _Entry(self._next_seq(), MESSAGE_TYPE_MISSED, None, "", "missed")
                member.queue.append(tail)
            tail.data = {"count": count, "reason": "mailbox full"}
            tail.data_json = json.dumps(tail.data, separators=(",", ":"))
        for member in members:
            self._wake(member)
        return message

    # -- consumers -----------------------------------------------------------------------

    def attach(self, listener_id: str, sink: MailSink, max_in_flight: int) -> Deferred[Attachment]:
        member = self._members.get(listener_id)
        if member is None:
            return fail(UnknownListenerError(self._channel.name, listener_id))
        # The consumer attached before goes first, its mail back in order. The handlers
        # that giving group mail back runs may attach another one, or remove the listener.
        replaced: list[_MemoryAttachment] = []
        while member.attachment is not None:
            replaced.append(member.attachment)
            self._detach(member.attachment, None)
        if self._members.get(listener_id) is not member:
            for old in replaced:
                self._tell(old, "removed")
            return fail(UnknownListenerError(self._channel.name, listener_id))
        attachment = _MemoryAttachment(self, member, sink, max_in_flight)
        member.attachment = attachment
        for old in replaced:
            # Told once this one is in place: a sink that attaches (or removes, stops...)
            # from its detached() acts on the new state, never leaves two attached.
            self._tell(old, "replaced")
        if attachment.active:
            self._wake(member)
            group = self._groups.get(member.group) if member.group is not None else None
            if group is not None:
                self._wake(group)
        return succeed(attachment)

    def _detach(self, attachment: _MemoryAttachment, reason: str | None) -> None:
        """End ``attachment``: its unacknowledged mail goes back; tell the sink (``reason``)."""
        if not attachment.active:
            return
        attachment.active = False
        member = attachment.member
        if member.attachment is attachment:
            member.attachment = None
        for mail, entry in attachment.own.values():
            _insert_in_order(member.queue, entry or _entry_of(mail))
        attachment.own.clear()
        self._give_back_group_mail(attachment)
        if reason is not None:
            self._tell(attachment, reason)
        self._wake(member)

    def _tell(self, attachment: _MemoryAttachment, reason: str) -> None:
        """``sink.detached(reason)``, once its attachment has ended; a failure is logged."""
        try:
            attachment.sink.detached(reason)
        except Exception:
            _log.failure(
                "channel {channel}: the consumer {sink!r} of listener {listener} failed "
                "on detached({reason!r})",
                channel=self._channel.name, sink=attachment.sink,
                listener=attachment.listener_id, reason=reason,
            )

    def _give_back_group_mail(self, attachment: _MemoryAttachment) -> None:
        if not attachment.group:
            return
        group = self._groups[attachment.member.group]  # type: ignore[index]
        for _, entry, timer in attachment.group.values():
            if timer.active():
                timer.cancel()
            _insert_in_order(group.queue, entry)
        attachment.group.clear()
        self._wake(group)

    def _settle(self, attachment: _MemoryAttachment, mail: Mail, release: bool) -> bool:
        """Acknowledge (or give back) ``mail``; False if it is not pending on ``attachment``."""
        member = attachment.member
        if mail.source == "group":
            pending = attachment.group.get(mail.id)
            if pending is None or pending[0] is not mail:
                return False
            del attachment.group[mail.id]
            if pending[2].active():
                pending[2].cancel()
            group = self._groups[member.group]  # type: ignore[index]
            if release:
                _insert_in_order(group.queue, pending[1])
            if group.queue:
                self._wake(group)
        else:
            owned = attachment.own.get(mail.id)
            if owned is None or owned[0] is not mail:
                return False
            del attachment.own[mail.id]
            if release:
                _insert_in_order(member.queue, owned[1] or _entry_of(mail))
            if member.group is not None and self._groups[member.group].queue:
                self._wake(self._groups[member.group])
        if member.queue:  # a free slot: the next mail, if any
            self._wake(member)
        return True

    def _expire(self, attachment: _MemoryAttachment, mail_id: str) -> None:
        """A group mail's ack deadline passed: it goes back to the group."""
        pending = attachment.group.pop(mail_id, None)
        if pending is None:
            return
        mail, entry, _ = pending
        _log.warn(
            "channel {channel}: listener {listener} did not acknowledge {mail!r} within "
            "{timeout:g} s; it goes back to group {group}",
            channel=self._channel.name, listener=attachment.listener_id, mail=mail,
            timeout=attachment.member.ack_timeout, group=entry.group,
        )
        _insert_in_order(self._groups[entry.group].queue, entry)  # type: ignore[index]
        self._wake(self._groups[entry.group])  # type: ignore[index]
        self._wake(attachment.member)

    # -- delivering ----------------------------------------------------------------------

    def _wake(self, target: _Member | _Group) -> None:
        """``target`` may have mail to hand out: do it now, or after the running loop."""
        if self._draining:
            self._dirty[target] = None
            return
        self._draining = True
        try:
            if isinstance(target, _Member):
                self._pump_own(target)
            else:
                self._pump_group(target)
            self._drain()
        finally:
            self._draining = False

    def _drain(self) -> None:
        """Hand out the mail of the members and groups marked while the loop ran."""
        dirty = self._dirty
        while dirty:
            item = next(iter(dirty))
            del dirty[item]
            if isinstance(item, _Member):
                self._pump_own(item)
            else:
                self._pump_group(item)

    def _pump_own(self, member: _Member) -> None:
        queue = member.queue
        while queue and member.running:
            attachment = member.attachment
            if attachment is None or (
                len(attachment.own) + len(attachment.group) >= attachment.max_in_flight
            ):
                return
            entry = queue.popleft()
            mail = self._mail(attachment, entry)
            attachment.own[entry.id] = (mail, entry)
            self._hand(attachment, mail)

    def _pump_group(self, group: _Group) -> None:
        queue = group.queue
        while queue:
            entry = queue[0]
            member = self._choose(group, entry)
            if member is None:
                return
            queue.popleft()
            attachment = member.attachment
            assert attachment is not None
            entry.last_member = member
            mail = self._mail(attachment, entry)
            timer = self._channel.clock.callLater(
                member.ack_timeout, self._expire, attachment, entry.id
            )
            attachment.group[entry.id] = (mail, entry, timer)
            self._hand(attachment, mail)

    def _choose(self, group: _Group, entry: _Entry) -> _Member | None:
        """The member that takes ``entry`` now (None: nobody can)."""
        members = group.members
        count = len(members)
        chosen: _Member | None = None
        chosen_index = 0
        busy = 0
        fallback: tuple[int, _Member] | None = None
        for step in range(count):
            index = (group.turn + step) % count
            member = members[index]
            if not member.can_take():
                continue
            if member is entry.last_member and count > 1:
                if fallback is None:
                    fallback = (index, member)
                continue
            attachment = member.attachment
            assert attachment is not None
            if entry.policy != "least-busy":
                chosen, chosen_index = member, index
                break
            in_flight = len(attachment.own) + len(attachment.group)
            if chosen is None or in_flight < busy:
                chosen, chosen_index, busy = member, index, in_flight
        if chosen is None:
            if fallback is None:
                return None
            chosen_index, chosen = fallback
        group.turn = (chosen_index + 1) % count
        return chosen

    def _mail(self, attachment: _MemoryAttachment, entry: _Entry) -> Mail:
        entry.deliveries += 1
        data = entry.data
        if type(data) not in _IMMUTABLE_JSON and (
            entry.deliveries > 1 or entry.source not in _SENDER_DATA
        ):
            # The first delivery of a dispatched or group mail has one recipient: it gets
            # the sender's own object, as publish gives in-process carriers. Broadcast
            # copies and redeliveries are decoded, as from Redis: the data is what its JSON
            # says (tuples are lists, keys are strings), and a handler that changes it
            # changes neither another listener's copy nor the mail it may get again.
            data = json.loads(entry.data_json)
        mail = Mail(
            entry.id, attachment.listener_id, self._channel.name, entry.event, data,
            entry.data_json, deliveries=entry.deliveries, source=entry.source,
            group=entry.group, reply_to=entry.reply_to, correlation=entry.correlation,
            offset=entry.offset,
        )
        mail._attachment = attachment
        return mail

    def _hand(self, attachment: _MemoryAttachment, mail: Mail) -> None:
        try:
            attachment.sink.mail(mail)
        except Exception:
            # Isolated like a failing carrier: logged once, detached (its mail goes to the
            # next consumer); the other listeners and the sender are not affected.
            _log.failure(
                "channel {channel}: the consumer {sink!r} of listener {listener} raised on "
                "{mail!r}; detaching it",
                channel=self._channel.name, sink=attachment.sink,
                listener=attachment.listener_id, mail=mail,
            )
            self._detach(attachment, "failed")

    # -- replies -------------------------------------------------------------------------

    def reply(self, reply_to: str, correlation: str, ok: bool, value_json: str) -> Deferred[None]:
        if reply_to != self._address or self.on_reply is None:
            _log.debug(
                "channel {channel}: reply for {correlation} to {address} ignored (not ours)",
                channel=self._channel.name, correlation=correlation, address=reply_to,
            )
            return succeed(None)
        try:
            self.on_reply(correlation, ok, value_json)
        except Exception:
            _log.failure(
                "channel {channel}: handling the reply to request {correlation} failed",
                channel=self._channel.name, correlation=correlation,
            )
        return succeed(None)

    def close(self) -> Deferred[None]:
        attachments = [m.attachment for m in self._members.values() if m.attachment]
        for attachment in attachments:  # first: mail given back goes to none of them
            attachment.member.attachment = None
        for attachment in attachments:
            self._detach(attachment, None)
        for attachment in attachments:  # then told: a sink that attaches again gets its
            self._tell(attachment, "closed")  # mail in order, redelivered first
        return succeed(None)
