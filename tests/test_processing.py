"""
Processing listeners: the worker pools (real threads, real spawned processes), the ordering
buffer, the pacing between results (on a Clock), and the Processor end to end on a
MemoryChannel and, in a group, on a RedisStreamChannel.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from tests import _work
from tests._redis import RedisServer
from twisted_event_dispatcher.channels import MemoryChannel
from twisted_event_dispatcher.channels.redis import RedisStreamChannel
from twisted_event_dispatcher.errors import RemoteActionError
from twisted_event_dispatcher.listeners._pools import (
    InOrder,
    Pacer,
    PoolClosedError,
    ProcessWorkers,
    ThreadWorkers,
    WorkerError,
    check_picklable,
    make_pool,
)
from twisted_event_dispatcher.listeners.processing import Processor
from twisted_event_dispatcher.testing import (
    RecordingCarrier,
    failure_result_of,
    success_result_of,
)

#: Bound on every wait of a worker thread for the test (never reached when all is well).
WAIT = 10.0


class Concurrency:
    """A function for a pool that records how many calls run at once, and blocks on a gate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.calls = 0
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, x: Any) -> Any:
        with self._lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
        self.entered.release()
        try:
            if not self.gate.wait(WAIT):
                raise TimeoutError("the test never opened the gate")
            if isinstance(x, dict) and "raise" in x:
                raise ValueError(x["raise"])
            return x
        finally:
            with self._lock:
                self.running -= 1

    def wait_entered(self, count: int) -> None:
        """Block (the test's thread) until ``count`` more calls have started."""
        for _ in range(count):
            assert self.entered.acquire(timeout=WAIT), "a call never started"


class TriggerRecorder:
    """The reactor, but system event triggers are recorded (to fire or inspect them)."""

    def __init__(self) -> None:
        self.triggers: dict[object, tuple[str, str, Callable[[], None]]] = {}

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:  # noqa: N802
        _reactor.callFromThread(f, *args)  # type: ignore[attr-defined]

    def addSystemEventTrigger(  # noqa: N802
        self, phase: str, event: str, f: Callable[[], None]
    ) -> object:
        token = object()
        self.triggers[token] = (phase, event, f)
        return token

    def removeSystemEventTrigger(self, token: object) -> None:  # noqa: N802
        del self.triggers[token]


def pool_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"PoolThread-{name}-")]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- thread pool ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_thread_pool_is_bounded_started_lazily_and_stopped_on_close() -> None:
    recorder = TriggerRecorder()
    pool = ThreadWorkers(2, "t-bounded", recorder)
    assert pool.threads == [] and recorder.triggers == {}  # nothing before the first call
    work = Concurrency()
    results = [pool.submit(work, i) for i in range(6)]
    assert [t[:2] for t in recorder.triggers.values()] == [("during", "shutdown")]
    await _reactor_turn()
    work.wait_entered(2)
    assert work.running == 2 and len(pool_threads("t-bounded")) == 2 and pool.busy == 6
    closing = pool.close()
    with pytest.raises(PoolClosedError):
        pool.submit(work, 99)
    assert not closing.called  # it waits for what was submitted
    work.gate.set()
    assert [await d for d in results] == list(range(6))
    await closing
    assert work.peak == 2 and work.calls == 6
    assert pool_threads("t-bounded") == [] and pool.threads == []
    assert recorder.triggers == {}  # the shutdown trigger went with the pool
    await pool.close()  # idempotent


@pytest_twisted.ensureDeferred
async def test_thread_pool_reports_exceptions_and_stops_at_reactor_shutdown() -> None:
    recorder = TriggerRecorder()
    pool = ThreadWorkers(3, "t-shutdown", recorder)
    with pytest.raises(ValueError, match="cannot process 7"):
        await pool.submit(_work.refuse, 7)
    assert await pool.submit(_work.square, 5) == 25
    assert pool_threads("t-shutdown")
    [(_, _, shutdown)] = recorder.triggers.values()
    shutdown()  # what the reactor runs when it stops
    assert pool_threads("t-shutdown") == [] and pool.closed
    with pytest.raises(PoolClosedError):
        pool.submit(_work.square, 1)
    await pool.close()


async def _reactor_turn() -> None:
    """Let the reactor run the calls queued so far (callFromThread, callLater(0))."""
    turn: Deferred[None] = Deferred()
    _reactor.callLater(0, turn.callback, None)
    await turn


# -- process pool --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_process_pool_runs_in_spawned_workers_that_exit_on_close() -> None:
    recorder = TriggerRecorder()
    pool = ProcessWorkers(2, reactor=recorder)
    assert recorder.triggers == {}
    pids = {await pool.submit(_work.pid, None) for _ in range(3)}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert [await pool.submit(_work.square, i) for i in range(4)] == [0, 1, 4, 9]
    with pytest.raises(ValueError, match="cannot process 'x'"):
        await pool.submit(_work.refuse, "x")
    assert len(recorder.triggers) == 1
    await pool.close()
    assert all(gone(p) for p in pids) and recorder.triggers == {}
    with pytest.raises(PoolClosedError):
        pool.submit(_work.square, 1)


