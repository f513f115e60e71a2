"""
Listener: the handle of one listener of a channel, and the three ways to consume its
mailbox: :meth:`Listener.consume` (a handler per mail), :meth:`Listener.serve` (actions
per message type, with replies to requests) and :meth:`Listener.messages` (``async for``).

Everything here is written over the :class:`~._backend.Mailboxes` contract, so it behaves
the same on every backend (memory, Redis).
"""

from __future__ import annotations

import inspect
import json
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from types import AsyncGeneratorType, GeneratorType
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ..channels.base import check_count, check_event_name
from ..channels.message import encode_json
from ..errors import InvalidDataError, ReservedTypeError
from .mail import CONTROL_TYPES, ListenerInfo, Mail

if TYPE_CHECKING:
    from ..channels.base import Channel
    from ._backend import Attachment

__all__ = ["Action", "Consumer", "Handler", "Listener", "MailStream"]

_log = Logger(namespace="twisted_event_dispatcher.listeners")

#: What :meth:`Listener.consume` calls per mail: returns a value, a Deferred or a coroutine.
Handler = Callable[[Mail], Any]
#: What :meth:`Listener.serve` calls for a mail of its type; its result is the reply.
Action = Callable[[Mail], Any]
#: Longest remote error message sent back in a reply, in characters.
MAX_ERROR_MESSAGE = 4096


def call_handler(function: Callable[[Mail], Any], mail: Mail) -> Deferred[Any]:
    """``function(mail)`` as a Deferred, whether it returns a value, a Deferred or awaits."""
    try:
        result = function(mail)
    except Exception:
        return fail()
    return as_deferred(result) if is_pending(result) else succeed(result)


def is_pending(result: object) -> bool:
    """Whether a handler's result is still to come (a Deferred or an awaitable)."""
    if result is None:
        return False
    if hasattr(result, "__await__"):  # Deferred, coroutine, asyncio future
        return True
    return isinstance(result, GeneratorType) and inspect.isawaitable(result)


def as_deferred(result: Any) -> Deferred[Any]:
    if isinstance(result, Deferred):
        return result
    if isinstance(result, Coroutine):
        return Deferred.fromCoroutine(result)
    return Deferred.fromCoroutine(_await(result))


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _log_detach_failure(failure: Failure, consumer: object) -> None:
    _log.failure("detaching {consumer!r} failed", failure, consumer=consumer)


def _not_run(result: object) -> TypeError:
    """A handler that returned a generator: its body never ran (never acknowledge that)."""
    return TypeError(
        f"the handler returned {type(result).__name__} {result!r} instead of running: a "
        "generator function needs @inlineCallbacks (or write it as async def)"
    )


def _describe(error: BaseException) -> str:
    """``Type: message`` of an exception whose ``__str__`` may itself raise."""
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:
        return type(error).__name__


def _held(mail: Mail) -> bool:
    """Whether ``mail`` is still its consumer's (see :meth:`~._backend.Attachment.holds`)."""
    attachment = mail._attachment
    return attachment is not None and attachment.holds(mail)


def _check_callable(value: object, what: str) -> None:
    if not callable(value):
        raise TypeError(f"{what} must be callable, got {type(value).__name__}")


