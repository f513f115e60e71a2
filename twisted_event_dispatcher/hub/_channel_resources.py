"""
``POST /channels/{channel}/dispatch|broadcast|dispatch_group``: the control plane's
fire-and-forget verbs over HTTP, for callers that hold no connection.

Each request is checked as ``POST /events`` is (per-address rate ``hub.post_rate``, the
token, the body bound, the Origin guard of the site), its JSON body (with the path's
channel and verb) is given to the hub's :class:`~._control.ControlPlane` in the names of
:data:`NAMES` (``listener`` for ``r``, ``group`` for ``g``, ``event`` for ``t``, ``data``
for ``p``, ``channel`` for ``c``; the plane's messages name them so) and carried out
there, so each verb means exactly what it means on the control socket and the
WebSocket. The answer is ``202`` with the plane's fields (``id``: a group mail's starts
with ``g:``, as its listener sees it; ``epoch`` for a broadcast) and ``channel``; an
error is JSON ``{"error", "code"}`` with the status :data:`STATUS` maps the code to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..channels._names import check_event_name
from ._control import ControlPlane, Names, error_answer
from .resources import finish_with, read_json_object, refuse_post, respond

if TYPE_CHECKING:
    from .app import Hub

__all__ = ["NAMES", "STATUS", "ChannelsResource"]

#: The HTTP status of each control error code; a code not listed is a 500 (a bug).
STATUS: Final[dict[str, int]] = {
    "bad_request": 400,
    "invalid_data": 400,
    "reserved": 400,
    "default_channel": 400,
    "unauthorized": 401,
    "not_found": 404,
    "unknown_channel": 404,
    "unknown_listener": 404,
    "unknown_group": 404,
    "exists": 409,
    "mailbox_full": 409,
    "too_large": 413,
    "limit": 429,
    "internal": 500,
    "unavailable": 503,
}

#: Path verb -> (body fields in the order error messages list them, the fields that are
#: names and required).
_VERBS: Final[dict[bytes, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    b"dispatch": (("listener", "event", "data"), ("listener", "event")),
    b"broadcast": (("event", "data"), ("event",)),
    b"dispatch_group": (("group", "event", "data"), ("group", "event")),
}
#: How these requests name the control plane's fields and verbs (its messages use them).
NAMES: Final = Names(
    {"c": "channel", "r": "listener", "g": "group", "t": "event", "p": "data"},
    {"d": "dispatch", "b": "broadcast", "g": "dispatch_group"},
    verb_word="request",
    field_word="field",
)


class _Refused(Exception):
    """A request answered with an error before it reaches the control plane."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ChannelsResource(Resource):
    """
    ``POST /channels/{channel}/{verb}`` (``verb``: ``dispatch``, ``broadcast``,
    ``dispatch_group``); the channel name is percent-decoded from the path (UTF-8), so
    any valid name can be addressed (``%2F`` for a ``/`` in it).

    Bodies: ``dispatch`` ``{"listener", "event", "data"?}`` -> ``202 {"id": mail id,
    "channel"}`` (``event`` ``start``/``stop`` without data start or stop the listener:
    ``"id": null``); ``broadcast`` ``{"event", "data"?}`` -> ``202 {"id": offset,
    "epoch", "channel"}``; ``dispatch_group`` ``{"group", "event", "data"?}`` -> ``202
    {"id", "channel"}``. Unknown fields, a missing or invalid name, data that is not JSON
    (or too big for the channel) are 400; an unknown channel, listener or group 404; a
    full mailbox 409; a body over the hub's bound 413; over the rate 429 (with
    ``Retry-After``); Redis down or the hub stopping 503 (``Retry-After: 1``); no token
    401; another path under ``/channels`` 404; another method 405 (from the site).

    :param control: the plane that carries the verbs out (the hub's, shared with the
        other transports; by default one made for ``hub``).
    """

    isLeaf = True
    allowedMethods = (b"POST",)

    def __init__(self, hub: Hub, control: ControlPlane | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hub = hub
        #: The control plane the verbs go through.
        self.control = control if control is not None else ControlPlane(hub)

    def render_POST(self, request: Request) -> bytes | int:
        refused = refuse_post(self.hub, request, "requests")
        if refused is not None:
            return _error(request, refused.status, refused.code, refused.message)
        try:
            command = self._command(request)
        except _Refused as e:
            return _error(request, e.status, e.code, str(e))
        finished: list[object] = []
        request.notifyFinish().addBoth(finished.append)
        done: Deferred[dict[str, Any]] = maybeDeferred(self.control.execute, command, NAMES)
        done.addCallbacks(
            self._done,
            self._failed,
            callbackArgs=(request, finished, command),
            errbackArgs=(request, finished, command),
        )
        return NOT_DONE_YET

    def _command(self, request: Request) -> dict[str, Any]:
        """The control request (in :data:`NAMES`) for ``request``, or :class:`_Refused`."""
        path = request.postpath or []
        if len(path) != 2 or path[1] not in _VERBS:
            shown = request.path.decode("utf-8", "replace")
            raise _Refused(
                404, "not_found",
                f"no such resource {shown[:200]!r}; use POST /channels/{{channel}}/"
                + "|".join(v.decode() for v in _VERBS),
            )
        fields, names = _VERBS[path[1]]
        try:
            channel = check_event_name(path[0].decode("utf-8"), "channel name")
        except UnicodeDecodeError:
            raise _Refused(
                400, "bad_request",
                f"the channel name in the path, {path[0][:100]!r} once percent-decoded, "
                "is not UTF-8",
            ) from None
        except (TypeError, ValueError) as e:
            raise _Refused(400, "bad_request", f"the path's {e}") from None
        try:
            body = read_json_object(request, fields)
            command: dict[str, Any] = {"v": path[1].decode(), "channel": channel}
            for field in names:
                if field not in body:
                    raise ValueError(f"missing field {field!r}")
                command[field] = check_event_name(body[field], repr(field))
        except (TypeError, ValueError) as e:
            raise _Refused(400, "bad_request", str(e)) from None
        if "data" in body:
            command["data"] = body["data"]
        if not self.hub.dispatcher.running:
            raise _Refused(503, "unavailable", "the hub is shutting down")
        return command

    def _done(
        self,
        answer: dict[str, Any],
        request: Request,
        finished: list[object],
        command: dict[str, Any],
    ) -> None:
        if finished:
            return
        body = {k: v for k, v in answer.items() if k not in ("ok", "i", "v")}
        body["channel"] = command["channel"]
        finish_with(request, respond(request, 202, body))

    def _failed(
        self, failure: Failure, request: Request, finished: list[object], command: dict[str, Any]
    ) -> None:
        answer = error_answer(failure, command["v"])
        if not finished:
            code = str(answer.get("code", "internal"))
            status = STATUS.get(code, 500)
            finish_with(request, _error(request, status, code, str(answer["error"])))


def _error(request: Request, status: int, code: str, message: str) -> bytes:
    """An error answer: JSON ``{"error", "code"}``; a 503 says when to retry."""
    if status == 503:
        request.setHeader(b"retry-after", b"1")
    return respond(request, status, {"error": message, "code": code})
