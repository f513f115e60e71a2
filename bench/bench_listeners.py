"""
Listeners and mailboxes (issue 11), three tables:

1. **Dispatch in one process**: ``channel.dispatch(listener_id, event, data)`` to one
   listener whose consumer acknowledges each mail (``listener.consume(handler)``), against
   ``MemoryChannel.publish(event, data)`` to one subscribed carrier that only counts;
   interleaved rounds, medians (see :mod:`bench._harness`). In memory the mail reaches
   the handler and is acknowledged before ``dispatch`` returns, so that is all timed.
   ``dispatch_group`` to a group of two is shown beside it (no target).
2. **Request/reply in one process**: ``channel.request(listener_id, "echo", data)``
   answered by an action (``listener.set_action`` + ``listener.serve()``), one at a time;
   p50 and p99 of the time until the reply is in the requester's hands (``await``);
   a request to a group of two beside it (no target). As in the harness, the garbage
   collector is paused while requests are timed (here and in part 3).
3. **Request/reply through Redis across two processes**: this process requests, a
   listener in another process (``bench/_listener_worker.py``) serves, on a private
   redis-server without persistence on 127.0.0.1; latency one request at a time (p50,
   p99) and throughput with 16 in flight, against a raw txredisapi loop doing the same
   round trip by hand (``XADD`` a request; the other process ``XREADGROUP``\\s, replies
   with ``XADD`` to the requester's reply stream, ``XACK``\\s and ``XDEL``\\s it; this
   process ``XREAD``\\s the reply stream), alternating rounds in one run, best of each.

Run with ``bash scripts/bench`` (``--quick`` for a smoke run, under a minute). Every loop
is bounded; the worker processes and redis-server are stopped at the end.

The Redis table also gives each process's CPU time per request in the throughput run
(from ``/proc``): on a shared machine, requests per second follow the CPU the processes
get, while CPU per request does not. With the environment variable ``BENCH_PROFILE`` set
to a directory, the Redis part writes cProfile stats (of CPU time, not wall time) of both
sides of its last round there: ``ours-requester.prof``, ``ours-worker.prof``,
``raw-requester.prof``, ``raw-worker.prof`` (the requester's timed requests, the worker's
whole run).

This is a benchmark, not a test: nothing here fails the build. Targets are printed next to
the measurements so a regression is visible.
"""

from __future__ import annotations

import cProfile
import gc
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from tests._redis import RedisServer
from twisted_event_dispatcher.channels.memory import MemoryChannel
from twisted_event_dispatcher.channels.redis import RedisStreamChannel
from twisted_event_dispatcher.interfaces import ICarrier
from twisted_event_dispatcher.listeners import Consumer, Mail
from twisted_event_dispatcher.testing import success_result_of

from ._harness import OURS, Workload, loop, options, report
from ._processes import (
    BenchProcess,
    Row,
    keep_best,
    ours_vs_raw_table,
    react_main,
    spawn_ready,
)

DATA = {"n": 1, "text": "hello"}
PUBLISH = "MemoryChannel.publish"
#: Requests in flight in the Redis throughput run (the worker serves as many at once).
IN_FLIGHT = 16
#: Requests sent before the measured ones (connections, scripts and readers settle in).
WARM_UP = 100
#: Seconds a request through Redis may take (the worker died?) before the run fails.
REQUEST_TIMEOUT = 10.0
#: Seconds a stopped worker has to exit before it is killed.
WORKER_EXIT = 10


# -- 1. dispatch in one process ------------------------------------------------------------


@implementer(ICarrier)
class CountingCarrier:
    """A carrier that only counts what it is given."""

    closed = False

    def __init__(self) -> None:
        self.count = 0

    def deliver(self, message: Any) -> None:
        self.count += 1

    def notify_gap(self, channel: str, event: str, gap: Any) -> None:
        raise AssertionError(f"the benchmark's carrier missed messages: {gap}")

    def on_close(self, callback: Callable[[Any], object]) -> None:
        pass


def ignore(mail: Mail) -> None:
    """A handler that succeeds at once: the consumer acknowledges the mail."""