class Listener:
    """
    A listener of ``channel`` (made by ``channel.add_listener`` or ``channel.listener``).
    A handle: it holds no state of the mailbox, which lives in the channel's backend
    (maybe in Redis, shared with other processes); only its actions are local.

    :ivar id: the listener's id.
    :ivar channel: the channel it listens on.
    :ivar group: its group when the handle was made by ``add_listener`` (else None; see
        :meth:`info` for the truth).
    """

    def __init__(self, channel: Channel, listener_id: str, group: str | None = None) -> None:
        self.id = listener_id
        self.channel = channel
        self.group = group
        self._actions: dict[str, Action] = {}

    def __repr__(self) -> str:
        return f"<Listener {self.channel.name}/{self.id} group={self.group!r}>"

    # -- state ---------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Start receiving (the mail kept while stopped comes first, in order)."""
        return self.channel.mailboxes.set_running(self.id, True)

    def stop(self) -> Deferred[None]:
        """
        Stop receiving: the mailbox keeps filling; unacknowledged group mail goes back to
        the group; own mail in flight stays this consumer's to acknowledge.
        """
        return self.channel.mailboxes.set_running(self.id, False)

    def is_running(self) -> Deferred[bool]:
        """Whether it is started (fails with ``UnknownListenerError``)."""
        return self.info().addCallback(lambda info: info.running)

    def info(self) -> Deferred[ListenerInfo]:
        """Its state: group, running, queued and in-flight counts, bounds, attached."""
        return self.channel.mailboxes.info(self.id)

    def remove(self) -> Deferred[None]:
        """As ``channel.remove_listener(self.id)``."""
        return self.channel.remove_listener(self.id)

    def dispatch_to(self, listener_id: str, event: str, data: Any = None) -> Deferred[str | None]:
        """Dispatch to another listener of the channel (eric-sse's ``dispatch_to``)."""
        return self.channel.dispatch(listener_id, event, data)

    # -- actions -------------------------------------------------------------------------

    def set_action(self, event: str, action: Action) -> None:
        """
        Run ``action(mail)`` for the mails of type ``event`` when :meth:`serve` runs; for a
        request, its result (a value, a Deferred or a coroutine; JSON) is the reply.
        Replaces the action ``event`` had.

        :raises ReservedTypeError: ``event`` is ``start`` or ``stop``.
        """
        event = check_event_name(event)
        if event in CONTROL_TYPES:
            raise ReservedTypeError(
                f"{event!r} starts or stops the listener; it cannot have an action"
            )
        _check_callable(action, "an action")
        self._actions[event] = action
        self.channel._keep_handle(self)

    def remove_action(self, event: str) -> bool:
        """Forget the action of ``event``; False if it had none."""
        return self._actions.pop(event, None) is not None

    @property
    def actions(self) -> dict[str, Action]:
        """A copy of the actions, by message type."""
        return dict(self._actions)

    # -- consuming -----------------------------------------------------------------------

    def consume(
        self,
        handler: Handler,
        *,
        max_in_flight: int = 1,
        auto_ack: bool = True,
        max_deliveries: int = 5,
        on_dead_letter: Callable[[Mail, Failure], Any] | None = None,
    ) -> Deferred[Consumer]:
        """
        Call ``handler(mail)`` for each mail, in order, at most ``max_in_flight`` unfinished
        at once. A consumer already attached to this listener is replaced (its ``done``
        fires with ``"replaced"``).

        The handler's success acknowledges the mail (with ``auto_ack``; otherwise the
        handler calls ``mail.ack()``). A failure is logged (once, with its traceback) and the
        mail is given back for redelivery; on its ``max_deliveries``-th delivery it is
        acknowledged instead, logged as an error and handed to ``on_dead_letter(mail,
        failure)`` if given.

        :raises TypeError, ValueError: a bad argument (at once).
        :return: fires with the :class:`Consumer`, or fails with ``UnknownListenerError``.
        """
        _check_callable(handler, "the handler")
        check_count(max_in_flight, "max_in_flight")
        check_count(max_deliveries, "max_deliveries")
        if not isinstance(auto_ack, bool):
            raise TypeError(f"auto_ack must be a bool, got {type(auto_ack).__name__}")
        if on_dead_letter is not None:
            _check_callable(on_dead_letter, "on_dead_letter")
        consumer = Consumer(self, handler, auto_ack, max_deliveries, on_dead_letter)
        attached = self.channel.mailboxes.attach(self.id, consumer, max_in_flight)
        return attached.addCallback(consumer._attached)

    def serve(self, *, max_in_flight: int = 1, max_deliveries: int = 5) -> Deferred[Consumer]:
        """
        Run the actions (see :meth:`set_action`): consume with a handler that calls
        ``actions[mail.event](mail)``. A request gets the action's result as its reply (or
        its exception's type and message; ``NoActionError`` if there is no action for the
        type; ``InvalidDataError`` if the result is not JSON) and is acknowledged: it is
        answered once. Other mail follows :meth:`consume`'s rules; mail with no action,
        and ``_missed`` notices, are logged as warnings and acknowledged.
        """
        return self.consume(
            self._run_action, max_in_flight=max_in_flight, max_deliveries=max_deliveries
        )

    def messages(self, *, max_in_flight: int = 1) -> MailStream:
        """
        The mailbox as an asynchronous iterator: ``async for mail in stream: ...; await
        mail.ack()``. Nothing is acknowledged for you: at most ``max_in_flight`` mails are
        handed out unacknowledged. ``await stream.close()`` ends it (unacknowledged mail
        is redelivered to the next consumer).
        """
        check_count(max_in_flight, "max_in_flight")
        return MailStream(self, max_in_flight)

    # -- actions at work -----------------------------------------------------------------

    def _run_action(self, mail: Mail) -> Any:
        if mail.source == "missed":
            _log.warn(
                "channel {channel}: listener {listener} missed {count} broadcast(s): its "
                "mailbox was full",
                channel=self.channel.name, listener=self.id,
                count=mail.data.get("count") if isinstance(mail.data, dict) else None,
            )
            return None
        action = self._actions.get(mail.event)
        if not mail.is_request:
            if action is None:
                _log.warn(
                    "channel {channel}: listener {listener} has no action for {event!r}; "
                    "{mail!r} acknowledged",
                    channel=self.channel.name, listener=self.id, event=mail.event, mail=mail,
                )
                return None
            return action(mail)  # consume's rules: a value, a Deferred or a coroutine
        if action is None:
            return self._reply_error(
                mail, "NoActionError", f"listener {self.id} has no action for {mail.event!r}"
            )
        return Deferred.fromCoroutine(self._answer(action, mail))

    async def _answer(self, action: Action, mail: Mail) -> None:
        try:
            value = await call_handler(action, mail)
        except Exception:
            await self._reply_failure(Failure(), mail)
        else:
            await self._reply_value(value, mail)

    def _reply_value(self, value: object, mail: Mail) -> Deferred[None]:
        try:
            value_json = encode_json(value)
        except InvalidDataError as e:
            return self._reply_error(mail, "InvalidDataError", f"the action's result: {e}")
        except Exception as e:  # its own code raised while encoded (a dict's items()...)
            return self._reply_error(
                mail, "InvalidDataError",
                f"the action's result: encoding it raised {_describe(e)}",
            )
        assert mail.reply_to is not None and mail.correlation is not None
        return self.channel.mailboxes.reply(mail.reply_to, mail.correlation, True, value_json)

    def _reply_failure(self, failure: Failure, mail: Mail) -> Deferred[None]:
        _log.failure(
            "channel {channel}: the action of listener {listener} for {mail!r} failed; the "
            "error goes back to the requester",
            failure, LogLevel.warn, channel=self.channel.name, listener=self.id, mail=mail,
        )
        error = failure.value
        assert error is not None
        try:
            message = str(error)
        except Exception as e:  # its __str__ raised: answered all the same, once
            message = f"(its message could not be read: {_describe(e)})"
        return self._reply_error(mail, type(error).__name__, message)

    def _reply_error(self, mail: Mail, remote_type: str, message: str) -> Deferred[None]:
        assert mail.reply_to is not None and mail.correlation is not None
        value_json = json.dumps({"type": remote_type, "message": message[:MAX_ERROR_MESSAGE]})
        return self.channel.mailboxes.reply(mail.reply_to, mail.correlation, False, value_json)


