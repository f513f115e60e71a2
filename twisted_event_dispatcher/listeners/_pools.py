"""
Worker pools for processing listeners, and the two stages between a pool and the channel.

A pool runs ``function(arg)`` away from the reactor thread and fires a Deferred (in the
reactor thread) with the outcome; every pool has the same small shape
(:class:`WorkerPool`: ``submit``, ``close``):

* :class:`ThreadWorkers`: a Twisted ``ThreadPool`` of its own (never the reactor's, so a
  processor cannot starve ``deferToThread`` users, or be starved by them), at most
  ``max_workers`` threads, started on the first ``submit``; stopped by ``close`` and at
  reactor shutdown.
* :class:`ProcessWorkers`: a ``concurrent.futures.ProcessPoolExecutor`` started with the
  ``"spawn"`` method (a fork of a process running a reactor copies its threads' locks and
  file descriptors in whatever state they are); its futures reach the reactor with
  ``callFromThread``. Any other ``concurrent.futures.Executor`` may be given instead: it is
  the caller's, and ``close`` does not shut it down.

Then :class:`InOrder` gives outcomes back in the order their inputs came (or at once), and
:class:`Pacer` spaces actions at least ``delay`` seconds apart on an ``IReactorTime``.
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final, Generic, TypeVar, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

__all__ = [
    "POOL_KINDS",
    "InOrder",
    "Pacer",
    "PoolClosedError",
    "ProcessWorkers",
    "ThreadWorkers",
    "WorkerError",
    "WorkerPool",
    "check_picklable",
    "check_pool",
    "make_pool",
    "run_in_worker",
]

#: The pools chosen by name; an ``Executor`` instance is accepted as well.
POOL_KINDS = ("threads", "processes")

_T = TypeVar("_T")


class PoolClosedError(RuntimeError):
    """
    Work was submitted to a pool after :meth:`WorkerPool.close` (or reactor shutdown), or
    to a pool whose executor refuses work (a given executor that was shut down).
    """


class WorkerError(Exception):
    """
    An exception raised in a worker process that pickle could not have brought back as it
    was (an exception class whose ``__init__`` takes other arguments than ``args``, or an
    unpicklable attribute): its type's name and message instead. Without this, the
    executor's result thread fails to unpickle it and breaks the whole pool, killing the
    calls of the other workers too (``BrokenProcessPool``).

    :ivar kind: the name of the original exception's type.
    :ivar message: ``str()`` of the original exception.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


def run_in_worker(function: Callable[[Any], _T], arg: Any) -> _T:
    """
    In a worker process: ``function(arg)``; an exception that would not survive the trip
    back (pickled here, unpickled in the parent) is replaced by a :class:`WorkerError`
    chained to it (its traceback stays in the remote traceback).
    """
    try:
        return function(arg)
    except Exception as error:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            try:
                message = str(error)
            except Exception:
                message = f"<{type(error).__name__}: str() failed>"
            raise WorkerError(type(error).__name__, message) from error
        raise


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class WorkerPool(ABC):
    """Runs ``function(arg)`` on a worker; fires (in the reactor thread) with its outcome."""

    #: The most calls running at once.
    max_workers: int

    def __init__(self, max_workers: int, reactor: Any = None) -> None:
        self.max_workers = max_workers
        self._reactor = reactor if reactor is not None else _global_reactor()
        self._busy = 0
        self._closed = False
        self._idle_waiters: list[Deferred[None]] = []
        self._close_waiters: list[Deferred[None]] = []
        self._close_outcome: str | Failure | None = None
        self._trigger: Any = None

    @property
    def busy(self) -> int:
        """Calls submitted whose outcome has not reached the reactor yet."""
        return self._busy

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, function: Callable[[Any], _T], arg: Any) -> Deferred[_T]:
        """
        Run ``function(arg)`` on a worker. The Deferred fires in the reactor thread with
        the return value, or fails with what it raised.
        :raises PoolClosedError: :meth:`close` was called, or the executor refused the
            call (then nothing is running it).
        """
        if self._closed:
            raise PoolClosedError(f"{self!r} is closed")
        try:
            result: Deferred[_T] = self._submit(function, arg)
        except Exception as error:  # e.g. a given executor that was shut down or is broken
            # Not an outcome of ``function(arg)``: the pool cannot run anything.
            raise PoolClosedError(f"{self!r} refused the call: {error}") from error
        self._busy += 1
        return result

    @abstractmethod
    def _submit(self, function: Callable[[Any], _T], arg: Any) -> Deferred[_T]:
        """Start the call; report its end with :meth:`_settle` in the reactor thread."""

    def _settle(self, result: Deferred[Any], outcome: Any, ok: bool) -> None:
        """In the reactor thread: one call ended; fire its Deferred."""
        self._busy -= 1
        if not result.called:  # else it was cancelled
            if ok:
                result.callback(outcome)
            else:
                result.errback(outcome)
        if self._busy == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _idle(self) -> Deferred[None]:
        """Fires once no call is running."""
        if self._busy == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def close(self) -> Deferred[None]:
        """
        Refuse new work, let the calls already submitted finish (their Deferreds fire as
        usual; a running call cannot be interrupted), then stop the workers. Fires when
        they are gone. Idempotent.
        """
        waiter: Deferred[None] = Deferred()
        if self._close_outcome is not None:
            _fire(waiter, self._close_outcome)
            return waiter
        self._close_waiters.append(waiter)
        if not self._closed:
            self._closed = True
            closing = self._idle().addCallback(lambda _: self._stop_workers())
            closing.addBoth(self._closed_down)
        return waiter

    def _closed_down(self, outcome: None | Failure) -> None:
        if self._close_outcome is not None:  # the reactor's shutdown came first
            return
        if self._trigger is not None:
            cast(IReactorCore, self._reactor).removeSystemEventTrigger(self._trigger)
            self._trigger = None
        self._close_outcome = outcome if isinstance(outcome, Failure) else _DONE
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            _fire(waiter, self._close_outcome)

    def _watch_shutdown(self) -> None:
        """Stop the workers when the reactor stops (until :meth:`close` does it)."""
        if self._trigger is None:
            self._trigger = cast(IReactorCore, self._reactor).addSystemEventTrigger(
                "during", "shutdown", self._shutdown
            )

    @abstractmethod
    def _stop_workers(self) -> Deferred[None]:
        """Every call has ended: make the workers exit; fire when they have."""

    def _shutdown(self) -> None:
        """The reactor is stopping: stop the workers now (blocking if need be); closed."""
        self._trigger = None  # being run: nothing to remove
        self._closed = True
        self._stop_now()
        self._closed_down(None)

    @abstractmethod
    def _stop_now(self) -> None:
        """Stop the workers at once, in this thread."""


