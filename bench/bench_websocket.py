"""
fire_event -> bridge -> MemoryChannel -> WebSocket carrier, against a raw Autobahn
``sendPreparedMessage`` broadcast loop, with N = 10, 100 and 1000 clients in a separate
process (``bench/_ws_clients.py``), interleaved in one run.

For each N and each server:

* **throughput**: events published in batches of 50 per reactor turn, until every client
  has all of them; deliveries per second (N x events / elapsed);
* **paced latency**: one event every 10 ms; p50 and p99 of publish-to-receive time seen
  by one probe client;
* **memory per idle connection**: what N idle, subscribed connections hold in the server's
  Python heap (``tracemalloc``: transport, protocol, carrier, subscriptions), per connection.

Then, for our server alone, **one stalled client among 200 readers** (issue 9): a client in
a third process (``bench/_stalled.py``) with an 8 KiB receive buffer that subscribes and
never reads (the server's send buffer to it is 8 KiB too), its carrier's queue already
full at ``max_queue`` and dropping the oldest, against the same 200 readers without it;
rounds alternate, and the ratio of the median times until every reader has all the
events is what the stalled client costs the others.

Run with ``bash scripts/bench`` (``--quick`` for a smoke run). Loops are bounded and every
client process stops by itself.
"""

from __future__ import annotations

import gc
import json
import resource
import socket
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.task import deferLater

from twisted_event_dispatcher import EventDispatcher
from twisted_event_dispatcher.bridge import bridge
from twisted_event_dispatcher.carriers.websocket import EventWebSocketFactory
from twisted_event_dispatcher.channels import ChannelRegistry

from ._harness import options
from ._processes import BenchProcess, keep_best, react_main, spawn_ready

BATCH = 50
PACE = 0.010
#: Paced events sent before the measured ones (new connections settle in).
WARM_UP = 10
#: Readers beside the stalled client.
STALLED_READERS = 200




