"""
The reply stream of one :class:`~._redis_mailboxes.RedisMailboxes` (a channel object in
this process): where the replies to its requests arrive, from any process.

Its key, ``<root>:r:<32 hex digits>``, is the ``reply_address`` requests carry. Repliers
add to it (``XADD ... MAXLEN ~``) and renew its expiry, so a stream whose requester died
disappears by itself; one blocking ``XREAD`` loop, on a connection of its own, started on
first use, reads it and renews its expiry while it lives. It survives lost connections
(reading on from the last entry read); an entry that is not a reply is skipped and logged.
"""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import RedisError

from ..channels._redis_connect import open_connection
from ._redis_entries import parse_reply

if TYPE_CHECKING:
    from ._redis_mailboxes import RedisMailboxes

__all__ = ["ReplyReader"]

_log = Logger(namespace="twisted_event_dispatcher.listeners.redis")


class ReplyReader:
    """Reads this process's reply stream and hands each reply to ``boxes.on_reply``."""

    #: Seconds a reply stream outlives its last reply, or its reader's last renewal.
    TTL = 600.0
    #: Approximate bound on a reply stream's length (replies not read yet).
    MAXLEN = 10_000

    def __init__(self, boxes: RedisMailboxes) -> None:
        self._boxes = boxes
        self.address = f"{boxes.keys.reply_prefix}{uuid.uuid4().hex}"
        self._connection: Any = None
        self._last = "0-0"
        #: Entries skipped: not replies.
        self.skipped = 0

    @property
    def reading(self) -> bool:
        return self._connection is not None

    def start(self) -> None:
        """Start reading (once; again after :meth:`stop`)."""
        if self._connection is not None:
            return
        channel = self._boxes.channel
        connection = open_connection(channel.url, channel.RECONNECT_INITIAL, channel.RECONNECT_MAX)
        self._connection = connection
        reading = Deferred.fromCoroutine(self._read_loop(connection))
        reading.addErrback(self._failed, connection)

    def stop(self) -> Deferred[None]:
        connection, self._connection = self._connection, None
        if connection is None:
            return succeed(None)
        # (closed before it was ready, its first Deferred fails: not an unhandled error)
        connection._connected.addErrback(lambda _: None)
        closed: Deferred[Any] = connection.disconnect()
        return closed.addBoth(lambda _: None)

    def _failed(self, failure: Failure, connection: Any) -> None:
        _log.failure(
            "channel {channel}: the reply reader stopped on a bug; requests time out",
            failure=failure, channel=self._boxes.channel.name,
        )
        if self._connection is connection:
            self.stop()

    async def _read_loop(self, connection: Any) -> None:
        channel = self._boxes.channel
        clock = channel.clock
        delay = channel.RECONNECT_INITIAL
        renewed = -self.TTL
        down = False
        while self._connection is connection:
            try:
                if clock.seconds() - renewed >= self.TTL / 4:
                    await connection.execute_command(
                        "PEXPIRE", self.address, str(int(self.TTL * 1000))
                    )
                    renewed = clock.seconds()
                reply = await connection.execute_command(
                    "XREAD", "COUNT", "1000", "BLOCK", str(channel.block),
                    "STREAMS", self.address, self._last,
                )
                delay = channel.RECONNECT_INITIAL
                down = False
            except (ConnectionError, RedisError, TimeoutError, CancelledError) as e:
                if self._connection is not connection:
                    return
                if not down:
                    down = True
                    _log.warn(
                        "channel {channel}: the reply reader lost Redis ({error}); retrying",
                        channel=channel.name, error=e,
                    )
                renewed = -self.TTL  # maybe another (restarted) Redis: renew at once
                await deferLater(clock, delay * (0.5 + random.random()), lambda: None)
                delay = min(delay * 2, channel.RECONNECT_MAX)
                continue
            if reply is None or self._connection is not connection:
                continue
            for _, entries in reply:
                for entry_id, fields in entries:
                    self._last = str(entry_id)
                    self._deliver(entry_id, fields)

    def _deliver(self, entry_id: object, fields: object) -> None:
        boxes = self._boxes
        reply = parse_reply(fields)
        if isinstance(reply, str):
            self.skipped += 1
            _log.warn(
                "channel {channel}: skipped entry {id!r} of the reply stream: not a reply "
                "({reason})", channel=boxes.channel.name, id=entry_id, reason=reply,
            )
            return
        if boxes.on_reply is None:
            return
        try:
            boxes.on_reply(*reply)
        except Exception:
            _log.failure(
                "channel {channel}: handling the reply to request {correlation} failed",
                channel=boxes.channel.name, correlation=reply[0],
            )