#: The outcome of a close that succeeded.
_DONE: Final = "done"


def _fire(waiter: Deferred[None], outcome: str | Failure) -> None:
    if isinstance(outcome, Failure):
        waiter.errback(outcome)
    else:
        waiter.callback(None)


class ThreadWorkers(WorkerPool):
    """
    At most ``max_workers`` threads of a Twisted ``ThreadPool`` of this pool's own, named
    ``PoolThread-<name>-<n>``. Started on the first :meth:`submit`; stopped by
    :meth:`close`, or at reactor shutdown (which, like the reactor's own thread pool,
    waits for the calls still running).
    """

    def __init__(self, max_workers: int, name: str, reactor: Any = None) -> None:
        super().__init__(max_workers, reactor)
        self.name = name
        self._pool = ThreadPool(0, max_workers, name)

    def __repr__(self) -> str:
        return f"<ThreadWorkers {self.name!r} max_workers={self.max_workers}>"

    @property
    def threads(self) -> list[threading.Thread]:
        """The pool's threads now (none before the first call and after :meth:`close`)."""
        return [thread for thread in self._pool.threads if thread.is_alive()]

    def _submit(self, function: Callable[[Any], _T], arg: Any) -> Deferred[_T]:
        if not self._pool.started:
            self._pool.start()
            self._watch_shutdown()
        result: Deferred[_T] = Deferred()
        from_thread = cast(IReactorFromThreads, self._reactor).callFromThread

        def on_result(ok: bool, outcome: object) -> None:  # in the worker thread
            from_thread(self._settle, result, outcome, ok)

        self._pool.callInThreadWithCallback(on_result, function, arg)
        return result

    def _stop_workers(self) -> Deferred[None]:
        # Every call has reported: the threads are idle (or returning to idle), so the
        # join is short and may run here.
        if self._pool.started:
            self._pool.stop()
        return succeed(None)

    def _stop_now(self) -> None:
        if self._pool.started:
            self._pool.stop()


