"""
One stalled client among many (issue 9): the others get every event in order and about
as fast as without it, and what the server holds for the stalled one stays bounded.

Real WebSocket clients over 127.0.0.1, in this process. The readers are raw clients that
keep the bytes they receive: each must receive exactly the concatenation of the event
frames, which proves every event arrived, once, in order, with no ``dropped`` notice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from tests._clients import RawWSClient, connect_raw_ws, parse_frames
from tests.test_websocket import Server, start_server, stop_server
from tests.test_websocket_flood import TRANSPORT_BUFFER, buffered, stalled_client, unstall
from twisted_event_dispatcher.carriers.websocket import EventWebSocketProtocol

READERS = 200
EVENTS = 2000
BATCH = 20
#: How far (in events) a reader may lag before the publisher waits for it: readers are
#: never the ones that overflow; the stalled client is.
WINDOW = 60
MAX_QUEUE = 100
PAD = "x" * 1000


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Let the reactor run (reads, writes) until ``condition()`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0, lambda: None)


async def readers(server: Server, count: int) -> list[RawWSClient]:
    """``count`` raw clients subscribed to ``bulk``, their ``data`` holding nothing yet."""
    clients: list[RawWSClient] = []
    for start in range(0, count, 50):
        clients += await gatherResults(
            [
                Deferred.fromCoroutine(connect_raw_ws(server.port, parse=False))
                for _ in range(start, min(count, start + 50))
            ]
        )
    server.clients += clients
    for client in clients:
        client.send_json({"type": "subscribe", "event": "bulk"})
    # each has its complete "subscribed" frame
    await until(lambda: all(c.data and parse_frames(c.data)[1] == len(c.data) for c in clients))
    for client in clients:
        del client.data[:]
    return clients


class Watch:
    """The largest queue and buffer the server held for the stalled client."""

    def __init__(self, protocol: EventWebSocketProtocol | None) -> None:
        self.protocol = protocol
        self.queued = self.buffered = 0

    def look(self) -> None:
        protocol = self.protocol
        if protocol is not None and protocol.carrier is not None:
            self.queued = max(self.queued, protocol.carrier.queued)
            if protocol.transport is not None and protocol.carrier is not None:
                self.buffered = max(self.buffered, buffered(protocol))


async def received(clients: list[RawWSClient], count: int) -> None:
    """Until every client has received ``count`` bytes."""
    await until(lambda: min(len(c.data) for c in clients) >= count)


async def publish_all(
    server: Server, clients: list[RawWSClient], watch: Watch, events: int = EVENTS
) -> float:
    """Publish ``events`` events, paced by the readers; seconds until all got every one."""
    frames: list[bytes] = []
    sent = [0]  # bytes of the first k frames, for k = 0..EVENTS
    started = time.perf_counter()
    for first in range(0, events, BATCH):
        for n in range(first, first + BATCH):
            message = await server.news.publish("bulk", {"n": n, "pad": PAD})
            # the frame every subscriber gets (the same bytes as the carriers' own)
            frame = server.factory.prepareMessage(message.json.encode("utf-8")).payloadHybi
            frames.append(frame)
            sent.append(sent[-1] + len(frame))
        watch.look()
        await received(clients, sent[max(0, len(frames) - WINDOW)])
    await received(clients, sent[-1])
    elapsed = time.perf_counter() - started
    watch.look()
    expected = b"".join(frames)
    for client in clients:
        assert client.data == expected, "a reader missed an event, or got one out of order"
        del client.data[:]
    return elapsed


async def stall(server: Server, subscribers: int) -> tuple[RawWSClient, EventWebSocketProtocol]:
    """A client that subscribes to ``bulk``, then stops reading."""
    client, protocol = await stalled_client(server)
    client.send_json({"type": "subscribe", "event": "bulk"})
    await until(lambda: server.news.carrier_count == subscribers + 1)
    return client, protocol


def check_bounded(watch: Watch) -> None:
    """What the server held for the stalled client: its queue, and Twisted's buffer (which
    pauses the carrier past 64 KiB: at most one more frame is written)."""
    assert watch.queued <= MAX_QUEUE
    assert watch.buffered <= TRANSPORT_BUFFER + 2 * len(PAD)


@pytest_twisted.ensureDeferred
async def test_one_stalled_client_among_hundreds_drop_oldest() -> None:
    server = await start_server(max_queue=MAX_QUEUE)
    try:
        clients = await readers(server, READERS)
        stalled, protocol = await stall(server, READERS)
        watch = Watch(protocol)
        await publish_all(server, clients, watch)  # every reader got every event, in order
        check_bounded(watch)
        assert watch.queued == MAX_QUEUE, "the stalled client did fill its queue"
        assert protocol.carrier is not None and not protocol.carrier.closed
        transport: Any = stalled.transport
        transport.abortConnection()
        await until(lambda: server.news.carrier_count == READERS)
        # What the stalled client costs the others in time is a benchmark, not a test:
        # bench/bench_websocket.py measures it against the same readers alone (<= 1.10x).
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_one_stalled_client_among_hundreds_disconnect() -> None:
    server = await start_server(max_queue=MAX_QUEUE, overflow="disconnect")
    try:
        clients = await readers(server, READERS)
        stalled, protocol = await stall(server, READERS)
        watch = Watch(protocol)
        await publish_all(server, clients, watch)
        check_bounded(watch)
        # closed with 1008: the close frame waits behind what the client has not read
        # (test_websocket_backpressure: it gets it when it reads)
        assert protocol.localCloseCode == 1008 and server.news.carrier_count == READERS
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_stalled_client_is_told_what_it_missed_when_it_reads_again() -> None:
    server = await start_server(max_queue=MAX_QUEUE)
    try:
        stalled, protocol = await stall(server, 0)
        clients = await readers(server, 5)
        await publish_all(server, clients, Watch(None))
        unstall(stalled, protocol)
        last = await stalled.wait_json(
            lambda f: f.get("data", {}).get("n") == EVENTS - 1, timeout=10
        )
        assert last["type"] == "event"
        frames = stalled.texts()
        got = [f["data"]["n"] for f in frames if f["type"] == "event"]
        dropped = [f["count"] for f in frames if f["type"] == "dropped"]
        assert got == sorted(got) and len(set(got)) == len(got)
        assert dropped and len(got) + sum(dropped) == EVENTS, "each event received or counted"
    finally:
        await stop_server(server)
