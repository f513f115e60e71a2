"""
Listener streams and channel watches of the hub client, which outlive a lost connection.

A :class:`ClientStream` is a listener's mailbox read from another process; a
:class:`ClientWatch` is a channel's broadcasts. Both reconnect when their connection is
lost, with an exponential backoff (0.1 s doubling up to ``max_retry_delay``), and resume:

* a stream simply listens again. The hub kept every mail that was not acknowledged and
  delivers it again (``deliveries`` one more); mail received but not handed out yet is
  dropped on the loss (it is coming again), and the :class:`ClientMail` handed out before
  can no longer be acknowledged (``ack()`` fires False);
* a watch asks for what followed the last event it got (``since`` its id, with its
  ``epoch``). If the hub cannot replay that (its history is too short, or it restarted
  and its offsets started over) a ``gap`` notice says so: it is handed to the consumer
  like an event, never swallowed.

A stream or watch ends for good when it is closed, when the hub ends it (the listener was
removed, another stream replaced this one, the channel was removed) or when reopening it
is refused (an unknown listener...): iteration then stops, or raises that error.

While the hub is away the log stays short: the loss (or the first failed attempt) is
logged as a warning, then at most one line every :data:`RETRY_LOG_INTERVAL` seconds with
the count of failed attempts, and one line (info) once it is open again.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._client_errors import HubConnectionError
from ._client_link import Feed, ProtocolViolation, encode_line
from .channels.message import encode_json
from .errors import ChannelUnavailableError

if TYPE_CHECKING:
    from ._client_link import Link

__all__ = [
    "ClientEvent", "ClientMail", "ClientNotice", "ClientRefusal", "ClientStream", "ClientWatch",
    "Retry",
]

_log = Logger(namespace="twisted_event_dispatcher.client")
_T = TypeVar("_T")

#: First reconnect delay, in seconds; each failed attempt doubles it.
FIRST_DELAY = 0.1
#: Deliveries after which a mail whose ``on_mail`` callback keeps failing is acknowledged
#: (and logged as an error) instead of released once more, as ``Listener.consume`` does.
MAX_DELIVERIES = 5
#: Ends of a listen after which listening again would be wrong: the listener is gone, or
#: another consumer took it over. Other ends (``"stopping"``: the hub stops; ``"closed"``:
#: the channel was closed or removed in that hub; ``"failed"``) reconnect, and a reopen
#: that is refused (the channel is gone: ``UnknownChannelError``) ends the stream with
#: that error.
FINAL_ENDS = frozenset({"removed", "replaced"})
#: While reconnecting, at most one log line per this many seconds after the first.
RETRY_LOG_INTERVAL = 60.0
#: Refusals of settle lines a stream keeps in :attr:`ClientStream.refused` (the latest).
MAX_REFUSALS = 100
#: Settled mail ids a stream remembers, to say what a refusal refused (ack, release...).
_RECENT_SETTLED = 1000


def _channel_name(channel: str | None) -> str:
    return "the hub's default channel" if channel is None else f"channel {channel!r}"


@dataclass(frozen=True)
class Retry:
    """
    How streams and watches reconnect.

    :ivar max_delay: the longest wait between two attempts, in seconds.
    :ivar attempts: consecutive failed attempts before the stream fails with the last
        error; ``None``: forever (a worker outlives a hub restart); ``0``: never reconnect.
    """

    max_delay: float = 5.0
    attempts: int | None = None

    def __post_init__(self) -> None:
        if not self.max_delay > 0:
            raise ValueError(f"max_retry_delay must be positive, got {self.max_delay!r}")
        if self.attempts is not None and (
            isinstance(self.attempts, bool) or not isinstance(self.attempts, int)
            or self.attempts < 0
        ):
            raise ValueError(f"max_retries must be None or an int >= 0, got {self.attempts!r}")

    def delay(self, attempt: int) -> float:
        """The wait before attempt ``attempt`` (0 is the first reconnect)."""
        return float(min(self.max_delay, FIRST_DELAY * 2 ** min(attempt, 32)))


class _Outcome(Generic[_T]):
    """A result handed out as fresh Deferreds (none is left failing unobserved)."""

    def __init__(self) -> None:
        self._result: _T | Failure | None = None
        self.done = False
        self._waiting: list[Deferred[_T]] = []

    def wait(self) -> Deferred[_T]:
        if self.done:
            result = self._result
            return fail(result) if isinstance(result, Failure) else succeed(result)  # type: ignore[arg-type]
        d: Deferred[_T] = Deferred(self._forget)
        self._waiting.append(d)
        return d

    def _forget(self, d: Deferred[_T]) -> None:
        if d in self._waiting:
            self._waiting.remove(d)

    def set(self, result: _T | Failure) -> None:
        if self.done:
            return
        self.done = True
        self._result = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class ClientMail:
    """
    One mail of a listener, received by a :class:`ClientStream`.

    Settle it once: :meth:`ack`, :meth:`reply` (a request), :meth:`fail` (a request) or
    :meth:`release` (give it back for redelivery). Each fires True once its line was
    *sent* on the connection that delivered the mail, False when nothing was sent: the
    mail was settled already, the stream auto-acknowledges (ack, release of a mail that
    is not a request), or that connection is gone (the hub delivers the mail again on
    the next one). True is no confirmation: if the connection breaks before the hub read
    the line, the mail comes again (at least once); and the hub may refuse the line
    (``unknown_mail``: a group mail whose ``ack_timeout`` passed or whose listener was
    stopped went back to its group meanwhile). A refusal comes later, on the stream: it
    is logged as a warning naming the mail and the hub's message, and kept in
    :attr:`ClientStream.refused` as a :class:`ClientRefusal`.

    :ivar id: the mailbox id the hub acknowledges it by.
    :ivar event: the message type; :ivar data: its JSON payload.
    :ivar deliveries: 1 the first time, more when it is delivered again.
    :ivar source: ``"dispatch"``, ``"group"``, ``"broadcast"`` or ``"missed"``.
    :ivar is_request: the sender waits for :meth:`reply` (or :meth:`fail`).
    """

    __slots__ = (
        "id", "event", "data", "deliveries", "source", "listener", "channel", "is_request",
        "_stream", "_feed", "settled",
    )

    def __init__(self, line: dict[str, Any], stream: ClientStream, feed: Feed) -> None:
        self.id: str = str(line.get("id"))
        self.event: str = str(line.get("t"))
        self.data: Any = line.get("p")
        deliveries = line.get("n", 1)
        self.deliveries: int = deliveries if type(deliveries) is int else 1
        self.source: str = str(line.get("s", "dispatch"))
        self.listener: str = str(line.get("r", stream.listener_id))
        self.channel: str | None = line.get("c", stream.channel)
        self.is_request: bool = line.get("q") is True
        self._stream = stream
        self._feed = feed
        #: How it was settled (``"ack"``, ``"reply"``, ``"fail"``, ``"release"``), or None.
        self.settled: str | None = None

    def ack(self) -> Deferred[bool]:
        """
        Send its acknowledgement: the hub removes it for good when it takes it (see the
        class docstring: True means sent, not confirmed). With auto-ack it was
        acknowledged when the hub wrote it, except a request, which waits for its
        :meth:`reply`.
        """
        if self._stream.auto_ack and not self.is_request:
            return succeed(False)
        return self._settle({"ack": self.id}, "ack")

    def reply(self, value: Any) -> Deferred[bool]:
        """
        Answer the request with ``value`` (any JSON), then acknowledge it. Raises
        :class:`~twisted_event_dispatcher.errors.InvalidDataError` at once for a value
        with no JSON form.
        """
        encode_json(value)
        return self._settle({"ack": self.id, "reply": value}, "reply")

    def fail(self, message: str) -> Deferred[bool]:
        """
        Fail the request: the requester gets a
        :class:`~twisted_event_dispatcher.errors.RemoteActionError` (``remote_type``
        ``"ClientError"``, ``message``); the mail is acknowledged.
        """
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, got {type(message).__name__}")
        return self._settle({"ack": self.id, "error": message}, "fail")

    def release(self) -> Deferred[bool]:
        """Give it back unacknowledged: the hub delivers it again (``deliveries`` + 1)."""
        if self._stream.auto_ack and not self.is_request:
            return succeed(False)
        return self._settle({"release": self.id}, "release")

    def _settle(self, line: dict[str, Any], how: str) -> Deferred[bool]:
        if self.settled is not None:
            return succeed(False)
        encode_line(line, self._stream._limits)  # too large: raise now, not break the stream
        if not self._feed.send(line):
            return succeed(False)
        self.settled = how
        self._stream._settled(self.id, how)
        return succeed(True)

    def __repr__(self) -> str:
        return (
            f"<ClientMail {self.channel}/{self.listener}#{self.id} {self.event!r} "
            f"source={self.source} deliveries={self.deliveries}>"
        )


@dataclass(frozen=True)
class ClientRefusal:
    """
    A settle line of a stream that the hub refused: nothing was done for that mail.

    :ivar id: the mail's id (None if the hub's answer did not say which).
    :ivar how: what was refused: ``"ack"``, ``"reply"``, ``"fail"`` or ``"release"``
        (None if not known).
    :ivar code: the hub's error code, e.g. ``"unknown_mail"`` (not in flight on this
        stream any more: its ack deadline passed or its listener was stopped, and it went
        back for redelivery).
    :ivar message: the hub's message.
    """

    id: str | None
    how: str | None
    code: str
    message: str


@dataclass(frozen=True)
class ClientEvent:
    """A broadcast of the watched channel: its offset and epoch, its event and data."""

    id: int
    epoch: str
    channel: str
    event: str
    data: Any


@dataclass(frozen=True)
class ClientNotice:
    """
    What a watch missed. ``type`` ``"gap"``: the events after ``since`` (of the epoch the
    watch was reading) cannot reach it, ``reason`` ``"epoch"`` (offsets started over),
    ``"expired"`` (beyond the history), ``"unknown"``, ``"removed"`` (the channel was
    removed: the watch ends), or a backend's reason; ``oldest`` is the first offset it
    gets next, if known. ``type`` ``"dropped"``: the client read too slowly and the hub
    dropped ``count`` events (on WebSocket every watch of the connection is told).
    """

    type: str
    channel: str | None = None
    since: int | None = None
    epoch: str | None = None
    oldest: int | None = None
    reason: str | None = None
    count: int | None = None


class _Resuming:
    """Opens a listen or watch on a link, and opens it again when its connection is lost."""

    what = "stream"

    def __init__(self, link: Link, clock: IReactorTime, retry: Retry) -> None:
        self._link = link
        self._limits = link.limits
        self._clock = clock
        self._retry = retry
        self._feed: Feed | None = None
        self._opening = False
        self._attempt = 0
        self._retry_call: IDelayedCall | None = None
        self._ended: _Outcome[str] = _Outcome()
        self._open_waiters: list[Deferred[dict[str, Any]]] = []
        #: Consumers waiting for the next item.
        self._waiters: deque[Deferred[Any]] = deque()
        #: The hub's answer to the latest successful listen/watch request.
        self.answer: dict[str, Any] | None = None
        #: How many times the connection was opened again after a loss.
        self.reconnects = 0
        # The current outage: failed attempts, when it began and was last logged.
        self._failures = 0
        self._outage_since: float | None = None
        self._outage_logged = 0.0

    # -- what subclasses provide ----------------------------------------------------------

    def _request(self) -> dict[str, Any]:
        raise NotImplementedError

    def _on_open(self, answer: dict[str, Any]) -> None:
        """The stream is open (again)."""

    def _on_lost(self) -> None:
        """Its connection was lost; a reconnect follows."""

    def _on_end(self) -> None:
        """It ended for good: wake whoever waits for an item."""

    # -- state -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while it is open on a live connection."""
        return self._feed is not None and self._feed.alive

    @property
    def ended(self) -> bool:
        """True once it ended for good (closed, ended by the hub, or failed)."""
        return self._ended.done

    def wait_ended(self) -> Deferred[str]:
        """
        Fires once it ended: with ``"closed"`` after :meth:`close`, or the hub's reason
        (``"removed"``, ``"replaced"``...); fails with the error that ended it.
        """
        return self._ended.wait()

    def wait_open(self) -> Deferred[dict[str, Any]]:
        """Fires with the hub's answer once it is open (now, or after the next reconnect)."""
        if self.connected and self.answer is not None:
            return succeed(self.answer)
        if self.ended:
            return self._ended.wait().addCallback(self._not_open)
        d: Deferred[dict[str, Any]] = Deferred(self._cancel_waiter)
        self._open_waiters.append(d)
        return d

    def _cancel_waiter(self, d: Deferred[Any]) -> None:
        """A wait was cancelled (a timeout): forget it, so nothing is handed to it."""
        if d in self._open_waiters:
            self._open_waiters.remove(d)
        if d in self._waiters:
            self._waiters.remove(d)

    def _not_open(self, reason: str) -> dict[str, Any]:
        raise HubConnectionError(f"the {self.what} ended ({reason}) before it was open")

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> None:
        self._retry_call = None
        if self.ended:
            return
        self._opening = True
        try:
            d = self._link.open(self._request(), self)
        except Exception as e:  # bad data in the request: it will never open
            self._opening = False
            self._finish(Failure(e))
            return
        d.addCallbacks(self._opened, self._open_failed)

    def _opened(self, feed: Feed) -> None:
        self._opening = False
        if self.ended:
            feed.close()
            return
        if self._outage_since is not None:
            _log.info(
                "{what} {name}: {again} after {failures} failed attempt(s) in {elapsed:.1f} s",
                what=self.what, name=self._name(), failures=self._failures,
                again="reconnected" if self.answer is not None else "open",
                elapsed=self._clock.seconds() - self._outage_since,
            )
            self._outage_since = None
        self._failures = 0
        if self.answer is not None:
            self.reconnects += 1
        self._feed = feed
        self._attempt = 0
        self.answer = feed.answer
        self._on_open(feed.answer)
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.callback(feed.answer)

    def _open_failed(self, failure: Failure) -> None:
        self._opening = False
        if self.ended:
            return
        transient = (
            failure.check(HubConnectionError, ChannelUnavailableError) is not None
            and failure.check(ProtocolViolation) is None
        )
        if transient:
            self._failures += 1
            if self._retry_later(failure.getErrorMessage()):
                return
        self._finish(failure)

    def _retry_later(self, why: str, then: str = "") -> bool:
        attempts = self._retry.attempts
        if attempts is not None and self._attempt >= attempts:
            return False
        delay = self._retry.delay(self._attempt)
        self._attempt += 1
        self._log_retry(why, then, delay)
        self._retry_call = self._clock.callLater(delay, self._open)
        return True

    def _log_retry(self, why: str, then: str, delay: float) -> None:
        """
        Log the first failure of an outage, then at most one line every
        :data:`RETRY_LOG_INTERVAL` seconds (a hub down for an hour: 61 lines, not 720).
        """
        now = self._clock.seconds()
        if self._outage_since is None:
            self._outage_since = self._outage_logged = now
            _log.warn("{what} {name}: {why}; reconnecting in {delay:.1f} s{then}",
                      what=self.what, name=self._name(), why=why, delay=delay,
                      then=f"; {then}" if then else "")
        elif now - self._outage_logged >= RETRY_LOG_INTERVAL:
            self._outage_logged = now
            _log.warn(
                "{what} {name}: still reconnecting: {failures} failed attempt(s) in "
                "{elapsed:.0f} s (the last: {why}); next in {delay:.1f} s",
                what=self.what, name=self._name(), failures=self._failures, why=why,
                elapsed=now - self._outage_since, delay=delay,
            )

    def _after_loss(self) -> str:
        """What a reconnect after a loss brings back (said in the log line)."""
        return ""

    def _name(self) -> str:
        return repr(self._request().get("c"))

    # -- Sink: what the link calls ----------------------------------------------------------

    def item(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    def end(self, reason: str) -> None:
        if self.ended:
            return
        if reason in FINAL_ENDS:
            self._finish(reason)
        else:
            why = f"the hub ended the {self.what} ({reason})"
            self._lost(HubConnectionError(why), why)

    def lost(self, error: HubConnectionError) -> None:
        self._lost(error, f"the {self.what}'s connection was lost")

    def _lost(self, error: HubConnectionError, why: str) -> None:
        # (No request is pending on a stream: nothing "may or may not have been done".)
        if self.ended or self._opening or self._feed is None:
            return
        self._feed = None
        self._on_lost()
        if isinstance(error, ProtocolViolation) or not self._retry_later(
            why, self._after_loss()
        ):
            self._finish(Failure(error))

    def problem(self, answer: dict[str, Any]) -> None:
        _log.warn("{what} {name}: the hub refused a line: {error} ({code})", what=self.what,
                  name=self._name(), error=answer.get("error"), code=answer.get("code"))

    # -- ending ------------------------------------------------------------------------------

    def _finish(self, outcome: str | Failure) -> None:
        if self.ended:
            return
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        self._ended.set(outcome)
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.errback(HubConnectionError(f"the {self.what} ended ({outcome})"))
        self._on_end()

    def close(self) -> Deferred[None]:
        """
        End it: the connection (control socket) or the subscription (WebSocket) is
        closed. A stream's unacknowledged mail goes back to the mailbox for the next
        consumer; what arrives after ``close()`` is not handed out.

        What the Deferred's firing guarantees depends on the transport:

        * WebSocket: it fires once the hub answered the ``unlisten``/``unwatch``: the hub
          has detached the stream, so mail dispatched after that waits for the next
          consumer.
        * Control socket: it fires once the stream's connection is closed at this end.
          The hub ends the stream when it reads the close, which may come after a
          request sent meanwhile on another connection. Mail the hub writes to the
          closed stream in that moment is, without auto-ack, delivered again to the next
          stream; with ``auto_ack`` it was acknowledged as it was written and is lost
          (auto-ack is at most once). To hand a listener over without that window, open
          the new stream first: it replaces the old one (which ends with
          ``"replaced"``), and mail dispatched once its :meth:`wait_open` fired reaches
          it.
        """
        feed, self._feed = self._feed, None
        self._finish("closed")
        if feed is None:
            return succeed(None)
        return feed.close()


class ClientStream(_Resuming):
    """
    A listener's mailbox, read over the hub connection (see the module docstring).

    Read it with ``async for mail in stream`` (or :meth:`next`), or hand every mail to a
    callback with :meth:`on_mail`. Without ``auto_ack`` the hub has at most
    ``max_in_flight`` mails unacknowledged on the stream and sends the next as each is
    settled; with it the hub acknowledges each mail as it writes it (at most once: a mail
    is lost if the connection breaks after that), and the client stops reading once
    ``max_in_flight`` mails wait for the consumer (on WebSocket that pauses the whole
    connection: consume promptly).

    :ivar refused: the latest :data:`MAX_REFUSALS` settle lines the hub refused, as
        :class:`ClientRefusal` (oldest first); each is also logged as a warning. Settling
        a mail fires True when its line is sent: look here (or in the log) to learn that
        the hub did not take it.
    """

    what = "stream"

    def __init__(
        self, link: Link, clock: IReactorTime, retry: Retry, channel: str | None,
        listener_id: str, auto_ack: bool, max_in_flight: int,
    ) -> None:
        if not isinstance(listener_id, str):
            raise TypeError(f"listener_id must be a str, got {type(listener_id).__name__}")
        if not isinstance(auto_ack, bool):
            raise TypeError(f"auto_ack must be a bool, got {type(auto_ack).__name__}")
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or not (
            1 <= max_in_flight <= 1000
        ):
            raise ValueError(f"max_in_flight must be an int from 1 to 1000, got {max_in_flight!r}")
        super().__init__(link, clock, retry)
        self.channel = channel
        self.listener_id = listener_id
        self.auto_ack = auto_ack
        self.max_in_flight = max_in_flight
        self._buffer: deque[ClientMail] = deque()
        self._callback: Callable[[ClientMail], object] | None = None
        self._running = 0
        self._paused = False
        self.refused: deque[ClientRefusal] = deque(maxlen=MAX_REFUSALS)
        self._recent: dict[str, str] = {}
        self._open()

    def _request(self) -> dict[str, Any]:
        request: dict[str, Any] = {
            "v": "l", "r": self.listener_id, "a": self.auto_ack, "m": self.max_in_flight,
        }
        if self.channel is not None:
            request["c"] = self.channel
        return request

    def _name(self) -> str:
        return f"{self.listener_id!r} on {_channel_name(self.channel)}"

    def _on_open(self, answer: dict[str, Any]) -> None:
        self._paused = False
        self._flow()

    def _after_loss(self) -> str:
        return "unacknowledged mail will be delivered again"

    def _settled(self, mail_id: str, how: str) -> None:
        """A settle line was sent: remember how, to name it if the hub refuses it."""
        recent = self._recent
        recent.pop(mail_id, None)
        recent[mail_id] = how
        if len(recent) > _RECENT_SETTLED:
            del recent[next(iter(recent))]

    def problem(self, answer: dict[str, Any]) -> None:
        """
        The hub refused a line of this stream: only settle lines are sent on it, so a
        settle line (the hub names its mail by ``"id"``). Logged, kept in :attr:`refused`.
        """
        mail_id = answer.get("id")
        mail_id = mail_id if isinstance(mail_id, str) else None
        how = self._recent.pop(mail_id, None) if mail_id is not None else None
        if how is None and answer.get("v") in ("ack", "release"):
            how = answer["v"]
        code, message = answer.get("code"), answer.get("error")
        refusal = ClientRefusal(
            mail_id, how, code if isinstance(code, str) else "bad_request",
            message if isinstance(message, str) else "refused",
        )
        self.refused.append(refusal)
        _log.warn(
            "stream {name}: the hub refused the {how} of mail {id}: {message} ({code})",
            name=self._name(), how=how or "ack or release",
            id=repr(mail_id) if mail_id is not None else "(not named by the hub)",
            message=refusal.message, code=refusal.code,
        )

    def _on_lost(self) -> None:
        if not self.auto_ack:
            self._buffer.clear()  # unacknowledged: the hub delivers it again

    def _on_end(self) -> None:
        if not self.auto_ack:
            self._buffer.clear()
        while self._waiters and not self._buffer:
            self._end_of_items().chainDeferred(self._waiters.popleft())

    def _end_of_items(self) -> Deferred[ClientMail | None]:
        return self._ended.wait().addCallback(lambda _: None)

    # -- items -----------------------------------------------------------------------------

    def item(self, frame: dict[str, Any]) -> None:
        feed = self._feed
        if feed is None or self.ended:
            return
        mail = ClientMail(frame, self, feed)
        if self._callback is not None:
            self._run(mail)
        elif self._waiters:
            self._waiters.popleft().callback(mail)
        else:
            self._buffer.append(mail)
            self._flow()

    def _flow(self) -> None:
        """With auto-ack, stop reading while ``max_in_flight`` mails wait (or run)."""
        feed = self._feed
        if not self.auto_ack or feed is None:
            return
        behind = len(self._buffer) + self._running >= self.max_in_flight
        if behind != self._paused:
            self._paused = behind
            if behind:
                feed.pause()
            else:
                feed.resume()

    def next(self) -> Deferred[ClientMail | None]:
        """
        The next mail; None once the stream ended cleanly (its error if it failed).
        Cancelling the Deferred gives up waiting without losing a mail.
        """
        if self._callback is not None:
            raise ValueError("this stream hands its mail to its on_mail callback")
        if self._buffer:
            mail = self._buffer.popleft()
            self._flow()
            return succeed(mail)
        if self.ended:
            return self._end_of_items()
        d: Deferred[ClientMail | None] = Deferred(self._cancel_waiter)
        self._waiters.append(d)
        return d

    def __aiter__(self) -> ClientStream:
        return self

    async def __anext__(self) -> ClientMail:
        mail = await self.next()
        if mail is None:
            raise StopAsyncIteration
        return mail

    # -- callback form -----------------------------------------------------------------------

    def on_mail(self, callback: Callable[[ClientMail], object]) -> None:
        """
        Call ``callback(mail)`` for every mail (it may return a value, a Deferred or a
        coroutine), at most ``max_in_flight`` at once. Unless the callback settled the
        mail itself: its success acknowledges it, or replies to a request with the
        returned value; its failure is logged and releases the mail for redelivery (after
        :data:`MAX_DELIVERIES` deliveries it is acknowledged instead, logged as an
        error), or fails the request with the error's type and message.
        """
        if self._callback is not None:
            raise ValueError("this stream has an on_mail callback already")
        if self._waiters:
            raise ValueError("this stream is being iterated; use one form or the other")
        self._callback = callback
        buffered, self._buffer = self._buffer, deque()
        for mail in buffered:
            self._run(mail)

    def _run(self, mail: ClientMail) -> None:
        callback = self._callback
        assert callback is not None

        def call() -> object:
            result = callback(mail)
            if inspect.iscoroutine(result):
                return Deferred.fromCoroutine(result)
            return result

        self._running += 1
        self._flow()
        d = maybeDeferred(call)
        d.addCallbacks(self._handled, self._handler_failed, callbackArgs=(mail,),
                       errbackArgs=(mail,))
        d.addErrback(lambda f: _log.failure("settling {mail} failed", f, mail=mail))
        d.addBoth(self._ran)

    def _ran(self, _: object) -> None:
        self._running -= 1
        self._flow()

    def _handled(self, value: object, mail: ClientMail) -> None:
        if mail.settled is not None:
            return
        if mail.is_request:
            try:
                mail.reply(value)
            except (TypeError, ValueError) as e:
                _log.error("the reply to {mail} has no JSON form: {e}", mail=mail, e=e)
                mail.fail(f"{type(e).__name__}: {e}")
        else:
            mail.ack()

    def _handler_failed(self, failure: Failure, mail: ClientMail) -> None:
        _log.failure("the on_mail callback failed on {mail}", failure, mail=mail)
        if mail.settled is not None:
            return
        if mail.is_request:
            mail.fail(f"{type(failure.value).__name__}: {failure.getErrorMessage()}")
        elif mail.deliveries >= MAX_DELIVERIES:
            _log.error("giving up on {mail} after {n} deliveries: acknowledged",
                       mail=mail, n=mail.deliveries)
            mail.ack()
        else:
            mail.release()


class ClientWatch(_Resuming):
    """
    A channel's broadcasts (see the module docstring): ``async for item in watch``
    yields :class:`ClientEvent` and :class:`ClientNotice` items in the hub's order. The
    client stops reading once ``max_buffer`` items wait for the consumer; the hub then
    drops the oldest events for it and says how many with a ``dropped`` notice.

    :ivar since: the offset it resumes after (the last event's id).
    :ivar epoch: the epoch of that offset.
    """

    what = "watch"

    def __init__(
        self, link: Link, clock: IReactorTime, retry: Retry, channel: str | None,
        since: int | None, epoch: str | None, max_buffer: int = 1000,
    ) -> None:
        if since is not None and (isinstance(since, bool) or not isinstance(since, int)):
            raise TypeError(f"since must be an int offset, got {since!r}")
        if epoch is not None and not isinstance(epoch, str):
            raise TypeError(f"epoch must be a str, got {type(epoch).__name__}")
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise ValueError(f"max_buffer must be an int >= 1, got {max_buffer!r}")
        super().__init__(link, clock, retry)
        self.channel = channel
        self.since = since
        self.epoch = epoch
        self.max_buffer = max_buffer
        self._live_from = 0
        self._fresh = False
        self._buffer: deque[ClientEvent | ClientNotice] = deque()
        self._paused = False
        self._open()

    def _request(self) -> dict[str, Any]:
        request: dict[str, Any] = {"v": "w"}
        if self.channel is not None:
            request["c"] = self.channel
        if self.since is not None:
            request["since"] = self.since
        if self.epoch is not None:
            request["epoch"] = self.epoch
        return request

    def _name(self) -> str:
        return f"of {_channel_name(self.channel)}"

    def _after_loss(self) -> str:
        return "it resumes after the last event it received"

    def _on_open(self, answer: dict[str, Any]) -> None:
        last_id = answer.get("last_id")
        self._live_from = last_id if type(last_id) is int else 0
        if self.since is None:
            self.since = self._live_from
        epoch = answer.get("epoch")
        if isinstance(epoch, str):
            self.epoch = epoch
        self._fresh = True
        self._paused = False
        self._flow()

    def _on_end(self) -> None:
        while self._waiters and not self._buffer:
            self._end_of_items().chainDeferred(self._waiters.popleft())

    def _end_of_items(self) -> Deferred[ClientEvent | ClientNotice | None]:
        return self._ended.wait().addCallback(lambda _: None)

    def item(self, frame: dict[str, Any]) -> None:
        if self._feed is None or self.ended:
            return
        kind = frame.get("type")
        item: ClientEvent | ClientNotice
        if kind == "event":
            item = ClientEvent(
                frame.get("id"), frame.get("epoch"), frame.get("channel"),  # type: ignore[arg-type]
                frame.get("event"), frame.get("data"),  # type: ignore[arg-type]
            )
            self.since, self.epoch = item.id, item.epoch
            self._fresh = False
        elif kind in ("gap", "dropped"):
            item = ClientNotice(
                kind, frame.get("channel"), frame.get("since"), frame.get("epoch"),
                frame.get("oldest"), frame.get("reason"), frame.get("count"),
            )
            if kind == "gap":
                self._after_gap(item)
        else:
            return
        self._hand(item)
        if isinstance(item, ClientNotice) and item.type == "gap" and item.reason == "removed":
            # The channel is gone: what was handed stays readable, then iteration stops.
            feed, self._feed = self._feed, None
            self._finish("removed")
            feed.close()

    def _after_gap(self, gap: ClientNotice) -> None:
        """Where to resume after a gap: where live delivery started, or its ``oldest``."""
        if gap.epoch is not None:
            self.epoch = gap.epoch
        if self._fresh:
            self.since = self._live_from
        elif type(gap.oldest) is int:
            self.since = max(gap.oldest - 1, 0)

    def _hand(self, item: ClientEvent | ClientNotice) -> None:
        if self._waiters:
            self._waiters.popleft().callback(item)
        else:
            self._buffer.append(item)
            self._flow()

    def _flow(self) -> None:
        feed = self._feed
        if feed is None:
            return
        behind = len(self._buffer) >= self.max_buffer
        if behind != self._paused:
            self._paused = behind
            if behind:
                feed.pause()
            else:
                feed.resume()

    def next(self) -> Deferred[ClientEvent | ClientNotice | None]:
        """The next event or notice; None once the watch ended cleanly."""
        if self._buffer:
            item = self._buffer.popleft()
            self._flow()
            return succeed(item)
        if self.ended:
            return self._end_of_items()
        d: Deferred[ClientEvent | ClientNotice | None] = Deferred(self._cancel_waiter)
        self._waiters.append(d)
        return d

    def __aiter__(self) -> ClientWatch:
        return self

    async def __anext__(self) -> ClientEvent | ClientNotice:
        item = await self.next()
        if item is None:
            raise StopAsyncIteration
        return item