def check_consumed(consumer: Consumer, carrier: CountingCarrier) -> None:
    """Both peers did all their work, synchronously (each call of each round)."""
    success_result_of(consumer.stop())
    assert consumer.processed == carrier.count > 0, (consumer.processed, carrier.count)


def publish_peer(w: Workload, carrier: CountingCarrier) -> None:
    published = MemoryChannel("bench-publish")
    success_result_of(published.subscribe("tick", carrier))
    w.peers[PUBLISH] = loop(w.ops, lambda: published.publish("tick", DATA))


def dispatch_workload(ops: int) -> Workload:
    """dispatch to one listener whose consumer acks, against publish to one carrier."""
    w = Workload("dispatch to 1 listener (consumer acks)", ops, PUBLISH, 1.5, "<= 1.5x publish")
    channel = MemoryChannel("bench-dispatch")
    listener = success_result_of(channel.add_listener("worker"))
    consumer = success_result_of(listener.consume(ignore))
    w.peers[OURS] = loop(ops, lambda: channel.dispatch("worker", "tick", DATA))
    carrier = CountingCarrier()
    publish_peer(w, carrier)
    w.cleanup.append(lambda: check_consumed(consumer, carrier))
    return w


def group_workload(ops: int) -> Workload:
    """dispatch_group to a group of two (round-robin), for comparison; no target."""
    w = Workload("dispatch_group to 1 of 2 members", ops, PUBLISH, None, "")
    channel = MemoryChannel("bench-group")
    consumers = []
    for name in ("a", "b"):
        listener = success_result_of(channel.add_listener(name, group="pool"))
        consumers.append(success_result_of(listener.consume(ignore)))
    w.peers[OURS] = loop(ops, lambda: channel.dispatch_group("pool", "tick", DATA))
    carrier = CountingCarrier()
    publish_peer(w, carrier)

    def check() -> None:
        for consumer in consumers:
            success_result_of(consumer.stop())
        processed = [consumer.processed for consumer in consumers]
        assert sum(processed) == carrier.count and min(processed) > 0, processed

    w.cleanup.append(check)
    return w


