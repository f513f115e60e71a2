"""
The event hub: a runnable server where HTTP clients and Twisted services fire events and
browsers receive them live over WebSocket or SSE. ``twistd -n event-hub`` or
``python -m twisted_event_dispatcher serve``; see ``doc/hub.rst``.
"""

from .app import Hub, HubService
from .options import HubOptions
from .service import make_service

__all__ = ["Hub", "HubOptions", "HubService", "make_service"]
