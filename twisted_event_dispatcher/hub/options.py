"""Command-line options of the event hub, shared by ``twistd event-hub`` and ``serve``."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from twisted.logger import LogLevel
from twisted.python import usage

from ..carriers.websocket import origin_patterns
from ..channels.base import check_event_name
from ..errors import MissingExtraError

__all__ = ["HubOptions", "listen_interface"]

BACKENDS = ("memory", "redis")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
OVERFLOW_POLICIES = {"drop-oldest": "drop_oldest", "disconnect": "disconnect"}
#: The environment variable that may hold the token (it does not show in ``ps``).
TOKEN_VARIABLE = "EVENT_HUB_TOKEN"


def listen_interface(endpoint: str) -> str | None:
    """
    The interface Twisted binds for the endpoint string ``endpoint``: ``""`` (IPv4) or
    ``"::"`` (IPv6) for all interfaces. The string is parsed by Twisted's own parser
    (:func:`~twisted.internet.endpoints.serverFromString`), so escapes (``\\:`` in IPv6
    addresses), defaults and repeated keys (the last ``interface=`` wins) mean exactly what
    they mean to Twisted. None for endpoints that have no interface: ``unix:`` sockets are
    local; others (``systemd:``, plugins) are checked by :class:`~.app.HubService` once it
    listens. ``ValueError`` if Twisted cannot parse the string.
    """
    from twisted.internet import endpoints, reactor

    try:
        parsed = endpoints.serverFromString(reactor, endpoint)
    except Exception as e:  # ValueError; TypeError (a wrong parameter); a missing file...
        raise ValueError(str(e) or type(e).__name__) from None
    if isinstance(
        parsed,
        (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint, endpoints.SSL4ServerEndpoint),
    ):
        interface: str = parsed._interface
        return interface
    return None


def is_loopback(interface: str) -> bool:
    """
    True for loopback addresses (IPv4-mapped ones too) and ``localhost``; False for
    all interfaces (``""``, ``0.0.0.0``, ``::``) and for any other name or address.
    """
    if interface == "localhost":
        return True
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


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
        ["token", "t", None, "Token required by POST /events, /ws and /sse (visible in ps: "
         f"prefer --token-file or ${TOKEN_VARIABLE})."],
        ["token-file", None, None, "Read the token from the first line of this file."],
        ["log-level", None, "info", f"Least severe level logged: {', '.join(LOG_LEVELS)}."],
        ["max-body", None, 65536, "Largest POST /events body, in bytes.", int],
        ["max-frame", None, 65536, "Largest WebSocket message from a client, in bytes.", int],
        ["max-connections", None, 1000, "Connections open at once; more are answered 503 "
         "(0: no limit).", int],
        ["header-timeout", None, 10.0, "Seconds a client has to send a whole request "
         "(headers and body) before it gets 408 (0: no limit).", float],
        ["max-queue", None, 1000, "Messages queued for a client that is not reading.", int],
        ["max-rate", None, 1000.0, "POST /events per second from one client address, in "
         "bursts of as many; more are answered 429 (0: no limit).", float],
        ["max-request-rate", None, 1000.0, "Requests a second on one WebSocket connection "
         "(acks not counted), in bursts of as many; more get an error frame (0: no limit).",
         float],
        ["overflow", None, "drop-oldest", "When a client's queue is full: drop-oldest (it is "
         "told how many it missed) or disconnect."],
        ["control", None, None, "Twisted endpoint of the control socket (e.g. "
         "unix:/run/hub.sock): newline-delimited JSON requests; a TCP one only on loopback."],
        ["control-mode", None, "600", "File mode (octal) of a unix control socket: who may "
         "use it (there is no token on it)."],
        ["max-control-connections", None, 100, "Control connections open at once.", int],
        ["max-channels", None, 100, "Channels that may exist at once (the default one "
         "included).", int],
        ["max-listeners", None, 10000, "Listeners one channel may have.", int],
        ["max-listens", None, 1000, "Listens (listener streams) open at once in the whole "
         "hub, over every transport; with --channel redis each holds a connection to Redis "
         "(a file descriptor).", int],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["keywords"] = []
        self["origins"] = []
        self["host-names"] = []
        self["add-channels"] = []

    def opt_keyword(self, name: str) -> None:
        """Allow a match-spec keyword in POST /events (repeatable)."""
        self["keywords"].append(name)

    opt_k = opt_keyword

    def opt_origin(self, origin: str) -> None:
        """Allow pages on this origin to use the hub (repeatable; default: loopback pages)."""
        self["origins"].append(origin)

    def opt_add_channel(self, name: str) -> None:
        """
        Create this channel at start, besides --channel-name (repeatable): channels made at
        run time (the control plane's create) last as long as the process; these come back
        with every restart, so streams that reconnect find them.
        """
        try:
            name = check_event_name(name, "channel name")
        except (TypeError, ValueError) as e:
            raise usage.UsageError(f"--add-channel: {e}") from None
        if name in self["add-channels"]:
            raise usage.UsageError(f"--add-channel: {name!r} is given twice")
        self["add-channels"].append(name)

    def opt_host_name(self, name: str) -> None:
        """Also answer to this Host name (repeatable; checked only without a token)."""
        from ._security import check_host_name

        try:
            self["host-names"].append(check_host_name(name))
        except ValueError as e:
            raise usage.UsageError(f"--host-name: {e}") from None

    def _read_token(self) -> None:
        """``--token``, else ``--token-file``, else ``$EVENT_HUB_TOKEN``: one of them at most."""
        path = self["token-file"]
        if path is not None:
            if self["token"] is not None:
                raise usage.UsageError("give --token or --token-file, not both")
            try:
                with open(path, encoding="utf-8") as file:
                    first = file.readline()
            except (OSError, UnicodeDecodeError) as e:
                reason = getattr(e, "strerror", None) or str(e)
                raise usage.UsageError(f"--token-file: cannot read {path!r}: {reason}") from None
            self["token"] = first.strip()
            if not self["token"]:
                raise usage.UsageError(
                    f"--token-file: the first line of {path!r} is empty; it must hold the token"
                )
        elif self["token"] is None and TOKEN_VARIABLE in os.environ:
            self["token"] = os.environ[TOKEN_VARIABLE].strip()
            if not self["token"]:
                raise usage.UsageError(f"${TOKEN_VARIABLE} is set but empty")

    def postOptions(self) -> None:
        self._read_token()
        if self["overflow"] not in OVERFLOW_POLICIES.values():
            policy = OVERFLOW_POLICIES.get(self["overflow"])
            if policy is None:
                raise usage.UsageError(
                    f"--overflow must be one of {', '.join(OVERFLOW_POLICIES)}, "
                    f"got {self['overflow']!r}"
                )
            self["overflow"] = policy
        if self["channel"] not in BACKENDS:
            raise usage.UsageError(
                f"--channel must be one of {', '.join(BACKENDS)}, got {self['channel']!r}"
            )
        try:
            check_event_name(self["channel-name"], "channel name")
        except (TypeError, ValueError) as e:
            raise usage.UsageError(f"--channel-name: {e}") from None
        if self["channel"] == "redis":
            try:
                from ..channels.redis import parse_redis_url
            except MissingExtraError as e:  # one line naming the extra, not a traceback
                raise usage.UsageError(str(e)) from None
            try:
                parse_redis_url(self["redis-url"])
            except ValueError as e:
                raise usage.UsageError(f"--redis-url: {e}") from None
            if self["history"] < 1:
                raise usage.UsageError("--history must be at least 1 with --channel redis")
        for name in ("history", "max-body", "max-frame", "max-queue"):
            if self[name] < (0 if name == "history" else 1):
                raise usage.UsageError(f"--{name} must be positive, got {self[name]}")
        if self["log-level"] not in LOG_LEVELS:
            raise usage.UsageError(
                f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self['log-level']!r}"
            )
        self["level"] = LogLevel.levelWithName(self["log-level"])
        if self["token"] is not None and not self["token"]:
            raise usage.UsageError("--token must not be empty")
        for name in ("max-connections", "header-timeout", "max-rate", "max-request-rate"):
            if not 0 <= self[name] < float("inf"):
                raise usage.UsageError(f"--{name} must be 0 (no limit) or more, got {self[name]}")
        try:
            interface = listen_interface(self["listen"])
        except ValueError as e:
            raise usage.UsageError(f"--listen {self['listen']!r}: {e}") from None
        if interface is not None and not is_loopback(interface) and not self["token"]:
            where = {"": "all interfaces", "::": ":: (all interfaces)"}.get(interface, interface)
            raise usage.UsageError(
                f"refusing to listen on {where} without --token: anyone who can reach the "
                "port could fire events and read them; give a --token, or bind 127.0.0.1"
            )
        self._check_control()
        for origin in self["origins"]:
            if origin != "*" and "://" not in origin:
                raise usage.UsageError(
                    f"--origin looks like 'https://host[:port]', got {origin!r}"
                )
            try:
                origin_patterns([origin])
            except ValueError as e:
                raise usage.UsageError(f"--origin: {e}") from None

    def _check_control(self) -> None:
        """``--control`` (loopback only, unless a unix socket), ``--control-mode``, bounds."""
        for name in ("max-control-connections", "max-channels", "max-listeners", "max-listens"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1, got {self[name]}")
        if self["channel-name"] in self["add-channels"]:
            raise usage.UsageError(
                f"--add-channel: {self['channel-name']!r} is the hub's channel already"
            )
        if 1 + len(self["add-channels"]) > self["max-channels"]:
            raise usage.UsageError(
                f"--add-channel: {1 + len(self['add-channels'])} channels at start is more "
                f"than --max-channels ({self['max-channels']})"
            )
        mode = self["control-mode"]
        if isinstance(mode, str):
            try:
                self["control-mode"] = int(mode, 8)
            except ValueError:
                raise usage.UsageError(
                    f"--control-mode is an octal file mode such as 600 or 660, got {mode!r}"
                ) from None
        if not 0 <= self["control-mode"] <= 0o777:
            raise usage.UsageError(
                f"--control-mode is an octal file mode from 0 to 777, got {mode!r}"
            )
        endpoint = self["control"]
        if endpoint is None:
            return
        try:
            interface = listen_interface(endpoint)
        except ValueError as e:
            raise usage.UsageError(f"--control {endpoint!r}: {e}") from None
        if interface is not None and not is_loopback(interface):
            where = {"": "all interfaces", "::": ":: (all interfaces)"}.get(interface, interface)
            raise usage.UsageError(
                f"refusing to serve the control socket on {where}: it has no token, so "
                "anyone who can reach it could drive the hub; use a unix: socket, or "
                "interface=127.0.0.1"
            )