# -- 2. request/reply in one process ---------------------------------------------------------


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def timed_requests(
    request: Callable[[], Deferred[Any]], count: int, samples: list[float]
) -> None:
    """``count`` requests one at a time, each timed until its reply is awaited."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(count):
            start = time.perf_counter()
            value = await request()
            samples.append(time.perf_counter() - start)
            assert value == DATA, value
    finally:
        if gc_was_enabled:
            gc.enable()


async def request_table(rounds: int, count: int) -> int:
    """Print the in-process request/reply table; the number of missed targets."""
    channel = MemoryChannel("bench-request")
    consumers = []
    for name, group in (("svc", None), ("a", "pool"), ("b", "pool")):
        listener = await channel.add_listener(name, group=group)
        listener.set_action("echo", lambda mail: mail.data)
        consumers.append(await listener.serve())
    peers: dict[str, Callable[[], Deferred[Any]]] = {
        "request to a listener": lambda: channel.request("svc", "echo", DATA),
        "request to a group of 2": lambda: channel.request("pool", "echo", DATA, group=True),
    }
    samples: dict[str, list[float]] = {name: [] for name in peers}
    for request in peers.values():  # warm up
        await timed_requests(request, WARM_UP, [])
    for round_number in range(rounds):
        names = list(peers)
        if round_number % 2:
            names.reverse()
        for name in names:
            await timed_requests(peers[name], count, samples[name])
    for consumer in consumers:
        await consumer.stop()
    out = sys.stdout.write
    out(
        f"### Listeners: request/reply in one process\n\nPython {sys.version.split()[0]}; "
        f"{rounds} interleaved rounds of {count:,} requests one at a time, each timed until "
        "its reply is awaited\n\n"
        "| workload | p50 µs | p99 µs | target | met |\n| --- | ---: | ---: | --- | --- |\n"
    )
    missed = 0
    for name, values in samples.items():
        p50, p99 = percentile(values, 0.5) * 1e6, percentile(values, 0.99) * 1e6
        target = met = ""
        if name == "request to a listener":
            target, ok = "p50 <= 50 µs", p50 <= 50
            met = "yes" if ok else "**no**"
            missed += not ok
        out(f"| {name} | {p50:.1f} | {p99:.1f} | {target} | {met} |\n")
    out(f"\n{missed} target(s) missed.\n\n")
    return missed


# -- 3. request/reply through Redis, across two processes -----------------------------------


class RawRequester:
    """The requester's side of the round trip by hand: XADD, and an XREAD loop on replies."""

    def __init__(self, port: int, stream: str) -> None:
        self.port = port
        self.stream = stream
        self.replies = f"{stream}:reply:{uuid.uuid4().hex}"
        self.pending: dict[str, Deferred[Any]] = {}
        self.writer: Any = None
        self.reader: Any = None
        self.reading: Deferred[None] | None = None
        self.open_ = False

    async def open(self) -> None:
        self.writer = await txredisapi.Connection("127.0.0.1", self.port, convertNumbers=False)
        self.reader = await txredisapi.Connection("127.0.0.1", self.port, convertNumbers=False)
        self.open_ = True
        self.reading = Deferred.fromCoroutine(self.read_loop())

    async def read_loop(self) -> None:
        last = "0-0"
        while self.open_:
            reply = await self.reader.execute_command(
                "XREAD", "COUNT", "1000", "BLOCK", "200", "STREAMS", self.replies, last
            )
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    values = dict(zip(fields[::2], fields[1::2]))
                    answer = self.pending.pop(values["c"], None)
                    if answer is not None:
                        answer.callback(json.loads(values["v"]))

    def request(self) -> Deferred[Any]:
        correlation = uuid.uuid4().hex

        def forget(_: Deferred[Any]) -> None:  # timed out
            self.pending.pop(correlation, None)

        answer: Deferred[Any] = Deferred(forget)
        answer.addTimeout(REQUEST_TIMEOUT, reactor)
        self.pending[correlation] = answer
        sent: Deferred[Any] = self.writer.execute_command(
            "XADD", self.stream, "*", "r", self.replies, "c", correlation,
            "d", json.dumps(DATA, separators=(",", ":")),
        )
        sent.addErrback(self.not_sent, correlation)
        return answer

    def not_sent(self, failure: Failure, correlation: str) -> None:
        answer = self.pending.pop(correlation, None)
        if answer is not None:
            answer.errback(failure)

    async def close(self) -> None:
        self.open_ = False
        if self.reading is not None:
            await self.reading
        for connection in (self.writer, self.reader):
            if connection is not None:
                await connection.disconnect()


class OurRequester:
    """The requester's side with a RedisStreamChannel: ``channel.request``."""

    def __init__(self, url: str, name: str) -> None:
        self.channel = RedisStreamChannel(name, url=url)

    async def open(self) -> None:
        await self.channel.connect()

    def request(self) -> Deferred[Any]:
        return self.channel.request("echo", "echo", DATA, timeout=REQUEST_TIMEOUT)

    async def close(self) -> None:
        await self.channel.disconnect()