class ProcessWorkers(WorkerPool):
    """
    Calls in other processes. By default a ``ProcessPoolExecutor(max_workers)`` of its own
    with the ``"spawn"`` start method, created on the first :meth:`submit`, replaced after
    a worker died (``BrokenProcessPool``: the calls running then fail with it; the next
    ones get new workers), shut down by :meth:`close` and at reactor shutdown.

    With ``executor`` given, calls go to it and :meth:`close` only waits for them: the
    executor is its owner's to shut down.

    ``function``, ``arg`` and the return value cross a process boundary: they must be
    picklable (a module-level function; see :func:`check_picklable`). Calls to a
    ``ProcessPoolExecutor`` go through :func:`run_in_worker`, so an exception that could
    not come back as it is arrives as a :class:`WorkerError` instead of breaking the pool.
    """

    def __init__(
        self, max_workers: int, executor: Executor | None = None, reactor: Any = None
    ) -> None:
        super().__init__(max_workers, reactor)
        self._owned = executor is None
        self._executor = executor

    def __repr__(self) -> str:
        owner = "own" if self._owned else repr(self._executor)
        return f"<ProcessWorkers {owner} max_workers={self.max_workers}>"

    def _new_executor(self) -> Executor:
        executor = ProcessPoolExecutor(
            self.max_workers, mp_context=multiprocessing.get_context("spawn")
        )
        self._executor = executor
        self._watch_shutdown()
        return executor

    def _submit(self, function: Callable[[Any], _T], arg: Any) -> Deferred[_T]:
        executor = self._executor if self._executor is not None else self._new_executor()
        guarded = self._owned or isinstance(executor, ProcessPoolExecutor)
        call: tuple[Any, ...] = (run_in_worker, function, arg) if guarded else (function, arg)
        try:
            future = executor.submit(*call)
        except BrokenProcessPool:
            if not self._owned:
                raise
            executor.shutdown(wait=False)  # a worker died since the last call settled
            executor = self._new_executor()
            future = executor.submit(*call)

        def cancel(_: Deferred[_T]) -> None:
            future.cancel()  # if it has not started; else its outcome is ignored

        result: Deferred[_T] = Deferred(cancel)
        from_thread = cast(IReactorFromThreads, self._reactor).callFromThread

        def done(future: Future[_T]) -> None:  # in the executor's thread (or this one)
            try:
                outcome: object = future.result()
                ok = True
            except FutureCancelled:
                outcome, ok = Failure(CancelledError()), False
            except BaseException as error:  # noqa: BLE001 - it is the call's outcome
                outcome, ok = Failure(error), False
            from_thread(self._settle_call, executor, result, outcome, ok)

        future.add_done_callback(done)
        return result

    def _settle_call(
        self, executor: Executor, result: Deferred[Any], outcome: Any, ok: bool
    ) -> None:
        if (
            self._owned
            and not ok
            and isinstance(outcome, Failure)
            and outcome.check(BrokenProcessPool)
            and executor is self._executor
            and not self._closed
        ):
            # A worker died: this executor accepts nothing more; the next call gets a new
            # one. (Only if it is still the current one: the other calls it ran report
            # the same breakage later, maybe after a new executor took over.)
            self._executor = None
            executor.shutdown(wait=False)
        self._settle(result, outcome, ok)

    def _stop_workers(self) -> Deferred[None]:
        executor, self._executor = self._executor, None
        if not self._owned or executor is None:
            return succeed(None)
        # Joining processes takes a while: done in a thread of its own, not the reactor's.
        stopped: Deferred[None] = Deferred()
        from_thread = cast(IReactorFromThreads, self._reactor).callFromThread

        def join() -> None:
            try:
                executor.shutdown(wait=True)
            except BaseException as error:  # noqa: BLE001 - reported through the Deferred
                from_thread(stopped.errback, Failure(error))
            else:
                from_thread(stopped.callback, None)

        threading.Thread(target=join, name="ProcessWorkers-shutdown", daemon=True).start()
        return stopped

    def _stop_now(self) -> None:
        executor, self._executor = self._executor, None
        if self._owned and executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def check_picklable(function: Callable[..., Any]) -> None:
    """
    :raises TypeError: ``function`` cannot be sent to another process (a lambda, a
        nested function, a bound method of an unpicklable object, a function of an
        interactive ``__main__``, ...).
    """
    try:
        pickle.dumps(function)
    except Exception as error:
        raise TypeError(
            f"pool='processes' runs the function in other processes, so it must be "
            f"picklable (a function defined at the top level of an importable module); "
            f"{function!r} is not: {error}"
        ) from error
    main = sys.modules.get("__main__")
    if getattr(function, "__module__", None) == "__main__" and not hasattr(main, "__file__"):
        # It pickles (by name), but a spawned worker cannot import it: every call would
        # break the pool ("terminated abruptly"), with the cause only on the worker's stderr.
        raise TypeError(
            f"pool='processes' runs the function in spawned processes, which import it by "
            f"name; {function!r} is defined in '__main__' of an interactive session (a "
            f"REPL, python -c, a notebook), which they cannot import: define it in a module"
        )


