"""
bridge(): publish the events a dispatcher fires to a channel, so that they reach web
clients with no glue code.

    bridge(orders, get_channel("orders"), key=lambda e: e["kind"], region="eu")

registers one ordinary handler (in the ``after`` phase by default, so only events that
made it through ``before`` and ``during`` are announced) that publishes each matching
event. The handler returns ``publish``'s Deferred, so the phase waits for the channel
(which matters for Redis), and a failure to publish shows in the ``FireResult`` like any
handler failure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from .channels.base import check_event_name
from .interfaces import IChannel, IEventDispatcher

__all__ = ["bridge", "default_key", "default_serialize"]


def default_key(event: Any) -> str:
    """The event name: a mapping's ``"event"`` item, a str event itself, else its class."""
    if isinstance(event, Mapping) and "event" in event:
        return str(event["event"])
    if isinstance(event, str):
        return event
    return type(event).__name__


def default_serialize(event: Any) -> Any:
    """The payload: a mapping's ``"data"`` item, nothing for a str event, else the event."""
    if isinstance(event, Mapping) and "data" in event:
        return event["data"]
    if isinstance(event, str):
        return None
    return event


def bridge(
    dispatcher: IEventDispatcher,
    channel: IChannel,
    phase: str = "after",
    key: str | Callable[[Any], str] | None = None,
    serialize: Callable[[Any], Any] | None = None,
    **match_spec: Any,
) -> Deferred[int]:
    """
    Publish every event ``dispatcher`` fires that matches ``match_spec`` to ``channel``.

    :param phase: the phase whose handlers publish (``after`` by default).
    :param key: the event name to publish under: a str, a callable of the event, or None
        for :func:`default_key`.
    :param serialize: the JSON-encodable payload for an event (:func:`default_serialize`).
    :return: Deferred firing with the handler id; ``remove_event_handler`` undoes it.
    :raises TypeError: ``channel`` is not an IChannel, or ``key``/``serialize`` are not
        callables; ``ValueError`` for a constant ``key`` that is not a valid event name,
        an unknown phase or keyword.
    """
    if not IChannel.providedBy(channel):
        raise TypeError(f"{channel!r} does not provide IChannel")
    key_of: Callable[[Any], str]
    if isinstance(key, str):
        constant = check_event_name(key)

        def key_of(event: Any) -> str:
            return constant

    elif key is None:
        key_of = default_key
    elif callable(key):
        key_of = key
    else:
        raise TypeError(f"key must be a str, a callable or None, got {type(key).__name__}")
    if serialize is None:
        serialize = default_serialize
    elif not callable(serialize):
        raise TypeError(f"serialize must be callable, got {type(serialize).__name__}")
    to_payload = serialize

    def publish(event: Any) -> Deferred[Any]:
        return channel.publish(key_of(event), to_payload(event))

    publish.__qualname__ = f"bridge to {getattr(channel, 'name', channel)!s}"
    return dispatcher.add_event_handler(publish, phase, **match_spec)
