"""
The control plane: the one place the hub's control verbs are carried out, whatever the
transport (the UNIX control socket, WebSocket, HTTP). A transport gives the plane a
request in its own field names, described by a :class:`Names` (the control socket's are
the canonical short keys of eric-sse, the default); the plane checks it, naming fields as
the client wrote them, translates it into the canonical request, carries it out, and
answers in the canonical keys, which the transport renders (or :func:`error_answer` of a
failure).

Canonical request: ``v`` the verb (``c r d b g q l w rl rc``), ``c`` the channel (default:
the hub's), ``t`` the message type, ``p`` the payload, ``r`` a listener id, ``g`` a group,
``a`` auto-ack, ``m`` max in flight, ``since``/``epoch`` (watch), ``timeout`` (request),
``size``/``ack_timeout`` (register), ``i`` a reference echoed in the answer. See
:mod:`._control_fields` for the bounds. Every field is checked before anything changes.

Mail ids: a group mail's id is shown and taken as ``"g:" + mail.id`` (:func:`wire_id`),
in mail lines and frames, acks, replies, releases and the answer of ``g`` (so what a
sender gets is what the listener sees): own and group mail ids come from different id
spaces (on Redis two streams), and the prefix keeps them apart on one listen stream.

Error codes (``code`` of an error answer): ``bad_request``, ``unknown_channel``,
``unknown_listener``, ``unknown_group``, ``exists``, ``limit``, ``mailbox_full``,
``reserved``, ``invalid_data``, ``remote`` (+ ``remote_type``), ``timeout``,
``unavailable``, ``default_channel``, ``streaming``, ``unknown_mail``, ``internal``; the
control socket adds ``too_large`` (a line over its limit; the connection is closed).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..carriers._requests import clip
from ..errors import (
    ChannelExistsError,
    ChannelLimitError,
    ChannelUnavailableError,
    DefaultChannelError,
    InvalidDataError,
    ListenerExistsError,
    ListenerLimitError,
    MailboxFullError,
    RemoteActionError,
    RequestTimeoutError,
    ReservedTypeError,
    UnknownChannelError,
    UnknownGroupError,
    UnknownListenerError,
)
from ..interfaces import ICarrier
from ._control_fields import SHORT_NAMES, VERBS, ControlError, Names, check_request, ref_of
from ._control_listen import GROUP_ID_PREFIX, ListenSession, ListenSink, mail_dict, wire_id

if TYPE_CHECKING:
    from ..channels.base import Channel
    from .app import Hub

__all__ = [
    "VERBS",
    "ControlError",
    "ControlPlane",
    "ListenSession",
    "ListenSink",
    "Names",
    "SHORT_NAMES",
    "error_answer",
    "mail_dict",
    "ref_of",
    "wire_id",
]

_log = Logger(namespace="twisted_event_dispatcher.hub")

#: Library errors and the code each one answers with (the first match wins).
_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (ControlError, ""),  # its own code
    (UnknownChannelError, "unknown_channel"),
    (UnknownListenerError, "unknown_listener"),
    (UnknownGroupError, "unknown_group"),
    (ChannelExistsError, "exists"),
    (ListenerExistsError, "exists"),
    (ChannelLimitError, "limit"),
    (ListenerLimitError, "limit"),
    (MailboxFullError, "mailbox_full"),
    (ReservedTypeError, "reserved"),
    (InvalidDataError, "invalid_data"),
    (RemoteActionError, "remote"),
    (RequestTimeoutError, "timeout"),
    (ChannelUnavailableError, "unavailable"),
    (DefaultChannelError, "default_channel"),
)


def error_answer(
    error: BaseException | Failure, verb: object, ref: str | int | None = None
) -> dict[str, Any]:
    """
    The error answer ``{"error": message, "v": verb or null, "code": code}`` (with
    ``"remote_type"`` for ``remote``, ``"i"`` if ``ref`` is given) for ``error``. An error
    that is no bad input nor a known library error is ``internal``: a bug of ours, logged
    here with its traceback (call this once per error).
    """
    failure = error if isinstance(error, Failure) else Failure(error)
    value = failure.value
    code = "internal"
    for kind, kind_code in _CODES:
        if isinstance(value, kind):
            code = kind_code or getattr(value, "code", "bad_request")
            break
    if code == "internal":
        _log.failure("control request {verb!r} failed", failure, verb=verb)
        message = "internal error (logged by the hub)"
    else:
        try:
            message = clip(str(value))
        except Exception:
            message = type(value).__name__
    shown = verb if isinstance(verb, str) and len(verb) <= 60 and verb.isprintable() else None
    answer: dict[str, Any] = {"error": message, "v": shown, "code": code}
    if isinstance(value, RemoteActionError):
        answer["remote_type"] = clip(value.remote_type)
    if ref is not None:
        answer["i"] = ref
    return answer


class ControlPlane:
    """
    Carries out control requests on ``hub``'s channels (see the module doc).

    Transports call :meth:`execute` for the one-shot verbs, :meth:`open_listen` for ``l``
    and :meth:`open_watch` for ``w``. Answers carry the request's ``i`` when it has one.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._registering: Counter[str] = Counter()

    def _channel(self, name: str | None) -> Channel:
        channel: Channel = self.hub.hub_channels.get(name)
        return channel

    # -- one-shot verbs ------------------------------------------------------------------

    def execute(
        self, request: dict[str, Any], names: Names = SHORT_NAMES
    ) -> Deferred[dict[str, Any]]:
        """
        Carry out a one-shot verb (``c r d b g q rl rc``); fires with the answer dict, or
        fails with :class:`ControlError` (bad input: nothing was done) or a library error
        (see :func:`error_answer`). Never raises. ``request`` is written in ``names`` (the
        transport's: see :class:`Names`), which its error messages name fields by; the
        answer is in the canonical short keys.
        """
        try:
            checked = check_request(request, names)
            verb = checked["v"]
            if verb in ("l", "w"):
                raise ControlError(
                    "bad_request", f"verb {verb!r} opens a stream: use open_listen/open_watch"
                )
            answered = Deferred.fromCoroutine(getattr(self, "_verb_" + verb)(checked))
        except Exception as e:
            return fail(e)
        ref = checked.get("i")
        if ref is not None:

            def echo(answer: dict[str, Any]) -> dict[str, Any]:
                answer["i"] = ref
                return answer

            answered.addCallback(echo)
        return answered

    async def _verb_c(self, request: dict[str, Any]) -> dict[str, Any]:
        channel = await self.hub.hub_channels.create(request["c"])
        return {"c": channel.name}

    async def _verb_r(self, request: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(request["c"])
        name = channel.name
        self._registering[name] += 1
        try:
            existing = await channel.listener_ids()
            if len(existing) + self._registering[name] - 1 >= self.hub.max_listeners:
                raise ListenerLimitError(name, self.hub.max_listeners)
            listener = await channel.add_listener(
                request["r"], group=request["g"], mailbox_size=request["size"],
                ack_timeout=request["ack_timeout"],
            )
        finally:
            self._registering[name] -= 1
            if not self._registering[name]:
                del self._registering[name]
        return {"r": listener.id, "c": name}

    async def _verb_d(self, request: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(request["c"])
        mail_id = await channel.dispatch(request["r"], request["t"], request["p"])
        return {"ok": True, "id": mail_id}

    async def _verb_g(self, request: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(request["c"])
        mail_id = await channel.dispatch_group(request["g"], request["t"], request["p"])
        # the id its listener will see: a group mail's wire id
        return {"ok": True, "id": GROUP_ID_PREFIX + mail_id}

    async def _verb_b(self, request: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(request["c"])
        message = await channel.broadcast(request["t"], request["p"])
        return {"ok": True, "id": message.id, "epoch": message.epoch}

    async def _verb_q(self, request: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(request["c"])
        reply = await channel.request(
            request["target"], request["t"], request["p"], group=request["group"],
            timeout=request["timeout"],
        )
        return {"ok": True, "p": reply}

    async def _verb_rl(self, request: dict[str, Any]) -> dict[str, Any]:
        await self._channel(request["c"]).remove_listener(request["r"])
        return {"ok": True}

    async def _verb_rc(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["c"]
        await self.hub.hub_channels.remove(name if name is not None else self.hub.channel.name)
        return {"ok": True}

    # -- streams -------------------------------------------------------------------------

    def open_listen(
        self, request: dict[str, Any], sink: ListenSink, names: Names = SHORT_NAMES
    ) -> Deferred[ListenSession]:
        """
        Verb ``l``: attach ``sink`` to listener ``r`` (replacing its consumer, whose stream
        ends ``"replaced"``). Fires with the :class:`ListenSession`: write its
        :attr:`~ListenSession.answer` (with ``i``) in the callback, then call
        :meth:`~ListenSession.start`, which writes the mail that came meanwhile. Later mail
        goes to ``sink.mail_line``; the end to ``sink.end``. Fails as :meth:`execute`;
        ``names`` as there.
        """
        try:
            checked = check_request(request, names)
            if checked["v"] != "l":
                raise ControlError("bad_request", f"open_listen takes 'l', not {checked['v']!r}")
            channel = self._channel(checked["c"])
            session = ListenSession(channel, checked["r"], sink, checked["a"])
            attached = channel.mailboxes.attach(checked["r"], session, checked["m"])
        except Exception as e:
            return fail(e)
        ref = checked.get("i")
        if ref is not None:
            session.answer["i"] = ref
        return attached.addCallback(session._attached)

    def open_watch(
        self, request: dict[str, Any], carrier: ICarrier, names: Names = SHORT_NAMES
    ) -> Deferred[dict[str, Any]]:
        """
        Verb ``w``: subscribe ``carrier`` to every event (``"*"``) of channel ``c``,
        resuming after ``since`` (of ``epoch``). Fires with the answer ``{"ok": true, "c",
        "epoch", "last_id", "replayed"}``: write it in the callback (synchronously); once
        the callback returns, the plane gives the carrier the gap notice (if the history
        cannot resume) and the replayed messages, in that order, before any live one.
        The request is checked at once; the subscription starts in the next reactor turn
        (after the caller added its callbacks), so this holds for a channel that answers
        synchronously (memory) too. ``names`` as for :meth:`execute`.
        """
        try:
            checked = check_request(request, names)
            if checked["v"] != "w":
                raise ControlError("bad_request", f"open_watch takes 'w', not {checked['v']!r}")
            channel = self._channel(checked["c"])
        except Exception as e:
            return fail(e)
        ref = checked.get("i")
        answered: Deferred[dict[str, Any]] = Deferred()

        def got(subscription: Any) -> None:
            answer: dict[str, Any] = {
                "ok": True, "c": subscription.channel, "epoch": subscription.epoch,
                "last_id": subscription.last_id, "replayed": len(subscription.replay),
            }
            if ref is not None:
                answer["i"] = ref
            answered.callback(answer)
            if carrier.closed:
                return
            if subscription.gap is not None:
                carrier.notify_gap(subscription.channel, subscription.event, subscription.gap)
            for message in subscription.replay:
                carrier.deliver(message)

        def subscribe() -> None:
            try:
                subscribed = channel.subscribe("*", carrier, checked["since"], checked["epoch"])
            except Exception as e:
                answered.errback(e)
                return
            subscribed.addCallbacks(got, answered.errback)

        from twisted.internet import reactor

        reactor.callLater(0, subscribe)
        return answered
