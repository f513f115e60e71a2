"""Command-line options of the event hub, shared by ``twistd event-hub`` and ``serve``."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.logger import LogLevel
from twisted.python import usage

from ..channels.base import check_event_name

__all__ = ["HubOptions", "listen_interface"]

BACKENDS = ("memory", "redis")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def listen_interface(endpoint: str) -> str | None:
    """
    The interface a ``tcp:``/``tcp6:`` endpoint string binds (``""`` for all interfaces),
    or None for endpoints that are not TCP (e.g. ``unix:``), which are local.
    """
    kind, _, rest = endpoint.partition(":")
    if kind.lower() not in ("tcp", "tcp6", "ssl"):
        return None
    for part in rest.split(":")[1:]:
        key, sep, value = part.partition("=")
        if sep and key == "interface":
            return value.replace("\\:", ":")
    return ""


def is_loopback(interface: str) -> bool:
    """True for loopback addresses and ``localhost``; False for all-interfaces ("")."""
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


class HubOptions(usage.Options):
    """Options of the event hub."""

    synopsis = "[options]"
    longdesc = (
        "Run the event hub: POST /events fires events, browsers receive them live over "
        "WebSocket (/ws) or Server-Sent Events (/sse); / is a demo page."
    )
    optParameters: list[list[Any]] = [
        ["listen", "l", "tcp:8080:interface=127.0.0.1", "Twisted endpoint to listen on."],
        ["channel", "c", "memory", f"Channel backend: {', '.join(BACKENDS)}."],
        ["channel-name", None, "events", "Name of the hub's channel."],
        ["redis-url", None, "redis://127.0.0.1:6379/0", "Redis to use with --channel redis."],
        ["history", None, 1000, "Messages kept for clients that resume.", int],
        ["token", "t", None, "Token required by POST /events, /ws and /sse."],
        ["log-level", None, "info", f"Least severe level logged: {', '.join(LOG_LEVELS)}."],
        ["max-body", None, 65536, "Largest POST /events body, in bytes.", int],
        ["max-frame", None, 65536, "Largest WebSocket message from a client, in bytes.", int],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["keywords"] = []
        self["origins"] = []

    def opt_keyword(self, name: str) -> None:
        """Allow a match-spec keyword in POST /events (repeatable)."""
        self["keywords"].append(name)

    opt_k = opt_keyword

    def opt_origin(self, origin: str) -> None:
        """Allow WebSocket connections from this origin (repeatable; default: loopback)."""
        self["origins"].append(origin)

    def postOptions(self) -> None:
        if self["channel"] not in BACKENDS:
            raise usage.UsageError(
                f"--channel must be one of {', '.join(BACKENDS)}, got {self['channel']!r}"
            )
        try:
            check_event_name(self["channel-name"], "channel name")
        except (TypeError, ValueError) as e:
            raise usage.UsageError(f"--channel-name: {e}") from None
        if self["channel"] == "redis":
            from ..channels.redis import parse_redis_url

            try:
                parse_redis_url(self["redis-url"])
            except ValueError as e:
                raise usage.UsageError(f"--redis-url: {e}") from None
            if self["history"] < 1:
                raise usage.UsageError("--history must be at least 1 with --channel redis")
        for name in ("history", "max-body", "max-frame"):
            if self[name] < (0 if name == "history" else 1):
                raise usage.UsageError(f"--{name} must be positive, got {self[name]}")
        if self["log-level"] not in LOG_LEVELS:
            raise usage.UsageError(
                f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self['log-level']!r}"
            )
        self["level"] = LogLevel.levelWithName(self["log-level"])
        if self["token"] is not None and not self["token"]:
            raise usage.UsageError("--token must not be empty")
        interface = listen_interface(self["listen"])
        if interface is not None and not is_loopback(interface) and not self["token"]:
            where = interface or "all interfaces"
            raise usage.UsageError(
                f"refusing to listen on {where} without --token: anyone who can reach the "
                "port could fire events and read them; give a --token, or bind 127.0.0.1"
            )
        for origin in self["origins"]:
            if origin != "*" and "://" not in origin:
                raise usage.UsageError(
                    f"--origin looks like 'https://host[:port]', got {origin!r}"
                )
