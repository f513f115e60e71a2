"""The hub's HTTP resources: POST /events, GET /health, the demo page."""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Sequence
from importlib import resources as package_files
from typing import TYPE_CHECKING, Any, NamedTuple

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File

from ..channels.base import check_event_name
from ..channels.message import MAX_DEPTH, encode_json, nested_deeper_than
from ..errors import InvalidDataError, UnknownKeywordError
from ..results import FireResult
from ._health import health_report
from ._limits import _response
from ._publish import NotPublished

if TYPE_CHECKING:
    from .app import Hub

__all__ = [
    "EventsResource",
    "HealthResource",
    "HubRequest",
    "PostRefusal",
    "WebSocketEndpoint",
    "finish_with",
    "read_json_object",
    "refuse_post",
    "request_token",
    "static_root",
    "token_of",
]

_log = Logger(namespace="twisted_event_dispatcher.hub")

_FIELDS = ("event", "keywords", "data")
_SCALARS = (str, int, float, bool, type(None))


#: Status lines twisted.web does not know.
_PHRASES = {426: b"Upgrade Required", 429: b"Too Many Requests"}


def respond(request: Request, code: int, payload: dict[str, Any]) -> bytes:
    """A JSON response."""
    request.setResponseCode(code, _PHRASES.get(code))
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return encode_json(payload).encode("utf-8")


def finish_with(request: Request, body: bytes) -> None:
    """
    Write ``body`` as the whole answer of a request rendered later (``NOT_DONE_YET``),
    with its ``Content-Length``, as a synchronous answer has (not chunked).
    """
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    request.write(body)
    request.finish()


