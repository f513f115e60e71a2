"""The WebSocket carrier with real Autobahn clients over 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests._clients import WSClient, connect_ws
from tests._servers import LocalServer, SlowResume, make_channels
from twisted_event_dispatcher.carriers.websocket import EventWebSocketFactory
from twisted_event_dispatcher.channels import ChannelRegistry


class Server(LocalServer):
    def __init__(self, factory: EventWebSocketFactory, port: Any, channels: ChannelRegistry):
        super().__init__(port, channels)
        self.factory = factory

    async def client(self, **kwargs: Any) -> WSClient:
        client = await connect_ws(self.port, **kwargs)
        self.clients.append(client)
        return client


async def start_server(**options: Any) -> Server:
    channels = make_channels(options.pop("history_size", 100))
    factory = EventWebSocketFactory(channels=channels, default_channel="news", **options)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return Server(factory, port, channels)


async def stop_server(server: Server) -> None:
    await server.stop(abort=True)


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    server = await start_server()
    yield server
    await stop_server(server)


async def subscribe(client: WSClient, event: str, **fields: Any) -> dict[str, Any]:
    start = len(client.inbox.frames)
    client.send_json({"type": "subscribe", "event": event, **fields})
    frame: dict[str, Any] = await client.wait(
        lambda f: f.get("type") in ("subscribed", "error") and f.get("event", event) == event,
        start=start,
    )
    return frame


@pytest_twisted.ensureDeferred
async def test_subscribe_receive_unsubscribe(server: Server) -> None:
    client = await server.client()
    subscribed = await subscribe(client, "headline")
    assert subscribed == {
        "type": "subscribed", "channel": "news", "event": "headline",
        "epoch": server.news.epoch, "last_id": None, "replayed": 0,
    }
    await server.news.publish("headline", {"title": "Twisted 26 released"})
    await server.news.publish("weather", "ignored")
    event = await client.wait_type("event")
    assert event == {
        "type": "event", "id": 1, "epoch": server.news.epoch, "channel": "news",
        "event": "headline", "data": {"title": "Twisted 26 released"},
    }
    client.send_json({"type": "unsubscribe", "event": "headline"})
    await client.wait_type("unsubscribed")
    await server.news.publish("headline", "after unsubscribe")
    client.send_json({"type": "ping", "id": 7})
    assert await client.wait_type("pong") == {"type": "pong", "id": 7}
    assert [e["data"] for e in client.events()] == [{"title": "Twisted 26 released"}]


@pytest_twisted.ensureDeferred
async def test_several_clients_channels_and_wildcard(server: Server) -> None:
    news_fan, sports_fan, everything = [await server.client() for _ in range(3)]
    await subscribe(news_fan, "headline")
    await subscribe(sports_fan, "score", channel="sports")
    await subscribe(everything, "*")
    await server.news.publish("headline", 1)
    await server.channels["sports"].publish("score", "2-1")
    await server.news.publish("weather", "sun")
    await server.news.publish("headline", "end")  # frames arrive in order: wait for this
    await server.channels["sports"].publish("score", "end")
    for client in (news_fan, sports_fan, everything):
        await client.wait(lambda f: f.get("data") == "end")
    assert [e["data"] for e in news_fan.events()] == [1, "end"]
    assert [(e["channel"], e["data"]) for e in sports_fan.events()] == [
        ("sports", "2-1"), ("sports", "end")
    ]
    assert [e["data"] for e in everything.events()] == [1, "sun", "end"]


@pytest_twisted.ensureDeferred
async def test_reconnect_with_since_gets_exactly_the_missed_events(server: Server) -> None:
    first = await server.client()
    await subscribe(first, "headline")
    await server.news.publish("headline", "seen")
    seen = await first.wait_type("event")
    first.sendClose()
    await first.closed
    for n in range(3):
        await server.news.publish("headline", f"missed {n}")
    await server.news.publish("weather", "not subscribed")
    again = await server.client()
    subscribed = await subscribe(again, "headline", since=seen["id"], epoch=seen["epoch"])
    assert subscribed["replayed"] == 3 and subscribed["last_id"] == 5
    await again.wait(lambda f: f.get("data") == "missed 2")
    await server.news.publish("headline", "live")
    await again.wait(lambda f: f.get("data") == "live")
    assert [e["data"] for e in again.events()] == ["missed 0", "missed 1", "missed 2", "live"]
    assert [e["id"] for e in again.events()] == [2, 3, 4, 6]
    assert server.news.carrier_count == 1, "the closed connection was unsubscribed"


@pytest_twisted.ensureDeferred
async def test_gap_when_history_cannot_fill_it() -> None:
    server = await start_server(history_size=2)
    try:
        client = await server.client()
        for n in range(5):
            await server.news.publish("headline", n)
        await subscribe(client, "headline", since=1)
        gap = await client.wait_type("gap")
        assert gap == {
            "type": "gap", "channel": "news", "event": "headline", "since": 1,
            "epoch": server.news.epoch, "oldest": 4, "reason": "expired",
        }
        await subscribe(client, "weather", since=3, epoch="an old epoch")
        epoch_gap = await client.wait(lambda f: f.get("type") == "gap" and f["event"] == "weather")
        assert epoch_gap["reason"] == "epoch"
        await server.news.publish("headline", "live")
        await client.wait(lambda f: f.get("data") == "live")
        assert [e["data"] for e in client.events()] == ["live"]
    finally:
        await stop_server(server)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"type": "dance"}', "unknown request type 'dance'"),
        (b'{"event": "x"}', "unknown request type None"),
        (b'{"type": "subscribe"}', "missing 'event'"),
        (b'{"type": "subscribe", "event": 5}', "event name must be a str"),
        (b'{"type": "subscribe", "event": ""}', "must not be empty"),
        (b'{"type": "subscribe", "event": "a", "channel": "nope"}', "unknown channel 'nope'"),
        (b'{"type": "subscribe", "event": "a", "channel": 3}', "channel must be a string"),
        (b'{"type": "subscribe", "event": "a", "since": "x"}', "since must be an integer"),
        (b'{"type": "subscribe", "event": "a", "since": -1}', "since must be an offset"),
        (b'{"type": "subscribe", "event": "a", "since": 1, "epoch": 2}', "epoch must be a"),
        (b'{"type": "unsubscribe", "event": "a"}', "not subscribed to 'a'"),
        # issue 9, defect 6: these used to drop the connection without a close frame
        (b'{"type": "ping", "id": ' + b"[" * 30000 + b"]" * 30000 + b"}", "deeper than 64"),
        (b"[" * 66 + b"]" * 66, "deeper than 64"),  # (a request may nest 65: its data 64)
        (b'{"type": "\\ud800"}', r"unknown request type '\ud800'"),
        (b'{"type": "ping", "id": "\\udfff"}', "ping id cannot be echoed: data must be valid"),
        (b'{"type": "ping", "id": NaN}', "malformed JSON: NaN is not valid JSON"),
        (b'{"type": "ping", "id": -Infinity}', "malformed JSON: -Infinity is not valid JSON"),
        (b'{"type": "ping", "id": 1e999}', "malformed JSON: number 1e999 is out of range"),
        (b'{"type": "ping", "id": "' + b"i" * 300 + b'"}', "ping id is longer than 256"),
        (b'{"type": "subscribe", "event": "a", "since": 9223372036854775808}', "to 2**63-1"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_get_an_error_frame_and_the_connection_lives(
    server: Server, payload: bytes, reason: str
) -> None:
    client = await server.client()
    bystander = await server.client()
    await subscribe(bystander, "headline")
    client.sendMessage(payload)  # type: ignore[no-untyped-call]
    error = await client.wait_type("error")
    assert reason in error["reason"], error
    # still usable, and the other connection never noticed
    assert (await subscribe(client, "headline"))["type"] == "subscribed"
    await server.news.publish("headline", "still here")
    for c in (client, bystander):
        await c.wait(lambda f: f.get("data") == "still here")
    assert bystander.inbox.frames[-1]["data"] == "still here"
    assert not [f for f in bystander.inbox.frames if f.get("type") == "error"]


@pytest_twisted.ensureDeferred
async def test_binary_frames_get_an_error_frame(server: Server) -> None:
    client = await server.client()
    client.sendMessage(b"\x00\x01", isBinary=True)  # type: ignore[no-untyped-call]
    error = await client.wait_type("error")
    assert "binary frames are not supported" in error["reason"]


@pytest_twisted.ensureDeferred
async def test_oversized_frames_close_with_1009() -> None:
    server = await start_server(max_message_size=1024)
    try:
        client = await server.client()
        bystander = await server.client()
        client.sendMessage(b'{"type": "ping", "pad": "' + b"x" * 2000 + b'"}')  # type: ignore[no-untyped-call]
        _, code, _ = await client.closed
        assert code == 1009
        bystander.send_json({"type": "ping"})
        await bystander.wait_type("pong")
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_subscription_limit_per_connection() -> None:
    server = await start_server(max_subscriptions=2)
    try:
        client = await server.client()
        await subscribe(client, "a")
        await subscribe(client, "b")
        await subscribe(client, "a")  # already held: no new slot needed
        error = await subscribe(client, "c")
        assert error["type"] == "error" and "subscription limit reached (2" in error["reason"]
        client.send_json({"type": "unsubscribe", "event": "a"})
        assert (await subscribe(client, "c"))["type"] == "subscribed"
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_origin_check() -> None:
    server = await start_server(allowed_origins=["http://good.example"])
    try:
        good = await server.client(origin="http://good.example")
        assert (await subscribe(good, "a"))["type"] == "subscribed"
        with pytest.raises(ConnectionError, match="handshake failed"):
            await server.client(origin="http://evil.example")
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_authorize_hook_can_refuse() -> None:
    def authorize(request: ConnectionRequest) -> None:
        if request.headers.get("authorization") != "Bearer s3cret":
            raise ConnectionDeny(401, "a valid token is required")

    server = await start_server(authorize=authorize)
    try:
        with pytest.raises(ConnectionError):
            await server.client()
        client = await server.client(headers={"Authorization": "Bearer s3cret"})
        assert (await subscribe(client, "a"))["type"] == "subscribed"
    finally:
        await stop_server(server)


async def flood_paused_client(server: Server, count: int) -> WSClient:
    """A client that stops reading, then ``count`` large messages published to it."""
    slow = await server.client()
    await subscribe(slow, "bulk")
    assert slow.transport is not None
    slow.transport.pauseProducing()  # type: ignore[attr-defined]
    payload = "x" * 65536
    for n in range(count):
        await server.news.publish("bulk", {"n": n, "pad": payload})
        # paced, so that clients that do read get to (a burst within one reactor turn
        # would fill every client's buffer before anyone could read)
        await deferLater(reactor, 0.002, lambda: None)
    return slow


@pytest_twisted.ensureDeferred
async def test_slow_consumer_drop_oldest_is_told_how_many_it_missed() -> None:
    server = await start_server(max_queue=10)
    try:
        fast = await server.client()
        await subscribe(fast, "bulk")
        slow = await flood_paused_client(server, 200)
        await fast.wait(lambda f: f.get("data", {}).get("n") == 199, timeout=20)
        queued = [c.carrier.queued for c in server.factory.connections if c.carrier]
        assert max(queued) <= 10, "the slow client's queue stayed bounded"
        assert slow.transport is not None
        slow.transport.resumeProducing()  # type: ignore[attr-defined]
        await slow.wait_type("dropped", timeout=20)
        await slow.wait(lambda f: f.get("data", {}).get("n") == 199, timeout=20)
        got = [e["data"]["n"] for e in slow.events()]
        dropped = sum(f["count"] for f in slow.inbox.frames if f.get("type") == "dropped")
        assert got == sorted(got) and got[-1] == 199
        assert dropped > 0 and len(got) + dropped == 200, "each message received or counted"
        assert len(fast.events()) == 200
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_slow_consumer_disconnect_policy() -> None:
    server = await start_server(max_queue=10, overflow="disconnect")
    try:
        fast = await server.client()
        await subscribe(fast, "bulk")
        slow = await flood_paused_client(server, 200)
        await fast.wait(lambda f: f.get("data", {}).get("n") == 199, timeout=20)
        assert server.news.carrier_count == 1, "the slow client was dropped"
        assert slow.transport is not None
        slow.transport.resumeProducing()  # type: ignore[attr-defined]
        await slow.closed
        assert len(fast.events()) == 200
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_dead_connection_is_unsubscribed(server: Server) -> None:
    client = await server.client()
    await subscribe(client, "a")
    await subscribe(client, "b", channel="sports")
    assert server.news.carrier_count == 1
    assert client.transport is not None
    client.transport.abortConnection()  # type: ignore[attr-defined]
    await client.closed
    while server.news.carrier_count or server.channels["sports"].carrier_count:
        await deferLater(reactor, 0.01, lambda: None)
    await server.news.publish("a", "nobody")


@pytest_twisted.ensureDeferred
async def test_broadcast_encodes_each_message_once(server: Server) -> None:
    clients = [await server.client() for _ in range(5)]
    for client in clients:
        await subscribe(client, "a")
    prepared: list[bytes] = []
    original = server.factory.prepareMessage

    def counting(payload: bytes, *args: Any, **kwargs: Any) -> Any:
        prepared.append(payload)
        return original(payload, *args, **kwargs)

    server.factory.prepareMessage = counting  # type: ignore[method-assign]
    await server.news.publish("a", "once")
    for client in clients:
        await client.wait(lambda f: f.get("data") == "once")
    assert len(prepared) == 1


@pytest_twisted.ensureDeferred
async def test_close_all_uses_going_away(server: Server) -> None:
    client = await server.client()
    await subscribe(client, "a")
    (connection,) = server.factory.connections
    server.factory.close_all()
    # once the close frame is sent, nothing may follow it: the carrier left at once
    assert server.news.carrier_count == 0
    await server.news.publish("a", "after the close frame")
    _, code, _ = await client.closed
    # What the server sent; the client sees it too, unless a loaded machine delays its
    # answer past Autobahn's close handshake timeout and it sees the drop (1006) first.
    assert connection.localCloseCode == 1001 and code in (1001, 1006)
    assert client.events() == []


@pytest_twisted.ensureDeferred
async def test_client_initiated_close_stops_delivery(server: Server) -> None:
    client = await server.client()
    await subscribe(client, "a")
    client.sendClose()
    _, code, _ = await client.closed
    assert code == 1000 and server.news.carrier_count == 0


@pytest_twisted.ensureDeferred
async def test_subscribing_again_is_refused_never_delivered_twice(server: Server) -> None:
    # Found by an attacker: a second subscribe with since=0 replayed what the first had
    # delivered already, to the same subscription.
    client = await server.client()
    await subscribe(client, "*")
    for n in range(3):
        await server.news.publish("a", n)
    await client.wait(lambda f: f.get("data") == 2)
    again = await subscribe(client, "*", since=0)
    assert again["type"] == "error" and "already subscribed to '*'" in again["reason"]
    await server.news.publish("a", 3)
    await client.wait(lambda f: f.get("data") == 3)
    assert [e["id"] for e in client.events()] == [1, 2, 3, 4]
    client.send_json({"type": "unsubscribe", "event": "*"})
    await client.wait_type("unsubscribed")
    resumed = await subscribe(client, "*", since=2)  # after unsubscribing: a resume
    assert resumed["type"] == "subscribed" and resumed["replayed"] == 2
    await client.wait(lambda f: f.get("type") == "event" and f["id"] == 4, start=8)


@pytest_twisted.ensureDeferred
async def test_a_resume_overlapping_another_subscription_is_refused(server: Server) -> None:
    client = await server.client()
    await subscribe(client, "*")
    for n in range(3):
        await server.news.publish("a", n)
    await client.wait(lambda f: f.get("data") == 2)
    refused = await subscribe(client, "a", since=0)
    assert refused["type"] == "error" and "would replay" in refused["reason"]
    assert (await subscribe(client, "a"))["type"] == "subscribed", "live: no replay, fine"
    await server.news.publish("a", 3)
    await client.wait(lambda f: f.get("data") == 3)
    assert [e["id"] for e in client.events()] == [1, 2, 3, 4], "once each, in order"
    other = await server.client()
    await subscribe(other, "a")
    refused = await subscribe(other, "*", since=0)
    assert refused["type"] == "error" and "'a'" in refused["reason"]


@pytest_twisted.ensureDeferred
async def test_a_resume_in_progress_cannot_be_unsubscribed_nor_overlapped(
    server: Server,
) -> None:
    # Found in review: an unsubscribe while a (Redis) resume was being read left a hidden
    # subscription behind; a "*" subscribed meanwhile made the replay repeat its messages.
    slow = SlowResume("slow")
    server.channels._channels["slow"] = slow
    client = await server.client()
    client.send_json({"type": "subscribe", "event": "b", "channel": "slow", "since": 0})
    for kind, event in (("unsubscribe", "b"), ("subscribe", "*")):
        start = len(client.inbox.frames)
        client.send_json({"type": kind, "event": event, "channel": "slow"})
        refused = await client.wait_type("error", start=start)
        assert refused["request"] == kind and "still resuming" in refused["reason"]
    slow.gate.callback(None)
    assert (await client.wait_type("subscribed"))["event"] == "b"
    client.send_json({"type": "unsubscribe", "event": "b", "channel": "slow"})
    await client.wait_type("unsubscribed")
    assert slow.carrier_count == 0, "no hidden subscription is left behind"