class RawServer(WebSocketServerProtocol):
    def onOpen(self) -> None:
        self.factory.clients.add(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.clients.discard(self)


class Server:
    """One server under test: how to publish, how many clients are subscribed."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seq = 0
        if mode == "ours":
            channels = ChannelRegistry()
            self.channel = channels.get_or_create("bench", history_size=100)
            self.dispatcher = EventDispatcher()
            self.dispatcher.start()
            bridge(self.dispatcher, self.channel, key="tick", serialize=lambda e: e)
            self.factory: Any = EventWebSocketFactory(channels=channels, default_channel="bench")
        else:
            self.factory = WebSocketServerFactory()
            self.factory.protocol = RawServer
            self.factory.clients = set()

    def subscribed(self) -> int:
        if self.mode == "ours":
            return int(self.channel.carrier_count)
        return len(self.factory.clients)

    def publish(self, paced: bool) -> None:
        self.seq += 1
        event = {"seq": self.seq, "t": time.time(), "paced": paced}
        if self.mode == "ours":
            self.dispatcher.fire_event(event)
            return
        frame = {
            "type": "event", "id": self.seq, "epoch": "0123456789abcdef", "channel": "bench",
            "event": "tick", "data": event,
        }
        prepared = self.factory.prepareMessage(json.dumps(frame).encode())
        for client in self.factory.clients:
            client.sendPreparedMessage(prepared)


async def spawn(port: int, count: int, mode: str, expected: int) -> BenchProcess:
    return await spawn_ready("bench._ws_clients", port, count, mode, expected)


async def wait_until(condition: Callable[[], bool], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the clients did not subscribe in time")
        await deferLater(reactor, 0.01, lambda: None)


async def measure(mode: str, count: int, events: int, paced: int) -> dict[str, float]:
    """Throughput, paced latency and memory per idle connection for one server."""
    server = Server(mode)
    port: Any = reactor.listenTCP(0, server.factory, backlog=2048, interface="127.0.0.1")
    number = port.getHost().port
    try:
        # Memory the connections hold in Python objects (Twisted transport, Autobahn
        # protocol, carrier, subscriptions), traced while they connect and subscribe.
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        clients = await spawn(number, count, mode, events)
        await wait_until(lambda: server.subscribed() == count)
        gc.collect()
        per_connection = (tracemalloc.get_traced_memory()[0] - before) / count
        tracemalloc.stop()
        start = time.time()
        for n in range(events):
            server.publish(paced=False)
            if n % BATCH == BATCH - 1:
                await deferLater(reactor, 0, lambda: None)
        result = await clients.result
        throughput = count * events / (result["done_at"] - start)
        await clients.ended
        await wait_until(lambda: server.subscribed() == 0)

        clients = await spawn(number, count, mode, WARM_UP + paced)
        await wait_until(lambda: server.subscribed() == count)
        for n in range(WARM_UP + paced):
            server.publish(paced=n >= WARM_UP)
            await deferLater(reactor, PACE, lambda: None)
        latency = await clients.result
        await clients.ended
        return {
            "throughput": throughput,
            "p50": latency["p50"] * 1000,
            "p99": latency["p99"] * 1000,
            "memory": per_connection,
        }
    finally:
        await port.stopListening()


async def fill(server: Server, carrier: Any) -> None:
    """Publish until the stalled client's carrier queue is full and drops the oldest."""
    for n in range(200_000):  # bounded: ~1,600 events fill the buffers and the queue
        if carrier.queued >= carrier.max_queue and carrier._dropped:
            return
        server.publish(paced=False)
        if n % BATCH == BATCH - 1:
            await deferLater(reactor, 0, lambda: None)
    raise RuntimeError("the stalled client's queue did not fill")


async def stalled_round(server: Server, port: int, events: int, stalled: bool) -> float:
    """
    Seconds from the first publish until each of ``STALLED_READERS`` readers has all
    ``events`` events, with one stalled client subscribed too when ``stalled``.
    """
    staller: BenchProcess | None = None
    carrier: Any = None
    dropped = 0
    if stalled:
        staller = await spawn_ready("bench._stalled", port)
        await wait_until(lambda: server.subscribed() == 1)
        (protocol,) = server.factory.connections
        carrier = protocol.carrier
        # A small send buffer on the server's end too (as in tests/test_websocket_slow.py):
        # else Linux grows it, on loopback, to megabytes that the queue drains into.
        handle: Any = protocol.transport
        handle.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        await fill(server, carrier)
        dropped = carrier._dropped
    readers = await spawn(port, STALLED_READERS, "ours", events)
    await wait_until(lambda: server.subscribed() == STALLED_READERS + stalled)
    gc.collect()  # no collection of the previous round's garbage in this one's time
    start = time.time()
    for n in range(events):
        server.publish(paced=False)
        if n % BATCH == BATCH - 1:
            await deferLater(reactor, 0, lambda: None)
    result = await readers.result
    await readers.ended
    if staller is not None:
        # It stayed stalled, with a full queue, dropping the oldest event for each new one.
        if carrier.closed or carrier.queued != carrier.max_queue:
            raise RuntimeError(
                f"the stalled client's queue was not full throughout "
                f"(closed: {carrier.closed}, queued: {carrier.queued})"
            )
        if carrier._dropped - dropped != events:
            raise RuntimeError("the stalled client's carrier did not drop one per event")
        staller.result.addErrback(lambda _: None)  # it prints no result line
        transport: Any = staller.transport
        transport.closeStdin()
        await staller.ended
    await wait_until(lambda: server.subscribed() == 0)
    return float(result["done_at"] - start)


async def stalled_table(rounds: int, quick: bool) -> int:
    """Print the stalled-client table; the number of missed targets (0 or 1)."""
    events = 2000 if quick else 5000
    rounds = 5 if quick else rounds  # 3 are too few against this much noise
    server = Server("ours")
    listening: Any = reactor.listenTCP(0, server.factory, backlog=2048, interface="127.0.0.1")
    port = listening.getHost().port
    samples: dict[bool, list[float]] = {True: [], False: []}
    try:
        for stalled in (True, False):  # warm-up: the first rounds are slower
            await stalled_round(server, port, events, stalled)
        for round_number in range(rounds):
            for stalled in (True, False) if round_number % 2 else (False, True):
                samples[stalled].append(await stalled_round(server, port, events, stalled))
    finally:
        await listening.stopListening()
    with_stalled, without = (statistics.median(samples[key]) * 1000 for key in (True, False))
    ratio = with_stalled / without
    met = "yes" if ratio <= 1.10 else "**no**"
    sys.stdout.write(
        f"\nOne stalled client (never reads; 8 KiB socket buffers; its queue full at "
        f"max_queue = {server.factory.max_queue}, dropping the oldest) among "
        f"{STALLED_READERS} readers; {rounds} interleaved rounds, medians\n\n"
        "| readers | metric | with stalled | without | with / without | target | met |\n"
        "| ---: | --- | ---: | ---: | ---: | --- | --- |\n"
        f"| {STALLED_READERS} | ms until all have {events:,} events | {with_stalled:,.1f} "
        f"| {without:,.1f} | {ratio:.2f}x | <= 1.10x | {met} |\n"
    )
    return int(ratio > 1.10)


async def run(argv: list[str]) -> None:
    rounds, n = options("WebSocket fan-out against a raw Autobahn broadcast", argv)
    quick = "--quick" in argv
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    out = sys.stdout.write
    out(
        f"### WebSocket fan-out\n\nPython {sys.version.split()[0]}; clients in a separate "
        f"process; {'1 round' if quick else '2 rounds, best of each'}\n\n"
        "| clients | metric | ours | raw Autobahn | ours / raw | target | met |\n"
        "| ---: | --- | ---: | ---: | ---: | --- | --- |\n"
    )
    missed = 0
    for count in (10, 100, 1000):
        events = max(100, n(200_000) // count)
        paced = 20 if quick else 200
        best: dict[str, dict[str, float]] = {}
        for _ in range(1 if quick else 2):
            for mode in ("raw", "ours"):
                result = await measure(mode, count, events, paced)
                keep_best(best, mode, result)
        ours, raw = best["ours"], best["raw"]
        rows = [
            ("deliveries/s", "throughput", "{:,.0f}", 0.9 if count == 1000 else None, ">="),
            ("paced p50 ms", "p50", "{:.2f}", None, "<="),
            ("paced p99 ms", "p99", "{:.2f}", 1.2, "<="),
            ("heap per idle connection", "memory", "{:,.0f} B", None, "<="),
        ]
        for label, key, fmt, target, sense in rows:
            ratio = ours[key] / raw[key] if raw[key] else float("nan")
            target_text = met = ""
            if target is not None:
                ok = ratio >= target if sense == ">=" else ratio <= target
                target_text, met = f"{sense} {target}x raw", "yes" if ok else "**no**"
                missed += not ok
            if key == "memory" and count == 1000:
                ok = ours[key] <= 50_000
                target_text, met = "<= 50 KB", "yes" if ok else "**no**"
                missed += not ok
            out(
                f"| {count} | {label} | {fmt.format(ours[key])} | {fmt.format(raw[key])} "
                f"| {ratio:.2f}x | {target_text} | {met} |\n"
            )
    missed += await stalled_table(rounds, quick)
    out(f"\n{missed} target(s) missed.\n\n")


if __name__ == "__main__":
    react_main(run)
