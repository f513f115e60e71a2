"""
Clients that send without reading: WebSocket pings, JSON requests. What the server owes
them must stay bounded (issue 9, defect 4), and no answer it owes may vanish silently.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests._clients import OP_PING, OP_PONG, OP_TEXT, RawWSClient, connect_raw_ws, ws_frame
from tests.test_websocket import Server, start_server, stop_server, subscribe
from twisted_event_dispatcher.carriers.websocket import READ_PAUSE_FRAMES, EventWebSocketProtocol

#: Twisted's transport pauses its producer past this many buffered bytes.
TRANSPORT_BUFFER = 65536


def buffered(protocol: EventWebSocketProtocol) -> int:
    """Bytes the server holds for this connection in user space (transport + queue)."""
    transport: Any = protocol.transport
    return len(transport.dataBuffer) + transport._tempDataLen  # type: ignore[no-any-return]


async def stalled_client(server: Server) -> tuple[RawWSClient, EventWebSocketProtocol]:
    """A raw client that stops reading, with small socket buffers on both ends."""
    client = await connect_raw_ws(server.port, receive_buffer=8192)
    server.clients.append(client)
    assert client.transport is not None
    port = client.transport.getHost().port  # type: ignore[attr-defined]
    (protocol,) = [
        p for p in server.factory.connections
        if p.transport is not None and p.transport.getPeer().port == port  # type: ignore[attr-defined]
    ]
    client.stop_reading()
    transport: Any = protocol.transport
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    return client, protocol


def unstall(client: RawWSClient, protocol: EventWebSocketProtocol) -> None:
    """The stalled client reads again; the server's send buffer grows back."""
    transport: Any = protocol.transport
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    client.resume_reading()


def count_calls(protocol: EventWebSocketProtocol, method: str) -> list[int]:
    """Count the calls of ``protocol.<method>`` (in the one-item list returned)."""
    calls = [0]
    original = getattr(protocol, method)

    def counting(*args: Any) -> Any:
        calls[0] += 1
        return original(*args)

    setattr(protocol, method, counting)
    return calls


async def until(condition: Any, timeout: float = 30) -> None:
    """Let the reactor run until ``condition()`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_ping_flood_from_a_client_that_never_reads_stays_bounded() -> None:
    server = await start_server()
    try:
        client, protocol = await stalled_client(server)
        pings = count_calls(protocol, "onPing")
        count = 100_000
        # 100k pings with 125-byte payloads: 12.7 MB of pongs if each were answered.
        ping = ws_frame(OP_PING, b"p" * 125, mask=b"\0\0\0\0")
        assert client.transport is not None
        for _ in range(count // 1000):
            client.transport.write(ping * 1000)
        await until(lambda: pings[0] == count)
        held = buffered(protocol)
        assert held <= TRANSPORT_BUFFER + 1000, f"{held} bytes buffered for a stalled client"
        assert protocol.carrier is not None and protocol.carrier.queued == 0
        # The client reads again: it gets the pongs that were written, then the latest one.
        unstall(client, protocol)
        client.send_frame(OP_PING, b"last one")
        last = await client.inbox.wait(lambda f: f == (OP_PONG, b"last one"), timeout=10)
        assert last == (OP_PONG, b"last one")
        pongs = [p for op, p in client.inbox.frames if op == OP_PONG]
        assert 1 < len(pongs) < 1000 and set(pongs[:-1]) == {b"p" * 125}
        # the hub still serves others
        other = await server.client()
        assert (await subscribe(other, "a"))["type"] == "subscribed"
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_requests_from_a_client_that_does_not_read_wait_until_it_reads() -> None:
    # (this client used to be closed with 1008 and reset; now the server stops reading it)
    server = await start_server(max_queue=50, max_request_rate=0)
    try:
        client, protocol = await stalled_client(server)
        closes = count_calls(protocol, "sendCloseFrame")
        count = 5000
        request = b'{"type": "ping", "id": "' + b"i" * 200 + b'"}'
        assert client.transport is not None
        client.transport.write(ws_frame(OP_TEXT, request) * count)  # 5000 pongs: over 1 MB
        await until(lambda: protocol.reading_paused or closes[0])
        assert closes[0] == 0
        carrier = protocol.carrier
        assert carrier is not None and carrier.queued <= READ_PAUSE_FRAMES
        assert buffered(protocol) <= TRANSPORT_BUFFER + 1000
        bystander = await server.client()
        bystander.send_json({"type": "ping", "id": 1})
        assert await bystander.wait_type("pong") == {"type": "pong", "id": 1}
        unstall(client, protocol)
        await until(lambda: len(client.inbox.frames) >= count)
        assert client.texts() == [{"type": "pong", "id": "i" * 200}] * count
        assert closes[0] == 0 and not protocol.reading_paused
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_answers_are_never_dropped_for_events_under_drop_oldest() -> None:
    server = await start_server(max_queue=20)
    try:
        client, protocol = await stalled_client(server)
        requests = count_calls(protocol, "onMessage")
        client.send_json({"type": "subscribe", "event": "bulk"})
        carrier = protocol.carrier
        assert carrier is not None
        await until(lambda: server.news.carrier_count == 1)
        pad = "x" * 4096
        n = 0
        while carrier.queued < 20:  # until the queue is full of events
            await server.news.publish("bulk", {"n": n, "pad": pad})
            n += 1
            assert n < 1000
        for i in range(5):
            client.send_json({"type": "ping", "id": i})
        await until(lambda: requests[0] == 6)
        for _ in range(40):  # each pushes the oldest event out, never an answer
            await server.news.publish("bulk", {"n": n, "pad": pad})
            n += 1
        # 20 events; the answers wait past max_queue (bounded by the flow control)
        assert carrier.queued == 25 and carrier.queued_controls == 5
        unstall(client, protocol)
        await client.wait_json(lambda f: f.get("data", {}).get("n") == n - 1, timeout=10)
        frames = client.texts()
        assert [f["id"] for f in frames if f["type"] == "pong"] == [0, 1, 2, 3, 4]
        got = [f["data"]["n"] for f in frames if f["type"] == "event"]
        dropped = sum(f["count"] for f in frames if f["type"] == "dropped")
        assert got == sorted(got) and dropped > 0 and len(got) + dropped == n
    finally:
        await stop_server(server)
