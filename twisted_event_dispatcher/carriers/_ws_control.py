"""
The hub's control verbs over WebSocket: request frames with long field names, named by
ONE table (:data:`FIELDS`, given to the control plane as :func:`request_names`), which
checks a frame in those names (so its error messages name the fields as the client wrote
them), translates it to its canonical short-key request
(:mod:`twisted_event_dispatcher.hub._control`) and carries every verb out; its answer is
translated back through the same table into a ``result`` frame, its errors into an
``error`` frame with a ``code``. The plane is the only place verbs are carried out, so a
verb means the same over WebSocket as over the control socket and HTTP.

Mail ids are the plane's wire ids: a group mail's starts with ``g:`` (its id in the
group's queue, which may equal an own mail's id), in ``mail`` frames, ``ack`` and
``release`` and the ``dispatch_group`` result alike.

A connection may hold several listens and watches and still send any request: frames are
typed. Per connection: at most ``max_listens`` listens (the factory's), at most
:data:`MAX_PENDING` requests awaiting their answer (more get ``code`` ``limit``). ``ack``
and ``release`` frames are not counted against the request rate (the carrier skips them,
so a listen never stalls), unless they fail: one that settles nothing (``unknown_mail``,
``bad_request``, ...) spends a token, and past the rate its ``error`` frame says ``limit``
instead, so a flood of bogus acknowledgements stays rate-limited. Every
request of these types gets exactly one ``result`` or ``error`` frame, carrying its
``ref`` when it had a valid one (a string or an integer of at most 64 characters as
JSON); bad input never closes the connection.

Mail frames go through the connection's carrier (:meth:`~.base.QueueingCarrier.send_control`):
in order with everything else, inside its bounded queue, never dropped (a client that
stalls with a full queue is disconnected, and its unacknowledged mail is redelivered to
the listener's next stream). With ``auto_ack`` a mail is acknowledged once it is written
to the transport, not while it waits in the queue (the plane's
:meth:`~twisted_event_dispatcher.hub._control.ListenSession.resume` runs when the queue
has drained), so a client that stops reading stops getting mail after ``max_in_flight``.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..channels.base import WILDCARD
from ..channels.message import MAX_DEPTH, encode_json
from ._requests import BadRequest, clip, parse_request, show

if TYPE_CHECKING:
    from ..hub._control import ControlPlane, ListenSession, Names
    from .websocket import EventWebSocketProtocol

__all__ = [
    "FIELDS", "MAX_PENDING", "TYPES", "VERBS", "ConnectionControl", "peek", "request_names"
]

_log = Logger(namespace="twisted_event_dispatcher.websocket")

#: WebSocket field name -> canonical (control socket) key: the one translation table, used
#: for requests (long -> short) and for answers and mail (short -> long).
FIELDS: Final[dict[str, str]] = {
    "channel": "c",
    "event": "t",
    "data": "p",
    "listener": "r",
    "group": "g",
    "auto_ack": "a",
    "max_in_flight": "m",
    "ref": "i",
    "mailbox_size": "size",
    "deliveries": "n",
    "source": "s",
    "request": "q",  # a mail that is a request (its reply is expected)
    "since": "since",
    "epoch": "epoch",
    "timeout": "timeout",
    "ack_timeout": "ack_timeout",
    "id": "id",
    "ok": "ok",
    "last_id": "last_id",
    "replayed": "replayed",
    "remote_type": "remote_type",
}
_LONG: Final[dict[str, str]] = {short: long for long, short in FIELDS.items()}

#: Request type -> the control plane's verb.
VERBS: Final[dict[str, str]] = {
    "create_channel": "c",
    "register": "r",
    "dispatch": "d",
    "broadcast": "b",
    "dispatch_group": "g",
    "request": "q",
    "listen": "l",
    "watch": "w",
    "remove_listener": "rl",
    "remove_channel": "rc",
}
_TYPE_OF_VERB: Final[dict[str, str]] = {verb: kind for kind, verb in VERBS.items()}

#: Requests about this connection's own streams, carried out here: type -> (fields it
#: accepts besides ``type``, fields it needs).
_STREAM_TYPES: Final[dict[str, tuple[frozenset[str], tuple[str, ...]]]] = {
    "ack": (frozenset({"channel", "listener", "id", "reply", "error", "ref"}), ("listener", "id")),
    "release": (frozenset({"channel", "listener", "id", "ref"}), ("listener", "id")),
    "unlisten": (frozenset({"channel", "listener", "ref"}), ("listener",)),
    "unwatch": (frozenset({"channel", "ref"}), ()),
}
#: Every request type of the control protocol over WebSocket.
TYPES: Final = frozenset(VERBS) | frozenset(_STREAM_TYPES)
#: A request's ``ref`` as echoed (None: none, or one that cannot be echoed).
Ref = str | int | None
#: Requests of one connection awaiting their answer (a ``request`` may wait minutes).
MAX_PENDING: Final = 1000
#: Types that settle mail: counted against the request rate only when they fail.
_SETTLING: Final = frozenset({"ack", "release"})


class Refused(BadRequest):
    """A control request refused before the plane: an ``error`` frame with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _frame(payload: dict[str, Any]) -> bytes:
    # Data (a mail's, a reply) was checked at MAX_DEPTH; the frame adds one level.
    return encode_json(payload, MAX_DEPTH + 1).encode("utf-8")