def pid(process: ProcessProtocol) -> int:
    assert process.transport is not None and process.transport.pid is not None
    number: int = process.transport.pid
    return number


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far (Linux' ``/proc``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the name: state is field 3 of proc(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stop_worker(process: BenchProcess) -> int | None:
    """
    Close the worker's stdin (it stops and reports); kill it if it does not end. How
    many requests it served, or None if it died (an error of the run that is already
    raised, or raised by the caller).
    """
    transport = process.transport
    assert transport is not None
    transport.closeStdin()
    timer = reactor.callLater(
        WORKER_EXIT, lambda: None if process.ended.called else transport.signalProcess("KILL")
    )
    try:
        result = await process.result
    except RuntimeError:
        return None
    finally:
        await process.ended
        if timer.active():
            timer.cancel()
    served: int = result["served"]
    return served


async def measure(
    mode: str, redis: RedisServer, latency_count: int, throughput_count: int, profile: str
) -> dict[str, float]:
    name = f"bench-{mode}-{time.monotonic_ns()}"
    if profile:
        os.environ["BENCH_PROFILE"] = os.path.join(profile, f"{mode}-worker.prof")
    try:
        process = await spawn_ready("bench._listener_worker", mode, redis.url, name, IN_FLIGHT)
    finally:
        os.environ.pop("BENCH_PROFILE", None)
    requester: RawRequester | OurRequester = (
        RawRequester(redis.port, name) if mode == "raw" else OurRequester(redis.url, name)
    )
    profiler = cProfile.Profile(time.process_time) if profile else None
    try:
        await requester.open()
        await timed_requests(requester.request, WARM_UP, [])
        if profiler is not None:
            profiler.enable()
        samples: list[float] = []
        await timed_requests(requester.request, latency_count, samples)
        assert redis.process is not None
        pids = {"requester": os.getpid(), "worker": pid(process), "redis": pid(redis.process)}
        cpu_before = {side: cpu_seconds(pid) for side, pid in pids.items()}
        window = DeferredSemaphore(IN_FLIGHT)
        start = time.perf_counter()
        values = await gatherResults(
            [window.run(requester.request) for _ in range(throughput_count)],
            consumeErrors=True,
        )
        elapsed = time.perf_counter() - start
        cpu = {
            f"cpu {side}": (cpu_seconds(pid) - cpu_before[side]) / throughput_count * 1e6
            for side, pid in pids.items()
        }
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile, f"{mode}-requester.prof"))
        assert values == [DATA] * throughput_count
    finally:
        await requester.close()
        served = await stop_worker(process)
    expected = WARM_UP + latency_count + throughput_count
    assert served == expected, f"the worker served {served} requests of {expected} (None: died)"
    return {
        "throughput": throughput_count / elapsed,
        "p50": percentile(samples, 0.5) * 1000,
        "p99": percentile(samples, 0.99) * 1000,
        **cpu,
    }


async def redis_table(quick: bool) -> int:
    """Print the cross-process table; the number of missed targets."""
    latency_count, throughput_count = (200, 1_000) if quick else (1_000, 10_000)
    rounds = 1 if quick else 3
    # Taken out of the environment: only the worker of the profiled round gets it.
    profile = os.environ.pop("BENCH_PROFILE", "")
    redis = RedisServer(persistent=False)
    await redis.start()
    try:
        best: dict[str, dict[str, float]] = {}
        for round_number in range(rounds):
            modes = ["raw", "ours"] if round_number % 2 == 0 else ["ours", "raw"]
            for mode in modes:
                last = round_number == rounds - 1
                result = await measure(
                    mode, redis, latency_count, throughput_count, profile if last else ""
                )
                keep_best(best, mode, result)
            await deferLater(reactor, 0, lambda: None)
    finally:
        await redis.stop()
    ours, raw = best["ours"], best["raw"]
    heading = (
        f"### Listeners: request/reply through Redis\n\nPython {sys.version.split()[0]}; "
        f"the listener in a separate process; {rounds} alternating round(s), best of each; "
        f"{latency_count:,} requests one at a time, {throughput_count:,} with "
        f"{IN_FLIGHT} in flight"
    )
    throughput_checks = [
        (">= 5,000/s", ours["throughput"] >= 5_000),
        (">= 0.7x raw", ours["throughput"] >= 0.7 * raw["throughput"]),
    ]
    rows: list[Row] = [
        (f"requests/s, {IN_FLIGHT} in flight", "throughput", "{:,.0f}", throughput_checks),
        ("one at a time p50 ms", "p50", "{:.2f}", [("<= 2 ms", ours["p50"] <= 2.0)]),
        ("one at a time p99 ms", "p99", "{:.2f}", []),
        ("CPU µs/request: requester", "cpu requester", "{:.0f}", []),
        ("CPU µs/request: worker", "cpu worker", "{:.0f}", []),
        ("CPU µs/request: redis-server", "cpu redis", "{:.0f}", []),
    ]
    return ours_vs_raw_table(heading, ours, raw, rows)


async def run(argv: list[str]) -> None:
    rounds, n = options(__doc__ or "", argv)
    quick = "--quick" in argv
    _, missed = report(
        "Listeners: dispatch in one process",
        [lambda: dispatch_workload(n(20_000)), lambda: group_workload(n(20_000))],
        rounds,
    )
    sys.stdout.write(f"{missed} target(s) missed.\n\n")
    await request_table(rounds, n(2_000))
    await redis_table(quick)


if __name__ == "__main__":
    react_main(run)
