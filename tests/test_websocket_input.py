"""
Bad client input at the WebSocket level (issue 9, defect 6): every bad message gets an
``error`` frame or a close frame with a proper code, never a dropped connection, never a
traceback in the log (except for a failure of ours, which is logged once and closes 1011).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted

from tests._clients import OP_CLOSE, OP_TEXT, connect_raw_ws
from tests._log import LogCapture
from tests.test_websocket import Server, start_server, stop_server, subscribe
from twisted_event_dispatcher.channels import ChannelRegistry


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    server = await start_server()
    yield server
    await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_in_a_text_frame_closes_with_1007(
    server: Server, log: LogCapture
) -> None:
    client = await connect_raw_ws(server.port)
    server.clients.append(client)
    client.send_frame(OP_TEXT, b'{"type": "ping", "id": "\xff\xfe"}')
    await client.lost
    assert client.close_code == 1007
    assert log.failures() == []


@pytest_twisted.ensureDeferred
async def test_error_reasons_quote_client_values_short_and_escaped(server: Server) -> None:
    client = await connect_raw_ws(server.port)
    server.clients.append(client)
    long_name = "\ud800" + "c" * 20000
    client.send_frame(
        OP_TEXT, json.dumps({"type": "subscribe", "event": "a", "channel": long_name}).encode()
    )
    client.send_frame(OP_TEXT, json.dumps({"type": "x" * 5000}).encode())
    first = await client.wait_json(lambda f: f["type"] == "error")
    second = await client.wait_json(lambda f: f["type"] == "error", start=1)
    assert first["reason"].startswith("unknown channel '\\ud800cccc")
    assert first["request"] == "subscribe"
    assert second["reason"].startswith("unknown request type 'xxxx")
    assert "request" not in second, "a long type is not echoed"
    assert max(len(first["reason"]), len(second["reason"])) <= 300


class BrokenRegistry(ChannelRegistry):
    """A registry with a bug: looking up ``"broken"`` raises something unexpected."""

    def __getitem__(self, name: str) -> Any:
        if name == "broken":
            raise RuntimeError("a bug in the registry")
        return super().__getitem__(name)


@pytest_twisted.ensureDeferred
async def test_a_failure_of_ours_is_logged_once_and_closes_with_1011(log: LogCapture) -> None:
    server = await start_server()
    broken = BrokenRegistry()
    broken.get_or_create("news")
    server.factory.channels = broken
    try:
        client = await connect_raw_ws(server.port)
        server.clients.append(client)
        client.send_json({"type": "subscribe", "event": "a", "channel": "broken"})
        await client.lost
        assert client.close_code == 1011
        (failure,) = log.failures()
        assert "a bug in the registry" in failure["log_failure"].getErrorMessage()
        other = await server.client()
        assert (await subscribe(other, "a"))["type"] == "subscribed"
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_close_frame_answered_by_a_raw_client(server: Server) -> None:
    """The raw client answers the server's close frame: a clean closing handshake."""
    client = await connect_raw_ws(server.port)
    server.clients.append(client)
    server.factory.close_all()
    await client.lost
    assert client.close_code == 1001
    assert [op for op, _ in client.inbox.frames] == [OP_CLOSE]


@pytest_twisted.ensureDeferred
async def test_requests_past_the_rate_get_an_error_and_are_not_carried_out() -> None:
    from twisted.internet.task import Clock

    from tests._clients import connect_ws

    clock = Clock()
    server = await start_server(max_request_rate=3, clock=clock)
    try:
        client = await connect_ws(server.port)
        server.clients.append(client)
        other = await connect_ws(server.port)
        server.clients.append(other)
        for n in range(5):
            client.send_json({"type": "ping", "id": n})
        await client.wait(lambda f: f.get("type") == "error" and len(client.inbox.frames) == 5)
        assert [f.get("id") for f in client.inbox.frames if f["type"] == "pong"] == [0, 1, 2]
        refused = [f for f in client.inbox.frames if f["type"] == "error"]
        assert len(refused) == 2 and "at most 3 a second" in refused[0]["reason"]
        other.send_json({"type": "ping", "id": "other"})  # connections are independent
        assert (await other.wait_type("pong"))["id"] == "other"
        clock.advance(1)
        client.send_json({"type": "ping", "id": "later"})
        assert (await client.wait(lambda f: f.get("id") == "later"))["type"] == "pong"
        assert len(server.factory.request_rate) == 2
        client.sendClose()
        await client.closed
        assert len(server.factory.request_rate) == 1, "a closed connection's bucket is gone"
    finally:
        await stop_server(server)
