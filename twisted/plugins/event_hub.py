"""twistd plugin: ``twistd -n event-hub [options]`` runs the event hub."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _EventHubMaker:
    tapname = "event-hub"
    description = "The event hub: fire events over HTTP, receive them over WebSocket or SSE."

    @property
    def options(self) -> Any:
        from twisted_event_dispatcher.hub.options import HubOptions

        return HubOptions

    def makeService(self, options: Any) -> Any:
        from twisted_event_dispatcher.hub.service import make_service, twistd_log_observer

        service = make_service(options)
        service.log_observer = twistd_log_observer(options)
        return service


event_hub = _EventHubMaker()
