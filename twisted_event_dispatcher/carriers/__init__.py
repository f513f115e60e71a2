"""
Carriers deliver channel messages to clients: :mod:`.websocket` (Autobahn) and
:mod:`.sse` (Server-Sent Events with twisted.web). :mod:`.base` holds the bounded,
flow-controlled queue they share.
"""

from .base import DISCONNECT, DROP_OLDEST, QueueingCarrier

__all__ = ["DISCONNECT", "DROP_OLDEST", "QueueingCarrier"]
