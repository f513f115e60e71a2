"""
The channel list of ``GET /health``: every channel of the hub with its backend, its
subscriber count and its listener count, which a Redis channel asks Redis for (so the
answer is asynchronous, and bounded by :data:`HEALTH_DEADLINE`).

Channel names can be secrets (a hub with a token keeps its streams to those who hold
it): with a token, only a request that carries the right one gets the list; others get
``"channels": <count>``. A listener count that could not be read (Redis down or hung)
is ``null`` and makes ``status`` ``"degraded"``, with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..channels.base import Channel
from ..errors import ChannelUnavailableError

if TYPE_CHECKING:
    from .app import Hub

__all__ = ["HEALTH_DEADLINE", "describe_channels", "health_report"]

_log = Logger(namespace="twisted_event_dispatcher.hub")

#: Seconds ``/health`` waits for the listener counts: one not in by then is ``null`` (a
#: hung Redis fails a command only after the channel's ``reply_timeout``, 5 s by default,
#: and a health check must answer sooner).
HEALTH_DEADLINE = 1.0


async def health_report(hub: Hub, show_channels: bool) -> dict[str, Any]:
    """
    What ``GET /health`` answers: :meth:`Hub.health` with ``channels``: the list of
    :func:`describe_channels` if ``show_channels`` (no token, or the request carried the
    right one), else only how many there are. ``status`` is ``"degraded"`` (with the
    ``reason``) when a listener count could not be read, unless it says worse already.
    """
    channels = await describe_channels(hub)
    health = hub.health()
    unread = sum(1 for channel in channels if channel["listeners"] is None)
    if unread and health["status"] == "ok":
        health["status"] = "degraded"
        health["reason"] = (
            f"the listeners of {unread} channel(s) could not be counted: Redis did not "
            f"answer within {HEALTH_DEADLINE:g} s"
        )
    health["channels"] = channels if show_channels else len(channels)
    return health


async def describe_channels(hub: Hub) -> list[dict[str, Any]]:
    """Every channel of ``hub`` as ``/health`` lists it (listener counts asked at once)."""
    channels = [hub.channels.get(name) for name in hub.hub_channels.names()]
    clock = hub.post_rate.clock
    counts = await gatherResults(
        [_listener_count(channel, clock) for channel in channels], consumeErrors=True
    )
    return [
        {
            "name": channel.name,
            "backend": hub.backend,
            "subscribers": channel.carrier_count,
            "listeners": count,
        }
        for channel, count in zip(channels, counts, strict=True)
    ]


def _listener_count(channel: Channel, clock: IReactorTime) -> Deferred[int | None]:
    """
    How many listeners ``channel`` has; None when its backend cannot say now (Redis down,
    or no answer within :data:`HEALTH_DEADLINE`: the call is left to finish, not cancelled
    in the middle of a Redis exchange).
    """
    counted: Deferred[int | None] = Deferred()

    def late() -> None:
        if not counted.called:
            counted.callback(None)

    timer = clock.callLater(HEALTH_DEADLINE, late)

    def done(result: list[str] | Failure) -> None:
        if timer.active():
            timer.cancel()
        if isinstance(result, Failure) and not result.check(ChannelUnavailableError):
            if not counted.called:
                counted.errback(result)
            else:
                _log.failure("counting the listeners of {name} failed", result,
                             name=channel.name)
        elif not counted.called:
            counted.callback(None if isinstance(result, Failure) else len(result))

    maybeDeferred(channel.listener_ids).addBoth(done)
    return counted