@pytest_twisted.ensureDeferred
async def test_process_pool_replaces_dead_workers_and_stops_at_reactor_shutdown() -> None:
    recorder = TriggerRecorder()
    pool = ProcessWorkers(1, reactor=recorder)
    first = await pool.submit(_work.pid, None)
    with pytest.raises(BrokenProcessPool):
        await pool.submit(_work.die, None)
    second = await pool.submit(_work.pid, None)
    assert second != first and gone(first)
    [(_, _, shutdown)] = recorder.triggers.values()
    shutdown()  # the reactor stops: the workers are stopped there and then
    assert gone(second) and pool.closed
    await pool.close()


@pytest_twisted.ensureDeferred
async def test_a_given_executor_is_used_and_left_running() -> None:
    executor = ThreadPoolExecutor(2, thread_name_prefix="given")
    try:
        pool = make_pool(executor, 2, _work.square, "unused")
        assert isinstance(pool, ProcessWorkers)  # the Executor bridge, whatever runs it
        assert await pool.submit(_work.square, 3) == 9
        with pytest.raises(ValueError):
            await pool.submit(_work.refuse, 3)
        await pool.close()
        assert executor.submit(_work.square, 4).result(WAIT) == 16  # still the caller's
        executor.shutdown()
        # A broken or shut-down executor fails the call, not the caller.
        pool = make_pool(executor, 2, _work.square, "unused")
        with pytest.raises(PoolClosedError, match="refused the call: .*shutdown"):
            pool.submit(_work.square, 3)
    finally:
        executor.shutdown()


def test_pool_choice_and_picklability_are_checked() -> None:
    def local(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="must be picklable .*top level of an importable module"):
        check_picklable(lambda x: x)
    with pytest.raises(TypeError, match="local"):
        make_pool("processes", 2, local, "p")
    assert isinstance(make_pool("threads", 2, local, "p"), ThreadWorkers)  # threads: anything
    with pytest.raises(ValueError, match="'threads', 'processes' or an Executor, got 'fork'"):
        make_pool("fork", 2, local, "p")
    with pytest.raises(TypeError, match="got 3"):
        make_pool(3, 2, local, "p")  # type: ignore[arg-type]


# -- ordering and pacing -------------------------------------------------------------------


def test_in_order_releases_by_ticket_or_at_once() -> None:
    out: list[str] = []
    ordered = InOrder(out.append, ordered=True)
    tickets = [ordered.ticket() for _ in range(4)]
    ordered.complete(tickets[2], "c")
    ordered.complete(tickets[1], "b")
    assert out == [] and ordered.waiting == 2
    ordered.complete(tickets[0], "a")
    assert out == ["a", "b", "c"] and ordered.waiting == 0
    with pytest.raises(ValueError, match="twice"):
        ordered.complete(tickets[1], "again")
    ordered.complete(tickets[3], "d")
    assert out == ["a", "b", "c", "d"]
    skipped, last = ordered.ticket(), ordered.ticket()
    ordered.complete(last, "f")
    assert out[-1] == "d"
    ordered.skip(skipped)  # its input went back to the mailbox: nothing to wait for
    assert out[-1] == "f" and ordered.waiting == 0

    out.clear()
    unordered = InOrder(out.append, ordered=False)
    first, second = unordered.ticket(), unordered.ticket()
    unordered.complete(second, "2")
    unordered.complete(first, "1")
    assert out == ["2", "1"]


def test_pacer_spaces_actions_on_the_clock() -> None:
    clock = Clock()
    pacer = Pacer(clock, 1.5)
    ran: list[tuple[str, float]] = []

    def action(name: str) -> Callable[[], str]:
        return lambda: ran.append((name, clock.seconds())) or name

    done = [pacer.run(action(n)) for n in "abc"]
    assert ran == [("a", 0.0)] and pacer.waiting == 2
    clock.advance(1.4)
    assert len(ran) == 1
    clock.advance(0.1)
    assert ran[-1] == ("b", 1.5)
    clock.advance(1.5)
    assert ran[-1] == ("c", 3.0) and [d.result for d in done] == ["a", "b", "c"]
    clock.advance(10)
    pacer.run(action("d"))  # the delay has passed: at once
    assert ran[-1] == ("d", 13.0)
    late = pacer.run(action("e"))
    pacer.cancel()
    clock.advance(5)
    assert ran[-1] == ("d", 13.0) and not clock.getDelayedCalls()
    failure_result_of(late, CancelledError)


