"""
The hub's HTTP guard, applied to every request before any resource sees it.

* **Origin.** A browser names the page that sent a request in ``Origin`` (every POST,
  every cross-origin GET, every WebSocket handshake). A request that carries an origin
  outside the allow-list (the one ``/ws`` uses) is refused with 403: a page on another
  site cannot fire events with a "simple" ``text/plain`` POST, nor read a stream.
  ``null`` (sandboxed frames, ``file:`` pages) is never allowed. Requests without
  ``Origin`` (curl, other services) are not browsers' cross-site requests and pass.
* **Host.** Without a token, the ``Host`` must be an IP address the hub answers on (any
  loopback address, or the address it listens on), ``localhost``, or a configured name:
  DNS rebinding (``evil.example`` resolving to 127.0.0.1, which makes a hostile page
  same-origin with the hub) always carries the attacker's name. The port is not compared:
  a browser always sends the port it connected to, so it says nothing about the page.
* **Bytes.** The headers and query parameters the hub reads must be UTF-8; anything else
  is a 400 naming the header or parameter, before a resource could fail on it.
* **Headers.** Every answer says ``nosniff``, may not be framed, and carries a
  Content-Security-Policy that lets the demo page load its own script and open its
  WebSocket, nothing else. No ``Access-Control-Allow-Origin`` is ever sent.
* **Access log.** The ``token`` query parameter is written as ``***``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from ..carriers.websocket import origin_patterns
from ..channels.message import encode_json

__all__ = ["SECURITY_HEADERS", "Guard", "GuardedSite", "redact_token", "redacting_log_formatter"]

#: Sent with every answer (the WebSocket handshake's 101 is written by Autobahn).
SECURITY_HEADERS: dict[bytes, bytes] = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"content-security-policy": (
        b"default-src 'self'; connect-src 'self' ws: wss:; object-src 'none'; "
        b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    b"referrer-policy": b"no-referrer",
}

#: Headers whose value the hub (or Autobahn behind it) reads as text.
_TEXT_HEADERS = {
    b"host": "Host",
    b"origin": "Origin",
    b"authorization": "Authorization",
    b"last-event-id": "Last-Event-ID",
}
#: Headers that must not appear twice (which one would count?).
_SINGLE_HEADERS = (b"host", b"origin", b"authorization")

_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\[\]:]+))(?::(?P<port>\d*))?")


class Refusal(Exception):
    """
    A request the guard refuses: the status code, the reason sent back as JSON, and a
    short status-line phrase (WebSocket clients often show only the status line).
    """

    def __init__(
        self, code: int, reason: str, phrase: str = "Bad Request", allow: bytes = b""
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.phrase = phrase
        #: With 405: the ``Allow`` header (the methods the resource answers).
        self.allow = allow


def _shown(value: str, limit: int = 100) -> str:
    """``repr`` of a client-supplied value, cut short: error messages stay small."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _compile(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    """Autobahn-style origin wildcards (``*`` matches anything) as anchored regexps."""
    return [
        re.compile(re.escape(pattern).replace(r"\*", ".*"), re.IGNORECASE)
        for pattern in patterns
    ]


def canonical_origin(origin: str) -> str:
    """
    ``scheme://host:port`` (the scheme's default port filled in, IPv6 in brackets, lower
    case), the form the allow-list's patterns are matched against; ``ValueError`` if
    ``origin`` is not a serialized origin.
    """
    parts = urlsplit(origin)
    host = parts.hostname
    if not parts.scheme or not host or parts.username is not None or parts.password is not None:
        raise ValueError(f"the Origin header {_shown(origin)} is not an origin")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"the Origin header {_shown(origin)} is not an origin")
    port = parts.port  # ValueError if out of range
    scheme = parts.scheme.lower()
    shown_port = str(port) if port is not None else _DEFAULT_PORTS.get(scheme, "")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{shown_port}"


def split_host(value: str) -> str:
    """The host part of a ``Host`` header (lower case, brackets removed); ValueError."""
    match = _HOST_PORT.fullmatch(value.strip())
    if match is None or (match.group("name") is not None and not match.group("name").strip()):
        raise ValueError(f"the Host header {_shown(value)} is malformed")
    host = match.group("ipv6") or match.group("name")
    return host.lower().rstrip(".")


class Guard:
    """
    Decides whether a request may reach the hub's resources.

    :param origins: allowed browser origins (``"https://app.example"``,
        ``"http://127.0.0.1:*"``, ``"*"`` for any but ``null``).
    :param host_names: names (besides ``localhost`` and IP addresses the hub answers
        on) a ``Host`` header may carry; ``"*"`` turns the check off.
    :param check_hosts: whether to check ``Host`` at all (the hub does when it has no
        token: with one, a rebinding page still cannot authenticate).
    """

    def __init__(
        self, origins: Sequence[str], host_names: Sequence[str] = (), check_hosts: bool = True
    ) -> None:
        self.origins = tuple(origins)
        self._any_origin = "*" in self.origins
        self._origin_patterns = _compile(origin_patterns([o for o in origins if o != "*"]))
        self.host_names: set[str] = {"localhost"}
        self.addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for name in host_names:
            self.allow_address(name)
        self.check_hosts = check_hosts and "*" not in self.host_names

    def allow_address(self, host: str) -> None:
        """Accept ``Host: <host>``, any port: an IP address (one the hub listens on) or a name."""
        name = check_host_name(host)
        try:
            self.addresses.add(ipaddress.ip_address(name))
        except ValueError:
            self.host_names.add(name)

    def origin_allowed(self, origin: str) -> bool:
        """Whether a request from this ``Origin`` may proceed; ValueError if malformed."""
        if origin.strip().lower() == "null" or origin.strip().lower().startswith("file:"):
            return False  # sandboxed frames, local files (Firefox says null, Chrome file://)
        canonical = canonical_origin(origin.strip())
        if self._any_origin:
            return True
        return any(pattern.fullmatch(canonical) for pattern in self._origin_patterns)

    def host_allowed(self, value: str) -> bool:
        """Whether a ``Host`` header names this hub; ValueError if malformed."""
        host = split_host(value)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self.host_names
        return address.is_loopback or address in self.addresses

    def check(self, request: Request) -> None:
        """Raise :class:`Refusal` if ``request`` may not proceed."""
        headers = request.requestHeaders
        text: dict[bytes, str] = {}
        for name, label in _TEXT_HEADERS.items():
            values = headers.getRawHeaders(name) or []
            if len(values) > 1 and name in _SINGLE_HEADERS:
                raise Refusal(400, f"more than one {label} header")
            for value in values:
                try:
                    text[name] = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise Refusal(400, f"the {label} header is not valid UTF-8") from None
        for key, values in (request.args or {}).items():
            try:
                shown = key.decode("utf-8")
            except UnicodeDecodeError:
                raise Refusal(400, "a query parameter's name is not valid UTF-8") from None
            for value in values:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    raise Refusal(
                        400, f"query parameter {_shown(shown)} is not valid UTF-8"
                    ) from None
        try:
            host = text.get(b"host")
            if self.check_hosts and host is not None and not self.host_allowed(host):
                raise Refusal(
                    403,
                    f"Host {_shown(host)} is not allowed: this hub answers to its addresses, "
                    "localhost and the names given with --host-name",
                    "Forbidden: host not allowed",
                )
            origin = text.get(b"origin")
            if origin is not None and not self.origin_allowed(origin):
                raise Refusal(
                    403,
                    f"Origin {_shown(origin)} is not allowed: pages may use this hub only "
                    "from the origins given with --origin",
                    "Forbidden: origin not allowed",
                )
        except ValueError as e:
            raise Refusal(400, str(e)) from None


def check_host_name(name: str) -> str:
    """A ``--host-name`` value: a bare host name (no scheme, port or path), lower case."""
    cleaned = name.strip().lower().rstrip(".")
    if cleaned == "*":
        return cleaned
    if not cleaned or not re.fullmatch(r"[a-z0-9_.\-]+|\[?[0-9a-f:.]+\]?", cleaned):
        raise ValueError(
            f"a host name looks like 'hub.example' (no scheme, port or path), got {name!r}"
        )
    return cleaned.strip("[]")


_NO_PREFLIGHT = (
    "OPTIONS is not supported: the hub sends no CORS headers, so pages on other origins "
    "cannot call its HTTP API (they can use /ws, from an origin given with --origin)"
)


def allowed_methods(resource: IResource) -> tuple[bytes, ...] | None:
    """
    The methods ``resource`` answers (``HEAD`` only with ``GET``), or None when it does
    not say (a resource that implements ``render`` itself, like the WebSocket one).
    """
    methods = getattr(resource, "allowedMethods", None)
    if methods is None:
        methods = [name[7:].encode() for name in dir(resource) if name.startswith("render_")]
    if not methods:
        return None
    found = set(methods)
    if b"GET" not in found:
        found.discard(b"HEAD")  # Resource.render_HEAD renders GET
    return tuple(sorted(found))


#: The ``code`` of a refusal's JSON answer (the control plane's error codes, and these).
_ERROR_CODES = {400: "bad_request", 403: "forbidden", 405: "method_not_allowed"}


class _Refused(Resource):
    """Answers any method with the guard's refusal, as JSON."""

    isLeaf = True

    def __init__(self, refusal: Refusal) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.refusal = refusal

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self.refusal.code, self.refusal.phrase.encode("ascii"))
        if self.refusal.allow:
            request.setHeader(b"allow", self.refusal.allow)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        code = _ERROR_CODES.get(self.refusal.code, "bad_request")
        return encode_json({"error": self.refusal.reason, "code": code}).encode("utf-8")


