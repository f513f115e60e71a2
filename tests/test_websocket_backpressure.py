"""
WebSocket clients that send faster than they read (issue 12 review): the hub stops reading
a connection while answers to its requests wait for the client to read them, so a burst of
requests is answered in full, in order, without a reset; a client the overflow policy
closes gets the close frame (1008) after what it was owed; error frames carry a ``code``;
and the nesting limit is on a request's data, not on the frame around it.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.protocols.policies import ProtocolWrapper

from tests._clients import OP_CLOSE, OP_TEXT, RawWSClient, connect_raw_ws, connect_ws, ws_frame
from tests._local_hub import LocalHub, start_local_hub
from tests.test_websocket import Server, start_server, stop_server
from twisted_event_dispatcher.carriers.websocket import (
    READ_PAUSE_FRAMES,
    EventWebSocketFactory,
    EventWebSocketProtocol,
)
from twisted_event_dispatcher.channels.message import MAX_DEPTH

BURST = 3000


def socket_transport(protocol: EventWebSocketProtocol) -> Any:
    """The TCP transport under the protocol's (the hub wraps it in a ProtocolWrapper)."""
    transport: Any = protocol.transport
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport


def reading(protocol: EventWebSocketProtocol) -> bool:
    """Whether the reactor reads the connection's socket."""
    return socket_transport(protocol) in reactor.getReaders()