class Consumer:
    """
    A handler attached to a listener (see :meth:`Listener.consume`).

    :ivar listener: the :class:`Listener`.
    :ivar processed: how many mails the handler finished successfully.
    :ivar dead_letters: how many mails were given up after ``max_deliveries`` failures.
    :ivar done: fires once with why the consumer ended: ``"stopped"`` (:meth:`stop`),
        ``"removed"`` (the listener was removed), ``"replaced"`` (another consumer
        attached), ``"closed"`` (the backend closed) or ``"failed"``.
    """

    def __init__(
        self,
        listener: Listener,
        handler: Handler,
        auto_ack: bool,
        max_deliveries: int,
        on_dead_letter: Callable[[Mail, Failure], Any] | None,
    ) -> None:
        self.listener = listener
        self.processed = 0
        self.dead_letters = 0
        self.done: Deferred[str] = Deferred()
        self._handler = handler
        self._auto_ack = auto_ack
        self._max_deliveries = max_deliveries
        self._on_dead_letter = on_dead_letter
        self._attachment: Attachment | None = None
        self._ended = False
        self._stopping = False

    def __repr__(self) -> str:
        state = "ended" if self._ended else "running"
        return f"<Consumer of {self.listener!r} {state} processed={self.processed}>"

    def _attached(self, attachment: Attachment) -> Consumer:
        self._attachment = attachment
        if self._stopping:  # stopped before the backend answered
            attachment.detach().addErrback(_log_detach_failure, self)
        return self

    def stop(self) -> Deferred[None]:
        """
        Detach: no more mail; what is unacknowledged goes to the next consumer (handlers
        still running finish, but their ``ack()`` fires False). ``done`` fires
        ``"stopped"``.
        """
        if self._ended:
            return succeed(None)
        self._stopping = True
        self._end("stopped")
        if self._attachment is None:
            return succeed(None)
        return self._attachment.detach()

    def _end(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self.done.callback(reason)

    # -- MailSink ------------------------------------------------------------------------

    def mail(self, mail: Mail) -> None:
        if self._ended:
            return  # on its way while stopping: the detach gives it back
        try:
            result = self._handler(mail)
        except Exception:
            settled = self._failed(Failure(), mail)
        else:
            if result is None:  # the common case: done (the checks below, in short)
                self.processed += 1
                if not self._auto_ack:
                    return
                settled = mail.ack()
                if settled.called and not isinstance(settled.result, Failure):
                    return
                settled.addErrback(self._bug, mail)
                return
            if is_pending(result):
                handled = as_deferred(result)
                handled.addCallbacks(
                    self._succeeded, self._failed, callbackArgs=(mail,), errbackArgs=(mail,)
                )
                handled.addErrback(self._bug, mail)
                return
            if isinstance(result, GeneratorType | AsyncGeneratorType):
                settled = self._failed(Failure(_not_run(result)), mail)
            else:
                settled = self._succeeded(result, mail)
        # A handler that returned at once: no Deferred of ours unless settling is pending
        # (memory acknowledges at once) or failed.
        if settled is not None and not (
            settled.called and not isinstance(settled.result, Failure)
        ):
            settled.addErrback(self._bug, mail)

    def detached(self, reason: str) -> None:
        self._end(reason)

    # -- outcomes ------------------------------------------------------------------------

    def _succeeded(self, _: object, mail: Mail) -> Deferred[bool] | None:
        self.processed += 1
        return mail.ack() if self._auto_ack else None

    def _failed(self, failure: Failure, mail: Mail) -> Deferred[Any] | None:
        listener = self.listener
        _log.failure(
            "channel {channel}: the handler of listener {listener} failed on {mail!r} "
            "(delivery {deliveries} of at most {max_deliveries})",
            failure, channel=listener.channel.name, listener=listener.id, mail=mail,
            deliveries=mail.deliveries, max_deliveries=self._max_deliveries,
            level=LogLevel.error,
        )
        attachment = mail._attachment
        if attachment is None:
            return None
        if mail.deliveries < self._max_deliveries:
            return attachment.release(mail)
        return attachment.ack(mail).addCallback(self._dead_letter, mail, failure)

    def _dead_letter(self, acked: bool, mail: Mail, failure: Failure) -> Deferred[Any] | None:
        """Given up (acknowledged): say so, and hand it to ``on_dead_letter``."""
        if not acked:
            return None  # no longer ours (its deadline passed, or we were detached)
        self.dead_letters += 1
        listener = self.listener
        _log.error(
            "channel {channel}: listener {listener} gives up {event!r} mail {mail_id} after "
            "{deliveries} deliveries (dead letter)",
            channel=listener.channel.name, listener=listener.id, event=mail.event,
            mail_id=mail.id, deliveries=mail.deliveries,
        )
        on_dead_letter = self._on_dead_letter
        if on_dead_letter is None:
            return None
        return call_handler(lambda m: on_dead_letter(m, failure), mail)

    def _bug(self, failure: Failure, mail: Mail) -> None:
        """Acknowledging, giving back or ``on_dead_letter`` failed: log it, never lose it."""
        if failure.check(CancelledError) and self._ended:
            return
        listener = self.listener
        _log.failure(
            "channel {channel}: listener {listener}: settling {mail!r} failed",
            failure, channel=listener.channel.name, listener=listener.id, mail=mail,
        )


class MailStream:
    """
    A listener's mailbox as an asynchronous iterator (see :meth:`Listener.messages`).
    Iteration ends when the stream is closed or the listener's consumer ends otherwise
    (removed, replaced); :attr:`reason` says which. It fails with the backend's error
    (``UnknownListenerError``) if the listener cannot be attached. Mail delivered to the
    stream but taken back before it was read (group mail of a listener stopped meanwhile,
    or whose ack deadline passed) is skipped, where the backend can tell (memory). Several
    ``__anext__`` calls may wait at once: each gets its own mail, in order.
    """

    def __init__(self, listener: Listener, max_in_flight: int) -> None:
        self.listener = listener
        #: Why the stream ended (None while it runs).
        self.reason: str | None = None
        self._max_in_flight = max_in_flight
        self._buffer: deque[Mail] = deque()
        #: The ``__anext__`` calls waiting for a mail, first come first served.
        self._waiting: deque[Deferred[Mail | None]] = deque()
        self._error: Failure | None = None
        self._attachment: Attachment | None = None
        attached = listener.channel.mailboxes.attach(listener.id, self, max_in_flight)
        attached.addCallbacks(self._attached, self._attach_failed)

    def __repr__(self) -> str:
        return f"<MailStream of {self.listener!r} buffered={len(self._buffer)}>"

    def _attached(self, attachment: Attachment) -> None:
        self._attachment = attachment
        if self.reason == "stopped":  # closed before the backend answered
            attachment.detach().addErrback(_log_detach_failure, self)

    def _attach_failed(self, failure: Failure) -> None:
        self._error = failure
        self._end("failed")

    # -- MailSink ------------------------------------------------------------------------

    def mail(self, mail: Mail) -> None:
        if self.reason is not None:
            return  # on its way while closing: the detach gives it back
        if self._waiting:
            self._waiting.popleft().callback(mail)
            return
        if len(self._buffer) >= self._max_in_flight:  # some were taken back: drop them
            self._buffer = deque(m for m in self._buffer if _held(m))
        self._buffer.append(mail)

    def detached(self, reason: str) -> None:
        self._end(reason)

    def _end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._buffer.clear()  # no longer ours: given back by the backend
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            waiter.callback(None)

    # -- iteration -----------------------------------------------------------------------

    def __aiter__(self) -> MailStream:
        return self

    async def __anext__(self) -> Mail:
        while self._buffer:
            mail = self._buffer.popleft()
            if _held(mail):  # (a stopped listener's group mail went back to the group)
                return mail
        if self.reason is not None:
            self._finish()

        def forget(cancelled: Deferred[Mail | None]) -> None:
            if cancelled in self._waiting:
                self._waiting.remove(cancelled)

        waiter: Deferred[Mail | None] = Deferred(forget)
        self._waiting.append(waiter)
        handed = await waiter
        if handed is None:
            self._finish()
        return handed

    def _finish(self) -> NoReturn:
        if self._error is not None:
            self._error.raiseException()
        raise StopAsyncIteration

    async def release(self, mail: Mail) -> bool:
        """Give ``mail`` back for redelivery now (deliveries + 1); False if not ours."""
        if mail in self._buffer:  # not handed out yet: it is coming back anew
            self._buffer.remove(mail)
        if mail._attachment is None:
            return False
        return await mail._attachment.release(mail)

    async def close(self) -> None:
        """End the stream; unacknowledged mail goes to the next consumer."""
        if self.reason is not None and self._attachment is None:
            return
        self._end("stopped")
        attachment, self._attachment = self._attachment, None
        if attachment is not None:
            await attachment.detach()

    async def __aenter__(self) -> MailStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
