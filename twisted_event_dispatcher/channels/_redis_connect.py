"""
Connecting to Redis for :class:`~.redis.RedisStreamChannel`: the URL, and the first
connection with an error that says what went wrong and where (never the password).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ..errors import ChannelUnavailableError

__all__ = ["RedisURL", "close_quietly", "open_connection", "parse_redis_url", "wait_connected"]


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


def _redacted(url: str) -> str:
    """``url`` for an error message: the password (if any) replaced by ``***``."""
    return re.sub(r"^(redis://[^:@/]*:)[^@/]*@", r"\1***@", url)


def parse_redis_url(url: str) -> RedisURL:
    """Parse a Redis URL; ``ValueError`` naming what is wrong with it."""
    if not isinstance(url, str):
        raise TypeError(f"a Redis URL must be a str, got {type(url).__name__}")
    shown = _redacted(url)
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"a Redis URL starts with 'redis://', got {shown!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port in Redis URL {shown!r}") from None
    if not parts.hostname:
        raise ValueError(f"no host in Redis URL {shown!r}")
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"the Redis database must be a number, got {path!r} in {shown!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"unexpected query or fragment in Redis URL {shown!r}")
    return RedisURL(
        parts.hostname,
        port,
        int(path) if path else None,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def open_connection(url: RedisURL, initial_delay: float, max_delay: float) -> Any:
    """A txredisapi connection that (re)connects by itself, with backoff and jitter."""
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
    # Reconnect sooner than txredisapi's defaults (1 s, growing to 10 s): a hub should
    # be back within a few seconds of Redis.
    connection._factory.initialDelay = initial_delay
    connection._factory.maxDelay = max_delay
    return connection


def _watch_attempts(connection: Any, reasons: list[str], clock: IReactorTime) -> None:
    """Record why each failed connection attempt failed (the latest one last)."""
    try:
        service = connection._factory.slots[0].service
    except (AttributeError, IndexError):  # another txredisapi: no reason, still an error
        return

    def failed(failure: Failure) -> None:
        if failure.check(CancelledError):  # stopped (connected, or given up)
            return
        reasons.append(failure.getErrorMessage() or repr(failure.value))
        # not from inside the service's own callback: it does not allow that
        clock.callLater(0, _watch_attempts, connection, reasons, clock)

    service.whenConnected(failAfterFailures=1).addErrback(failed)


async def wait_connected(
    connection: Any, url: RedisURL, timeout: float, clock: IReactorTime
) -> None:
    """
    Wait until ``connection`` is ready, or fail with
    :class:`~twisted_event_dispatcher.errors.ChannelUnavailableError` within ``timeout``
    seconds: Redis unreachable (refused attempts are retried until then; the message
    gives the last attempt's error), or its refusal (credentials, database).
    """
    # txredisapi fires this when the first connection is ready, or fails it when Redis
    # refused the credentials or the database.
    first: Deferred[Any] = connection._connected
    reasons: list[str] = []
    _watch_attempts(connection, reasons, clock)
    first.addTimeout(timeout, clock)
    try:
        await first
    except (TimeoutError, CancelledError):
        last = f" (last attempt: {reasons[-1]})" if reasons else ""
        raise ChannelUnavailableError(
            f"Redis at {url} is unreachable: no connection within {timeout:g} s{last}"
        ) from None
    except Exception as e:
        reason = str(e) or type(e).__name__
        if "auth" in reason.lower() or "WRONGPASS" in reason or "NOAUTH" in reason:
            raise ChannelUnavailableError(
                f"Redis at {url} refused the credentials: {reason}"
            ) from None
        raise ChannelUnavailableError(f"cannot connect to Redis at {url}: {reason}") from None


def close_quietly(connection: Any) -> None:
    """
    Close a connection of our own, quietly: one closed before it was ready (Redis hung
    while it said ``SELECT``) fails its first Deferred, which would be logged as an
    unhandled error.
    """
    first = getattr(connection, "_connected", None)
    if isinstance(first, Deferred):
        first.addErrback(lambda _: None)
    connection.disconnect().addErrback(lambda _: None)
