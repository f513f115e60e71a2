"""
RedisMailboxes: the listeners of a :class:`~..channels.redis.RedisStreamChannel`, kept in
Redis so that every process of the channel shares them: process A dispatches, a consumer
in process B receives; a request's reply comes back to A.

* Storage (see :mod:`._redis_scripts`): a listener's mailbox is a stream with a consumer
  group; a group's queue is a stream whose consumer group's consumers are its members.
  Every change of state is one Lua script, atomic across processes; the frequent ones
  (dispatch, acknowledge, reply) made in one reactor turn share one call
  (:mod:`._redis_batch`), in the order they were made.
* Delivery: each consumer attached in this process has a reader on a connection of its
  own (:mod:`._redis_attachment`). Group mail goes to the member that reads it first
  (Redis serves blocked readers first come, first served; a member with no free slot does
  not read); ``policy`` is not used.
* Replies: one reply stream per channel object that makes requests
  (:mod:`._redis_replies`).
* Failures: see :mod:`._redis_commands` (``ChannelUnavailableError``, never a hang; a
  call that failed changed nothing).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import ResponseError

from ..channels._redis_connect import open_connection, wait_connected
from ..channels.base import check_event_name
from ..channels.message import Message
from ..errors import (
    ChannelUnavailableError,
    ListenerExistsError,
    MailboxFullError,
    UnknownGroupError,
    UnknownListenerError,
)
from ._backend import Attachment, Mailboxes, MailSink
from ._redis_attachment import RedisAttachment
from ._redis_batch import Batch, RefusedError
from ._redis_commands import DEADLINE, Argument, Commands, disconnect, script_error
from ._redis_entries import Keys
from ._redis_lua import Script
from ._redis_replies import ReplyReader
from ._redis_scripts import ATTACH, BROADCAST, DETACH, INFO, REGISTER, REMOVE, SET_RUNNING
from .mail import ListenerInfo

if TYPE_CHECKING:
    from ..channels.redis import RedisStreamChannel

__all__ = ["RedisMailboxes"]

_log = Logger(namespace="twisted_event_dispatcher.listeners.redis")


class RedisMailboxes(Mailboxes):
    """The listeners of ``channel``, in its Redis; see :mod:`._backend` for the semantics."""

    def __init__(self, channel: RedisStreamChannel) -> None:
        self.channel = channel
        prefix = channel._stream[: len(channel._stream) - len(channel.name)]
        self.keys = Keys(prefix, channel.name)
        self._commands = Commands(channel)
        self._batch = Batch(self)
        self._attachments: dict[str, RedisAttachment] = {}
        #: Attach calls under way: token -> listener id.
        self._attaching: dict[str, str] = {}
        #: The listeners the latest broadcast skipped (their keys are another program's).
        self._skipped_listeners: tuple[Any, ...] = ()
        #: The token of the latest attach call, by listener id (the one Redis keeps).
        self._latest: dict[str, str] = {}
        self._replies = ReplyReader(self)
        #: Entries skipped by this process's readers: not mail (written by another program).
        self.skipped = 0

    def __repr__(self) -> str:
        return f"<RedisMailboxes {self.channel.name!r} attached={len(self._attachments)}>"

    @property
    def lease_ms(self) -> int:
        """How long an attached consumer counts as attached without renewing (ms)."""
        return 3 * self.channel.block + 2000

    @property
    def reply_address(self) -> str:
        if not self.channel._closed:  # (a request on a disconnected channel fails)
            self._replies.start()
        return self._replies.address

    # -- commands ------------------------------------------------------------------------

    def run(
        self, script: Script, args: Sequence[Argument], doing: str, keys: tuple[str, ...] = ()
    ) -> Deferred[Any]:
        """Send ``script`` now (the batch uses this)."""
        return self._commands.run(script, args, doing, keys)

    def call(
        self, script: Script, args: Sequence[Argument], doing: str, keys: tuple[str, ...] = ()
    ) -> Deferred[Any]:
        """Send ``script`` after the operations already made (in call order)."""
        self._batch.flush()
        return self._commands.run(script, args, doing, keys)

    def batched(self, operation: str, arguments: list[str]) -> Deferred[str]:
        """An operation of :mod:`._redis_batch`, sent at the end of this reactor turn."""
        return self._batch.add(operation, arguments)

    def discard(
        self, key: str, entry_id: object, reason: str, connection: Any = None
    ) -> None:
        """
        Skip (log, acknowledge and delete) an entry that is not mail; on ``connection``
        (a reader's: before its next ``TAKE``, which must not find it pending again), or
        the channel's.
        """
        self.skipped += 1
        _log.warn(
            "channel {channel}: skipped entry {id!r} of {key}: not mail ({reason})",
            channel=self.channel.name, id=entry_id, key=key, reason=reason,
        )
        if not isinstance(entry_id, str):
            return
        target = connection if connection is not None else self.channel._writer
        if target is not None and target._factory.size:
            for command in (("XACK", key, "g", entry_id), ("XDEL", key, entry_id)):
                target.execute_command(*command).addErrback(lambda _: None)

    def forget(self, attachment: RedisAttachment) -> None:
        if self._attachments.get(attachment.listener_id) is attachment:
            del self._attachments[attachment.listener_id]
        if self._latest.get(attachment.listener_id) == attachment.token:
            del self._latest[attachment.listener_id]

    def _refused(self, failure: Failure, listener_id: str | None = None) -> Failure:
        """A script's refusal as the contract's exception."""
        if failure.check(RefusedError, ResponseError):
            error = failure.value
            assert error is not None
            words = script_error(error).split()
            word = words[0] if words else ""
            limit = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
            name = self.channel.name
            if word == "UNKNOWNLISTENER" and listener_id is not None:
                return Failure(UnknownListenerError(name, listener_id))
            if word == "LISTENEREXISTS" and listener_id is not None:
                return Failure(ListenerExistsError(name, listener_id))
            if word == "MAILBOXFULL" and listener_id is not None:
                return Failure(MailboxFullError(name, listener_id, limit))
            if word == "EXPIRED":
                return Failure(ChannelUnavailableError(
                    f"an operation on {name!r} reached Redis after its deadline (Redis hung, "
                    "or this process was busy); nothing was changed"
                ))
            if word == "CORRUPT" or failure.check(RefusedError):
                return Failure(
                    ChannelUnavailableError(f"Redis refused an operation on {name!r}: {error}")
                )
        return failure

    # -- registry ------------------------------------------------------------------------

    def register(
        self, listener_id: str | None, group: str | None, mailbox_size: int, ack_timeout: float
    ) -> Deferred[str]:
        new_id = uuid.uuid4().hex if listener_id is None else listener_id
        answer = self.call(
            REGISTER,
            [
                self.keys.root, DEADLINE, new_id, group or "", str(mailbox_size),
                repr(float(ack_timeout)),
            ],
            f"registering listener {new_id!r}",
        )
        return answer.addCallbacks(lambda _: new_id, self._refused, errbackArgs=(new_id,))

    def remove(self, listener_id: str) -> Deferred[None]:
        answer = self.call(
            REMOVE, [self.keys.root, DEADLINE, listener_id],
            f"removing listener {listener_id!r}",
        )

        def removed(_: object) -> None:
            attachment = self._attachments.get(listener_id)
            if attachment is not None:
                attachment.end("removed", script=False)

        return answer.addCallbacks(removed, self._refused, errbackArgs=(listener_id,))

    def listener_ids(self, group: str | None = None) -> Deferred[list[str]]:
        key = self.keys.index if group is None else self.keys.members(group)
        self._batch.flush()
        return Deferred.fromCoroutine(self._ids(key))

    async def _ids(self, key: str) -> list[str]:
        channel, doing = self.channel, "listing the listeners"
        if not channel._ready:
            refused = channel._not_connected(doing)
            if refused is not None:
                refused.raiseException()
            await channel.connect()
        try:
            found = await channel._query(doing, "ZRANGE", key, "0", "-1")
        except ResponseError as e:  # not a sorted set: another program wrote it
            raise ChannelUnavailableError(
                f"Redis at {channel.url} refused {doing} ({key}): {e}"
            ) from None
        ids = []
        for listener_id in found or ():
            try:
                ids.append(check_event_name(listener_id, "listener id"))
            except (TypeError, ValueError) as e:
                _log.warn(
                    "channel {channel}: skipped {id!r} in {key}: {error}",
                    channel=self.channel.name, id=listener_id, key=key, error=e,
                )
        return ids

    def info(self, listener_id: str) -> Deferred[ListenerInfo]:
        answer = self.call(
            INFO, [self.keys.root, listener_id], f"reading the state of listener {listener_id!r}"
        )

        def read(state: Any) -> ListenerInfo:
            if not isinstance(state, list):
                raise UnknownListenerError(self.channel.name, listener_id)
            group, running, size, ack, length, own, taken, attached = state
            return ListenerInfo(
                listener_id, group or None, running == "1", max(int(length) - int(own), 0),
                int(own) + int(taken), _int(size), _float(ack), attached == 1,
            )

        return answer.addCallback(read)

    def set_running(self, listener_id: str, running: bool) -> Deferred[None]:
        verb = "starting" if running else "stopping"
        answer = self.call(
            SET_RUNNING, [self.keys.root, DEADLINE, listener_id, "1" if running else "0"],
            f"{verb} listener {listener_id!r}",
        )
        return answer.addCallbacks(lambda _: None, self._refused, errbackArgs=(listener_id,))

    # -- storing -------------------------------------------------------------------------

    def put(
        self,
        listener_id: str,
        event: str,
        data: Any,
        data_json: str,
        reply_to: str | None = None,
        correlation: str | None = None,
    ) -> Deferred[str]:
        answer = self.batched(
            "put", [listener_id, event, data_json, reply_to or "", correlation or ""]
        )
        return answer.addErrback(self._refused, listener_id)

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
        answer = self.batched(
            "put_group",
            [group, str(self.group_size), event, data_json, reply_to or "", correlation or ""],
        )

        def refused(failure: Failure) -> Failure:
            if failure.check(RefusedError):
                error = failure.value
                assert isinstance(error, RefusedError)
                if error.word == "UNKNOWNGROUP":
                    return Failure(UnknownGroupError(self.channel.name, group))
                if error.word == "MAILBOXFULL":
                    return Failure(
                        MailboxFullError(self.channel.name, group, error.limit, group=True)
                    )
            return self._refused(failure)

        return answer.addErrback(refused)

    def put_all(self, event: str, data: Any, data_json: str) -> Deferred[Message]:
        channel = self.channel
        if channel._ready:
            # Publishes of this reactor turn first, on the same connection: one order.
            channel._send_batch()
        answer = self.call(
            BROADCAST,
            [str(channel.history_size), uuid.uuid4().hex[:16], DEADLINE, event, data_json],
            f"broadcasting {event!r}",
            keys=(*channel._keys, self.keys.index),
        )

        def published(offsets: list[Any]) -> Message:
            skipped = tuple(offsets[2:])
            if skipped != self._skipped_listeners:  # (said when it changes: not a flood)
                self._skipped_listeners = skipped
            else:
                skipped = ()
            if skipped:
                _log.warn(
                    "channel {channel}: broadcast {event!r} skipped listener(s) {ids}: their "
                    "keys in Redis are not what this library wrote (another program's?)",
                    channel=channel.name, event=event, ids=list(skipped),
                )
            return Message(int(offsets[1]), offsets[0], channel.name, event, data, data_json)

        return answer.addCallback(published)

    # -- consumers -----------------------------------------------------------------------

    def attach(self, listener_id: str, sink: MailSink, max_in_flight: int) -> Deferred[Attachment]:
        return Deferred.fromCoroutine(self._attach(listener_id, sink, max_in_flight))

    async def _attach(self, listener_id: str, sink: MailSink, max_in_flight: int) -> Attachment:
        channel = self.channel
        doing = f"attaching a consumer to listener {listener_id!r}"
        token = uuid.uuid4().hex
        old = self._attachments.get(listener_id)
        if old is not None:  # replaced here: its mail goes back (sent before the ATTACH)
            old.end("replaced")
        # Sent now: in order with what the caller does next (a remove right after
        # attaching finds the consumer attached, and ends it).
        attached = self.call(
            ATTACH,
            [
                self.keys.root, DEADLINE, listener_id, token, str(self.lease_ms),
                str(max_in_flight),
            ],
            doing,
        )
        attached.addErrback(self._refused, listener_id)
        self._attaching[token] = listener_id
        self._latest[listener_id] = token
        connection = open_connection(channel.url, channel.RECONNECT_INITIAL, channel.RECONNECT_MAX)
        try:
            incarnation = await attached
            await wait_connected(connection, channel.url, channel.connect_timeout, channel.clock)
            if token not in self._attaching:  # close() came meanwhile (and detached it)
                raise ChannelUnavailableError(
                    f"channel {channel.name!r} was disconnected while {doing}"
                )
        except BaseException:
            # Undo it, if it happened (the answer was lost, or the connection failed): only
            # this token's attachment is undone, never another consumer's.
            if self._attaching.pop(token, None) is not None:
                detached = self.call(DETACH, [self.keys.root, listener_id, token], doing)
                detached.addErrback(lambda _: None)
            disconnect(connection)
            raise
        del self._attaching[token]
        attachment = RedisAttachment(
            self, listener_id, sink, max_in_flight, token, connection, str(incarnation or "")
        )
        if self._latest.get(listener_id) != token:
            # Another attach to this listener was called after this one (and so came
            # after it in Redis): this one is replaced already, whichever got here first.
            attachment.end("replaced", script=False)
            return attachment
        old = self._attachments.get(listener_id)
        if old is not None:  # attached meanwhile by an earlier call: the last call wins
            old.end("replaced", script=False)
        self._attachments[listener_id] = attachment
        attachment.start()
        return attachment

    # -- replies -------------------------------------------------------------------------

    def reply(self, reply_to: str, correlation: str, ok: bool, value_json: str) -> Deferred[None]:
        if not self.keys.is_reply_address(reply_to):
            _log.warn(
                "channel {channel}: reply for {correlation} to {address!r} not sent: not a "
                "reply stream of this channel",
                channel=self.channel.name, correlation=correlation, address=reply_to,
            )
            return succeed(None)
        answer = self.batched(
            "reply",
            [
                reply_to, str(ReplyReader.MAXLEN), str(int(ReplyReader.TTL * 1000)),
                correlation, "1" if ok else "0", value_json,
            ],
        )
        return answer.addCallbacks(lambda _: None, self._refused)

    def close(self) -> Deferred[None]:
        self._batch.flush()
        closing = [attachment.end("closed") for attachment in list(self._attachments.values())]
        # Attachments on their way: undone (after their ATTACH, on the same connection);
        # they fail when they get there.
        attaching, self._attaching = self._attaching, {}
        for token, listener_id in attaching.items():
            detached = self.call(DETACH, [self.keys.root, listener_id, token], "closing")
            closing.append(detached.addErrback(lambda _: None))
        closing.append(self._replies.stop())
        done = DeferredList(closing, consumeErrors=True)
        return done.addBoth(lambda _: None)


def _int(text: object) -> int:
    return int(text) if isinstance(text, str) and text.isdigit() else 0


def _float(text: object) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