async def until(condition: Any, timeout: float = 30) -> None:
    """Let the reactor run until ``condition()`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.005, lambda: None)


async def stalled(
    port: int, factory: EventWebSocketFactory, path: str = "/"
) -> tuple[RawWSClient, EventWebSocketProtocol]:
    """A raw client that does not read (small socket buffers), and its server protocol."""
    client = await connect_raw_ws(port, path=path, receive_buffer=8192)
    assert client.transport is not None
    local = client.transport.getHost().port  # type: ignore[attr-defined]
    (protocol,) = [
        p for p in factory.connections
        if p.transport is not None and p.transport.getPeer().port == local  # type: ignore[attr-defined]
    ]
    client.stop_reading()
    socket_transport(protocol).getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    return client, protocol


def watch_close(protocol: EventWebSocketProtocol) -> list[int | None]:
    """The code of the close frame the server sends, once it sends one."""
    codes: list[int | None] = []
    original = protocol.sendCloseFrame

    def recording(code: int | None = None, reasonUtf8: bytes | None = None,
                  isReply: bool = False) -> None:
        codes.append(code)
        original(code, reasonUtf8, isReply)

    protocol.sendCloseFrame = recording  # type: ignore[method-assign]
    return codes


async def burst_answered(
    client: RawWSClient, protocol: EventWebSocketProtocol, frames: list[bytes]
) -> list[dict[str, Any]]:
    """
    Send ``frames`` at once while not reading: the server stops reading with a bounded
    queue, is not closed; then read: every answer arrives. The answers, in order.
    """
    closes = watch_close(protocol)
    assert client.transport is not None
    client.transport.write(b"".join(frames))
    await until(lambda: closes or not reading(protocol))
    assert closes == [], "the server closed a client that was reading its answers slowly"
    carrier = protocol.carrier
    assert carrier is not None
    assert protocol.reading_paused and carrier.queued <= READ_PAUSE_FRAMES
    client.resume_reading()
    count = len(frames)
    await until(lambda: len(client.inbox.frames) >= count)
    assert closes == [] and client.close_code is None
    answers = client.texts()
    assert len(answers) == count
    assert reading(protocol) and not protocol.reading_paused
    return answers


@pytest_twisted.ensureDeferred
async def test_a_burst_of_dispatches_behind_the_hub_is_answered_in_full() -> None:
    hub = await start_local_hub(max_request_rate=0)
    try:
        client, protocol = await stalled(hub.port, hub.hub.websocket, "/ws")
        # behind twisted.web: the HTTP channel's transport, wrapped (the connection limit)
        assert isinstance(protocol.transport, ProtocolWrapper)
        client.resume_reading()
        client.send_json({"type": "register", "listener": "w", "mailbox_size": 10000})
        registered = await client.wait_json(lambda f: f["type"] == "result")
        assert registered["listener"] == "w"
        client.stop_reading()
        del client.inbox.frames[:]
        frames = [
            ws_frame(OP_TEXT, json.dumps(
                {"type": "dispatch", "listener": "w", "event": "job", "data": n, "ref": n}
            ).encode())
            for n in range(BURST)
        ]
        answers = await burst_answered(client, protocol, frames)
        assert [a["ref"] for a in answers] == list(range(BURST))
        assert all(a["type"] == "result" and a["ok"] for a in answers), answers[:3]
        # the connection goes on
        client.send_json({"type": "ping", "id": "after"})
        pong = await client.wait_json(lambda f: f.get("id") == "after", start=BURST)
        assert pong == {"type": "pong", "id": "after"}
        assert hub.problems() == []
    finally:
        await hub.stop()


@pytest_twisted.ensureDeferred
async def test_a_burst_of_bad_frames_to_a_bare_factory_is_answered_in_full() -> None:
    server = await start_server(max_request_rate=0)
    try:
        client, protocol = await stalled(server.port, server.factory)
        server.clients.append(client)
        frames = [ws_frame(OP_TEXT, b'{"type": "nope", "ref": %d}' % n) for n in range(BURST)]
        answers = await burst_answered(client, protocol, frames)
        assert [a.get("ref") for a in answers] == list(range(BURST))
        assert {(a["type"], a["code"]) for a in answers} == {("error", "bad_request")}
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_a_burst_of_pings_to_a_bare_factory_is_answered_in_full() -> None:
    server = await start_server(max_request_rate=0, max_queue=50)
    try:
        client, protocol = await stalled(server.port, server.factory)
        server.clients.append(client)
        pad = "p" * 60  # (the pongs must overfill the socket buffers and Twisted's 64 KiB)
        frames = [
            ws_frame(OP_TEXT, b'{"type": "ping", "id": "%d%s"}' % (n, pad.encode()))
            for n in range(BURST)
        ]
        answers = await burst_answered(client, protocol, frames)
        assert answers == [{"type": "pong", "id": f"{n}{pad}"} for n in range(BURST)]
    finally:
        await stop_server(server)


async def subscribed_and_stalled(
    server: Server, **more: Any
) -> tuple[RawWSClient, EventWebSocketProtocol]:
    client, protocol = await stalled(server.port, server.factory)
    server.clients.append(client)
    client.send_json({"type": "subscribe", "event": "bulk", **more})
    await until(lambda: server.news.carrier_count == 1)
    return client, protocol


@pytest_twisted.ensureDeferred
async def test_disconnect_policy_client_sees_1008_after_its_answers_when_it_reads() -> None:
    server = await start_server(max_queue=20, overflow="disconnect")
    try:
        client, protocol = await subscribed_and_stalled(server)
        closes = watch_close(protocol)
        pad = "x" * 4096
        n = 0
        while protocol.carrier is not None and protocol.carrier.queued == 0:
            await server.news.publish("bulk", {"n": n, "pad": pad})  # until one waits
            n += 1
            assert n < 1000
        for i in range(5):  # answers owed to a client that is not reading
            client.send_json({"type": "ping", "id": i})
        await until(lambda: protocol.carrier is not None and protocol.carrier.queued >= 6)
        while not closes:
            await server.news.publish("bulk", {"n": n, "pad": pad})
            n += 1
            assert n < 1000
        assert closes == [1008] and server.news.carrier_count == 0
        assert protocol.state == protocol.STATE_CLOSING, "the close frame waits for the client"
        client.resume_reading()
        await client.lost
        assert client.close_code == 1008
        texts = client.texts()
        assert [f["id"] for f in texts if f["type"] == "pong"] == [0, 1, 2, 3, 4]
        got = [f["data"]["n"] for f in texts if f["type"] == "event"]
        assert got == list(range(len(got))) and got, "events in order, up to the close"
        assert client.inbox.frames[-1][0] == OP_CLOSE
        await protocol.is_closed
        assert protocol.wasClean
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_its_1008_is_aborted_after_the_grace() -> None:
    server = await start_server(max_queue=5, overflow="disconnect")
    try:
        client, protocol = await subscribed_and_stalled(server)
        protocol.overflow_close_timeout = 0.2
        closes = watch_close(protocol)
        n = 0
        while not closes:
            await server.news.publish("bulk", {"n": n, "pad": "x" * 4096})
            n += 1
            assert n < 1000
        assert protocol.closeHandshakeTimeout == 0.2
        started = time.monotonic()
        await protocol.is_closed  # aborted: the client never reads
        assert time.monotonic() - started < 5  # (Autobahn's timers: 1 s buckets)
        assert not protocol.wasClean and "closing handshake timeout" in protocol.wasNotCleanReason
        await until(lambda: protocol not in server.factory.connections)
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_drop_oldest_subscriber_behind_on_events_still_has_its_requests_read() -> None:
    server = await start_server(max_queue=20)
    try:
        client, protocol = await subscribed_and_stalled(server)
        carrier = protocol.carrier
        assert carrier is not None
        n = 0
        while carrier.queued < 20 or not carrier._dropped:  # full, and dropping
            await server.news.publish("bulk", {"n": n, "pad": "x" * 4096})
            n += 1
            assert n < 1000
        client.send_json({"type": "unsubscribe", "event": "bulk"})
        await until(lambda: server.news.carrier_count == 0)  # read, though it is not reading
        assert reading(protocol) and not carrier.closed
        client.resume_reading()
        unsubscribed = await client.wait_json(lambda f: f["type"] == "unsubscribed", timeout=10)
        assert unsubscribed["event"] == "bulk"
        dropped = [f["count"] for f in client.texts() if f["type"] == "dropped"]
        assert dropped and dropped[0] > 0
    finally:
        await stop_server(server)


# -- error frames carry a code ----------------------------------------------------------

ERRORS: list[tuple[bytes, str, object]] = [
    (b"{", "bad_request", None),
    (b'{"type": "ping", "id": [' + b"[" * 70 + b"]" * 71 + b"}", "bad_request", None),
    (b'{"ref": "d", "type": "ping", "id": ' + b"[" * 70 + b"]" * 70 + b"}", "bad_request", "d"),
    (b'{"ref": "e", "type": "ping", "id": ' + b"[" * 200 + b"]" * 200 + b"}", "bad_request",
     None),
    (b"[1]", "bad_request", None),
    (b'{"type": "nope", "ref": "r1"}', "bad_request", "r1"),
    (b'{"type": "subscribe", "event": "a", "channel": "nope", "ref": 7}',
     "unknown_channel", 7),
    (b'{"type": "subscribe", "event": "", "ref": "x"}', "bad_request", "x"),
    (b'{"type": "unsubscribe", "event": "a", "ref": "u"}', "bad_request", "u"),
    (b'{"type": "ping", "id": "' + b"i" * 300 + b'", "ref": "p"}', "bad_request", "p"),
    (b'{"type": "nope", "ref": true}', "bad_request", None),
    (b'{"type": "nope", "ref": "' + b"r" * 100 + b'"}', "bad_request", None),
    (b'{"type": "create_channel", "ref": "c"}', "unsupported", "c"),
]


@pytest.mark.parametrize(("payload", "code", "ref"), ERRORS)
@pytest_twisted.ensureDeferred
async def test_every_error_frame_has_a_code_and_echoes_a_valid_ref(
    payload: bytes, code: str, ref: object
) -> None:
    server = await start_server()
    try:
        client = await server.client()
        client.sendMessage(payload)  # type: ignore[no-untyped-call]
        error = await client.wait_type("error")
        assert error["code"] == code, error
        assert error.get("ref") == ref and ("ref" in error) == (ref is not None), error
        assert error["reason"]
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_binary_frames_and_the_rate_have_codes() -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    server = await start_server(max_request_rate=1, clock=clock)
    try:
        client = await server.client()
        client.send_json({"type": "ping", "id": 1})
        client.send_json({"type": "ping", "id": 2, "ref": "late"})
        client.sendMessage(b"\x00", isBinary=True)  # type: ignore[no-untyped-call]
        await client.wait(lambda f: len(client.inbox.frames) == 3)
        pong, limited, binary = client.inbox.frames
        assert pong == {"type": "pong", "id": 1}
        assert limited["code"] == "limit" and limited["ref"] == "late", limited
        assert binary["code"] == "limit", "past the rate, whatever it is"
        clock.advance(1)
        client.sendMessage(b"\x00", isBinary=True)  # type: ignore[no-untyped-call]
        error = await client.wait_type("error", start=3)
        assert error["code"] == "bad_request" and "binary" in error["reason"]
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_subscription_limit_error_says_limit() -> None:
    server = await start_server(max_subscriptions=1)
    try:
        client = await server.client()
        client.send_json({"type": "subscribe", "event": "a"})
        await client.wait_type("subscribed")
        client.send_json({"type": "subscribe", "event": "b", "ref": 1})
        error = await client.wait_type("error")
        assert error["code"] == "limit" and error["ref"] == 1, error
    finally:
        await stop_server(server)


# -- the nesting limit is on the data ---------------------------------------------------


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("kind", ["dispatch", "broadcast"])
@pytest_twisted.ensureDeferred
async def test_data_of_exactly_max_depth_passes_one_more_is_refused(kind: str) -> None:
    hub: LocalHub = await start_local_hub(max_request_rate=0)
    try:
        ws = await connect_ws(hub.port, path="/ws")
        ws.send_json({"type": "register", "listener": "w"})
        await ws.wait_type("result")
        ws.send_json({"type": "subscribe", "event": "deep"})
        await ws.wait_type("subscribed")
        target = {"listener": "w"} if kind == "dispatch" else {}
        for ref, levels in ((1, MAX_DEPTH), (2, MAX_DEPTH + 1)):
            ws.send_json({"type": kind, **target, "event": "deep", "data": nested(levels),
                          "ref": ref})
        ok = await ws.wait(lambda f: f.get("ref") == 1)
        refused = await ws.wait(lambda f: f.get("ref") == 2)
        assert ok["type"] == "result" and ok["ok"] and ok["id"], ok
        assert refused["type"] == "error" and refused["code"] in ("bad_request", "invalid_data")
        assert refused["request"] == kind and f"{MAX_DEPTH} levels" in refused["reason"]
        if kind == "broadcast":
            event = await ws.wait_type("event")
            assert event["data"] == nested(MAX_DEPTH) and event["id"] == ok["id"]
        ws.sendClose()
        await ws.closed
        assert hub.problems() == []
    finally:
        await hub.stop()


@pytest_twisted.ensureDeferred
async def test_mail_of_max_depth_data_reaches_a_websocket_listen() -> None:
    hub: LocalHub = await start_local_hub(max_request_rate=0)
    try:
        ws = await connect_ws(hub.port, path="/ws")
        ws.send_json({"type": "register", "listener": "w"})
        await ws.wait_type("result")
        ws.send_json({"type": "listen", "listener": "w", "auto_ack": True})
        await ws.wait(lambda f: f.get("request") == "listen")
        ws.send_json({"type": "dispatch", "listener": "w", "event": "deep",
                      "data": nested(MAX_DEPTH)})
        await until(lambda: hub.problems() or any(
            f.get("type") == "mail" for f in ws.inbox.frames), timeout=10)
        assert hub.problems() == []
        mail = await ws.wait_type("mail")
        assert mail["data"] == nested(MAX_DEPTH)
    finally:
        await hub.stop()
