"""
Named publish/subscribe channels for talking to the world outside the process.

``get_channel(name)`` returns the process-wide channel of that name (a
:class:`MemoryChannel` unless told otherwise); carriers subscribe to event names on it
and deliver its messages to WebSocket or SSE clients.
"""

from .base import WILDCARD, Channel, ChannelRegistry, Gap, Subscription, check_event_name
from .memory import MemoryChannel
from .message import Message, encode_json

#: The process-wide channel registry.
registry = ChannelRegistry()
#: ``get_channel(name, channel_class=MemoryChannel, **options)`` on :data:`registry`.
get_channel = registry.get_or_create

__all__ = [
    "WILDCARD",
    "Channel",
    "ChannelRegistry",
    "Gap",
    "MemoryChannel",
    "Message",
    "Subscription",
    "check_event_name",
    "encode_json",
    "get_channel",
    "registry",
]
