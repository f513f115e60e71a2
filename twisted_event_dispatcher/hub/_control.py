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

Removal: a request whose channel is removed while it is under way answers
``unknown_channel`` ("channel X was removed"), never ``unavailable`` (which would invite
retries against a channel that no longer exists): the plane compares the channel object
it resolved with the one registered now. A ``r`` that succeeded on a channel removed
meanwhile is undone (best effort) and answered so too; a ``l`` that attached to one is
closed. Removing a channel (``rc``) fails its pending requests (``q``) at once; removing a
listener through the plane (``rl``) fails at once the ``q`` addressed to that listener
(``unknown_listener``, "removed while the request waited").

Open listens are bounded hub-wide (:attr:`ControlPlane.max_listens`, ``--max-listens``,
default :data:`DEFAULT_MAX_LISTENS`): on Redis each one holds a connection to Redis (a
file descriptor) for as long as it is open; one more is answered ``limit``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.defer import CancelledError, Deferred, fail
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
    from ..listeners._requests import PendingRequests
    from .app import Hub

__all__ = [
    "DEFAULT_MAX_LISTENS",
    "VERBS",
    "ControlError",
    "ControlPlane",
    "ListenSession",
    "ListenSink",
    "Names",
    "RemovedChannelError",
    "RemovedListenerError",
    "SHORT_NAMES",
    "error_answer",
    "mail_dict",
    "ref_of",
    "wire_id",
]

_log = Logger(namespace="twisted_event_dispatcher.hub")

#: Listens open at once in the whole hub (``--max-listens``), unless the hub says otherwise.
DEFAULT_MAX_LISTENS: Final = 1000


class RemovedChannelError(UnknownChannelError):
    """The channel a request named was removed while the request was under way."""

    def __str__(self) -> str:
        return f"channel {self.name!r} was removed"


