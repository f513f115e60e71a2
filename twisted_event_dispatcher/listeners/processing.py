"""
Processor: a listener whose mail is processed by a function on a pool of workers, each
result published on the channel (eric-sse's ``DataProcessingChannel``).

For each mail, ``function(mail.data)`` runs on a worker (threads of the processor's own, or
processes), at most ``max_workers`` at once; its return value is published to the
channel's live subscribers as ``result_event`` with ``{"input": <mail id>, "result":
<value>}`` and only then is the mail acknowledged. A function that raises gives
``error_event`` with ``{"input": <mail id>, "error": <exception type>, "message": <str>}``
(the mail is acknowledged too: it was processed; processing it again would fail again).

A mail of type ``closed`` (:data:`~.mail.MESSAGE_TYPE_CLOSED`) ends the stream: the mails
before it finish and are published, then ``closed`` is published with the counts, the
processor stops and :attr:`Processor.done` fires. Mail after it stays in the mailbox for
the listener's next consumer.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ..channels.base import Channel, check_count, check_event_name
from ..channels.message import encode_json
from ..errors import InvalidDataError
from ._pools import (
    InOrder,
    Pacer,
    PoolClosedError,
    WorkerError,
    WorkerPool,
    check_pool,
    make_pool,
)
from .listener import Consumer, Listener, is_pending
from .mail import MESSAGE_TYPE_CLOSED, Mail

__all__ = ["Processor"]

_log = Logger(namespace="twisted_event_dispatcher.listeners")

#: Longest error message published in an ``error_event``, in characters.
MAX_ERROR_MESSAGE = 4096


class _Outcome(NamedTuple):
    """What one input gave, ready to publish in its turn."""

    mail: Mail
    settled: Deferred[None]
    ok: bool
    #: The function's return value (``ok``), else ``(error type, message)``.
    value: Any


class Processor:
    """
    Runs ``function`` over the mailbox of ``listener`` on a pool of workers and publishes
    the results on its channel. Build it with :meth:`create` (a new listener), or
    ``Processor(listener, function, ...)`` then :meth:`start` (an existing one: the mail
    a previous consumer left unacknowledged comes first).

    :param function: called as ``function(mail.data)`` on a worker; returns the result
        (JSON-compatible: it is published; a result JSON cannot encode is published as an
        ``InvalidDataError`` error). A plain, blocking function: an ``async def`` function
        is refused (TypeError), and a Deferred or coroutine it returns is published as a
        ``TypeError`` error (nothing on a worker could run it). On threads it must be
        thread-safe and must not touch the reactor (use ``blockingCallFromThread``); it
        gets the mail's own copy of the data.
    :param max_workers: the most calls running at once: the pool's size, and the most
        mails the listener hands over unacknowledged (its consumer's ``max_in_flight``).
    :param pool: ``"threads"`` (a Twisted ``ThreadPool`` of the processor's own, started on
        the first mail, stopped with the processor and at reactor shutdown),
        ``"processes"`` (a ``ProcessPoolExecutor`` with the ``"spawn"`` start method:
        ``function``, the data and the results must be picklable, and ``function``
        defined at the top level of an importable module), or a
        ``concurrent.futures.Executor`` of yours (used as is, never shut down by the
        processor).
    :param result_event: the event a result is published as.
    :param error_event: the event a failure is published as.
    :param ordered: publish in the order of the inputs (a result that is ready early
        waits for those before it); else as each is ready. A mail that goes back to the
        mailbox (its worker process died) takes its place anew when it comes back.
    :param result_delay: at least this many seconds between two published events
        (eric-sse's ``stream_delay_seconds``); a mail is acknowledged when its result is
        published, so waiting results count against ``max_workers``.
    :param max_deliveries: a mail whose worker process died (``BrokenProcessPool``: it,
        or another call at the same time, crashed the worker), or whose result the channel
        refused, goes back to the mailbox and is tried again; on its ``max_deliveries``-th
        delivery it is given up, and ``error_event`` says so.
    :param clock: the time ``result_delay`` is measured on (default: the channel's).
    :raises TypeError, ValueError: a bad argument, an ``async def`` function, or
        ``pool="processes"`` with a function a spawned process cannot get (not
        picklable, or defined in an interactive ``__main__``): at once, before anything
        is registered or started.

    :ivar listener: the :class:`~.listener.Listener` it consumes.
    :ivar done: fires once, when the processor has ended and its workers are gone, with
        the number of results it published. :attr:`reason` says why it ended:
        ``"closed"`` (a ``closed`` mail), ``"stopped"`` (:meth:`stop`), or what ended its
        consumer (``"removed"``, ``"replaced"``, ``"closed"`` by the backend, ``"failed"``).
    :ivar results: results published so far.
    :ivar errors: error events published so far.

    A ``_missed`` notice (broadcasts the full mailbox could not take) is published as an
    ``error_event`` with ``"error": "MissedMessages"``. A request (``channel.request``) to
    the listener also gets the result, or the error, as its reply; a ``closed`` request
    gets ``{"results": n, "errors": m}``.

    A pool that refuses work (a given executor shut down; the reactor stopping) ends the
    processor (reason ``"failed"``, logged as an error) and leaves the mail in the
    mailbox; a call cancelled before it ran goes back to the mailbox too. Neither is
    published as an error.
    """

    def __init__(
        self,
        listener: Listener,
        function: Callable[[Any], Any],
        *,
        max_workers: int = 4,
        pool: str | Executor = "threads",
        result_event: str = "result",
        error_event: str = "processing_error",
        ordered: bool = False,
        result_delay: float = 0.0,
        max_deliveries: int = 5,
        clock: IReactorTime | None = None,
    ) -> None:
        if not isinstance(listener, Listener):
            raise TypeError(f"listener must be a Listener, got {type(listener).__name__}")
        _check_options(
            function, max_workers, pool, result_event, error_event, ordered, result_delay,
            max_deliveries, clock,
        )
        self._pool: WorkerPool = make_pool(pool, max_workers, function, f"processor-{listener.id}")
        self.listener = listener
        self.channel: Channel = listener.channel
        self.function = function
        self.max_workers = max_workers
        self.result_event = result_event
        self.error_event = error_event
        self.ordered = ordered
        self.result_delay = float(result_delay)
        self.max_deliveries = max_deliveries
        self.results = 0
        self.errors = 0
        self.reason: str | None = None
        self.done: Deferred[int] = Deferred()
        self._order: InOrder[_Outcome] = InOrder(self._release, ordered)
        self._pacer = Pacer(clock if clock is not None else self.channel.clock, result_delay)
        self._consumer: Consumer | None = None
        self._started = False
        #: Inputs taken and not yet settled (published and acknowledged, or failed).
        self._unsettled = 0
        self._closing: tuple[Mail, Deferred[None]] | None = None
        #: A mail before the "closed" one went back to the mailbox while closing.
        self._given_back = False
        self._ended: Deferred[None] | None = None

    def __repr__(self) -> str:
        state = self.reason or ("running" if self._started else "not started")
        return (
            f"<Processor of {self.listener!r} {state} max_workers={self.max_workers} "
            f"results={self.results} errors={self.errors}>"
        )

    @classmethod
    def create(
        cls,
        channel: Channel,
        function: Callable[[Any], Any],
        *,
        listener_id: str | None = None,
        group: str | None = None,
        mailbox_size: int = 1000,
        ack_timeout: float = 30.0,
        max_workers: int = 4,
        pool: str | Executor = "threads",
        result_event: str = "result",
        error_event: str = "processing_error",
        ordered: bool = False,
        result_delay: float = 0.0,
        max_deliveries: int = 5,
        clock: IReactorTime | None = None,
    ) -> Deferred[Processor]:
        """
        Register a listener (``channel.add_listener(listener_id, group=..., mailbox_size=...,
        ack_timeout=...)``) and start a processor on it; fires with the processor. Every
        argument is checked first (TypeError/ValueError at once, nothing registered).

        In a group, ``ack_timeout`` must exceed the time a mail may take (computing,
        waiting for its turn and for ``result_delay``): past it, the group gives the mail
        to another member.
        """
        _check_options(
            function, max_workers, pool, result_event, error_event, ordered, result_delay,
            max_deliveries, clock,
        )

        def registered(listener: Listener) -> Deferred[Processor]:
            processor = cls(
                listener, function, max_workers=max_workers, pool=pool,
                result_event=result_event, error_event=error_event, ordered=ordered,
                result_delay=result_delay, max_deliveries=max_deliveries, clock=clock,
            )
            return processor.start()

        added = channel.add_listener(
            listener_id, group=group, mailbox_size=mailbox_size, ack_timeout=ack_timeout
        )
        return added.addCallback(registered)

    # -- running -------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Calls of ``function`` started and not yet returned to the reactor."""
        return self._pool.busy

    def start(self) -> Deferred[Processor]:
        """
        Attach to the listener and process its mail; fires with the processor, or fails
        with ``UnknownListenerError`` (then the processor has ended with reason
        ``"failed"``). A processor starts once.
        """
        if self._started or self._ended is not None:
            raise RuntimeError(f"{self!r} was started (or stopped) already; make a new one")
        self._started = True
        consuming = self.listener.consume(
            self._handle, max_in_flight=self.max_workers, auto_ack=False,
            max_deliveries=self.max_deliveries, on_dead_letter=self._dead_letter,
        )

        def attached(consumer: Consumer) -> Processor:
            self._consumer = consumer
            consumer.done.addCallback(self._consumer_ended)
            if self._ended is not None:  # a "closed" mail came with the mail waiting
                consumer.stop()
            return self

        def failed(failure: Failure) -> Failure:
            self._end("failed")
            return failure

        return consuming.addCallbacks(attached, failed)

    def stop(self) -> Deferred[None]:
        """
        Stop now: no more mail is taken; the mail in progress is not acknowledged and goes
        back to the listener's mailbox for its next consumer (deliveries + 1), and the
        results of calls still running are discarded when they come. Fires when those calls
        have returned (a running call cannot be interrupted) and the workers are gone;
        :attr:`done` fires then too.
        """
        return self._end("stopped")

    # -- the handler ---------------------------------------------------------------------

    def _handle(self, mail: Mail) -> Deferred[None]:
        settled: Deferred[None] = Deferred()
        if self._closing is not None or self._ended is not None:
            # After "closed": not this stream's. Left unacknowledged, so it goes to the
            # listener's next consumer when this one detaches.
            return settled
        if mail.event == MESSAGE_TYPE_CLOSED:
            self._closing = (mail, settled)
            self._close_if_done()
            return settled
        self._unsettled += 1
        ticket = self._order.ticket()
        if mail.source == "missed":
            count = mail.data.get("count") if isinstance(mail.data, dict) else None
            message = f"{count} broadcast message(s) did not fit the mailbox of {mail.listener}"
            missed = _Outcome(mail, settled, False, ("MissedMessages", message))
            self._order.complete(ticket, missed)
            return settled
        try:
            computing = self._pool.submit(self.function, mail.data)
        except PoolClosedError as error:
            # The pool runs nothing more (a given executor was shut down; the reactor is
            # stopping): turning every mail into an error event would consume the mailbox
            # for nothing, so the processor ends and the mail stays for the next consumer.
            self._unsettled -= 1
            self._order.skip(ticket)
            _log.error(
                "channel {channel}: processor {listener} stops: its pool cannot run "
                "{mail!r} ({error}); the mail stays in the mailbox",
                channel=self.channel.name, listener=self.listener.id, mail=mail, error=error,
            )
            self._end("failed")
            return settled
        computing.addBoth(self._computed, ticket, mail, settled)
        return settled

    def _computed(self, outcome: object, ticket: int, mail: Mail, settled: Deferred[None]) -> None:
        if self._ended is not None:
            return  # stopped: the mail went back to the mailbox; the result is dropped
        if isinstance(outcome, Failure) and outcome.check(BrokenProcessPool):
            # A worker process died (this call's, or another's at the same time): not an
            # answer about this input, so it is tried again (deliveries + 1) unless this was
            # its last delivery, or the stream is closing (it could not come back before
            # the "closed" mail): then the subscribers get the error.
            if mail.deliveries < self.max_deliveries and self._closing is None:
                self._order.skip(ticket)
                self._settle(settled, outcome)
                return
            if self._closing is None:
                message = f"given up after {mail.deliveries} deliveries: {outcome.value}"
            else:
                message = f"not tried again, the stream is closing: {outcome.value}"
            broken = _Outcome(mail, settled, False, ("BrokenProcessPool", message))
            self._order.complete(ticket, broken)
        elif isinstance(outcome, Failure) and outcome.check(CancelledError):
            # Cancelled before it ran (its executor was shut down with cancel_futures, as
            # at reactor shutdown): no answer either; it goes back to the mailbox.
            self._order.skip(ticket)
            if self._closing is not None and mail.deliveries < self.max_deliveries:
                self._given_back = True  # it cannot come back before the "closed" mail
            self._settle(settled, outcome)
        elif isinstance(outcome, Failure):
            error = outcome.value
            kind = error.kind if isinstance(error, WorkerError) else type(error).__name__
            _log.warn(
                "channel {channel}: processor {listener}: {function} failed on {mail!r}: "
                "{kind}: {error}",
                channel=self.channel.name, listener=self.listener.id,
                function=getattr(self.function, "__name__", self.function), mail=mail,
                kind=kind, error=error,
            )
            self._order.complete(ticket, _Outcome(mail, settled, False, (kind, _describe(error))))
        elif is_pending(outcome):
            # A Deferred or coroutine made on a worker: nothing there runs it, and this
            # thread must not. Said plainly (JSON's refusal would hide the cause).
            if isinstance(outcome, Coroutine):
                outcome.close()  # never awaited, on purpose: no RuntimeWarning
            message = (
                f"the function returned {type(outcome).__name__} {outcome!r}, not a value: it "
                f"runs on a worker and must return its result (for asynchronous work, use "
                f"listener.consume)"
            )
            self._order.complete(ticket, _Outcome(mail, settled, False, ("TypeError", message)))
        else:
            self._order.complete(ticket, _Outcome(mail, settled, True, outcome))

    def _release(self, outcome: _Outcome) -> None:
        """An outcome's turn came (see ``ordered``): publish it when the pacer lets it."""
        published: Deferred[bool] = self._pacer.run(lambda: self._publish(outcome))
        published.addCallbacks(
            self._published, self._not_published,
            callbackArgs=(outcome,), errbackArgs=(outcome,),
        )

    def _publish(self, outcome: _Outcome) -> Deferred[bool]:
        """Publish the result (fires True) or the error (False)."""
        mail = outcome.mail
        if outcome.ok:
            try:
                published = self.channel.publish(
                    self.result_event, {"input": mail.id, "result": outcome.value}
                )
            except InvalidDataError as error:
                kind, message = "InvalidDataError", f"the result of {mail.id}: {error}"
            else:
                return published.addCallback(lambda _: True)
        else:
            kind, message = outcome.value
        return self.channel.publish(
            self.error_event,
            {"input": mail.id, "error": _message(kind), "message": _message(message)},
        ).addCallback(lambda _: False)

    def _published(self, was_result: bool, outcome: _Outcome) -> None:
        if was_result:
            self.results += 1
        else:
            self.errors += 1
        if self._ended is not None:
            return
        mail = outcome.mail
        if mail.is_request:
            self._reply(outcome)
        acked = mail.ack()
        acked.addCallbacks(
            self._acked, self._not_acked, callbackArgs=(mail,), errbackArgs=(mail,)
        )
        acked.addBoth(lambda _: self._settle(outcome.settled, None))

    def _acked(self, acked: bool, mail: Mail) -> None:
        if not acked and self._ended is None:
            # Published, but the mail was no longer ours: its ack deadline passed and the
            # group gave it to another member (or to us again), which publishes it too.
            _log.warn(
                "channel {channel}: processor {listener} published the outcome of {mail!r} "
                "after its ack deadline passed; the mail went to another consumer, so its "
                "outcome may be published twice: give the listener an ack_timeout longer "
                "than a mail takes",
                channel=self.channel.name, listener=self.listener.id, mail=mail,
            )

    def _not_acked(self, failure: Failure, mail: Mail) -> None:
        _log.failure(
            "channel {channel}: processor {listener} published the outcome of {mail!r} but "
            "could not acknowledge it; it will be delivered, and published, again",
            failure, LogLevel.warn, channel=self.channel.name, listener=self.listener.id,
            mail=mail,
        )

    def _not_published(self, failure: Failure, outcome: _Outcome) -> None:
        if self._ended is not None:
            return  # cancelled by the end, or failed meanwhile: the mail went back anyway
        # The channel could not take it: the consumer logs it and gives the mail back (or,
        # on its last delivery, gives it up: see _dead_letter).
        if self._closing is not None and outcome.mail.deliveries < self.max_deliveries:
            self._given_back = True  # it cannot come back before the "closed" mail
        self._settle(outcome.settled, failure)

    def _settle(self, settled: Deferred[None], outcome: Failure | None) -> None:
        self._unsettled -= 1
        if outcome is None:
            settled.callback(None)
        else:
            settled.errback(outcome)
        self._close_if_done()

    def _dead_letter(self, mail: Mail, failure: Failure) -> Deferred[Any]:
        """Given up after ``max_deliveries``: the subscribers are told, not only the log."""
        error = failure.value
        message = _message(f"given up after {mail.deliveries} deliveries: {_describe(error)}")
        data = {"input": mail.id, "error": _message(type(error).__name__), "message": message}
        published = self._pacer.run(lambda: self.channel.publish(self.error_event, data))

        def counted(_: object) -> None:
            self.errors += 1

        return published.addCallback(counted)

    def _reply(self, outcome: _Outcome) -> None:
        """A request (``channel.request``) also gets the outcome as its reply."""
        mail = outcome.mail
        assert mail.reply_to is not None and mail.correlation is not None
        ok = outcome.ok
        if ok:
            try:
                value_json = encode_json(outcome.value)
            except InvalidDataError as error:
                ok, kind, message = False, "InvalidDataError", f"the result: {error}"
        else:
            kind, message = outcome.value
        if not ok:
            value_json = encode_json({"type": _message(kind), "message": _message(message)})
        replied = self.channel.mailboxes.reply(mail.reply_to, mail.correlation, ok, value_json)
        replied.addErrback(
            lambda f: _log.failure(
                "channel {channel}: processor {listener}: replying to {mail!r} failed", f,
                channel=self.channel.name, listener=self.listener.id, mail=mail,
            )
        )

    # -- ending --------------------------------------------------------------------------

    def _close_if_done(self) -> None:
        """After a ``closed`` mail, once every mail before it is settled: end the stream."""
        if self._closing is None or self._unsettled or self._ended is not None:
            return
        mail, settled = self._closing
        if self._given_back:
            _log.warn(
                "channel {channel}: processor {listener}: a mail before 'closed' could not "
                "be published and went back to the mailbox; the stream is left, 'closed' "
                "included, to the listener's next consumer",
                channel=self.channel.name, listener=self.listener.id,
            )
            self._end("failed")
            return

        def publish() -> Deferred[Any]:  # in the pacer's turn: after every earlier event
            return self.channel.publish(
                MESSAGE_TYPE_CLOSED, {"results": self.results, "errors": self.errors}
            )

        def acked(_: object) -> None:
            if mail.is_request:  # channel.request(listener, "closed"): the counts
                counts = {"results": self.results, "errors": self.errors}
                self._reply(_Outcome(mail, settled, True, counts))
            settled.callback(None)
            self._end("closed")

        def failed(failure: Failure) -> None:
            if self._ended is not None:
                return
            _log.failure(
                "channel {channel}: processor {listener}: publishing the end of the stream "
                "failed; the 'closed' mail is left for the listener's next consumer",
                failure, channel=self.channel.name, listener=self.listener.id,
            )
            self._end("failed")

        published = self._pacer.run(publish)
        published.addCallback(lambda _: mail.ack()).addCallbacks(acked, failed)

    def _consumer_ended(self, reason: str) -> None:
        if self._ended is None:
            self._end(reason)

    def _end(self, reason: str) -> Deferred[None]:
        """Detach (unsettled mail goes back), drop what is pending, close the pool."""
        if self._ended is None:
            self.reason = reason
            self._ended = Deferred()
            self._pacer.cancel()
            self._order.clear()
            if self._consumer is not None:
                self._consumer.stop()
            closed = self._pool.close()
            closed.addBoth(self._pool_closed)
        waiter: Deferred[None] = Deferred()
        self._ended.addBoth(_copy_to, waiter)
        return waiter

    def _pool_closed(self, outcome: object) -> None:
        if isinstance(outcome, Failure):
            _log.failure(
                "channel {channel}: processor {listener}: stopping its workers failed",
                outcome, channel=self.channel.name, listener=self.listener.id,
            )
        assert self._ended is not None
        self._ended.callback(None)
        self.done.callback(self.results)


def _describe(error: BaseException | None) -> str:
    """``str(error)``, or a placeholder when its ``__str__`` fails."""
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__}: str() failed>"


def _message(text: str) -> str:
    """
    ``text`` as it is published (an error type or message): at most
    :data:`MAX_ERROR_MESSAGE` characters, every one with a UTF-8 form (a lone surrogate
    becomes its ``\\udxxx`` escape), so publishing it cannot fail on its encoding.
    """
    return text[:MAX_ERROR_MESSAGE].encode("utf-8", "backslashreplace").decode("utf-8")


def _copy_to(outcome: object, waiter: Deferred[None]) -> object:
    waiter.callback(None)
    return outcome


def _check_options(
    function: object,
    max_workers: object,
    pool: object,
    result_event: object,
    error_event: object,
    ordered: object,
    result_delay: object,
    max_deliveries: object,
    clock: object,
) -> None:
    """Check a processor's options: TypeError or ValueError naming the bad one."""
    if not callable(function):
        raise TypeError(f"function must be callable, got {type(function).__name__}")
    call_method = None if inspect.isroutine(function) else type(function).__call__
    if any(
        inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
        for f in (function, call_method)
    ):
        raise TypeError(
            f"function must be a plain (blocking) function: it runs on a worker, where "
            f"nothing would run the coroutine of {function!r}; for asynchronous work use "
            f"listener.consume(handler)"
        )
    check_count(max_workers, "max_workers")
    check_count(max_deliveries, "max_deliveries")
    for what, event in (("result_event", result_event), ("error_event", error_event)):
        check_event_name(event, what)
        if event == MESSAGE_TYPE_CLOSED:
            raise ValueError(f"{what} must not be {MESSAGE_TYPE_CLOSED!r}: it ends the stream")
    if not isinstance(ordered, bool):
        raise TypeError(f"ordered must be a bool, got {type(ordered).__name__}")
    if isinstance(result_delay, bool) or not isinstance(result_delay, int | float):
        raise TypeError(
            f"result_delay must be a number of seconds, got {type(result_delay).__name__}"
        )
    if not math.isfinite(result_delay) or result_delay < 0:
        raise ValueError(
            f"result_delay must be a finite number of seconds >= 0, got {result_delay!r}"
        )
    if clock is not None and not IReactorTime.providedBy(clock):
        raise TypeError(
            f"clock must provide IReactorTime (a reactor, or a task.Clock), got "
            f"{type(clock).__name__}"
        )
    check_pool(pool, function)