class GuardedSite(Site):
    """
    A :class:`~twisted.web.server.Site` that passes every request through a
    :class:`Guard`, adds :data:`SECURITY_HEADERS` to every answer, and writes access-log
    lines with the token hidden.
    """

    def __init__(self, resource: IResource, guard: Guard, **kwargs: Any) -> None:
        kwargs.setdefault("logFormatter", redacting_log_formatter)
        super().__init__(resource, **kwargs)  # type: ignore[no-untyped-call]
        self.guard = guard

    def getResourceFor(self, request: Request) -> IResource:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        try:
            self.guard.check(request)
        except Refusal as refusal:
            return _Refused(refusal)
        resource: IResource = super().getResourceFor(request)  # type: ignore[no-untyped-call]
        # Every method a resource does not answer is a 405 naming those it does: never
        # twisted.web's 501 (an unknown method) or a 500 (HEAD on a POST-only resource).
        methods = allowed_methods(resource)
        if request.method == b"OPTIONS" or (methods and request.method not in methods):
            allow = b", ".join(methods or ())
            reason = (
                _NO_PREFLIGHT if request.method == b"OPTIONS"
                else f"{_shown(request.method.decode('latin-1'))} is not allowed here; "
                f"use {(allow or b'GET').decode()}"
            )
            return _Refused(Refusal(405, reason, "Method Not Allowed", allow))
        return resource


_QUERY_ITEM = re.compile(rb"[^&;#]+")


def redact_token(uri: bytes) -> bytes:
    """``uri`` with the value of every ``token`` query parameter replaced by ``***``."""
    path, sep, query = uri.partition(b"?")
    if not sep:
        return uri

    def hide(item: re.Match[bytes]) -> bytes:
        key, equals, _ = item.group().partition(b"=")
        if equals and unquote_to_bytes(key.replace(b"+", b" ")).strip().lower() == b"token":
            return key + b"=***"
        return item.group()

    query, hash_, fragment = query.partition(b"#")
    return path + sep + _QUERY_ITEM.sub(hide, query) + hash_ + fragment


class _Redacted:
    """What the access-log formatter sees of a request: the same, with tokens hidden."""

    def __init__(self, request: IRequest) -> None:
        self._request = request
        self.uri = redact_token(request.uri)

    def getHeader(self, name: bytes) -> bytes | None:
        value: bytes | None = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact_token(value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def redacting_log_formatter(timestamp: str, request: IRequest) -> str:
    """Twisted's combined log format, with the ``token`` query parameter as ``***``."""
    line: str = combinedLogFormatter(timestamp, _Redacted(request))
    return line
