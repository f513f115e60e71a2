"""
Running the Redis listener backend's scripts on its channel's publishing connection, with
the channel's failure rules: :class:`~twisted_event_dispatcher.errors.ChannelUnavailableError`
at once while Redis is known to be down (after a ``connect()`` if the channel was never
connected), after ``reply_timeout`` when Redis does not answer; and a deadline (half the
reply timeout, by Redis' clock) past which a script that changes state changes nothing,
so that a call that failed on a timeout did not happen later either (and a reply that
arrived while this process was too busy to read it is read before giving up). Any other
refusal of Redis (a key of the wrong type, out of memory, a read-only replica) is a
``ChannelUnavailableError`` too, never txredisapi's ``ResponseError``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import ResponseError

from ..channels._redis_connect import close_quietly as disconnect
from ..errors import ChannelUnavailableError
from ._redis_lua import Script

if TYPE_CHECKING:
    from ..channels.redis import RedisStreamChannel

__all__ = ["DEADLINE", "REFUSALS", "Argument", "Commands", "disconnect", "script_error"]


class _Deadline:
    """Stands for the deadline in a script's arguments: computed when it is sent."""

    def __repr__(self) -> str:
        return "DEADLINE"


DEADLINE: Final = _Deadline()
Argument = str | _Deadline

#: Seconds a call waits past its reply timeout for an answer that has arrived already.
GRACE: Final = 0.01

#: The first words of a script's refusals that the caller maps to an exception of its own
#: (``UnknownListenerError``, ``ListenerExistsError``, ``MailboxFullError``...).
REFUSALS: Final = frozenset({"UNKNOWNLISTENER", "LISTENEREXISTS", "MAILBOXFULL", "UNKNOWNGROUP"})


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
        self._time_out(reply)
        return reply.addErrback(self._failed, doing)

    def _time_out(self, reply: Deferred[Any]) -> None:
        """
        Cancel ``reply`` if it has not come within ``reply_timeout``; but a reply that
        has arrived when the timer fires (this process was busy: a handler blocked the
        reactor) is read first (:data:`GRACE` later, after the reactor read its
        sockets): a script that ran is not reported as failed for this process's delay.
        """
        clock = self.channel.clock
        answered = False

        def give_up() -> None:
            if not answered:
                reply.cancel()

        def late() -> None:
            if not answered:
                clock.callLater(GRACE, give_up)  # after the reactor read what has arrived

        timer = clock.callLater(self.channel.reply_timeout, late)

        def done(result: object) -> object:
            nonlocal answered
            answered = True
            if timer.active():
                timer.cancel()
            return result

        reply.addBoth(done)

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
            elif message.split(" ", 1)[0] in REFUSALS:
                return failure  # the caller's to turn into UnknownListenerError...
            else:
                # Anything else Redis refuses (a key of the wrong type written by another
                # program, out of memory, a read-only replica): an error of this library,
                # not txredisapi's.
                error = ChannelUnavailableError(
                    f"Redis at {channel.url} refused {doing}: {message}"
                )
        else:
            return failure
        return Failure(error)
