"""make_service(): HubOptions -> the hub's IService (used by twistd and by ``serve``)."""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

from .app import Hub, HubService
from .options import HubOptions

__all__ = ["make_service", "twistd_log_observer"]


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
        host_names=tuple(options["host-names"]),
        max_queue=options["max-queue"],
        overflow=options["overflow"],
        max_body=options["max-body"],
        max_frame=options["max-frame"],
        max_rate=options["max-rate"],
        max_request_rate=options["max-request-rate"],
        add_channels=tuple(options["add-channels"]),
        max_channels=options["max-channels"],
        max_listeners=options["max-listeners"],
        max_listens=options["max-listens"],
    )
    control = options["control"]
    return HubService(
        hub,
        serverFromString(reactor, options["listen"]),
        max_connections=options["max-connections"] or None,
        header_timeout=options["header-timeout"] or None,
        control=serverFromString(reactor, control) if control is not None else None,
        control_mode=options["control-mode"],
        max_control_connections=options["max-control-connections"],
    )


def twistd_log_observer(options: HubOptions) -> ILogObserver | None:
    """
    Under twistd, the log observer that applies ``--log-level``: the file twistd itself
    would log to (its ``--logfile``, stdout with ``-n``), filtered. None when the level is
    the default or twistd was told to use syslog or a ``--logger`` of its own: twistd then
    logs as usual.
    """
    level = options["level"]
    twistd = getattr(options, "parent", None)
    if level == LogLevel.info or twistd is None:
        return None
    if twistd.get("syslog") or twistd.get("logger"):
        return None
    logfile = twistd.get("logfile") or ""
    nodaemon = bool(twistd.get("nodaemon"))
    if logfile == "-" or (nodaemon and not logfile):
        output: Any = sys.stdout
    else:
        output = LogFile.fromFullPath(logfile or "twistd.log")
    return FilteringLogObserver(
        textFileLogObserver(output), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
