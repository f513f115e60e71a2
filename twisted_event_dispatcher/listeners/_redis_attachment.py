"""
One consumer attached to a listener of a Redis channel, and its reader.

The reader has a connection of its own, on which it blocks in ``XREADGROUP`` (as the
consumer named after the listener, ``COUNT`` = its free slots) on its control stream and,
running in a group, the group's queue: group mail comes straight from there, first come
first served among the members. Own mail comes through the control stream: a dispatch to
a running consumer with a free slot and nothing older queued reads the mail for it and
adds it there (an ``m`` entry: one round trip from dispatch to consumer); anything else
adds a wake-up (``w``: new mail it must take itself, stopped, started, removed, replaced,
mail given back, own mail released), after which the reader runs the ``TAKE`` script (see
:mod:`._redis_take`), atomically with the checks that it is still the listener's consumer
and running: a stopped or replaced consumer never takes own mail. ``TAKE`` also runs
after a reconnect and at least every ``block`` ms (renewing the lease, looking for group
mail past its ack deadline; a running group member every quarter of its ack timeout, if
sooner, but not more often than every :data:`MIN_INTERVAL` s).

Acknowledgements and give-backs that fail because Redis is away fire False (the mail is
no longer this consumer's: it is delivered again) and are logged once per outage.

Mail read together with a wake-up is not handed over: the state may have changed
(stopped?); ``TAKE`` decides (hands it over, or gives group mail back uncounted). So is
mail read beyond the free slots (``COUNT`` bounds each stream, not the sum).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import RedisError

from ..errors import ChannelUnavailableError
from ._backend import Attachment, MailSink
from ._redis_commands import disconnect
from ._redis_entries import parse_mail
from ._redis_scripts import DETACH
from ._redis_take import TAKE
from .mail import Mail

if TYPE_CHECKING:
    from ._redis_mailboxes import RedisMailboxes

__all__ = ["MIN_INTERVAL", "RedisAttachment"]

#: Shortest interval between two looks for group mail past its ack deadline (seconds).
MIN_INTERVAL = 0.05

_log = Logger(namespace="twisted_event_dispatcher.listeners.redis")


class RedisAttachment(Attachment):
    """A consumer of one listener, in this process; see the module doc."""

    def __init__(
        self,
        boxes: RedisMailboxes,
        listener_id: str,
        sink: MailSink,
        max_in_flight: int,
        token: str,
        connection: Any,
        incarnation: str = "",
    ) -> None:
        self.listener_id = listener_id
        #: The listener's registration number when this consumer attached.
        self.incarnation = incarnation
        self.sink = sink
        self.max_in_flight = max_in_flight
        self.token = token
        self.active = True
        self._boxes = boxes
        self._connection = connection
        self._control = boxes.keys.control(token)
        #: Mail handed to the sink and not settled, by entry id.
        self._own: dict[str, Mail] = {}
        self._group: dict[str, Mail] = {}
        #: Entries read for it but not handed over (a wake-up came with them, or no slot).
        self._unread_own: list[str] = []
        self._unread_group: list[str] = []
        self._running = False
        self._group_name: str | None = None
        self._ack_timeout = 30.0
        #: Slots promised to the read in progress.
        self._reserved = 0
        self._need_take = True
        self._more = False
        self._taken_at = 0.0
        self._late_checked_at = 0.0
        self._wakeup: Deferred[None] | None = None
        self._down = False
        #: Mail not settled since Redis was last reached (one warning per outage).
        self._unsettled = 0
        #: What another program overwrote, as TAKE last reported it (logged when it changes).
        self._broken: list[str] = []

    def __repr__(self) -> str:
        state = "" if self.active else " detached"
        return (
            f"<RedisAttachment {self.listener_id!r} in_flight={self._in_flight()}"
            f"/{self.max_in_flight}{state}>"
        )

    # -- Attachment ----------------------------------------------------------------------

    def _table(self, mail: Mail) -> tuple[str, dict[str, Mail]]:
        return ("g", self._group) if mail.source == "group" else ("o", self._own)

    def ack(self, mail: Mail) -> Deferred[bool]:
        kind, table = self._table(mail)
        if not self.active or table.get(mail.id) is not mail:
            return succeed(False)
        return self._settle("ack", kind, table, mail)

    def release(self, mail: Mail) -> Deferred[bool]:
        kind, table = self._table(mail)
        if not self.active or table.get(mail.id) is not mail:
            return succeed(False)
        if kind == "o":
            # No longer held: the TAKE its wake-up causes hands it out again (so does a
            # TAKE that runs before the script).
            del table[mail.id]
        return self._settle("release", kind, table, mail)

    def _settle(
        self, operation: str, kind: str, table: dict[str, Mail], mail: Mail
    ) -> Deferred[bool]:
        answer = self._boxes.batched(operation, [self.listener_id, self.token, kind, mail.id])

        def settled(result: str) -> bool:
            if table.get(mail.id) is mail:
                del table[mail.id]
            self._unsettled = 0
            self._poke()
            return result == "1"

        def failed(failure: Failure) -> Failure | bool:
            # Not settled for sure: the next TAKE finds it pending and delivers it again.
            if table.get(mail.id) is mail:
                del table[mail.id]
            if not self.active:
                return False  # detached meanwhile (closed): the next consumer gets it
            self._need_take = True
            self._poke()
            if not failure.check(ChannelUnavailableError):
                return failure
            # Redis away or hung: no longer this consumer's mail (it comes again), which
            # is what False says; one warning per outage, not a traceback per mail.
            if not self._unsettled:
                _log.warn(
                    "channel {channel}: listener {listener} could not {operation} mail ({error})"
                    "; unsettled mail is delivered again",
                    channel=self._boxes.channel.name, listener=self.listener_id,
                    operation="acknowledge" if operation == "ack" else "give back",
                    error=failure.getErrorMessage(),
                )
            self._unsettled += 1
            return False

        return answer.addCallbacks(settled, failed)

    def detach(self) -> Deferred[None]:
        return self.end(None)

    def end(self, reason: str | None, script: bool = True) -> Deferred[None]:
        """
        Stop reading; tell the sink ``reason`` (None: it asked). With ``script``, the
        listener's record in Redis is cleared (lease, token) and its group mail given
        back; failing that (Redis away), the lease expires and the group mail's ack
        deadline passes: detaching never fails.
        """
        if not self.active:
            return succeed(None)
        self.active = False
        boxes = self._boxes
        boxes.forget(self)
        connection, self._connection = self._connection, None
        if connection is not None:
            disconnect(connection)
        self._poke()
        if reason is not None:
            try:
                self.sink.detached(reason)
            except Exception:
                _log.failure(
                    "channel {channel}: the consumer {sink!r} of listener {listener} failed "
                    "on detached({reason!r})",
                    channel=boxes.channel.name, sink=self.sink, listener=self.listener_id,
                    reason=reason,
                )
        if not script:
            return succeed(None)
        done = boxes.call(
            DETACH, [boxes.keys.root, self.listener_id, self.token, *self._unread_own],
            f"detaching the consumer of listener {self.listener_id!r}",
        )

        def failed(failure: Failure) -> None:
            if boxes.channel._closed:
                return  # the channel closed after sending it: Redis has it (or the lease)
            _log.warn(
                "channel {channel}: detached the consumer of listener {listener} here, but "
                "could not tell Redis ({error}); its lease expires and its group mail goes "
                "back after its ack deadline",
                channel=boxes.channel.name, listener=self.listener_id,
                error=failure.getErrorMessage(),
            )

        return done.addCallbacks(lambda _: None, failed)

    # -- delivering ----------------------------------------------------------------------

    def _in_flight(self) -> int:
        return len(self._own) + len(self._group)

    def _free(self) -> int:
        return self.max_in_flight - self._in_flight() - self._reserved

    def _poke(self) -> None:
        """A slot freed, or the state changed: wake the reader if it waits for that."""
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.callback(None)

    def _hand(self, entries: list[Any], group: bool) -> None:
        """Hand ``entries`` ({id, deliveries, fields}) to the sink, skipping non-mail."""
        boxes = self._boxes
        table = self._group if group else self._own
        for entry_id, count, fields in entries:
            mail = parse_mail(
                entry_id, fields, int(count), keys=boxes.keys, channel=boxes.channel.name,
                listener=self.listener_id, group=self._group_name if group else None,
            )
            if isinstance(mail, str):
                key = (
                    boxes.keys.group(self._group_name or "") if group
                    else boxes.keys.mailbox(self.listener_id)
                )
                boxes.discard(key, entry_id, mail, self._connection)
                continue
            if not self.active:
                return
            table[mail.id] = mail
            mail._attachment = self
            try:
                self.sink.mail(mail)
            except Exception:
                # Isolated like a failing carrier: logged once, detached (its mail goes to
                # the next consumer, or back to the group).
                _log.failure(
                    "channel {channel}: the consumer {sink!r} of listener {listener} raised "
                    "on {mail!r}; detaching it",
                    channel=boxes.channel.name, sink=self.sink, listener=self.listener_id,
                    mail=mail,
                )
                self.end("failed")

    # -- reading -------------------------------------------------------------------------

    def start(self) -> None:
        reading = Deferred.fromCoroutine(self._read_loop())
        reading.addErrback(self._reader_failed)

    def _reader_failed(self, failure: Failure) -> None:
        _log.failure(
            "channel {channel}: the reader of listener {listener} stopped on a bug",
            failure=failure, channel=self._boxes.channel.name, listener=self.listener_id,
        )
        self.end("failed")

    async def _read_loop(self) -> None:
        channel = self._boxes.channel
        delay = channel.RECONNECT_INITIAL
        while self.active:
            try:
                await self._step()
                delay = channel.RECONNECT_INITIAL
                if self._down:
                    self._down = False
                    _log.info(
                        "channel {channel}: listener {listener} reads from Redis again",
                        channel=channel.name, listener=self.listener_id,
                    )
            except (ConnectionError, RedisError, TimeoutError, CancelledError) as e:
                # Redis away, restarted (NOGROUP: a volatile one lost the streams) or hung:
                # the TAKE after it repairs what it can.
                if self._connection is None:  # detached meanwhile
                    return
                if not self._down:
                    self._down = True
                    _log.warn(
                        "channel {channel}: the reader of listener {listener} lost Redis "
                        "({error}); retrying",
                        channel=channel.name, listener=self.listener_id, error=e,
                    )
                self._need_take = True
                await deferLater(channel.clock, delay * (0.5 + random.random()), lambda: None)
                delay = min(delay * 2, channel.RECONNECT_MAX)

    def _interval(self) -> float:
        """
        Seconds between two ``TAKE`` runs of an idle reader: ``block``; for a running group
        member at most a quarter of its ack timeout (not below :data:`MIN_INTERVAL`), so
        that group mail past its deadline is found within that much.
        """
        every = self._boxes.channel.block / 1000
        if self._running and self._group_name is not None:
            every = min(every, max(self._ack_timeout / 4, MIN_INTERVAL))
        return every

    async def _step(self) -> None:
        channel = self._boxes.channel
        every = self._interval()
        writer = channel._writer
        if writer is None or not writer._factory.size:
            # Acknowledgements go through the channel's connection: while it is down,
            # handing out mail would only have it delivered again and again.
            await deferLater(channel.clock, channel.RECONNECT_INITIAL, lambda: None)
            return
        if (
            self._need_take
            or channel.clock.seconds() - self._taken_at >= every
            or (self._more and self._free() > 0)
        ):
            await self._take()
            if not self.active:
                return
        free = self._free()
        if self._running and free <= 0:
            await self._wait(every)  # until a slot frees (or it is time for a TAKE)
            return
        if self._more:
            return  # take the rest first: it is older than what a read would bring
        streams = [self._control]
        if self._running and self._group_name is not None:
            streams.insert(0, self._boxes.keys.group(self._group_name))
        count = max(free, 1)
        self._reserved = count if self._running else 0
        try:
            reply = await self._connection.execute_command(
                "XREADGROUP", "GROUP", "g", self.listener_id, "COUNT", str(count),
                "BLOCK", str(max(int(every * 1000), 1)), "STREAMS", *streams,
                *(">" for _ in streams),
            )
        finally:
            self._reserved = 0
        if reply is None:
            self._need_take = True  # idle: renew the lease, look for late group mail
        elif self.active:
            self._read(reply)

    def _read(self, reply: Any) -> None:
        group: list[Any] = []
        pushed: list[tuple[Any, Any]] = []  # own mail read for it by the dispatch
        for key, entries in reply:
            if key == self._control:
                for _, fields in entries:
                    if isinstance(fields, list) and len(fields) > 2 and fields[0] == "m":
                        pushed.append((fields[1], fields[2:]))
                    else:
                        self._need_take = True
            elif self._group_name is not None and key == self._boxes.keys.group(self._group_name):
                group += entries
        if self._need_take:
            # The state may have changed (stopped?): TAKE decides what to do with these.
            self._unread_group += [str(entry[0]) for entry in group]
            self._unread_own += [str(entry_id) for entry_id, _ in pushed]
            return
        self._hand([(entry[0], 1, entry[1]) for entry in group], group=True)
        free = max(self._free(), 0)
        if len(pushed) > free:  # read for it while slots were being freed: TAKE hands them
            self._unread_own += [str(entry_id) for entry_id, _ in pushed[free:]]
            self._need_take = True
        self._hand([(entry_id, 1, fields) for entry_id, fields in pushed[:free]], group=False)

    async def _wait(self, seconds: float) -> None:
        waiting: Deferred[None] = Deferred()
        self._wakeup = waiting
        timer: IDelayedCall = self._boxes.channel.clock.callLater(seconds, self._poke)
        try:
            await waiting
        finally:
            if timer.active():
                timer.cancel()

    async def _take(self) -> None:
        boxes = self._boxes
        channel = boxes.channel
        now = channel.clock.seconds()
        late = self._group_name is not None and now - self._late_checked_at >= self._interval()
        lists = (list(self._own), self._unread_own, list(self._group), self._unread_group)
        arguments = [
            boxes.keys.root, self.listener_id, self.token, str(boxes.lease_ms),
            str(max(self.max_in_flight - self._in_flight(), 0)), "1" if late else "0",
            self.incarnation,
            *(str(len(ids)) for ids in lists), *(i for ids in lists for i in ids),
        ]
        # No timeout: on its own connection, a hung Redis only holds up this reader (a
        # TAKE given up on would still run, taking mail for nobody).
        reply = await TAKE.run(self._connection, (), arguments)
        self._unread_group = []
        unread_own, self._unread_own = self._unread_own, []
        if not self.active:
            return
        status = reply[0] if isinstance(reply, list) and reply else None
        if status == "removed":
            _log.info(
                "channel {channel}: listener {listener} was removed (or Redis lost it); "
                "its consumer here ends", channel=channel.name, listener=self.listener_id,
            )
            self.end("removed", script=False)
            return
        if status == "replaced":
            self.end("replaced", script=False)
            return
        _, running, group, ack, more, overdue, own, taken, broken = reply
        if broken != self._broken:
            self._broken = broken
            if broken:
                _log.warn(
                    "channel {channel}: listener {listener} cannot use some of its keys in "
                    "Redis, which another program overwrote: {problems}",
                    channel=channel.name, listener=self.listener_id,
                    problems="; ".join(map(str, broken)),
                )
        handed = {str(entry[0]) for entry in own}
        self._unread_own = [i for i in unread_own if i not in handed]
        self._running = running == 1
        self._group_name = group or None
        self._ack_timeout = _seconds(ack, self._ack_timeout)
        self._more = more == 1
        self._need_take = False
        self._taken_at = now
        if late:
            self._late_checked_at = now
        if overdue:
            _log.warn(
                "channel {channel}: {count} mail(s) of group {group} were not acknowledged "
                "within their ack deadline; they go to another member",
                channel=channel.name, count=overdue, group=group,
            )
        self._hand(taken, group=True)
        self._hand(own, group=False)


def _seconds(text: object, default: float) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return value if value > 0 else default