def test_pacer_without_delay_runs_at_once_and_passes_failures_on() -> None:
    pacer = Pacer(Clock(), 0.0)
    assert pacer.run(lambda: 1).result == 1
    failure_result_of(pacer.run(lambda: 1 // 0), ZeroDivisionError)
    assert pacer.run(lambda: 2).result == 2


# -- the Processor, end to end on a MemoryChannel ------------------------------------------


class WaitingCarrier(RecordingCarrier):
    """A RecordingCarrier that can be awaited until it holds ``count`` messages."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def deliver(self, message: Any) -> None:
        super().deliver(message)
        ready = [w for w in self._waiters if len(self.messages) >= w[0]]
        for waiter in ready:
            self._waiters.remove(waiter)
            waiter[1].callback(None)

    def wait_for(self, count: int) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if len(self.messages) >= count:
            waiter.callback(None)
        else:
            self._waiters.append((count, waiter))
            waiter.addTimeout(WAIT, _reactor)
        return waiter


async def until(predicate: Callable[[], bool]) -> None:
    """Let the reactor run until ``predicate()`` holds (for work done in other threads)."""
    deadline = _reactor.seconds() + WAIT
    while not predicate():
        assert _reactor.seconds() < deadline, "the condition never held"
        turn: Deferred[None] = Deferred()
        _reactor.callLater(0.002, turn.callback, None)
        await turn


@pytest.fixture
def channel() -> MemoryChannel:
    return MemoryChannel("jobs")


@pytest.fixture
def carrier(channel: MemoryChannel) -> WaitingCarrier:
    carrier = WaitingCarrier()
    success_result_of(channel.subscribe("*", carrier))
    return carrier


def checked(x: Any) -> Any:
    """A function for threads: negative numbers are refused, 0 gives a non-JSON result."""
    if x < 0:
        raise ValueError(f"{x} is negative")
    if x == 0:
        return {0}
    return x * 10


@pytest_twisted.ensureDeferred
async def test_results_and_errors_are_published_and_every_mail_acknowledged(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    processor = await Processor.create(channel, checked, listener_id="p", max_workers=2)
    assert processor.listener.id == "p" and processor.reason is None
    ids = [await channel.dispatch("p", "job", x) for x in (1, -2, 0, 3)]
    await carrier.wait_for(4)
    published = {m.data["input"]: (m.event, m.data) for m in carrier.messages}
    assert published[ids[0]] == ("result", {"input": ids[0], "result": 10})
    assert published[ids[3]] == ("result", {"input": ids[3], "result": 30})
    assert published[ids[1]] == (
        "processing_error", {"input": ids[1], "error": "ValueError", "message": "-2 is negative"}
    )
    event, data = published[ids[2]]
    assert event == "processing_error" and data["error"] == "InvalidDataError"
    assert "JSON" in data["message"] or "serializable" in data["message"]
    await until(lambda: processor.results + processor.errors == 4)
    info = await processor.listener.info()
    assert (info.queued, info.in_flight, info.attached) == (0, 0, True)
    assert (processor.results, processor.errors) == (2, 2)
    await processor.stop()
    assert processor.reason == "stopped" and await processor.done == 2


@pytest_twisted.ensureDeferred
async def test_broadcasts_a_full_mailbox_missed_are_published_as_an_error(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    work = Concurrency()
    processor = await Processor.create(
        channel, work, listener_id="p", max_workers=1, mailbox_size=2, ordered=True
    )
    ids = [await channel.dispatch("p", "job", x) for x in (1, 2)]
    work.wait_entered(1)
    await channel.broadcast("job", 3)  # the mailbox is full: a _missed notice instead
    await channel.broadcast("job", 4)
    work.gate.set()
    await carrier.wait_for(5)
    assert [m.event for m in carrier.messages] == ["job"] * 2 + ["result"] * 2 + [
        "processing_error"
    ]
    assert [m.data["input"] for m in carrier.messages[2:4]] == ids
    missed = carrier.messages[-1].data
    assert missed["error"] == "MissedMessages" and missed["message"].startswith("2 broadcast")
    assert work.calls == 2
    await processor.stop()


@pytest_twisted.ensureDeferred
async def test_requests_get_the_result_as_their_reply(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    processor = await Processor.create(channel, checked, listener_id="p")
    assert await channel.request("p", "job", 4) == 40
    with pytest.raises(RemoteActionError) as info:
        await channel.request("p", "job", -1)
    assert (info.value.remote_type, info.value.remote_message) == ("ValueError", "-1 is negative")
    with pytest.raises(RemoteActionError, match="InvalidDataError"):
        await channel.request("p", "job", 0)
    assert [m.event for m in carrier.messages] == ["result"] + ["processing_error"] * 2
    await processor.stop()


@pytest_twisted.ensureDeferred
async def test_at_most_max_workers_in_flight(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    work = Concurrency()
    processor = await Processor.create(channel, work, listener_id="p", max_workers=3)
    for x in range(10):
        await channel.dispatch("p", "job", x)
    work.wait_entered(3)
    info = await processor.listener.info()
    assert (info.in_flight, info.queued) == (3, 7) and processor.running == 3
    work.gate.set()
    await carrier.wait_for(10)
    assert work.peak == 3 and work.calls == 10
    assert sorted(m.data["result"] for m in carrier.messages) == list(range(10))
    await processor.stop()


class Gated:
    """A function whose call for input ``x`` returns ``x`` once gate ``x`` is opened."""

    def __init__(self, count: int) -> None:
        self.gates = [threading.Event() for _ in range(count)]

    def __call__(self, x: int) -> int:
        if not self.gates[x].wait(WAIT):
            raise TimeoutError(f"gate {x} never opened")
        return x


@pytest.mark.parametrize("ordered", [True, False])
@pytest_twisted.ensureDeferred
async def test_results_in_input_order_when_asked(
    channel: MemoryChannel, carrier: WaitingCarrier, ordered: bool
) -> None:
    gated = Gated(3)
    processor = await Processor.create(
        channel, gated, listener_id="p", max_workers=3, ordered=ordered
    )
    for x in range(3):
        await channel.dispatch("p", "job", x)
    gated.gates[2].set()
    gated.gates[1].set()
    await until(lambda: processor.running == 1)  # 1 and 2 are done, 0 still runs
    if ordered:
        assert carrier.messages == []  # held for input 0
    else:
        assert sorted(m.data["result"] for m in carrier.messages) == [1, 2]
    gated.gates[0].set()
    await carrier.wait_for(3)
    results = [m.data["result"] for m in carrier.messages]
    assert results == ([0, 1, 2] if ordered else results[:2] + [0])
    await processor.stop()


@pytest_twisted.ensureDeferred
async def test_result_delay_spaces_results_on_the_clock(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    clock = Clock()
    processor = await Processor.create(
        channel, _work.square, listener_id="p", max_workers=3, result_delay=2.0, clock=clock
    )
    for x in (1, 2, 3):
        await channel.dispatch("p", "job", x)
    await until(lambda: processor.running == 0)
    assert len(carrier.messages) == 1
    info = await processor.listener.info()
    assert info.in_flight == 2  # acknowledged when published
    clock.advance(1.9)
    assert len(carrier.messages) == 1
    clock.advance(0.1)
    assert len(carrier.messages) == 2
    clock.advance(2.0)
    assert sorted(m.data["result"] for m in carrier.messages) == [1, 4, 9]
    assert (await processor.listener.info()).in_flight == 0
    await processor.stop()


@pytest_twisted.ensureDeferred
async def test_closed_ends_the_stream_after_the_mail_before_it(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    work = Concurrency()
    processor = await Processor.create(channel, work, listener_id="p", max_workers=2)
    assert pool_threads("processor-p") == []  # started on the first mail
    for x in range(3):
        await channel.dispatch("p", "job", x)
    await channel.dispatch("p", "closed")
    after = [await channel.dispatch("p", "job", x) for x in (10, 11)]
    work.wait_entered(2)
    assert not processor.done.called
    work.gate.set()
    assert await processor.done == 3
    assert processor.reason == "closed"
    assert [m.event for m in carrier.messages] == ["result"] * 3 + ["closed"]
    assert carrier.messages[-1].data == {"results": 3, "errors": 0}
    assert work.calls == 3 and pool_threads("processor-p") == []
    info = await processor.listener.info()
    assert (info.queued, info.in_flight, info.attached) == (2, 0, False)
    # The mail after "closed" waits for the listener's next consumer.
    stream = processor.listener.messages(max_in_flight=2)
    got = [await stream.__anext__() for _ in after]
    assert [m.id for m in got] == after and [m.deliveries for m in got] == [2, 2]
    await stream.close()


@pytest_twisted.ensureDeferred
async def test_stop_detaches_and_the_mail_in_progress_is_redelivered(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    work = Concurrency()
    processor = await Processor.create(channel, work, listener_id="p", max_workers=2)
    ids = [await channel.dispatch("p", "job", x) for x in range(3)]
    work.wait_entered(2)
    assert len(pool_threads("processor-p")) == 2
    stopping = processor.stop()
    info = await processor.listener.info()
    assert (info.queued, info.in_flight, info.attached) == (3, 0, False)
    assert not stopping.called  # the running calls cannot be interrupted
    work.gate.set()
    await stopping
    assert processor.reason == "stopped" and await processor.done == 0
    assert pool_threads("processor-p") == [] and processor.running == 0
    assert carrier.messages == []  # results of the stopped calls are dropped
    # A new processor on the same listener gets the mail again, in order.
    again = Processor(processor.listener, lambda x: x, ordered=True)
    await again.start()
    await carrier.wait_for(3)
    assert [m.data["input"] for m in carrier.messages] == ids
    await again.stop()
    with pytest.raises(RuntimeError, match="started .*already"):
        again.start()
    unstarted = Processor(processor.listener, lambda x: x)
    await unstarted.stop()
    assert unstarted.reason == "stopped" and await unstarted.done == 0
    with pytest.raises(RuntimeError, match="make a new one"):
        unstarted.start()


@pytest_twisted.ensureDeferred
async def test_a_removed_listener_ends_the_processor(channel: MemoryChannel) -> None:
    processor = await Processor.create(channel, _work.square, listener_id="p")
    assert await channel.request("p", "job", 3) == 9
    await channel.remove_listener("p")
    assert await processor.done == 1 and processor.reason == "removed"
    assert pool_threads("processor-p") == []


@pytest_twisted.ensureDeferred
async def test_a_group_of_processors_shares_the_work(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    work = Concurrency()
    first = await Processor.create(channel, work, listener_id="a", group="g", max_workers=1)
    second = await Processor.create(channel, work, listener_id="b", group="g", max_workers=1)
    for x in range(4):
        await channel.dispatch_group("g", "job", x)
    work.wait_entered(2)  # one on each
    work.gate.set()
    await carrier.wait_for(4)
    await until(lambda: first.results + second.results == 4)
    assert first.results >= 1 and second.results >= 1 and work.peak == 2
    await first.stop()
    await second.stop()


@pytest_twisted.ensureDeferred
async def test_processes_end_to_end_and_their_workers_exit(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    processor = await Processor.create(
        channel, _work.square_and_pid, listener_id="p", pool="processes", max_workers=2,
        ordered=True,
    )
    ids = [await channel.dispatch("p", "job", x) for x in range(6)]
    await channel.dispatch("p", "job", "x")
    await channel.dispatch("p", "closed")
    assert await processor.done == 6
    results = [m.data for m in carrier.messages]
    assert [r["input"] for r in results[:6]] == ids
    assert [r["result"][0] for r in results[:6]] == [x * x for x in range(6)]
    assert results[6]["error"] == "TypeError" and carrier.messages[7].event == "closed"
    pids = {r["result"][1] for r in results[:6]}
    assert os.getpid() not in pids and all(gone(p) for p in pids)


@pytest_twisted.ensureDeferred
async def test_a_dead_worker_process_means_redelivery_then_an_error_event(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    processor = await Processor.create(
        channel, _work.square_or_die, listener_id="p", pool="processes", max_workers=1,
        ordered=True, max_deliveries=2,
    )
    ids = [await channel.dispatch("p", "job", x) for x in (2, "die", 3)]
    await channel.dispatch("p", "closed")
    assert await processor.done == 2
    events = [(m.event, m.data.get("input")) for m in carrier.messages]
    assert events == [
        ("result", ids[0]), ("processing_error", ids[1]), ("result", ids[2]), ("closed", None)
    ]
    error = carrier.messages[1].data
    assert error["error"] == "BrokenProcessPool"
    assert error["message"].startswith("given up after 2 deliveries")
    assert carrier.messages[-1].data == {"results": 2, "errors": 1}
    pids = {m.data["result"][1] for m in carrier.messages if m.event == "result"}
    assert all(gone(p) for p in pids)

    # While the stream is closing, a mail cannot come back before "closed": no retry.
    carrier.messages.clear()
    again = Processor(processor.listener, _work.square_or_die, pool="processes", max_workers=2)
    await again.start()
    dying = await channel.dispatch("p", "job", "die")
    await channel.dispatch("p", "closed")
    assert await again.done == 0
    assert [m.event for m in carrier.messages] == ["processing_error", "closed"]
    error = carrier.messages[0].data
    assert error["input"] == dying and error["error"] == "BrokenProcessPool"
    assert error["message"].startswith("not tried again, the stream is closing")


def test_bad_arguments_are_refused_before_anything_is_registered(
    channel: MemoryChannel,
) -> None:
    def local(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="must be picklable"):
        Processor.create(channel, local, pool="processes")
    with pytest.raises(TypeError, match="must be picklable"):
        Processor.create(channel, lambda x: x, pool="processes")
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"max_workers": 0}, ValueError, "max_workers must be >= 1"),
        ({"max_workers": 2.0}, TypeError, "max_workers must be an int"),
        ({"pool": "fork"}, ValueError, "got 'fork'"),
        ({"pool": None}, TypeError, "pool must be"),
        ({"result_event": "_x"}, ValueError, "result_event '_x' starts with '_'"),
        ({"error_event": "closed"}, ValueError, "it ends the stream"),
        ({"ordered": 1}, TypeError, "ordered must be a bool"),
        ({"max_deliveries": 0}, ValueError, "max_deliveries must be >= 1"),
        ({"result_delay": -1}, ValueError, "result_delay must be a finite number"),
        ({"result_delay": float("nan")}, ValueError, "result_delay"),
        ({"result_delay": "1"}, TypeError, "result_delay must be a number"),
        ({"listener_id": "_p"}, ValueError, "listener id"),
        ({"mailbox_size": 0}, ValueError, "mailbox_size"),
        ({"clock": 3}, TypeError, "clock must provide IReactorTime"),
    ]
    for options, error, message in bad:
        with pytest.raises(error, match=message):
            Processor.create(channel, local, **options)
    with pytest.raises(TypeError, match="function must be callable"):
        Processor.create(channel, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="listener must be a Listener"):
        Processor("p", local)  # type: ignore[arg-type]
    assert success_result_of(channel.listener_ids()) == []


# -- review fixes (each fails on the code before its fix) ----------------------------------


def test_pacer_run_from_inside_an_action_keeps_one_timer() -> None:
    # An action whose result queued another one (the processor does: an acknowledgement
    # hands over the next mail; the end of the stream is queued from the last publication)
    # drained re-entrantly and scheduled a second timer that cancel() did not know of.
    clock = Clock()
    pacer = Pacer(clock, 1.0)
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        pacer.run(lambda: ran.append("third"))

    pacer.run(lambda: ran.append("zero"))
    later = pacer.run(first).addCallback(lambda _: pacer.run(lambda: ran.append("second")))
    clock.advance(1.0)
    assert ran == ["zero", "first"] and len(clock.getDelayedCalls()) == 1
    clock.advance(1.0)
    assert ran == ["zero", "first", "third"] and len(clock.getDelayedCalls()) == 1
    pacer.cancel()
    assert clock.getDelayedCalls() == []
    failure_result_of(later, CancelledError)  # ("second" never ran; observed, not leaked)


def surrogate_error(x: object) -> object:
    """Raises an exception whose message has no UTF-8 form (a lone surrogate)."""
    raise ValueError(f"bad \ud800 {x!r}")


@pytest_twisted.ensureDeferred
async def test_an_error_message_json_cannot_encode_is_published_once_and_replied(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    # The error event could not be encoded: the mail was computed max_deliveries times and
    # the requester never got its reply.
    calls: list[object] = []

    def function(x: object) -> object:
        calls.append(x)
        return surrogate_error(x)

    processor = await Processor.create(channel, function, listener_id="p")
    with pytest.raises(RemoteActionError) as info:
        await channel.request("p", "job", 1, timeout=WAIT)
    assert info.value.remote_type == "ValueError"
    assert info.value.remote_message == "bad \\ud800 1"
    await channel.dispatch("p", "closed")
    assert await processor.done == 0
    assert calls == [1]
    assert [(m.event, m.data.get("error"), m.data.get("message")) for m in carrier.messages] == [
        ("processing_error", "ValueError", "bad \\ud800 1"), ("closed", None, None)
    ]


@pytest_twisted.ensureDeferred
async def test_a_late_broken_call_does_not_shut_down_the_new_workers() -> None:
    # When a worker died, every call of that executor failed with BrokenProcessPool; the
    # later ones also shut down the executor that had replaced it meanwhile, so a call it
    # ran was on processes close() no longer knew of.
    recorder = TriggerRecorder()
    pool = ProcessWorkers(1, reactor=recorder)
    retried: list[Deferred[int]] = []

    def retry(failure: Any) -> None:  # at once, as the processor's redelivery does
        retried.append(pool.submit(_work.pid, None))

    dying = pool.submit(_work.die, None).addErrback(lambda f: retry(f.trap(BrokenProcessPool)))
    queued = pool.submit(_work.pid, None)  # waits behind the dying call: broken too
    await dying
    with pytest.raises(BrokenProcessPool):
        await queued
    first = await retried[0]
    assert await pool.submit(_work.pid, None) == first  # the same worker, still in use
    await pool.close()
    assert gone(first)


@pytest_twisted.ensureDeferred
async def test_an_exception_pickle_cannot_bring_back_does_not_break_the_pool() -> None:
    # It broke the executor (its result thread failed to unpickle it), so the other calls
    # failed too, as BrokenProcessPool "terminated abruptly".
    pool = ProcessWorkers(1, reactor=TriggerRecorder())
    failing = pool.submit(_work.raise_unpicklable, "x")
    other = pool.submit(_work.pid, None)
    with pytest.raises(WorkerError) as info:
        await failing
    assert (info.value.kind, str(info.value)) == ("TwoArgsError", "3: cannot process 'x'")
    worker = await other
    assert await pool.submit(_work.pid, None) == worker  # the pool was not broken
    with pytest.raises(ValueError, match="cannot process 2"):  # others come back as they are
        await pool.submit(_work.refuse, 2)
    await pool.close()


@pytest_twisted.ensureDeferred
async def test_an_unpicklable_exception_is_published_on_the_first_delivery(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    processor = await Processor.create(
        channel, _work.raise_unpicklable, listener_id="p", pool="processes", max_workers=1
    )
    with pytest.raises(RemoteActionError) as info:
        await channel.request("p", "job", 1, timeout=WAIT)
    assert (info.value.remote_type, info.value.remote_message) == (
        "TwoArgsError", "3: cannot process 1"
    )
    assert [(m.event, m.data["error"]) for m in carrier.messages] == [
        ("processing_error", "TwoArgsError")
    ]
    await processor.stop()


@pytest_twisted.ensureDeferred
async def test_a_pool_that_refuses_work_ends_the_processor_and_keeps_the_mail(
    channel: MemoryChannel, carrier: WaitingCarrier, log: Any
) -> None:
    # Every mail became a "RuntimeError: cannot schedule new futures after shutdown" error
    # event and was acknowledged: the mailbox was consumed for nothing.
    executor = ThreadPoolExecutor(1)
    processor = await Processor.create(channel, _work.square, listener_id="p", pool=executor)
    await channel.dispatch("p", "job", 3)
    await until(lambda: success_result_of(processor.listener.info()).in_flight == 0)
    executor.shutdown()
    await channel.dispatch("p", "job", 4)
    assert processor.done.called and processor.reason == "failed"
    assert [m.event for m in carrier.messages] == ["result"]
    info = await processor.listener.info()
    assert (info.queued, info.in_flight, info.attached) == (1, 0, False)
    [error] = [e for e in log.events if "its pool cannot run" in e.get("log_format", "")]
    assert "refused the call" in str(error["error"])


@pytest_twisted.ensureDeferred
async def test_calls_cancelled_by_their_executor_go_back_to_the_mailbox(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    # A call cancelled before it ran (cancel_futures, as at reactor shutdown) was published
    # as a CancelledError and its mail acknowledged: lost without having been processed.
    executor = ThreadPoolExecutor(1)
    work = Concurrency()
    try:
        processor = await Processor.create(
            channel, work, listener_id="p", pool=executor, max_workers=2
        )
        for x in (1, 2):
            await channel.dispatch("p", "job", x)
        work.wait_entered(1)  # 1 runs, 2 waits in the executor's queue
        executor.shutdown(wait=False, cancel_futures=True)
        await until(lambda: processor.reason is not None)  # 2 came back; refused
        assert processor.reason == "failed" and not processor.done.called  # 1 still runs
        work.gate.set()
        await processor.done
        assert carrier.messages == [] and work.calls == 1
        info = await processor.listener.info()
        assert (info.queued, info.in_flight) == (2, 0)
    finally:
        work.gate.set()
        executor.shutdown()


async def _coroutine_function(x: object) -> object:
    return x


@pytest_twisted.ensureDeferred
async def test_async_functions_are_refused_and_a_deferred_result_is_a_clear_error(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    # An async function was accepted; its coroutine (or a Deferred) came back as an
    # "InvalidDataError: not JSON serializable" (and "coroutine never awaited").
    with pytest.raises(TypeError, match="plain .*blocking.* listener.consume"):
        Processor.create(channel, _coroutine_function)
    processor = await Processor.create(channel, lambda x: Deferred(), listener_id="p")
    with pytest.raises(RemoteActionError) as info:
        await channel.request("p", "job", 1, timeout=WAIT)
    assert info.value.remote_type == "TypeError"
    assert "returned Deferred" in info.value.remote_message
    assert "must return its result" in info.value.remote_message
    await processor.stop()


@pytest_twisted.ensureDeferred
async def test_a_result_published_after_its_ack_deadline_is_logged(
    carrier: WaitingCarrier, log: Any
) -> None:
    # It was acknowledged in vain, silently: the group had given the mail to a member
    # again, which published it a second time.
    clock = Clock()
    channel = MemoryChannel("slow", clock=clock)
    success_result_of(channel.subscribe("*", carrier))
    work = Concurrency()
    processor = await Processor.create(
        channel, work, listener_id="p", group="g", ack_timeout=5.0, max_workers=2
    )
    await channel.dispatch_group("g", "job", 1)
    work.wait_entered(1)
    clock.advance(5.0)  # the deadline passes: the group hands it out again (to p)
    work.wait_entered(1)
    work.gate.set()
    await carrier.wait_for(2)
    assert [m.data["result"] for m in carrier.messages] == [1, 1]  # at least once
    await until(lambda: processor._unsettled == 0)
    [warning] = [e for e in log.events if "after its ack deadline" in e.get("log_format", "")]
    assert "ack_timeout longer" in warning["log_format"]
    await processor.stop()


@pytest_twisted.ensureDeferred
async def test_a_closed_request_is_answered_with_the_counts(channel: MemoryChannel) -> None:
    # It was acknowledged without a reply: the requester waited for its timeout.
    processor = await Processor.create(channel, checked, listener_id="p")
    await channel.dispatch("p", "job", 1)
    await channel.dispatch("p", "job", -1)
    counts = await channel.request("p", "closed", timeout=WAIT)
    assert counts == {"results": 1, "errors": 1} and await processor.done == 1


@pytest_twisted.ensureDeferred
async def test_stop_while_closing_gives_the_stream_back(
    channel: MemoryChannel, carrier: WaitingCarrier
) -> None:
    work = Concurrency()
    processor = await Processor.create(channel, work, listener_id="p", max_workers=2)
    for x in (1, 2):
        await channel.dispatch("p", "job", x)
    await channel.dispatch("p", "closed")
    work.wait_entered(2)
    stopping = processor.stop()
    work.gate.set()
    await stopping
    assert processor.reason == "stopped" and await processor.done == 0
    assert carrier.messages == []  # neither the results nor "closed"
    again = await Processor.create(channel, checked, listener_id="q")  # unrelated listener
    await again.stop()
    restart = Processor(processor.listener, lambda x: x)
    await restart.start()
    assert await restart.done == 2 and [m.event for m in carrier.messages] == [
        "result", "result", "closed"
    ]


def test_a_function_of_an_interactive_main_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # It pickled (by name), then every call broke the pool in the spawned worker, which
    # cannot import '__main__' of a REPL: "terminated abruptly", retried max_deliveries times.
    main = types.ModuleType("__main__")  # as in a REPL or python -c: no __file__

    def interactive(x: int) -> int:
        return x

    interactive.__module__, interactive.__qualname__ = "__main__", "interactive"
    main.interactive = interactive  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "__main__", main)
    with pytest.raises(TypeError, match="interactive session .*define it in a module"):
        check_picklable(interactive)
    main.__file__ = "script.py"  # a script: spawn runs it again as __mp_main__
    check_picklable(interactive)


_OPTIONS = (
    "max_workers", "pool", "result_event", "error_event", "ordered", "result_delay",
    "max_deliveries", "listener_id", "group", "mailbox_size", "ack_timeout", "clock",
)
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 5), st.floats(), st.text(max_size=4),
    st.sampled_from(["threads", "processes", "closed", "_x", "ok", "start"]), st.builds(Clock),
)


@given(options=st.dictionaries(st.sampled_from(_OPTIONS), _VALUES, max_size=3))
def test_processor_options_work_or_raise_and_register_nothing(options: dict[str, Any]) -> None:
    # A clock that is no clock was accepted, and failed at the first result to publish
    # (inside a Deferred's callbacks: the mail was never settled).
    channel = MemoryChannel("fuzz")
    try:
        created = Processor.create(channel, _work.square, **options)
    except (TypeError, ValueError):
        assert success_result_of(channel.listener_ids()) == []
        return
    processor = success_result_of(created)
    assert processor._pacer.run(lambda: "paced") is not None  # the clock works
    success_result_of(processor.stop())
    assert success_result_of(processor.done) == 0


# -- on Redis ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_processors_in_a_group_share_the_work_across_redis_connections(
    redis: RedisServer,
) -> None:
    # Two channel objects on one Redis: what two processes see (the cross-process group
    # mechanics are tested in test_listeners_redis.py; this is the Processor over them).
    first = RedisStreamChannel("pipeline", url=redis.url, block=200)
    second = RedisStreamChannel("pipeline", url=redis.url, block=200)
    await first.connect()
    await second.connect()
    try:
        carrier = WaitingCarrier()
        await first.subscribe("*", carrier)
        a = await Processor.create(first, _work.square_and_pid, listener_id="a", group="g")
        b = await Processor.create(
            second, _work.square, listener_id="b", group="g", pool="processes", max_workers=2
        )
        ids = [await first.dispatch_group("g", "job", x) for x in range(8)]
        replied = await second.request("g", "job", 9, group=True, timeout=WAIT)
        assert replied in (81, [81, os.getpid()])  # b's, or a's (threads: this process)
        await carrier.wait_for(9)
        results = {m.data["input"]: m.data["result"] for m in carrier.messages}
        assert set(ids) <= set(results) and len(carrier.messages) == 9  # each input once
        squares = [r if isinstance(r, int) else r[0] for r in (results[i] for i in ids)]
        assert squares == [x * x for x in range(8)]
        await until(lambda: a.results + b.results == 9)
        await first.dispatch("a", "closed")
        assert await a.done == a.results and a.reason == "closed"
        await carrier.wait_for(10)
        assert (carrier.messages[-1].event, carrier.messages[-1].data) == (
            "closed", {"results": a.results, "errors": 0}
        )
        await b.stop()
        assert b.reason == "stopped"
    finally:
        await first.disconnect()
        await second.disconnect()