def token_of(header: str | None, query: list[bytes] | None) -> str | None:
    """
    The token from an ``Authorization: Bearer`` header, or the ``token`` query field;
    ``ValueError`` naming the parameter if its bytes are not UTF-8.
    """
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    if query:
        try:
            return query[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("query parameter 'token' is not valid UTF-8") from None
    return None


def request_token(request: Request) -> str | None:
    """
    The token a twisted.web request carries (see :func:`token_of`); ``ValueError`` naming
    the header or parameter that is not UTF-8, so that it is a 400, never a 500.
    """
    raw = request.getHeader(b"authorization")
    try:
        header = None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the Authorization header is not valid UTF-8") from None
    return token_of(header, (request.args or {}).get(b"token"))


def token_ok(expected: str | None, given: str | None) -> bool:
    """No token configured, or the right one (compared in constant time)."""
    if expected is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(
        expected.encode("utf-8", "surrogatepass"), given.encode("utf-8", "surrogatepass")
    )


class PostRefusal(NamedTuple):
    """Why a POST is refused before its body is read: status, message, error code."""

    status: int
    message: str
    code: str


def refuse_post(hub: Hub, request: Request, what: str) -> PostRefusal | None:
    """
    The checks every POST of the hub makes before reading its body, cheapest first (a
    flood, or a token guesser, costs as little as possible): the per-address rate
    (``hub.post_rate``; 429 with ``Retry-After``), the token (400 if unreadable, 401 with
    ``WWW-Authenticate``), the body size (413). None if the request may proceed; the
    headers the refusal needs are set on ``request``. ``what`` names what is counted in
    the 429 message ("events", "requests").
    """
    # First, so that a flood (or a token guesser) costs as little as possible.
    wait = hub.post_rate.take(getattr(request.getClientAddress(), "host", None))
    if wait is not None:
        request.setHeader(b"retry-after", str(math.ceil(wait)).encode())
        return PostRefusal(
            429,
            f"too many {what} from this address (at most {hub.post_rate.rate:g}"
            " per second); retry later",
            "limit",
        )
    try:
        given = request_token(request)
    except ValueError as e:
        return PostRefusal(400, str(e), "bad_request")
    if not token_ok(hub.token, given):
        request.setHeader(b"www-authenticate", b'Bearer realm="event-hub"')
        return PostRefusal(401, "a valid token is required", "unauthorized")
    if getattr(request, "too_large", False):
        return PostRefusal(413, f"the body is larger than {hub.max_body} bytes", "too_large")
    return None


def read_json_object(request: Request, fields: Sequence[str]) -> dict[str, Any]:
    """
    The request's body as a JSON object whose keys are among ``fields``, or ValueError
    saying what is wrong: not UTF-8, nested deeper than ``MAX_DEPTH`` (refused before
    parsing: ``json.loads`` would recurse once per level), not JSON (``NaN`` and numbers
    out of a double's range included: browsers' ``JSON.parse`` refuses them), not an
    object, or unknown fields (named, with the expected ones).
    """
    assert request.content is not None
    try:
        text = request.content.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"the body is not UTF-8 (invalid byte at {e.start})") from None
    if nested_deeper_than(text, MAX_DEPTH + 1):
        raise ValueError(f"the body is nested deeper than {MAX_DEPTH} levels in 'data'")
    try:
        payload = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except ValueError as e:
        raise ValueError(f"the body is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(payload) - set(fields))
    if unknown:
        quoted = [repr(name) for name in fields]
        expected = ", ".join(quoted[:-1]) + " and " + quoted[-1] if len(quoted) > 1 else quoted[0]
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; expected {expected}")
    return payload


class HubRequest(Request):
    """
    A request whose body may be at most ``max_body`` bytes, and that never parses a POST
    body as a form: the body is JSON, and a ``token`` hidden in a form body must not count
    as one.

    A body over the limit is answered ``413`` and the connection closed as soon as that is
    known: at the headers when ``Content-Length`` says so, or at the chunk that crosses
    the limit. Waiting for the rest would let a client that declares a huge length and
    never sends it hold the connection until the header timeout (and then get a 408 that
    does not say what was wrong); reading it would cost bandwidth for nothing.
    """

    max_body = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.too_large = False
        self._refused = False

    def gotLength(self, length: int | None) -> None:
        self._stored = 0
        if length is not None and length > self.max_body:
            super().gotLength(None)  # type: ignore[no-untyped-call]
            self._refuse_too_large()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._stored += len(data)
        if self._stored > self.max_body:
            self._refuse_too_large()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def _refuse_too_large(self) -> None:
        """Answer 413 now, unread body and all, and close the connection."""
        self.too_large = True
        channel: Any = self.channel
        if channel is None or channel.transport is None:
            return
        # Twisted would answer "Expect: 100-continue" right after this call: the client
        # must not be told to send the body it was just refused.
        self.requestHeaders.removeHeader(b"expect")
        channel.transport.write(
            _response(
                413, "Payload Too Large", f"the body is larger than {self.max_body} bytes",
                error_code="too_large",
            )
        )
        channel.loseConnection()
        self._refused = True

    def process(self) -> None:
        if self._refused:
            return  # answered 413 already; the body ended in data received with it
        super().process()  # type: ignore[no-untyped-call]


class EventsResource(Resource):
    """
    ``POST /events``: ``{"event": name, "keywords": {...}, "data": ...}`` -> 202. A keyword
    the hub was not started with (``--keyword``) is a 400 whose answer also lists the
    accepted ones as ``"allowed_keywords"`` (sorted), for a client to explain the refusal.
    """

    isLeaf = True
    allowedMethods = (b"POST",)

    def __init__(self, hub: Hub) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hub = hub

    def render_POST(self, request: Request) -> bytes | int:
        hub = self.hub
        refused = refuse_post(hub, request, "events")
        if refused is not None:
            return respond(request, refused.status, {"error": refused.message})
        try:
            event, keywords, data = self._parse(request)
        except ValueError as e:
            return respond(request, 400, {"error": str(e)})
        if not hub.dispatcher.running:
            return respond(request, 503, {"error": "the hub is shutting down"})
        try:
            d = hub.dispatcher.fire_event({"event": event, "data": data}, **keywords)
        except (TypeError, ValueError) as e:  # unknown keyword, unhashable value
            refusal: dict[str, Any] = {"error": f"keywords: {e}"}
            if isinstance(e, UnknownKeywordError):
                refusal["allowed_keywords"] = list(e.allowed)
            return respond(request, 400, refusal)
        finished: list[object] = []
        request.notifyFinish().addBoth(finished.append)
        d.addCallbacks(
            self._fired,
            self._failed,
            callbackArgs=(request, finished),
            errbackArgs=(request, finished),
        )
        return NOT_DONE_YET

    def _parse(self, request: Request) -> tuple[str, dict[str, Any], Any]:
        """
        The body as ``(event, keywords, data)``, or ValueError saying what is wrong: all
        of it is validated here, before any handler sees the event or anything is stored.
        """
        payload = read_json_object(request, _FIELDS)
        if "event" not in payload:
            raise ValueError("missing field 'event'")
        try:
            event = check_event_name(payload["event"], "'event'")
        except TypeError as e:
            raise ValueError(str(e)) from None
        keywords = payload.get("keywords", {})
        if not isinstance(keywords, dict):
            raise ValueError("'keywords' must be a JSON object")
        for name, value in keywords.items():
            if not isinstance(value, _SCALARS):
                raise ValueError(
                    f"keywords: value of {name!r} must be a string, number, boolean or null, "
                    f"not {type(value).__name__}"
                )
        data = payload.get("data")
        for field, value in (("keywords", keywords), ("data", data)):
            try:
                encode_json(value)  # lone surrogates, nesting: what publish would refuse
            except InvalidDataError as e:
                raise ValueError(f"{field!r}: {e}") from None
        return event, keywords, data

    def _fired(self, result: FireResult, request: Request, finished: list[object]) -> None:
        outcome = next(
            (o for o in result.outcomes if o.handler_id == self.hub.bridge_id), None
        )
        if outcome is None or not outcome.succeeded:
            reason = (
                "the event was vetoed before it was published"
                if outcome is None
                else f"publishing failed: {outcome.result.getErrorMessage()}"
            )
            body = respond(request, 503 if outcome is not None else 409, {"error": reason})
        elif isinstance(outcome.result, NotPublished):  # refused, and logged, by Publisher
            if outcome.result.code == 503:
                request.setHeader(b"retry-after", b"1")
            body = respond(request, outcome.result.code, {"error": outcome.result.reason})
        else:
            message = outcome.result
            body = respond(
                request,
                202,
                {
                    "id": message.id,
                    "epoch": message.epoch,
                    "channel": message.channel,
                    "event": message.event,
                    "handlers": result.handler_count,
                },
            )
        if not finished:
            request.write(body)
            request.finish()

    def _failed(self, failure: Failure, request: Request, finished: list[object]) -> None:
        _log.failure("POST /events failed", failure=failure)
        if not finished:
            request.write(respond(request, 500, {"error": failure.getErrorMessage()}))
            request.finish()


def _no_constant(name: str) -> Any:
    raise ValueError(
        f"{name} is not JSON (browsers' JSON.parse rejects it); send null or a string"
    )


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is out of range for a double")
    return number


class WebSocketEndpoint(WebSocketResource):
    """
    ``GET /ws``: the WebSocket carrier. Anything but a WebSocket handshake gets a JSON
    answer with the hub's headers (426), instead of Autobahn's own status page; other
    methods get 405 from the site (``allowedMethods``).
    """

    allowedMethods = (b"GET",)

    def __init__(self, factory: Any) -> None:
        super().__init__(factory)  # type: ignore[no-untyped-call]

    def render(self, request: Request) -> bytes:
        upgrade = request.getHeader(b"upgrade") or b""
        if b"websocket" not in upgrade.lower():
            request.setHeader(b"upgrade", b"websocket")
            return respond(
                request, 426,
                {"error": "/ws speaks WebSocket: open it with a WebSocket handshake"},
            )
        rendered: bytes = super().render(request)  # type: ignore[no-untyped-call]
        return rendered


class HealthResource(Resource):
    """
    ``GET /health``: JSON status (:meth:`Hub.health`), plus ``channels``: every channel
    of the hub (the default one first, then in creation order) as ``{"name", "backend",
    "subscribers", "listeners"}``; on a hub with a token, only for a request that carries
    it (others get the number of channels: names can be secrets). Counting a Redis
    channel's listeners asks Redis, so the answer is rendered when every count is in; a
    count Redis cannot give (down, hung: within :data:`~._health.HEALTH_DEADLINE`) is
    ``null``, and ``status`` says ``degraded`` with the reason.
    """

    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hub = hub

    def render_GET(self, request: Request) -> int:
        finished: list[object] = []
        request.notifyFinish().addBoth(finished.append)
        try:
            authorized = token_ok(self.hub.token, request_token(request))
        except ValueError:  # (a token that is not UTF-8: not the right one)
            authorized = False

        def write(health: dict[str, Any]) -> None:
            if not finished:
                finish_with(request, respond(request, 200, health))

        def failed(failure: Failure) -> None:
            _log.failure("GET /health failed", failure=failure)
            if not finished:
                finish_with(request, respond(request, 500, {"error": failure.getErrorMessage()}))

        Deferred.fromCoroutine(health_report(self.hub, authorized)).addCallbacks(write, failed)
        return NOT_DONE_YET


def static_root() -> File:
    """The demo page and its assets, served from the package."""
    path = package_files.files("twisted_event_dispatcher.hub") / "static"
    return File(str(path))

