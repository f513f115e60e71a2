"""
RedisStreamChannel: one Redis stream per channel, so that several processes (and machines)
share a channel's events, in one order, with resume after reconnect.

* **Publishing** runs a small Lua script: it takes the next offset from a counter, adds
  the message to the stream as ``<offset>-0`` (so the stream id *is* the offset) with
  ``XADD ... MAXLEN ~ history_size``, and returns the offset and the epoch. Offsets are
  1, 2, 3, ... like a MemoryChannel's, and safe as JavaScript numbers. Publishes made
  in the same reactor turn share one script call (one round trip).
* **Epoch**: kept in Redis next to the stream. If Redis loses the stream (restarted
  without persistence, flushed), the script starts a new epoch, offsets start over, and
  clients resuming with the old epoch are told that their gap cannot be filled.
* **Reading**: one blocking ``XREAD`` per channel per process, on its own connection,
  fans out to this process's carriers; every process sees the same order. After a lost
  connection it reads on from the last offset it delivered, so nothing in the stream is
  lost or delivered twice; it also checks the epoch whenever a read times out idle.
* **Failures**: ``publish`` while Redis is unreachable fails its Deferred with
  :class:`~twisted_event_dispatcher.errors.ChannelUnavailableError`; nothing is dropped
  silently. txredisapi reconnects with exponential backoff and jitter.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ..errors import ChannelUnavailableError
from ..interfaces import ICarrier
from .base import WILDCARD, Channel, Gap, Subscription
from .message import Message

__all__ = ["RedisStreamChannel", "RedisURL", "parse_redis_url"]

_log = Logger(namespace="twisted_event_dispatcher.redis")

_PUBLISH = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[3])
end
local offsets = {epoch}
for i = 3, #ARGV, 2 do
  local offset = redis.call('INCR', KEYS[3])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], offset .. '-0',
             'e', ARGV[i], 'd', ARGV[i + 1], 'p', epoch)
  offsets[#offsets + 1] = offset
end
return offsets
"""


