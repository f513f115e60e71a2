"""
RedisStreamChannel: one Redis stream per channel, so that several processes (and machines)
share a channel's events, in one order, with resume after reconnect.

* **Publishing** runs a small Lua script: it takes the next offset from a counter, adds
  the message to the stream as ``<offset>-0`` (so the stream id *is* the offset) with
  ``XADD ... MAXLEN ~ history_size``, and returns the offset and the epoch. Offsets are
  1, 2, 3, ... like a MemoryChannel's, and safe as JavaScript numbers. Publishes made
  in the same reactor turn share one script call (one round trip).
* **Epoch**: kept in Redis next to the stream. If Redis loses the stream (restarted
  without persistence, flushed), the script starts a new epoch and offsets start over.
* **Reading**: one blocking ``XREAD`` per channel per process, on its own connection,
  fans out to this process's carriers; every process sees the same order. After a lost
  connection it reads on from the last entry it read, so nothing in the stream is lost
  or delivered twice. It checks the epoch after every reconnect and whenever a read
  times out idle. On a new epoch it tells its carriers (a ``gap``: the messages of the
  old epoch it had not read yet may be lost) and reads the new epoch from its first
  entry; when it finds that the stream was trimmed past what it had read (it fell
  further behind than ``MAXLEN``), it tells them too (an ``expired`` gap). An entry that
  is not a well-formed message (written by another program) is skipped and logged.
* **Failures**: ``publish`` while Redis is unreachable fails its Deferred with
  :class:`~twisted_event_dispatcher.errors.ChannelUnavailableError`; nothing is dropped
  silently. So does a resume (``subscribe`` with ``since``), whose history reads never
  wait for Redis to come back: at once while Redis is known to be down, else after
  ``reply_timeout``. txredisapi reconnects with exponential backoff and jitter. A
  channel that was never connected connects on first use.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    fail,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import ChannelUnavailableError, MissingExtraError
from ..interfaces import ICarrier

try:
    import txredisapi
except ModuleNotFoundError as e:  # the 'redis' extra is not installed: say so in one line
    if e.name != "txredisapi":
        raise
    raise MissingExtraError("txredisapi", "redis", "the Redis channel") from None

from ._redis_connect import (
    RedisURL,
    close_quietly,
    open_connection,
    parse_redis_url,
    wait_connected,
)
from ._redis_stream import PUBLISH_SCRIPT, entry_offset, parse_entry
from .base import WILDCARD, Channel, Gap, Subscription
from .message import Message

if TYPE_CHECKING:
    from ..listeners._backend import Mailboxes

__all__ = ["RedisStreamChannel", "RedisURL", "parse_redis_url"]

_log = Logger(namespace="twisted_event_dispatcher.redis")


class _Pending:
    """A subscription whose replay is being read: live messages wait here meanwhile."""

    __slots__ = ("event", "buffer", "lost", "oldest")

    def __init__(self, event: str) -> None:
        self.event = event
        self.buffer: list[Message] = []
        #: Set when the reader lost messages meanwhile (a new epoch, a trimmed stream):
        #: the gap's reason and oldest offset; ``buffer`` then holds what came after.
        self.lost: str | None = None
        self.oldest: int | None = None

    def lose(self, reason: str, oldest: int | None) -> None:
        self.buffer.clear()
        self.lost = reason
        self.oldest = oldest


class RedisStreamChannel(Channel):
    """
    A channel whose messages live in a Redis stream. Call :meth:`connect` (and wait for
    it) to learn at once whether Redis is reachable; a channel that was not connected
    connects when it is first used. Call :meth:`disconnect` when done.

    :param url: ``redis://[user:password@]host[:port][/db]``.
    :param history_size: the stream's approximate maximum length (``MAXLEN ~``).
    :param prefix: prepended to the Redis keys (``<prefix><name>`` is the stream).
    :param reply_timeout: seconds a command may take before a publish or a resume fails.
    :param connect_timeout: seconds :meth:`connect` waits for Redis.
    :param block: milliseconds one ``XREAD`` blocks before it checks the epoch.
    """

    #: Most publishes sent to Redis in one script call.
    MAX_BATCH = 500
    #: Most stream entries one ``XREAD`` returns.
    READ_COUNT = 1000
    #: First and longest delay between reconnection attempts, in seconds.
    RECONNECT_INITIAL = 0.2
    RECONNECT_MAX = 3.0

    def __init__(
        self,
        name: str,
        history_size: int = 1000,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "ted:",
        reply_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        block: int = 1000,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(name, history_size)
        if history_size < 1:
            raise ValueError("a Redis stream channel needs history_size >= 1")
        self.url = parse_redis_url(url)
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.block = block
        self._clock = clock
        self._stream = f"{prefix}{name}"
        self._keys = (self._stream, f"{self._stream}:epoch", f"{self._stream}:offset")
        self._writer: Any = None
        self._reader: Any = None
        self._script_sha: str | None = None
        #: The latest offset delivered in this epoch (0: none yet).
        self._last_id = 0
        #: The id of the latest stream entry read (a message or not), and its offset.
        self._cursor = "0-0"
        self._read_offset = 0
        self._synced = False  # the epoch and the stream's end were learnt once
        self._ready = False  # connected (and not disconnected since)
        self._closed = False  # disconnect() was called
        self._connecting: list[Deferred[None]] | None = None
        self._reader_up = False
        # When the reader last heard from Redis: a blocking read answers within
        # ``block`` ms even when idle, so silence beyond that means Redis hangs.
        self._heard_at = 0.0
        #: Redis' clock minus ours, in seconds (see _measure_clock).
        self._clock_offset = 0.0
        self._pending: list[_Pending] = []
        self._batch: list[tuple[str, Any, str, Deferred[Message]]] = []
        self.reconnects = 0
        #: Messages trimmed from the stream before this process read them.
        self.missed = 0
        #: Stream entries skipped: not messages (another program's), or of an old epoch.
        self.skipped = 0
        #: Times Redis lost the stream and a new epoch began.
        self.epoch_changes = 0
        #: Gap notices sent to this process's carriers (each one to all of them).
        self.gaps = 0
        self.last_error: str | None = None

    # -- connection ----------------------------------------------------------------------

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            return reactor
        return self._clock

    @property
    def connected(self) -> bool:
        """True while both connections (publishing and reading) are up."""
        return self._ready and self._reader_up and self._writer_up()

    def _writer_up(self) -> bool:
        writer = self._writer
        return writer is not None and bool(writer._factory.size)

    def _connection(self) -> Any:
        return open_connection(self.url, self.RECONNECT_INITIAL, self.RECONNECT_MAX)

    def connect(self) -> Deferred[None]:
        """
        Connect both connections, learn the epoch and last offset, start reading. Fails
        with :class:`~twisted_event_dispatcher.errors.ChannelUnavailableError` saying
        what went wrong (Redis unreachable, credentials refused) within
        ``connect_timeout`` seconds. Calling it again while connecting waits for the
        same attempt; once connected it does nothing.
        """
        self._closed = False
        if self._ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        if self._connecting is None:
            self._connecting = [d]
            Deferred.fromCoroutine(self._connect()).addBoth(self._connect_done)
        else:
            self._connecting.append(d)
        return d

    def _connect_done(self, result: object) -> None:
        waiting, self._connecting = self._connecting or [], None
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    async def _connect(self) -> None:
        writer, reader = self._connection(), self._connection()
        try:
            await wait_connected(writer, self.url, self.connect_timeout, self.clock)
            await wait_connected(reader, self.url, self.connect_timeout, self.clock)
            sha = await self._answer(
                writer.execute_command("SCRIPT", "LOAD", PUBLISH_SCRIPT), "SCRIPT LOAD"
            )
            await self._answer(Deferred.fromCoroutine(self._measure_clock(writer)), "TIME")
            await self._answer(
                Deferred.fromCoroutine(self._sync(reader, reconnected=True)), "the epoch check"
            )
            if self._closed:
                raise ChannelUnavailableError(
                    f"channel {self.name!r} was disconnected while it connected to Redis"
                )
        except BaseException:
            for connection in (writer, reader):
                close_quietly(connection)
            raise
        self._writer, self._reader, self._script_sha = writer, reader, sha
        self._ready = self._reader_up = True
        reading = Deferred.fromCoroutine(self._read_loop(reader))
        # The loop survives Redis' failures; anything else is a bug of ours: say so once,
        # and health shows the reader down (never an "Unhandled error in Deferred").
        reading.addErrback(self._reader_failed)

    async def _measure_clock(self, connection: Any) -> None:
        """How far Redis' clock is ahead of ours (for publish deadlines), to a round trip."""
        # Against the monotonic clock: a step of this machine's wall clock (NTP, a resumed
        # VM) must not make every publish late, or none. Redis' clock may step too: this is
        # measured again whenever the reader is idle, and after a publish came too late.
        before = time.monotonic()
        seconds, micros = await connection.execute_command("TIME")
        self._clock_offset = int(seconds) + int(micros) / 1e6 - (before + time.monotonic()) / 2

    def _reader_failed(self, failure: Failure) -> None:
        self._reader_up = False
        self.last_error = failure.getErrorMessage() or failure.type.__name__  # type: ignore[union-attr]
        _log.failure("channel {name}: the reader stopped", failure=failure, name=self.name)

    async def _answer(self, reply: Deferred[Any], doing: str) -> Any:
        """``reply``'s result, or a clear error after ``reply_timeout`` seconds."""
        reply.addTimeout(self.reply_timeout, self.clock)
        try:
            return await reply
        except (TimeoutError, CancelledError):
            raise ChannelUnavailableError(
                f"Redis at {self.url} did not answer {doing} within {self.reply_timeout:g} s"
            ) from None
        except (ConnectionError, txredisapi.ConnectionError) as e:  # lost while waiting
            raise ChannelUnavailableError(
                f"Redis at {self.url} went away during {doing}: {e}"
            ) from None

    def disconnect(self, timeout: float = 2.0) -> Deferred[Any]:
        """
        Stop reading and close both connections (giving up after ``timeout``). The
        consumers of its listeners in this process end first (``"closed"``; their
        unacknowledged mail is redelivered).
        """
        # Sent before the publishing connection closes (which flushes what was sent).
        mailboxes = [self._mailboxes.close()] if self._mailboxes is not None else []
        self._closed = True
        self._ready = self._reader_up = False
        closing = [c.disconnect() for c in (self._reader, self._writer) if c is not None]
        closing += mailboxes
        self._reader = self._writer = None
        done = DeferredList(closing, consumeErrors=True)
        done.addTimeout(timeout, self.clock)
        return done.addErrback(lambda _: None)

    def _not_connected(self, doing: str) -> Failure | None:
        """Why ``doing`` cannot start now: only after :meth:`disconnect` (else: connect)."""
        if not self._closed:
            return None
        return Failure(
            ChannelUnavailableError(
                f"channel {self.name!r} was disconnected from Redis; call connect() before "
                f"{doing}"
            )
        )

    @property
    def last_id(self) -> int | None:
        """The latest offset this process has delivered (None before any)."""
        return self._last_id or None

    def health(self) -> dict[str, Any]:
        """Connection state, and what was lost or skipped, for the hub's ``/health``."""
        reader = self._ready and self._reader_up and not self._silent()
        writer = self._ready and self._writer_up()
        return {
            "url": str(self.url),
            "connected": reader and writer,
            "reader": reader,
            "writer": writer,
            "problem": self._problem(reader, writer),
            "reconnects": self.reconnects,
            "missed": self.missed,
            "skipped": self.skipped,
            "epoch_changes": self.epoch_changes,
            "gaps": self.gaps,
            "last_error": self.last_error,
        }

    def _problem(self, reader: bool, writer: bool) -> str | None:
        """What is wrong with the connection, in a sentence (None: nothing)."""
        if not self._ready:
            return f"not connected to Redis at {self.url}"
        if reader and writer:
            return None
        down = (
            "the reading and the publishing connections are"
            if not (reader or writer)
            else "the reading connection is" if not reader else "the publishing connection is"
        )
        if self._reader_up and self._silent():
            return (
                f"Redis at {self.url} has not answered the reading connection for "
                f"{self.clock.seconds() - self._heard_at:.0f} s (hung or overloaded?)"
            )
        error = f" (last error: {self.last_error})" if self.last_error else ""
        return f"Redis at {self.url}: {down} down, reconnecting{error}"

    def _silent(self) -> bool:
        """The reader's connection is up but Redis has not answered it for too long."""
        return self.clock.seconds() - self._heard_at > self.block / 1000 + self.reply_timeout

    # -- following the stream ------------------------------------------------------------

    async def _sync(self, connection: Any, reconnected: bool = False) -> bool:
        """
        Learn the epoch (starting one if Redis has none); True if it changed: the reader
        then reads the new epoch from its start. The first time, also learn where the
        stream ends (reading starts there). After a reconnect in the same epoch, check
        that Redis kept every message this process has read.
        """
        epoch_key = self._keys[1]
        await connection.execute_command("SET", epoch_key, uuid.uuid4().hex[:16], "NX")
        epoch = await connection.execute_command("GET", epoch_key)
        if not isinstance(epoch, str) or not epoch:
            return False  # deleted in between: the next check sees the new one
        if not self._synced:
            last = await connection.execute_command(
                "XREVRANGE", self._stream, "+", "-", "COUNT", "1"
            )
            self.epoch = epoch
            self._cursor = last[0][0] if last else "0-0"
            self._read_offset = self._last_id = entry_offset(self._cursor) or 0
            self._synced = True
            return False
        if epoch != self.epoch:
            await self._new_epoch(connection, epoch)
            return True
        if reconnected:
            await self._check_rewind(connection)
        return False

    async def _new_epoch(self, connection: Any, epoch: str) -> None:
        """Redis lost the stream: tell the carriers, then read the new epoch from offset 1."""
        first = await connection.execute_command("XRANGE", self._stream, "-", "+", "COUNT", "1")
        message = parse_entry(first[0][0], first[0][1], self.name) if first else None
        oldest = message.id if isinstance(message, Message) and message.epoch == epoch else None
        since, old = self._last_id, self.epoch
        self.epoch = epoch
        self._cursor, self._read_offset, self._last_id = "0-0", 0, 0
        self.epoch_changes += 1
        _log.warn(
            "channel {name}: Redis lost the stream (epoch {old} is now {epoch}); messages "
            "of epoch {old} after offset {since} that this process had not read are lost. "
            "Its clients are told (gap); reading the new epoch from its start",
            name=self.name, old=old, epoch=epoch, since=since,
        )
        self._gap("epoch", since, oldest)

    async def _check_rewind(self, connection: Any) -> None:
        """
        Redis came back with the same epoch: did it keep every message it acknowledged?
        (With ``appendfsync everysec`` a crash loses up to a second of writes, and their
        offsets are given out again.) If not, read on from where Redis is now.
        """
        counter = await connection.execute_command("GET", self._keys[2])
        top = int(counter) if isinstance(counter, str) and counter.isdigit() else 0
        if top >= self._last_id:
            return
        since = top
        _log.warn(
            "channel {name}: Redis came back without offsets {first}..{last}, which it had "
            "acknowledged (persistence without appendfsync always?); they will be given "
            "to new messages. Its clients are told (gap)",
            name=self.name, first=top + 1, last=self._last_id,
        )
        self._cursor, self._read_offset, self._last_id = f"{top}-0", top, top
        self._gap("unknown", since, None)

    def _gap(self, reason: str, since: int, oldest: int | None) -> None:
        """Tell every carrier (and every resume in progress) about lost messages."""
        self.gaps += 1
        for pending in self._pending:
            pending.lose(reason, oldest)
        self._notify_gap(reason, since, oldest)

    async def _read_loop(self, reader: Any) -> None:
        """Read the stream until :meth:`disconnect`; survive lost connections."""
        delay = self.RECONNECT_INITIAL
        resync = False
        self._heard_at = self.clock.seconds()
        while self._reader is reader:
            try:
                if resync:
                    # After a reconnect: the stream may be another one now.
                    await self._sync(reader, reconnected=True)
                    await self._measure_clock(reader)  # maybe another server now
                    resync = False
                    self._reader_up = True
                    _log.info("channel {name}: Redis is back", name=self.name)
                reply = await reader.execute_command(
                    "XREAD", "COUNT", str(self.READ_COUNT), "BLOCK", str(self.block),
                    "STREAMS", self._stream, self._cursor,
                )
                self._heard_at = self.clock.seconds()
                delay = self.RECONNECT_INITIAL
                if reply is None:
                    await self._sync(reader)  # idle: was the stream lost meanwhile?
                    await self._measure_clock(reader)
                else:
                    for _, entries in reply:
                        await self._read(reader, entries)
            except Exception as e:
                self._heard_at = self.clock.seconds()
                if self._reader is not reader:
                    return
                if self._reader_up:
                    self._reader_up = False
                    self.reconnects += 1
                    _log.warn(
                        "channel {name}: Redis unreachable ({error}); retrying",
                        name=self.name, error=e,
                    )
                self.last_error = str(e) or type(e).__name__
                resync = True
                # Exponential backoff with jitter; txredisapi reconnects underneath.
                await deferLater(self.clock, delay * (0.5 + random.random()), lambda: None)
                delay = min(delay * 2, self.RECONNECT_MAX)

    async def _read(self, connection: Any, entries: list[Any]) -> None:
        """Deliver the messages among ``entries``, in order; skip (and log) the rest."""
        checked = False
        old = 0
        for entry_id, fields in entries:
            message = parse_entry(entry_id, fields, self.name)
            if isinstance(message, str):
                self.skipped += 1
                _log.warn(
                    "channel {name}: skipped stream entry {id!r}: not a message ({reason})",
                    name=self.name, id=entry_id, reason=message,
                )
            elif message.epoch != self.epoch:
                # Another epoch's entry: Redis lost the stream and this reader reads the
                # new one from its old position, or a leftover of an older epoch.
                if not checked:
                    checked = True
                    if await self._sync(connection):
                        return  # a new epoch: read again, from its start
                old += 1
            else:
                if message.id > self._read_offset + 1:
                    self._trimmed(message.id)
                self._deliver(message)
            self._cursor = str(entry_id)
            self._read_offset = entry_offset(entry_id) or self._read_offset
        if old:
            self.skipped += old
            _log.warn(
                "channel {name}: skipped {count} stream entries of another epoch than {epoch}",
                name=self.name, count=old, epoch=self.epoch,
            )

    def _trimmed(self, offset: int) -> None:
        """The stream was trimmed past what this reader had read (it fell behind MAXLEN)."""
        count = offset - self._read_offset - 1
        self.missed += count
        _log.warn(
            "channel {name}: the reader fell further behind than the history bound; "
            "{count} message(s) were trimmed before it read them. Its clients are told (gap)",
            name=self.name, count=count,
        )
        self._gap("expired", self._last_id, offset)

    def _deliver(self, message: Message) -> None:
        self._last_id = message.id
        for pending in self._pending:
            if pending.event == WILDCARD or pending.event == message.event:
                pending.buffer.append(message)
        self._fan_out(message)

    # -- Channel -------------------------------------------------------------------------

    def _make_mailboxes(self) -> Mailboxes:
        """Listeners kept in this channel's Redis, shared by every process of the channel."""
        from ..listeners._redis_mailboxes import RedisMailboxes

        return RedisMailboxes(self)

    def _publish(self, key: str, data: Any, data_json: str) -> Deferred[Message]:
        if not self._ready:
            refused = self._not_connected(f"publishing {key!r}")
            if refused is not None:
                return fail(refused)
            return Deferred.fromCoroutine(self._publish_connecting(key, data, data_json))
        writer = self._writer
        if not writer._factory.size or self._script_sha is None:
            return fail(
                ChannelUnavailableError(
                    f"Redis at {self.url} is unreachable; {key!r} was not published"
                )
            )
        # Publishes made in the same reactor turn go to Redis as one script call: one
        # round trip and one reply for the batch, each message still its own offset.
        d: Deferred[Message] = Deferred()
        if not self._batch:
            self.clock.callLater(0, self._send_batch)
        self._batch.append((key, data, data_json, d))
        if len(self._batch) >= self.MAX_BATCH:
            self._send_batch()
        return d

    async def _publish_connecting(self, key: str, data: Any, data_json: str) -> Message:
        await self.connect()
        return await self._publish(key, data, data_json)

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        writer = self._writer
        # Redis stores nothing that arrives after half the reply timeout (by its clock):
        # what this process answers as failed after the whole timeout is never stored.
        deadline = (time.monotonic() + self._clock_offset + self.reply_timeout / 2) * 1000
        arguments: list[str] = [
            "3", *self._keys, str(self.history_size), uuid.uuid4().hex[:16], str(int(deadline))
        ]
        for key, _, data_json, _ in batch:
            arguments += [key, data_json]
        if writer is None:
            reply: Deferred[Any] = fail(ConnectionError("disconnected"))
        else:
            reply = writer.execute_command("EVALSHA", self._script_sha, *arguments)

            def unknown_script(failure: Any) -> Any:
                # A restarted Redis forgot the script: EVAL sends (and caches) it again.
                if "NOSCRIPT" in failure.getErrorMessage():
                    return writer.execute_command("EVAL", PUBLISH_SCRIPT, *arguments)
                return failure

            reply.addErrback(unknown_script)
            reply.addTimeout(self.reply_timeout, self.clock)

        def published(offsets: list[Any]) -> None:
            epoch = offsets[0]
            for (key, data, data_json, d), offset in zip(batch, offsets[1:]):
                d.callback(Message(int(offset), epoch, self.name, key, data, data_json))

        def failed(failure: Any) -> None:
            if failure.check(TimeoutError, CancelledError):
                reason = f"no answer within {self.reply_timeout:g} s"
            else:
                reason = failure.getErrorMessage() or failure.type.__name__
                if "EXPIRED" in reason and writer is not None:
                    # Late by Redis' clock: Redis hung, or a clock stepped. Measure again.
                    remeasure = Deferred.fromCoroutine(self._measure_clock(writer))
                    remeasure.addErrback(lambda _: None)
            for key, _, _, d in batch:
                d.errback(
                    ChannelUnavailableError(
                        f"publishing {key!r} to Redis at {self.url} failed: {reason}"
                    )
                )

        reply.addCallbacks(published, failed)

    def _subscribe(
        self, event: str, carrier: ICarrier, since: int | None, epoch: str | None
    ) -> Deferred[Subscription]:
        if not self._ready:
            refused = self._not_connected(f"subscribing to {event!r}")
            if refused is not None:
                return fail(refused)
            return Deferred.fromCoroutine(self._subscribe_connecting(event, carrier, since, epoch))
        if since is None:
            self._add(event, carrier)
            return succeed(Subscription(self.name, event, self.epoch, self.last_id, (), None))
        return Deferred.fromCoroutine(self._resume(event, carrier, since, epoch))

    async def _subscribe_connecting(
        self, event: str, carrier: ICarrier, since: int | None, epoch: str | None
    ) -> Subscription:
        await self.connect()
        return await self._subscribe(event, carrier, since, epoch)

    async def _resume(
        self, event: str, carrier: ICarrier, since: int, epoch: str | None
    ) -> Subscription:
        """
        Read the history after ``since`` while buffering what arrives live meanwhile, then
        subscribe: the carrier gets the history, then the buffered messages, then live
        ones — none twice, none lost. If the reader lost messages meanwhile (a new epoch,
        a trimmed stream), the carrier gets a gap instead, then what was read after it.
        """
        upto, current = self._last_id, self.epoch
        doing = f"resuming {event!r} of channel {self.name!r} after offset {since}"
        pending = _Pending(event)
        self._pending.append(pending)
        try:
            gap = None
            history: list[Message] = []
            if epoch is not None and epoch != current:
                gap = Gap(since, "epoch", current, await self._oldest(doing))
            elif since > upto:
                gap = Gap(since, "unknown", current, await self._oldest(doing))
            elif since < upto:
                history, complete = await self._history(event, since, upto, current, doing)
                if not complete:
                    gap = Gap(since, "expired", current, await self._oldest(doing))
        finally:
            self._pending.remove(pending)
        if pending.lost is not None:
            gap = Gap(since, pending.lost, self.epoch, pending.oldest)
            replay = pending.buffer
        else:
            replay = history + [m for m in pending.buffer if m.id > upto]
        self._add(event, carrier)
        return Subscription(self.name, event, self.epoch, self.last_id, tuple(replay), gap)

    async def _history(
        self, event: str, since: int, upto: int, epoch: str, doing: str
    ) -> tuple[list[Message], bool]:
        """
        The messages for ``event`` after ``since`` up to ``upto`` of ``epoch``, and whether
        the stream still holds all of them (not trimmed, not lost with the epoch).
        """
        entries = await self._query(
            doing, "XRANGE", self._stream, f"{since + 1}-0", f"{upto}-0"
        )
        if not entries or (entry_offset(entries[0][0]) or 0) > since + 1:
            return [], False  # trimmed
        messages = []
        complete = False
        for entry_id, fields in entries:
            message = parse_entry(entry_id, fields, self.name)
            if isinstance(message, str):  # not a message (the reader logged it)
                complete = complete or entry_id == f"{upto}-0"
                continue
            if message.epoch != epoch:  # a leftover of another epoch
                continue
            if event == WILDCARD or message.event == event:
                messages.append(message)
            complete = complete or message.id == upto
        # Without ``upto`` of this epoch, the stream is another one now (Redis lost it
        # since): the reader will notice and tell every carrier.
        return (messages, True) if complete else ([], False)

    async def _oldest(self, doing: str) -> int | None:
        first = await self._query(doing, "XRANGE", self._stream, "-", "+", "COUNT", "1")
        return entry_offset(first[0][0]) if first else None

    async def _query(self, doing: str, *command: str) -> Any:
        """
        A command on the publishing connection (reads for resuming clients), for
        ``doing``. Fails with ChannelUnavailableError at once while Redis is known to be
        down (txredisapi would hold the command until Redis is back), else when Redis
        does not answer within ``reply_timeout``: a resume never waits on an outage.
        """
        writer = self._writer
        if writer is None:
            raise ChannelUnavailableError(f"channel {self.name!r} was disconnected from Redis")
        if not writer._factory.size:
            raise ChannelUnavailableError(
                f"Redis at {self.url} is unreachable (reconnecting); cannot finish {doing}"
            )
        if self._reader_up and self._silent():
            raise ChannelUnavailableError(
                f"Redis at {self.url} has not answered for "
                f"{self.clock.seconds() - self._heard_at:.0f} s (hung or overloaded?); "
                f"cannot finish {doing}"
            )
        return await self._answer(writer.execute_command(*command), f"{command[0]} ({doing})")