def check_pool(pool: object, function: Callable[..., Any]) -> None:
    """
    :raises TypeError: ``pool`` is neither a pool name nor an Executor; or it runs calls in
        other processes and ``function`` is not picklable.
    :raises ValueError: an unknown pool name.
    """
    if isinstance(pool, Executor):
        if isinstance(pool, ProcessPoolExecutor):
            check_picklable(function)
        return
    if not isinstance(pool, str):
        raise TypeError(
            f"pool must be 'threads', 'processes' or a concurrent.futures.Executor, "
            f"got {pool!r}"
        )
    if pool not in POOL_KINDS:
        raise ValueError(f"pool must be 'threads', 'processes' or an Executor, got {pool!r}")
    if pool == "processes":
        check_picklable(function)


def make_pool(
    pool: str | Executor, max_workers: int, function: Callable[..., Any], name: str
) -> WorkerPool:
    """
    The pool ``pool`` names (``"threads"``, ``"processes"``) or wraps (an Executor);
    checked first with :func:`check_pool`. Threads are named after ``name``.
    """
    check_pool(pool, function)
    if isinstance(pool, Executor):
        return ProcessWorkers(max_workers, pool)
    if pool == "threads":
        return ThreadWorkers(max_workers, name)
    return ProcessWorkers(max_workers)


#: The place of a ticket that gives no value.
_SKIPPED: Final = object()


class InOrder(Generic[_T]):
    """
    Hands values to ``release`` in the order of their tickets (``ordered``), or as they
    complete. A value completed early waits for the tickets before it.
    """

    def __init__(self, release: Callable[[_T], object], ordered: bool) -> None:
        self._release = release
        self.ordered = ordered
        self._next_ticket = 0
        self._next_out = 0
        self._waiting: dict[int, _T] = {}

    @property
    def waiting(self) -> int:
        """Values completed and held for an earlier ticket."""
        return len(self._waiting)

    def ticket(self) -> int:
        """A place in the order (one per input, in input order)."""
        ticket = self._next_ticket
        self._next_ticket += 1
        return ticket

    def complete(self, ticket: int, value: _T) -> None:
        """``ticket``'s value is ready: release it (and those it held back) when its turn."""
        if not self.ordered:
            self._release(value)
            return
        if ticket < self._next_out or ticket in self._waiting:
            raise ValueError(f"ticket {ticket} completed twice")
        self._waiting[ticket] = value
        self._release_ready()

    def _release_ready(self) -> None:
        while self._next_out in self._waiting:
            value = self._waiting.pop(self._next_out)
            self._next_out += 1
            if value is not _SKIPPED:
                self._release(value)

    def skip(self, ticket: int) -> None:
        """``ticket`` gives no value (its input went back to the mailbox): do not wait for it."""
        if not self.ordered:
            return
        if ticket < self._next_out or ticket in self._waiting:
            raise ValueError(f"ticket {ticket} completed twice")
        self._waiting[ticket] = _SKIPPED  # type: ignore[assignment]
        self._release_ready()

    def clear(self) -> None:
        """Forget every held value (nothing more is released for the tickets given)."""
        self._waiting.clear()
        self._next_out = self._next_ticket = 0


class Pacer:
    """
    Runs actions in the order given, each at least ``delay`` seconds (on ``clock``) after
    the start of the one before; at once when the delay has passed already.
    """

    def __init__(self, clock: IReactorTime, delay: float) -> None:
        self.clock = clock
        self.delay = delay
        self._queue: deque[tuple[Callable[[], Any], Deferred[Any]]] = deque()
        self._next_at = float("-inf")
        self._timer: IDelayedCall | None = None
        #: True while :meth:`_drain` runs: an action that queues another one (directly or
        #: through its Deferred's callbacks) leaves it to the loop already running, which
        #: keeps one timer at most (one cancel() knows of).
        self._draining = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def run(self, action: Callable[[], Any]) -> Deferred[Any]:
        """Run ``action`` in its turn; fires with its result (a Deferred's result)."""
        result: Deferred[Any] = Deferred()
        self._queue.append((action, result))
        if self._timer is None and not self._draining:
            self._drain()
        return result

    def _drain(self) -> None:
        self._timer = None
        self._draining = True
        try:
            while self._queue:
                now = self.clock.seconds()
                if now < self._next_at:
                    self._timer = self.clock.callLater(self._next_at - now, self._drain)
                    return
                action, result = self._queue.popleft()
                self._next_at = now + self.delay
                try:
                    outcome = action()
                except Exception:
                    result.errback(Failure())
                    continue
                if isinstance(outcome, Deferred):
                    outcome.chainDeferred(result)
                else:
                    result.callback(outcome)
        finally:
            self._draining = False

    def cancel(self) -> None:
        """Drop the actions not run yet; their Deferreds fail with ``CancelledError``."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        queue, self._queue = self._queue, deque()
        for _, result in queue:
            result.errback(Failure(CancelledError("the pacer was cancelled")))

