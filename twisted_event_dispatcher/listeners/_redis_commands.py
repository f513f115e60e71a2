"""
Running the Redis listener backend's scripts on its channel's publishing connection, with
the channel's failure rules: :class:`~twisted_event_dispatcher.errors.ChannelUnavailableError`
at once while Redis is known to be down (after a ``connect()`` if the channel was never
connected), after ``reply_timeout`` when Redis does not answer; and a deadline (half the
reply timeout, by Redis' clock) past which a script that changes state changes nothing,
so that a call that failed on a timeout did not happen later either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import ResponseError

from ..errors import ChannelUnavailableError
from ._redis_lua import Script

if TYPE_CHECKING:
    from ..channels.redis import RedisStreamChannel

__all__ = ["DEADLINE", "Argument", "Commands", "script_error"]


class _Deadline:
    """Stands for the deadline in a script's arguments: computed when it is sent."""

    def __repr__(self) -> str:
        return "DEADLINE"


DEADLINE: Final = _Deadline()
Argument = str | _Deadline


def script_error(error: BaseException) -> str:
    """A script's error reply (Redis puts ``ERR`` before some)."""
    message = str(error)
    return message[4:] if message.startswith("ERR ") else message


class Commands:
    """Scripts run for ``channel``'s listeners (see the module doc)."""

    def __init__(self, channel: RedisStreamChannel) -> None:
        self.channel = channel

    def deadline(self) -> str:
        """The deadline of a script sent now, in ms of Redis' clock."""
        channel = self.channel
        late = (time.monotonic() + channel._clock_offset + channel.reply_timeout / 2) * 1000
        return str(int(late))

    def run(
        self, script: Script, args: Sequence[Argument], doing: str, keys: tuple[str, ...] = ()
    ) -> Deferred[Any]:
        """
        Send ``script`` now (if connected: before anything sent after this call), with
        :data:`DEADLINE` in ``args`` replaced by the deadline.
        """
        channel = self.channel
        writer = channel._writer
        if not channel._ready or writer is None:
            refused = channel._not_connected(doing)
            if refused is not None:
                return fail(refused)
            return Deferred.fromCoroutine(self._connecting(script, args, doing, keys))
        if not writer._factory.size:
            return fail(
                ChannelUnavailableError(
                    f"Redis at {channel.url} is unreachable (reconnecting); {doing} failed"
                )
            )
        values = [self.deadline() if arg is DEADLINE else str(arg) for arg in args]
        reply = script.run(writer, keys, values)
        reply.addTimeout(channel.reply_timeout, channel.clock)
        return reply.addErrback(self._failed, doing)

    async def _connecting(
        self, script: Script, args: Sequence[Argument], doing: str, keys: tuple[str, ...]
    ) -> Any:
        await self.channel.connect()
        return await self.run(script, args, doing, keys)

    def _failed(self, failure: Failure, doing: str) -> Failure:
        channel = self.channel
        if failure.check(TimeoutError, CancelledError):
            error: Exception = ChannelUnavailableError(
                f"Redis at {channel.url} did not answer {doing} within "
                f"{channel.reply_timeout:g} s"
            )
        elif failure.check(ConnectionError, RedisConnectionError):
            error = ChannelUnavailableError(
                f"Redis at {channel.url} went away during {doing}: {failure.getErrorMessage()}"
            )
        elif failure.check(ResponseError):
            message = script_error(failure.value)  # type: ignore[arg-type]
            if message.startswith("EXPIRED"):
                error = ChannelUnavailableError(
                    f"{doing} reached Redis at {channel.url} after its deadline (Redis hung, "
                    "or a clock stepped); nothing was changed"
                )
            elif message.startswith("CORRUPT"):
                error = ChannelUnavailableError(f"{doing}: Redis holds bad state: {message}")
            else:
                return failure
        else:
            return failure
        return Failure(error)