class RemovedListenerError(UnknownListenerError):
    """The listener a request (``q``) waited on was removed through this hub."""

    def __str__(self) -> str:
        return (
            f"listener {self.listener_id!r} of channel {self.channel!r} was removed while "
            "the request waited"
        )

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

    :ivar max_listens: listens open (or opening) at once in the whole hub, over every
        transport; one more is refused with ``limit``. Read from ``hub.max_listens``
        when the hub has one (``--max-listens``), else :data:`DEFAULT_MAX_LISTENS`.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.max_listens: int = getattr(hub, "max_listens", DEFAULT_MAX_LISTENS)
        # Listener ids being registered, by channel: a second register of one of them is
        # "exists" (it would be once the first is done), and each counts once.
        self._registering: dict[Channel, set[str]] = {}
        # The listen sessions open or opening (each may hold a Redis connection).
        self._listens: set[ListenSession] = set()
        # Requests (q) waiting for their reply, by channel: Deferred -> its listener id
        # (None: a group's), so that rl can fail those of the listener it removed.
        self._asking: dict[Channel, dict[Deferred[Any], str | None]] = {}
        # Requests cancelled by the plane, and the error each one answers with instead.
        self._interrupted: dict[Deferred[Any], Exception] = {}

    @property
    def open_listens(self) -> int:
        """Listens open or opening now, in the whole hub."""
        return len(self._listens)

    def _channel(self, name: str | None) -> Channel:
        channel: Channel = self.hub.hub_channels.get(name)
        return channel

    def _current(self, channel: Channel) -> bool:
        """Whether ``channel`` is still the hub's channel of its name (not removed)."""
        registry = self.hub.channels
        return channel.name in registry and registry[channel.name] is channel

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
            channel = None if verb in ("c", "rc") else self._channel(checked["c"])
            answered = Deferred.fromCoroutine(self._run(verb, checked, channel))
        except Exception as e:
            return fail(e)
        ref = checked.get("i")
        if ref is not None:

            def echo(answer: dict[str, Any]) -> dict[str, Any]:
                answer["i"] = ref
                return answer

            answered.addCallback(echo)
        return answered

    async def _run(
        self, verb: str, request: dict[str, Any], channel: Channel | None
    ) -> dict[str, Any]:
        """
        Verb ``verb`` on ``channel`` (resolved once, here): a failure once the channel is
        removed is :class:`RemovedChannelError` (Redis going away under a removed channel
        is no reason to retry).
        """
        method = getattr(self, "_verb_" + verb)
        if channel is None:
            answer: dict[str, Any] = await method(request)
            return answer
        try:
            answer = await method(request, channel)
        except (ControlError, UnknownChannelError):
            raise
        except Exception as e:
            if self._current(channel):
                raise
            raise RemovedChannelError(channel.name) from e
        return answer

    async def _verb_c(self, request: dict[str, Any]) -> dict[str, Any]:
        channel = await self.hub.hub_channels.create(request["c"])
        return {"c": channel.name}

    async def _verb_r(self, request: dict[str, Any], channel: Channel) -> dict[str, Any]:
        name = channel.name
        # (a generated id is made here, so that it is known even if the register fails)
        listener_id: str = request["r"] if request["r"] is not None else uuid.uuid4().hex
        registering = self._registering.setdefault(channel, set())
        if listener_id in registering:
            raise ListenerExistsError(name, listener_id)
        registering.add(listener_id)
        try:
            existing = await channel.listener_ids()
            if listener_id in existing:
                raise ListenerExistsError(name, listener_id)
            if len(existing) + len(registering) - 1 >= self.hub.max_listeners:
                raise ListenerLimitError(name, self.hub.max_listeners)
            listener = await channel.add_listener(
                listener_id, group=request["g"], mailbox_size=request["size"],
                ack_timeout=request["ack_timeout"],
            )
        except ChannelUnavailableError:
            # Redis may have carried out a register whose answer was lost with the removed
            # channel's connection: undo it if the id is surely this request's (generated).
            if request["r"] is None and not self._current(channel):
                self._undo_register(channel, listener_id)
            raise
        finally:
            registering.discard(listener_id)
            if not registering and self._registering.get(channel) is registering:
                del self._registering[channel]
        if not self._current(channel):  # registered in a channel removed meanwhile
            self._undo_register(channel, listener.id)
            raise RemovedChannelError(name)
        return {"r": listener.id, "c": name}

    def _undo_register(self, channel: Channel, listener_id: str) -> None:
        """Remove ``listener_id``, registered on ``channel`` after it was removed (best effort)."""
        undone = Deferred.fromCoroutine(self._unregister(channel, listener_id))

        def failed(failure: Failure) -> None:
            if not failure.check(UnknownListenerError):
                _log.warn(
                    "channel {name}: could not remove listener {id}, registered while the "
                    "channel was removed: {error}",
                    name=channel.name, id=listener_id, error=failure.getErrorMessage(),
                )

        undone.addErrback(failed)

    async def _unregister(self, channel: Channel, listener_id: str) -> None:
        if getattr(channel, "connect", None) is None:  # memory: the listener lived in it
            await channel.remove_listener(listener_id)
            return
        # Redis: the listener is in Redis, which the removed channel is disconnected from.
        registry = self.hub.channels
        if channel.name in registry:  # (made again meanwhile: the same keys)
            await registry[channel.name].remove_listener(listener_id)
            return
        connected: Any = self.hub.hub_channels.make(channel.name)
        await connected.connect()
        try:
            await connected.remove_listener(listener_id)
        finally:
            await connected.disconnect()
        _log.info(
            "channel {name}: listener {id}, registered while the channel was removed, "
            "removed again", name=channel.name, id=listener_id,
        )

    async def _verb_d(self, request: dict[str, Any], channel: Channel) -> dict[str, Any]:
        mail_id = await channel.dispatch(request["r"], request["t"], request["p"])
        return {"ok": True, "id": mail_id}

    async def _verb_g(self, request: dict[str, Any], channel: Channel) -> dict[str, Any]:
        mail_id = await channel.dispatch_group(request["g"], request["t"], request["p"])
        # the id its listener will see: a group mail's wire id
        return {"ok": True, "id": GROUP_ID_PREFIX + mail_id}

    async def _verb_b(self, request: dict[str, Any], channel: Channel) -> dict[str, Any]:
        message = await channel.broadcast(request["t"], request["p"])
        return {"ok": True, "id": message.id, "epoch": message.epoch}

    async def _verb_q(self, request: dict[str, Any], channel: Channel) -> dict[str, Any]:
        asked = channel.request(
            request["target"], request["t"], request["p"], group=request["group"],
            timeout=request["timeout"],
        )
        waiting = self._asking.setdefault(channel, {})
        waiting[asked] = None if request["group"] else request["target"]
        try:
            reply = await asked
        except CancelledError:
            instead = self._interrupted.pop(asked, None)
            if instead is None:
                raise
            raise instead from None
        finally:
            waiting.pop(asked, None)
            self._interrupted.pop(asked, None)
            if not waiting and self._asking.get(channel) is waiting:
                del self._asking[channel]
        return {"ok": True, "p": reply}

    async def _verb_rl(self, request: dict[str, Any], channel: Channel) -> dict[str, Any]:
        listener_id = request["r"]
        await channel.remove_listener(listener_id)
        # the requests waiting on it would wait for their timeout: fail them now
        for asked, target in list(self._asking.get(channel, {}).items()):
            if target == listener_id and not asked.called:
                self._interrupted[asked] = RemovedListenerError(channel.name, listener_id)
                asked.cancel()  # (forgets the request: a late reply is ignored)
        return {"ok": True}

    async def _verb_rc(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["c"] if request["c"] is not None else self.hub.channel.name
        registry = self.hub.channels
        channel = registry[name] if name in registry else None
        removing = self.hub.hub_channels.remove(name)  # (the registry forgets it at once)
        if channel is not None:
            # Its requests waiting for a reply fail now rather than at their timeout.
            requests: PendingRequests | None = channel._requests
            if requests is not None:
                requests.fail_all(RemovedChannelError(name))
        await removing
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
        ``names`` as there; ``limit`` when :attr:`max_listens` listens are open.
        """
        try:
            checked = check_request(request, names)
            if checked["v"] != "l":
                raise ControlError("bad_request", f"open_listen takes 'l', not {checked['v']!r}")
            channel = self._channel(checked["c"])
            if len(self._listens) >= self.max_listens:
                raise ControlError(
                    "limit",
                    f"the hub has {len(self._listens)} listens open, its limit "
                    f"(--max-listens {self.max_listens}); close one, or start the hub with "
                    "a higher --max-listens",
                )
            session = ListenSession(
                channel, checked["r"], sink, checked["a"], on_end=self._listens.discard
            )
            attached = channel.mailboxes.attach(checked["r"], session, checked["m"])
        except Exception as e:
            return fail(e)
        self._listens.add(session)
        ref = checked.get("i")
        if ref is not None:
            session.answer["i"] = ref

        def opened(attachment: Any) -> ListenSession:
            session._attached(attachment)
            if not self._current(channel):  # attached to a channel removed meanwhile
                session.close().addErrback(session._log_failure, "detaching")
                raise RemovedChannelError(channel.name)
            return session

        def failed(failure: Failure) -> Failure:
            self._listens.discard(session)
            if failure.check(ControlError, UnknownChannelError) or self._current(channel):
                return failure
            return Failure(RemovedChannelError(channel.name))

        return attached.addCallbacks(opened, failed)

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
