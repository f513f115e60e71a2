"""Acknowledgements over WebSocket are not held back by the per-connection request rate."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from tests._clients import connect_ws
from tests._local_hub import start_local_hub
from tests.test_websocket_control import Client, listen, mail
from twisted_event_dispatcher.carriers.websocket import EventWebSocketFactory


@pytest_twisted.ensureDeferred
async def test_a_listen_outlasts_the_request_rate_because_acks_are_not_counted() -> None:
    # A frozen clock: the connection has 4 requests for its whole life. Acks counted
    # against them stalled the listen once max_in_flight mails were unacknowledged.
    local = await start_local_hub()
    hub = local.hub
    factory = EventWebSocketFactory(
        channels=hub.channels, control=hub.control, max_request_rate=4, clock=Clock()
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address: Any = port.getHost()
    client: Client | None = None
    try:
        client = Client(await connect_ws(address.port))
        await client.ok({"type": "register", "listener": "worker"})
        await listen(client, "events", "worker", max_in_flight=1)
        total = 30
        for n in range(total):
            await hub.channel.dispatch("worker", "job", n)
        for n in range(total):
            frame = (await mail(client, n + 1))[n]
            assert frame["data"] == n, frame
            answer = await client.call({"type": "ack", "listener": "worker", "id": frame["id"]})
            assert answer["type"] == "result" and answer["ok"] is True, answer
        info = await hub.channel.listener("worker").info()
        assert (info.queued, info.in_flight) == (0, 0)
        # other requests are still counted: two were spent, two are left, then refused
        codes = [
            (await client.call({"type": "broadcast", "event": "x"})).get("code")
            for _ in range(3)
        ]
        assert codes == [None, None, "limit"]
    finally:
        if client is not None:
            await client.close()
        stopped: Any = port.stopListening()
        await stopped
        await local.stop()
    assert local.problems() == []


@pytest_twisted.ensureDeferred
async def test_acks_that_settle_nothing_spend_the_request_rate() -> None:
    # A frozen clock and a rate of 3: the listen spends one token, two are left. Bogus
    # acks and releases (no such mail, a bad id, not listening) spend them, then get
    # 'limit'; valid acks still never do, and each error frame goes out.
    local = await start_local_hub()
    hub = local.hub
    factory = EventWebSocketFactory(
        channels=hub.channels, control=hub.control, max_request_rate=3, clock=Clock()
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address: Any = port.getHost()
    client: Client | None = None
    try:
        await hub.channel.add_listener("worker")
        client = Client(await connect_ws(address.port))
        await listen(client, "events", "worker", max_in_flight=1)
        bogus: list[dict[str, Any]] = [
            {"type": "ack", "listener": "worker", "id": "999"},
            {"type": "release", "listener": "worker", "id": 5},
            {"type": "ack", "listener": "nobody", "id": "1"},
            {"type": "ack", "listener": "worker", "id": "998"},
            {"type": "release", "listener": "worker", "id": "997"},
        ]
        answers = [await client.call(frame) for frame in bogus]
        assert [a["type"] for a in answers] == ["error"] * 5
        assert [a["code"] for a in answers] == [
            "unknown_mail", "bad_request", "limit", "limit", "limit"
        ], answers
        assert "settles no mail" in answers[2]["reason"]
        assert "'nobody'" in answers[2]["reason"]  # (what was wrong, too)
        # valid acks are still carried out, past the rate
        for n in range(5):
            await hub.channel.dispatch("worker", "job", n)
        for n in range(5):
            frame = (await mail(client, n + 1))[n]
            answer = await client.call({"type": "ack", "listener": "worker", "id": frame["id"]})
            assert answer["type"] == "result" and answer["ok"] is True, answer
        info = await hub.channel.listener("worker").info()
        assert (info.queued, info.in_flight) == (0, 0)
        again = await client.call({"type": "ack", "listener": "worker", "id": frame["id"]})
        assert again["code"] == "limit"  # (acknowledged already: settles nothing)
    finally:
        if client is not None:
            await client.close()
        stopped: Any = port.stopListening()
        await stopped
        await local.stop()
    assert local.problems() == []