def _ref(frame: dict[str, Any]) -> Ref:
    """The frame's ``ref`` if it may be echoed (the plane's rule), else None."""
    from ..hub._control import ref_of

    return ref_of({"i": frame["ref"]}) if "ref" in frame else None


def peek(payload: bytes) -> tuple[str, dict[str, Any]] | None:
    """A frame's type and fields if it is a control request, else None (not even JSON)."""
    try:
        frame = parse_request(payload)
    except BadRequest:
        return None
    kind = frame.get("type")
    return (kind, frame) if isinstance(kind, str) and kind in TYPES else None


@cache
def request_names() -> Names:
    """
    How request frames name things, for the control plane: :data:`FIELDS`, the verb in
    ``type`` (:data:`VERBS`), "request 'dispatch'" and "unknown field(s)" in messages.
    """
    from ..hub._control import Names  # (the hub imports this module)

    return Names(
        _LONG, _TYPE_OF_VERB, verb_key="type", verb_word="request", field_word="field"
    )


def result(kind: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The ``result`` frame of the plane's ``answer`` to a request of type ``kind``."""
    frame: dict[str, Any] = {"type": "result", "request": kind}
    for key, value in answer.items():
        frame[_LONG.get(key, key)] = value
    return frame


def mail_frame(mail: dict[str, Any]) -> bytes:
    """The ``mail`` frame of the plane's mail dict."""
    frame: dict[str, Any] = {"type": "mail"}
    for key, value in mail.items():
        frame[_LONG.get(key, key)] = value
    return _frame(frame)


class _Listen:
    """One listen of a connection: the plane's ``ListenSink`` for it."""

    __slots__ = ("control", "key", "session", "ended")

    def __init__(self, control: ConnectionControl, key: tuple[str, str] | None) -> None:
        self.control = control
        self.key = key
        self.session: ListenSession | None = None
        self.ended = False

    @property
    def writable(self) -> bool:
        carrier = self.control.protocol.carrier
        return carrier is not None and carrier.writable

    def mail_line(self, mail: dict[str, Any]) -> None:
        carrier = self.control.protocol.carrier
        if not self.ended and carrier is not None:
            carrier.send_control(mail_frame(mail))

    def end(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.control._ended(self, reason)


class ConnectionControl:
    """The control requests of one WebSocket connection: its listens and pending answers."""

    def __init__(self, protocol: EventWebSocketProtocol) -> None:
        self.protocol = protocol
        self.plane: ControlPlane | None = protocol.factory.control
        self.closed = False
        #: Listens by (channel, listener); a session is None while the plane attaches it.
        self.listens: dict[tuple[str, str], _Listen] = {}
        #: Requests whose answer is not out yet.
        self.pending = 0

    # -- requests ------------------------------------------------------------------------

    def handle(self, kind: str, frame: dict[str, Any]) -> None:
        """Carry out a request frame of type ``kind`` (in :data:`TYPES`); one answer frame."""
        ref = _ref(frame)
        try:
            if self.plane is None:
                raise Refused(
                    "unsupported",
                    f"{kind!r} needs the hub's control plane; this server only serves "
                    "subscribe, unsubscribe and ping",
                )
            if kind in _STREAM_TYPES:  # (quick, and never held up by slow requests)
                self._stream_request(kind, frame, ref)
                return
            if self.pending >= MAX_PENDING:
                raise Refused(
                    "limit",
                    f"{MAX_PENDING} requests of this connection are awaiting their answer; "
                    "wait for some before sending more",
                )
            if kind == "listen":
                self._listen(frame, ref)
            elif kind == "watch":
                self._watch(frame, ref)
            else:
                self._answer(kind, self.plane.execute(frame, request_names()), ref)
        except Exception as e:
            self.error(kind, e, ref)

    def refuse(self, kind: str, frame: dict[str, Any], code: str, message: str) -> None:
        """Answer a request frame with an error without carrying it out (e.g. the rate)."""
        self.error(kind, Refused(code, message), _ref(frame))

    def _answer(self, kind: str, answered: Deferred[dict[str, Any]], ref: Ref) -> None:
        """Send the ``result`` (or ``error``) frame of ``answered`` when it fires."""
        self.pending += 1

        def done(answer: dict[str, Any]) -> None:
            self.pending -= 1
            if ref is not None:
                answer["i"] = ref
            self.send(result(kind, answer))

        def failed(failure: Failure) -> None:
            self.pending -= 1
            self.error(kind, failure, ref)

        answered.addCallbacks(done, failed)
        answered.addErrback(self._bug, kind)

    def error(self, kind: str, error: BaseException | Failure, ref: Ref) -> None:
        """The ``error`` frame of a failed request (``internal`` errors are logged)."""
        if kind in _SETTLING:
            error = self._count_failed(kind, error)
        value = error.value if isinstance(error, Failure) else error
        if isinstance(value, Refused):
            code, reason, remote = value.code, clip(str(value)), None
        else:
            from ..hub._control import error_answer

            answer = error_answer(error, VERBS.get(kind, kind))
            code, reason, remote = answer["code"], answer["error"], answer.get("remote_type")
        frame: dict[str, Any] = {"type": "error", "reason": reason, "request": kind, "code": code}
        if remote is not None:
            frame["remote_type"] = remote
        if ref is not None:
            frame["ref"] = ref
        self.send(frame)

    def _count_failed(
        self, kind: str, error: BaseException | Failure
    ) -> BaseException | Failure:
        """
        An ``ack``/``release`` that settled nothing spends a token of the request rate
        (valid ones never do); past the rate its error becomes ``limit``.
        """
        rate = self.protocol.factory.request_rate
        if rate.take(id(self.protocol)) is None:
            return error
        value = error.value if isinstance(error, Failure) else error
        return Refused(
            "limit",
            f"too many requests: at most {rate.rate:g} a second on one connection, and an "
            f"{kind} that settles no mail counts as one ({value})",
        )

    def send(self, frame: dict[str, Any]) -> None:
        carrier = self.protocol.carrier
        if carrier is not None:
            carrier.send_control(_frame(frame))

    def _bug(self, failure: Failure, kind: str) -> None:
        _log.failure("answering a {kind!r} request failed", failure, kind=kind)

    # -- listen --------------------------------------------------------------------------

    def _listen(self, frame: dict[str, Any], ref: Ref) -> None:
        assert self.plane is not None
        channel = frame.get("channel", self.protocol.factory.default_channel)
        listener = frame.get("listener")
        key = None
        if isinstance(channel, str) and isinstance(listener, str):
            key = (channel, listener)
        if key is not None and key in self.listens:
            raise Refused(
                "bad_request",
                f"this connection listens to {show(listener)} on channel {show(channel)} "
                "already; unlisten first",
            )
        limit = self.protocol.factory.max_listens
        if len(self.listens) >= limit:
            raise Refused("limit", f"listen limit reached ({limit} per connection)")
        listen = _Listen(self, key)
        if key is not None:
            self.listens[key] = listen
        self.pending += 1
        opened = self.plane.open_listen(frame, listen, request_names())
        opened.addCallbacks(
            self._listening, self._listen_failed, callbackArgs=(listen, ref),
            errbackArgs=(listen, ref),
        )
        opened.addErrback(self._bug, "listen")

    def _listening(
        self, session: ListenSession, listen: _Listen, ref: Ref
    ) -> None:
        self.pending -= 1
        listen.session = session
        if self.closed or listen.ended:  # (the connection is gone)
            listen.ended = True
            session.close().addErrback(self._bug, "listen")
            return
        key = (session.channel.name, session.listener_id)
        if listen.key != key:  # (names the key could not be made of, checked by the plane)
            if listen.key is not None and self.listens.get(listen.key) is listen:
                del self.listens[listen.key]
            if key in self.listens:
                listen.ended = True
                session.close().addErrback(self._bug, "listen")
                self.error("listen", Refused("bad_request", "listening already"), ref)
                return
            listen.key = key
            self.listens[key] = listen
        answer = dict(session.answer)
        if ref is not None:
            answer["i"] = ref
        self.send(result("listen", answer))
        session.start()

    def _listen_failed(self, failure: Failure, listen: _Listen, ref: Ref) -> None:
        self.pending -= 1
        listen.ended = True
        if listen.key is not None and self.listens.get(listen.key) is listen:
            del self.listens[listen.key]
        self.error("listen", failure, ref)

    def _ended(self, listen: _Listen, reason: str) -> None:
        """A listen's consumer ended (removed, replaced, closed): tell the client."""
        key = listen.key
        if key is None or self.listens.get(key) is not listen:
            return
        del self.listens[key]
        self.send({"type": "listen_end", "channel": key[0], "listener": key[1], "reason": reason})

    def _find_listen(self, frame: dict[str, Any]) -> tuple[tuple[str, str], ListenSession]:
        from ..channels._names import check_event_name

        try:
            channel = check_event_name(
                frame.get("channel", self.protocol.factory.default_channel), "channel name"
            )
            listener = check_event_name(frame["listener"], "listener id")
        except (TypeError, ValueError) as e:
            raise Refused("bad_request", str(e)) from None
        listen = self.listens.get((channel, listener))
        if listen is None:
            raise Refused(
                "bad_request",
                f"this connection is not listening to {show(listener)} on channel "
                f"{show(channel)}",
            )
        if listen.session is None:
            raise Refused(
                "bad_request",
                f"the listen of {show(listener)} on channel {show(channel)} is still "
                "opening; wait for its result",
            )
        return (channel, listener), listen.session

    def _stream_request(self, kind: str, frame: dict[str, Any], ref: Ref) -> None:
        accepted, required = _STREAM_TYPES[kind]
        unknown = sorted(k for k in frame if k != "type" and k not in accepted)
        if unknown:
            raise Refused(
                "bad_request",
                f"unknown field(s) {', '.join(show(k) for k in unknown[:5])} for request "
                f"{kind!r}; it accepts {', '.join(sorted(accepted | {'type'}))}",
            )
        missing = [k for k in required if k not in frame]
        if missing:
            names = ", ".join(repr(k) for k in missing)
            raise Refused("bad_request", f"missing {names} for request {kind!r}")
        if "ref" in frame and ref is None:
            raise Refused(
                "bad_request",
                f"'ref' must be a string or an integer of at most 64 characters as JSON, "
                f"got {show(frame['ref'])}",
            )
        if kind == "unwatch":
            self._unwatch(frame, ref)
            return
        key, session = self._find_listen(frame)
        if kind == "unlisten":
            listen = self.listens.pop(key)
            listen.ended = True
            closed: Deferred[Any] = session.close()
            self._answer(
                kind,
                closed.addCallback(lambda _: {"ok": True, "c": key[0], "r": key[1]}),
                ref,
            )
            return
        mail_id = frame["id"]
        if kind == "release":
            line: dict[str, Any] = {"release": mail_id}
        else:
            line = {"ack": mail_id}
            for name in ("reply", "error"):
                if name in frame:
                    line[name] = frame[name]
        settled: Deferred[Any] = session.client_line(line)
        self._answer(kind, settled.addCallback(lambda _: {"ok": True, "id": mail_id}), ref)

    # -- watch ---------------------------------------------------------------------------

    def _watch(self, frame: dict[str, Any], ref: Ref) -> None:
        assert self.plane is not None
        protocol = self.protocol
        channel = frame.get("channel", protocol.factory.default_channel)
        carrier = protocol.carrier
        assert carrier is not None
        key: tuple[str, str] | None = None
        if isinstance(channel, str):
            key = (channel, WILDCARD)
            try:
                protocol.check_subscribable(channel, WILDCARD, frame.get("since"))
            except BadRequest as e:
                raise Refused("bad_request", str(e)) from None
            limit = protocol.factory.max_subscriptions
            if len(protocol._subscriptions) >= limit:
                raise Refused("limit", f"subscription limit reached ({limit} per connection)")
            protocol._resuming.add(key)
        watched = self.plane.open_watch(frame, carrier, request_names())

        def subscribed(answer: dict[str, Any]) -> dict[str, Any]:
            if key is not None:
                protocol._resuming.discard(key)
                subscribed_channel = protocol.factory.channels.get(answer["c"])
                if subscribed_channel is not None and not self.closed:
                    protocol._subscriptions[key] = subscribed_channel
            return answer

        def failed(failure: Failure) -> Failure:
            if key is not None:
                protocol._resuming.discard(key)
            return failure

        self._answer("watch", watched.addCallbacks(subscribed, failed), ref)

    def _unwatch(self, frame: dict[str, Any], ref: Ref) -> None:
        protocol = self.protocol
        from ..channels._names import check_event_name

        try:
            name = check_event_name(
                frame.get("channel", protocol.factory.default_channel), "channel name"
            )
        except (TypeError, ValueError) as e:
            raise Refused("bad_request", str(e)) from None
        key = (name, WILDCARD)
        if key in protocol._resuming:
            raise Refused(
                "bad_request",
                f"the watch of channel {show(name)} is still resuming; unwatch once it is "
                "answered",
            )
        channel = protocol._subscriptions.pop(key, None)
        if channel is None:
            raise Refused("bad_request", f"not watching channel {show(name)}")
        carrier = protocol.carrier
        assert carrier is not None
        channel.unsubscribe(WILDCARD, carrier)
        answer: dict[str, Any] = {"ok": True, "c": name}
        if ref is not None:
            answer["i"] = ref
        self.send(result("unwatch", answer))

    # -- the connection ------------------------------------------------------------------

    def drained(self) -> None:
        """Everything queued is written: auto-ack what was written while paused."""
        for listen in list(self.listens.values()):
            if listen.session is not None and not listen.ended:
                listen.session.resume()

    def channel_removed(self, name: str) -> None:
        """The hub removed channel ``name``: its listens here end (``"closed"``)."""
        for key, listen in list(self.listens.items()):
            # (one still opening ends through the plane, after its result)
            if key[0] == name and listen.session is not None:
                listen.end("closed")

    def connection_lost(self) -> None:
        """The client is gone: every listen detaches (unacknowledged mail is redelivered)."""
        if self.closed:
            return
        self.closed = True
        listens, self.listens = self.listens, {}
        for listen in listens.values():
            listen.ended = True
            if listen.session is not None:
                listen.session.close().addErrback(self._bug, "listen")
