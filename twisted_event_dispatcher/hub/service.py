"""make_service(): HubOptions -> the hub's IService (used by twistd and by ``serve``)."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import serverFromString

from .app import Hub, HubService
from .options import HubOptions

__all__ = ["make_service"]


def make_service(options: HubOptions, reactor: Any = None) -> HubService:
    """Build the hub described by parsed ``options``."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    hub = Hub(
        tuple(options["keywords"]),
        channel_name=options["channel-name"],
        history=options["history"],
        redis_url=options["redis-url"] if options["channel"] == "redis" else None,
        token=options["token"],
        origins=tuple(options["origins"]),
        max_body=options["max-body"],
        max_frame=options["max-frame"],
    )
    return HubService(hub, serverFromString(reactor, options["listen"]))