class RedisURL:
    """A parsed ``redis://[user:password@]host[:port][/db]`` URL."""

    def __init__(
        self, host: str, port: int, db: int | None, username: str | None, password: str | None
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password

    def __str__(self) -> str:
        auth = "***@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db or 0}"


def parse_redis_url(url: str) -> RedisURL:
    """Parse a Redis URL; ``ValueError`` naming what is wrong with it."""
    if not isinstance(url, str):
        raise TypeError(f"a Redis URL must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"a Redis URL starts with 'redis://', got {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port in Redis URL {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"no host in Redis URL {url!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the Redis database must be a number, got {path!r} in {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"unexpected query or fragment in Redis URL {url!r}")
    return RedisURL(
        parts.hostname,
        port,
        int(path) if path else None,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def _offset(entry_id: str) -> int:
    """The offset of a stream entry id ``"<offset>-0"``."""
    return int(entry_id.split("-", 1)[0])


def _field(fields: list[str], name: str) -> str | None:
    """One field of a stream entry's flat ``[name, value, ...]`` list."""
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


class _Pending:
    """A subscription whose replay is being read: live messages wait here meanwhile."""

    __slots__ = ("event", "buffer")

    def __init__(self, event: str) -> None:
        self.event = event
        self.buffer: list[Message] = []


class RedisStreamChannel(Channel):
    """
    A channel whose messages live in a Redis stream. Call :meth:`connect` (and wait for
    it) before using it; :meth:`disconnect` when done.

    :param url: ``redis://[user:password@]host[:port][/db]``.
    :param history_size: the stream's approximate maximum length (``MAXLEN ~``).
    :param prefix: prepended to the Redis keys (``<prefix><name>`` is the stream).
    :param reply_timeout: seconds a command may take before publish fails.
    :param connect_timeout: seconds :meth:`connect` waits for Redis.
    :param block: milliseconds one ``XREAD`` blocks before it checks the epoch.
    """

    #: Most publishes sent to Redis in one script call.
    MAX_BATCH = 500
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
        self._last_id = 0
        self._pending: list[_Pending] = []
        self._batch: list[tuple[str, Any, str, Deferred[Message]]] = []
        self._reading = False
        self.connected = False
        self.reconnects = 0
        self.missed = 0
        self.last_error: str | None = None

    # -- connection ----------------------------------------------------------------------

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            return reactor
        return self._clock

    def _connection(self) -> Any:
        url = self.url
        connection = txredisapi.lazyConnection(
            url.host,
            url.port,
            dbid=url.db,
            reconnect=True,
            password=url.password,
            username=url.username,
            replyTimeout=None,
            convertNumbers=False,
        )
        # Reconnect sooner than txredisapi's defaults (1 s, growing to 10 s): a hub
        # should be back within a few seconds of Redis. Exponential, with jitter.
        connection._factory.initialDelay = self.RECONNECT_INITIAL
        connection._factory.maxDelay = self.RECONNECT_MAX
        return connection

    async def _connected(self, connection: Any) -> None:
        # txredisapi's handler fires this when the first connection is made, or fails it
        # (wrong credentials); a refused connection is retried, so it has a timeout.
        first: Deferred[Any] = connection._connected
        first.addTimeout(self.connect_timeout, self.clock)
        try:
            await first
        except Exception as e:
            connection.disconnect()
            reason = "did not answer in time" if isinstance(e, TimeoutError) else str(e)
            if "auth" in reason.lower() or "WRONGPASS" in reason or "NOAUTH" in reason:
                raise ChannelUnavailableError(
                    f"Redis at {self.url} refused the credentials: {reason}"
                ) from None
            raise ChannelUnavailableError(
                f"cannot connect to Redis at {self.url}: {reason}"
            ) from None

    def connect(self) -> Deferred[None]:
        """Connect both connections, learn the epoch and last offset, start reading."""
        return Deferred.fromCoroutine(self._connect())

    async def _connect(self) -> None:
        self._writer = self._connection()
        await self._connected(self._writer)
        self._reader = self._connection()
        await self._connected(self._reader)
        self._script_sha = await self._writer.execute_command("SCRIPT", "LOAD", _PUBLISH)
        await self._sync()
        self.connected = True
        self._reading = True
        Deferred.fromCoroutine(self._read_loop())

    def disconnect(self, timeout: float = 2.0) -> Deferred[Any]:
        """Stop reading and close both connections (giving up after ``timeout``)."""
        self._reading = False
        closing = [c.disconnect() for c in (self._reader, self._writer) if c is not None]
        self._reader = self._writer = None
        self.connected = False
        done = DeferredList(closing, consumeErrors=True)
        done.addTimeout(timeout, self.clock)
        return done.addErrback(lambda _: None)

    async def _sync(self) -> None:
        """Learn the epoch (starting one if the stream has none) and the last offset."""
        epoch_key = self._keys[1]
        await self._writer.execute_command("SET", epoch_key, uuid.uuid4().hex[:16], "NX")
        epoch = await self._writer.execute_command("GET", epoch_key)
        if epoch != self.epoch:
            if self.connected:
                _log.warn(
                    "channel {name}: Redis lost the stream; new epoch {epoch}",
                    name=self.name, epoch=epoch,
                )
            self.epoch = epoch
            last = await self._writer.execute_command(
                "XREVRANGE", self._stream, "+", "-", "COUNT", "1"
            )
            self._last_id = _offset(last[0][0]) if last else 0

    @property
    def last_id(self) -> int | None:
        """The latest offset this process has delivered (None before any)."""
        return self._last_id or None

    def health(self) -> dict[str, Any]:
        """Connection state, for the hub's ``/health``."""
        return {
            "url": str(self.url),
            "connected": self.connected,
            "reconnects": self.reconnects,
            "missed": self.missed,
            "last_error": self.last_error,
        }

    # -- reading -------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        delay = 0.1
        while self._reading:
            reader = self._reader
            try:
                reply = await reader.execute_command(
                    "XREAD", "COUNT", "1000", "BLOCK", str(self.block),
                    "STREAMS", self._stream, f"{self._last_id}-0",
                )
                if not self.connected:
                    await self._sync()
                    self.connected = True
                    _log.info("channel {name}: Redis is back", name=self.name)
                delay = 0.1
                if reply is None:
                    await self._sync()  # idle: was the stream lost meanwhile?
                    continue
                for _, entries in reply:
                    for entry_id, fields in entries:
                        self._deliver(entry_id, fields)
            except Exception as e:
                if self._stopped():
                    return
                if self.connected:
                    self.connected = False
                    self.reconnects += 1
                    _log.warn(
                        "channel {name}: Redis unreachable ({error}); retrying",
                        name=self.name, error=e,
                    )
                self.last_error = str(e) or type(e).__name__
                # Exponential backoff with jitter; txredisapi reconnects underneath.
                await deferLater(self.clock, delay * (0.5 + random.random()), lambda: None)
                delay = min(delay * 2, 5.0)
                try:
                    await self._sync()
                except Exception:
                    continue
                self.connected = True
                _log.info("channel {name}: Redis is back", name=self.name)

    def _stopped(self) -> bool:
        # a method, not ``self._reading`` inline: disconnect() flips it during an await
        return not self._reading

    def _deliver(self, entry_id: str, fields: list[str]) -> None:
        message = self._message(entry_id, fields)
        if message.epoch == self.epoch and message.id > self._last_id + 1 and self._last_id:
            # This reader fell further behind than the stream's MAXLEN: the messages in
            # between were trimmed before it read them. Say so; resuming clients get a gap.
            self.missed += message.id - self._last_id - 1
            _log.warn(
                "channel {name}: reader fell behind the history bound; {n} message(s) "
                "trimmed before they were read",
                name=self.name, n=message.id - self._last_id - 1,
            )
        self.epoch = message.epoch
        self._last_id = message.id
        for pending in self._pending:
            if pending.event == WILDCARD or pending.event == message.event:
                pending.buffer.append(message)
        self._fan_out(message)

    # -- Channel -------------------------------------------------------------------------

    def _publish(self, key: str, data: Any, data_json: str) -> Deferred[Message]:
        writer = self._writer
        if writer is None or not writer._factory.size or self._script_sha is None:
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

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        writer = self._writer
        arguments: list[str] = ["3", *self._keys, str(self.history_size), uuid.uuid4().hex[:16]]
        for key, _, data_json, _ in batch:
            arguments += [key, data_json]
        if writer is None:
            reply: Deferred[Any] = fail(ConnectionError("disconnected"))
        else:
            reply = writer.execute_command("EVALSHA", self._script_sha, *arguments)

            def unknown_script(failure: Any) -> Any:
                # A restarted Redis forgot the script: EVAL sends (and caches) it again.
                if "NOSCRIPT" in failure.getErrorMessage():
                    return writer.execute_command("EVAL", _PUBLISH, *arguments)
                return failure

            reply.addErrback(unknown_script)
            reply.addTimeout(self.reply_timeout, self.clock)

        def published(offsets: list[Any]) -> None:
            epoch = offsets[0]
            for (key, data, data_json, d), offset in zip(batch, offsets[1:]):
                d.callback(Message(int(offset), epoch, self.name, key, data, data_json))

        def failed(failure: Any) -> None:
            reason = failure.getErrorMessage() or failure.type.__name__
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
        if since is None:
            self._add(event, carrier)
            return succeed(Subscription(self.name, event, self.epoch, self.last_id, (), None))
        return Deferred.fromCoroutine(self._resume(event, carrier, since, epoch))

    async def _resume(
        self, event: str, carrier: ICarrier, since: int, epoch: str | None
    ) -> Subscription:
        """
        Read the history after ``since`` while buffering what arrives live meanwhile, then
        subscribe: the carrier gets the history, then the buffered messages, then live
        ones — none twice, none lost.
        """
        upto = self._last_id
        pending = _Pending(event)
        self._pending.append(pending)
        try:
            gap = None
            entries: list[Any] = []
            if epoch is not None and epoch != self.epoch:
                gap = Gap(since, "epoch", self.epoch, await self._oldest())
            elif since > upto:
                gap = Gap(since, "unknown", self.epoch, await self._oldest())
            elif since < upto:
                entries = await self._writer.execute_command(
                    "XRANGE", self._stream, f"{since + 1}-0", f"{upto}-0"
                )
                if not entries or _offset(entries[0][0]) > since + 1:
                    gap = Gap(since, "expired", self.epoch, await self._oldest())
                    entries = []
        finally:
            self._pending.remove(pending)
        replay = [
            self._message(entry_id, fields)
            for entry_id, fields in entries
            if event == WILDCARD or _field(fields, "e") == event
        ]
        replay.extend(m for m in pending.buffer if m.id > upto)
        self._add(event, carrier)
        return Subscription(self.name, event, self.epoch, self.last_id, tuple(replay), gap)

    def _message(self, entry_id: str, fields: list[str]) -> Message:
        values = dict(zip(fields[::2], fields[1::2]))
        data_json = values["d"]
        return Message(
            _offset(entry_id), values.get("p", self.epoch), self.name, values["e"],
            json.loads(data_json), data_json,
        )

    async def _oldest(self) -> int | None:
        first = await self._writer.execute_command("XRANGE", self._stream, "-", "+", "COUNT", "1")
        return _offset(first[0][0]) if first else None
