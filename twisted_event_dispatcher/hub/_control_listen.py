"""
ListenSession: a transport's connection attached to one listener's mailbox (the control
verb ``l``). It turns each :class:`~twisted_event_dispatcher.listeners.mail.Mail` into a
mail dict for the transport's :class:`ListenSink`, and carries out the client's ``ack``,
``reply``, ``error`` and ``release`` by mail id.

Mail ids on the wire: a listener's own mail and its group's mail come from two id spaces
(on Redis, the entry ids of two streams, which can be equal), so the control plane shows
a group mail's id as ``"g:" + mail.id`` (:func:`wire_id`) wherever it shows or takes one:
mail lines and frames, ``ack``/``reply``/``error``/``release``, and the answer of the
``g`` verb. Own mail ids are made of digits (``"17"`` in memory, a stream id such as
``"1700000000000-0"`` on Redis), so they never start with ``g:``: a wire id names
exactly one mail in flight on a stream. :attr:`Mail.id
<twisted_event_dispatcher.listeners.mail.Mail.id>` itself is unchanged.

Flow control: at most ``m`` mails are unacknowledged at once (the attachment's
``max_in_flight``). With auto-ack, a mail is acknowledged as it is written only while the
sink is :attr:`ListenSink.writable`; mail written while the transport is paused waits
for :meth:`ListenSession.resume`, so a client that stops reading stops getting mail once
``m`` are in flight: the buffer in front of it stays bounded. A request (``"q": true``)
is never auto-acknowledged: it is acknowledged when the client replies (or releases it).

Read-only streams (:meth:`ListenSession.read_only`): a client that half-closed its
connection (eric-sse's ``SocketClient``) can send no acknowledgement, so from then on
every mail is acknowledged as it is written (as with auto-ack, and only while the sink is
writable); mail written before and still unacknowledged is acknowledged then; and a
request (``"q": true``) is written, then failed back at once to its requester with
``remote_type`` ``"ClientError"`` (:data:`READ_ONLY_REFUSAL`): nobody could reply to it,
and releasing it would only hand it back to the same stream.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..carriers._requests import show
from ..channels.message import encode_json
from ..errors import InvalidDataError
from ..listeners.listener import MAX_ERROR_MESSAGE
from ._control_fields import ControlError

if TYPE_CHECKING:
    from ..channels.base import Channel
    from ..listeners._backend import Attachment
    from ..listeners.mail import Mail

__all__ = [
    "CLIENT_ERROR", "GROUP_ID_PREFIX", "READ_ONLY_REFUSAL", "ListenSession", "ListenSink",
    "wire_id",
]

_log = Logger(namespace="twisted_event_dispatcher.hub")

#: The ``remote_type`` a requester gets when the client answers ``{"ack", "error"}``.
CLIENT_ERROR = "ClientError"
#: What a group mail's wire id starts with (see the module doc).
GROUP_ID_PREFIX: Final = "g:"
#: The error a request to a read-only stream fails with (``remote_type`` CLIENT_ERROR).
READ_ONLY_REFUSAL: Final = (
    "listener {listener}'s stream cannot reply: its client half-closed the connection "
    "(it reads only), so requests to it fail at once"
)


def wire_id(mail: Mail) -> str:
    """The id the control plane shows for ``mail``: ``"g:" + mail.id`` for group mail."""
    return GROUP_ID_PREFIX + mail.id if mail.source == "group" else mail.id


def _no_longer_held(failure: Failure) -> None:
    """(A refused request that went back for redelivery meanwhile: nothing to settle.)"""
    failure.trap(ControlError)


class ListenSink(Protocol):
    """What a transport gives :meth:`~._control.ControlPlane.open_listen`."""

    @property
    def writable(self) -> bool:
        """False while the transport is paused (its client is not reading)."""

    def mail_line(self, mail: dict[str, Any]) -> None:
        """
        Write one mail: ``{"id", "t", "p", "n", "s", "r", "c"}`` (+ ``"q": true`` for a
        request, ``"g"`` for group mail); ``id`` is the :func:`wire_id`.
        """

    def end(self, reason: str) -> None:
        """
        The listener's consumer ended (``"removed"``, ``"replaced"``, ``"closed"``,
        ``"failed"``): tell the client and close. Called once; no mail follows.
        """


def mail_dict(mail: Mail) -> dict[str, Any]:
    """The mail line of ``mail`` (short keys, as the control socket writes it)."""
    line: dict[str, Any] = {
        "id": wire_id(mail), "t": mail.event, "p": mail.data, "n": mail.deliveries,
        "s": mail.source, "r": mail.listener, "c": mail.channel,
    }
    if mail.group is not None:
        line["g"] = mail.group
    if mail.correlation is not None:
        line["q"] = True
    return line


class ListenSession:
    """
    One listen stream (made by :meth:`~._control.ControlPlane.open_listen`).

    :ivar answer: the ``l`` answer (``{"ok": true, "r", "c"}``) to write before any mail.
    :ivar reason: why the stream ended (None while it runs).
    :param on_end: called with the session once, when it ends (detached, or closed by
        its transport): the plane counts the listens open.
    """

    def __init__(
        self,
        channel: Channel,
        listener_id: str,
        sink: ListenSink,
        auto_ack: bool,
        on_end: Callable[[ListenSession], object] | None = None,
    ) -> None:
        self.channel = channel
        self.listener_id = listener_id
        self.answer: dict[str, Any] = {"ok": True, "r": listener_id, "c": channel.name}
        self.reason: str | None = None
        self._sink = sink
        self._auto_ack = auto_ack
        self._started = False
        self._early: deque[Mail] = deque()  # delivered before the answer went out
        # Written, not yet settled by the client, by wire id (unique on the stream: a
        # redelivery of a mail still here replaces it, being the one the backend holds).
        self._pending: dict[str, Mail] = {}
        self._written_paused: deque[Mail] = deque()  # auto-ack: written while paused
        self._attachment: Attachment | None = None
        self._closing = False
        self._read_only = False
        self._on_end = on_end

    def __repr__(self) -> str:
        return f"<ListenSession {self.channel.name}/{self.listener_id} in_flight={self.in_flight}>"

    def _ended(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(self)

    @property
    def in_flight(self) -> int:
        """Mails written and not yet settled."""
        return len(self._pending) + len(self._written_paused)

    # -- set up by the plane -------------------------------------------------------------

    def _attached(self, attachment: Attachment) -> ListenSession:
        self._attachment = attachment
        if self._closing:
            attachment.detach().addErrback(self._log_failure, "detaching")
        return self

    def start(self) -> None:
        """The answer is written: write the mail that came meanwhile, then the end."""
        self._started = True
        while self._early and self.reason is None:
            self._write(self._early.popleft())
        if self.reason is not None:
            self._sink.end(self.reason)

    # -- MailSink ------------------------------------------------------------------------

    def mail(self, mail: Mail) -> None:
        if self.reason is not None or self._closing:
            return  # on its way while closing: the detach gives it back
        if not self._started:
            self._early.append(mail)
            return
        self._write(mail)

    def detached(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self._attachment = None
        self._ended()
        self._pending.clear()
        self._written_paused.clear()
        self._early.clear()
        if self._started and not self._closing:
            self._sink.end(reason)

    def _write(self, mail: Mail) -> None:
        sink = self._sink
        sink.mail_line(mail_dict(mail))
        if self._read_only and mail.correlation is not None:
            self._refuse(mail)
        elif self._auto_ack and mail.correlation is None:
            self._auto_acknowledge(mail)
        else:
            self._pending[wire_id(mail)] = mail

    def _auto_acknowledge(self, mail: Mail) -> None:
        if self._sink.writable:
            mail.ack().addErrback(self._log_failure, "acknowledging")
        else:
            self._written_paused.append(mail)

    def _refuse(self, mail: Mail) -> None:
        """Fail request ``mail`` back to its requester (a read-only stream), then ack it."""
        assert mail.reply_to is not None and mail.correlation is not None
        value_json = json.dumps({
            "type": CLIENT_ERROR,
            "message": READ_ONLY_REFUSAL.format(listener=show(self.listener_id)),
        })
        replied = self.channel.mailboxes.reply(mail.reply_to, mail.correlation, False, value_json)
        replied.addCallback(lambda _: self._settle(mail, release=False))
        replied.addErrback(_no_longer_held)
        replied.addErrback(self._log_failure, "refusing a request")

    # -- the transport -------------------------------------------------------------------

    def read_only(self) -> None:
        """
        The client will send nothing more (it half-closed the connection): acknowledge
        mail as it is written from now on, acknowledge what it holds unacknowledged, and
        fail requests back (see the module doc).
        """
        if self._read_only:
            return
        self._read_only = True
        self._auto_ack = True
        pending, self._pending = self._pending, {}
        for mail in pending.values():
            if mail.correlation is not None:
                self._refuse(mail)
            else:
                self._auto_acknowledge(mail)

    def resume(self) -> None:
        """The transport takes writes again: acknowledge what auto-ack wrote while paused."""
        written, self._written_paused = self._written_paused, deque()
        for mail in written:
            mail.ack().addErrback(self._log_failure, "acknowledging")

    def client_line(self, line: object) -> Deferred[None]:
        """
        Carry out a client line of a listening connection: ``{"ack": id}``, ``{"ack": id,
        "reply": value}``, ``{"ack": id, "error": message}`` or ``{"release": id}``, where
        ``id`` is the mail's wire id (:func:`wire_id`, as its mail line showed it). Fails
        with :class:`ControlError` (``bad_request``: another line; ``unknown_mail``: no
        such mail in flight; ``invalid_data``: a reply that is not JSON); nothing is done then.
        A request (``"q": true``) is answered with ``reply`` or ``error``, or released: a
        bare ``ack`` of one is ``bad_request`` (its requester would wait for its timeout).
        """
        try:
            return self._client_line(line)
        except ControlError as e:
            failed: Deferred[None] = Deferred()
            failed.errback(Failure(e))
            return failed

    def _client_line(self, line: object) -> Deferred[None]:
        if not isinstance(line, dict):
            raise ControlError("bad_request", "a line must be a JSON object")
        if "release" in line:
            if len(line) != 1:
                raise ControlError("bad_request", "a release line is {\"release\": id} alone")
            return self._settle(self._take(line["release"]), release=True)
        if "ack" not in line:
            raise ControlError(
                "streaming",
                "this connection is a listen stream: it accepts only {\"ack\": id} "
                "(with \"reply\" or \"error\" for a request) and {\"release\": id}; "
                "open another connection for other requests",
            )
        extra = sorted(k for k in line if k not in ("ack", "reply", "error"))
        if extra:
            raise ControlError(
                "bad_request", f"unknown key(s) {', '.join(show(k) for k in extra[:5])} "
                "in an ack line; it accepts ack, reply, error"
            )
        if "reply" in line and "error" in line:
            raise ControlError("bad_request", "an ack line carries 'reply' or 'error', not both")
        mail_id = line["ack"]
        if "reply" in line or "error" in line:
            mail = self._find(mail_id)
            if mail.correlation is None or mail.reply_to is None:
                raise ControlError(
                    "bad_request", f"mail {show(mail_id)} is not a request: it takes no reply"
                )
            if "reply" in line:
                try:
                    value_json = encode_json(line["reply"])
                except InvalidDataError as e:
                    raise ControlError("invalid_data", f"the reply: {e}") from None
                ok = True
            else:
                message = line["error"]
                if not isinstance(message, str):
                    raise ControlError(
                        "bad_request", f"'error' must be a string, got {show(message)}"
                    )
                value_json = json.dumps(
                    {"type": CLIENT_ERROR, "message": message[:MAX_ERROR_MESSAGE]}
                )
                ok = False
            del self._pending[wire_id(mail)]
            replied = self.channel.mailboxes.reply(mail.reply_to, mail.correlation, ok, value_json)
            return replied.addCallback(lambda _: self._settle(mail, release=False))
        mail = self._find(mail_id)
        if mail.correlation is not None:
            raise ControlError(
                "bad_request",
                f"mail {show(mail_id)} is a request: answer it with reply or error "
                "(or release it)",
            )
        return self._settle(self._take(mail_id), release=False)

    def _find(self, mail_id: object) -> Mail:
        """The mail in flight whose wire id is ``mail_id``."""
        if not isinstance(mail_id, str):
            raise ControlError("bad_request", f"a mail id is a string, got {show(mail_id)}")
        mail = self._pending.get(mail_id)
        if mail is None:
            raise ControlError(
                "unknown_mail",
                f"mail {show(mail_id)} is not in flight on this stream (never sent, "
                "acknowledged already, auto-acknowledged, or given back)",
            )
        return mail

    def _take(self, mail_id: object) -> Mail:
        mail = self._find(mail_id)
        del self._pending[wire_id(mail)]
        return mail

    def _settle(self, mail: Mail, release: bool) -> Deferred[None]:
        attachment = mail._attachment
        if attachment is None:
            return succeed(None)
        settled = attachment.release(mail) if release else attachment.ack(mail)

        def done(held: bool) -> None:
            if not held:
                raise ControlError(
                    "unknown_mail",
                    f"mail {show(wire_id(mail))} was not this stream's to acknowledge (its ack "
                    "deadline passed, the listener was stopped, or the backend lost track of "
                    "it); if it was not settled it will be delivered again",
                )

        return settled.addCallback(done)

    def close(self) -> Deferred[None]:
        """The client is gone: detach; unacknowledged mail is redelivered to the next one."""
        if self._closing:
            return succeed(None)
        self._closing = True
        self._ended()
        self._pending.clear()
        self._written_paused.clear()
        self._early.clear()
        attachment, self._attachment = self._attachment, None
        if attachment is None:
            return succeed(None)
        return attachment.detach()

    def _log_failure(self, failure: Failure, doing: str) -> None:
        _log.failure(
            "channel {channel}: listen stream of {listener}: {doing} failed",
            failure, channel=self.channel.name, listener=self.listener_id, doing=doing,
        )
