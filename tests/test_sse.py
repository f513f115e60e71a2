"""The SSE carrier with a raw HTTP client over 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests._clients import SSEClient, connect_sse
from tests._redis import until
from tests._servers import LocalServer, SlowResume, make_channels
from twisted_event_dispatcher.carriers.sse import SSEResource, parse_last_event_id
from twisted_event_dispatcher.channels import ChannelRegistry


class Server(LocalServer):
    def __init__(self, resource: SSEResource, port: Any, channels: ChannelRegistry) -> None:
        super().__init__(port, channels)
        self.resource = resource

    async def stream(self, target: str = "/sse", **headers: str) -> SSEClient:
        client = await connect_sse(self.port, target, headers)
        self.clients.append(client)
        return client


async def start_server(**options: Any) -> Server:
    channels = make_channels(options.pop("history_size", 100))
    resource = SSEResource(channels=channels, default_channel="news", **options)
    root = Resource()
    root.putChild(b"sse", resource)
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[arg-type]
    return Server(resource, port, channels)


async def stop_server(server: Server) -> None:
    await server.stop()


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    server = await start_server()
    yield server
    await stop_server(server)


def data(block: dict[str, str]) -> Any:
    return json.loads(block["data"])


async def subscribed(client: SSEClient, count: int = 1) -> None:
    for n in range(count):
        await client.wait(lambda b, n=n: len(client.events("_subscribed")) > n)  # type: ignore[misc]


@pytest_twisted.ensureDeferred
async def test_stream_headers_and_events(server: Server) -> None:
    client = await server.stream("/sse?event=headline")
    await subscribed(client)
    assert client.status == 200
    assert client.header("content-type") == "text/event-stream; charset=utf-8"
    assert client.header("cache-control") == "no-cache"
    assert client.inbox.frames[0] == {"retry": "3000"}
    assert data(client.events("_subscribed")[0]) == {
        "channel": "news", "event": "headline", "epoch": server.news.epoch,
        "last_id": None, "replayed": 0,
    }
    await server.news.publish("weather", "not for this stream")
    message = await server.news.publish("headline", {"title": "hello"})
    block = await client.wait(lambda b: b.get("event") == "headline")
    assert block["id"] == f"{server.news.epoch}:{message.id}"
    assert data(block) == message.as_dict()
    assert [b["event"] for b in client.events() if not b["event"].startswith("_")] == [
        "headline"
    ]


@pytest_twisted.ensureDeferred
async def test_several_events_all_events_and_another_channel(server: Server) -> None:
    two = await server.stream("/sse?event=a&event=b")
    everything = await server.stream("/sse")
    sports = await server.stream("/sse?channel=sports&event=score")
    await subscribed(two, 2)
    await subscribed(everything)
    await subscribed(sports)
    for event in ("a", "b", "c", "a"):
        await server.news.publish(event, event)
    await server.channels["sports"].publish("score", "1-0")
    await everything.wait(lambda b: b.get("id", "").endswith(":4"))
    await two.wait(lambda b: b.get("id", "").endswith(":4"))
    await sports.wait(lambda b: b.get("event") == "score")

    def user_events(client: SSEClient) -> list[str]:
        return [b["event"] for b in client.events() if not b["event"].startswith("_")]

    assert user_events(two) == ["a", "b", "a"]
    assert user_events(everything) == ["a", "b", "c", "a"]
    assert user_events(sports) == ["score"]


@pytest_twisted.ensureDeferred
async def test_resume_with_last_event_id_gets_exactly_the_missed_events(server: Server) -> None:
    first = await server.stream("/sse?event=a&event=b")
    await subscribed(first, 2)
    await server.news.publish("a", "seen")
    seen = await first.wait(lambda b: b.get("event") == "a")
    assert first.transport is not None
    first.transport.loseConnection()
    await first.finished
    for event, value in (("b", 1), ("c", 2), ("a", 3), ("b", 4)):
        await server.news.publish(event, value)
    again = await server.stream("/sse?event=a&event=b", **{"Last-Event-ID": seen["id"]})
    await again.wait(lambda b: b.get("id", "").endswith(":5"))
    await server.news.publish("a", "live")
    await again.wait(lambda b: data(b).get("data") == "live" if "id" in b else False)
    assert [data(b)["data"] for b in again.events() if "id" in b] == [1, 3, 4, "live"]
    replayed = [data(b)["replayed"] for b in again.events("_subscribed")]
    assert sorted(replayed) == [1, 2]
    assert server.news.carrier_count == 1, "the first stream was unsubscribed"


@pytest_twisted.ensureDeferred
async def test_since_parameter_and_gaps() -> None:
    server = await start_server(history_size=2)
    try:
        for n in range(5):
            await server.news.publish("e", n)
        replayed = await server.stream(f"/sse?event=e&since={server.news.epoch}:3")
        await replayed.wait(lambda b: b.get("id", "").endswith(":5"))
        assert [data(b)["data"] for b in replayed.events() if "id" in b] == [3, 4]
        expired = await server.stream("/sse?event=e&since=1")
        gap = data(await expired.wait(lambda b: b.get("event") == "_gap"))
        assert gap == {
            "channel": "news", "event": "e", "since": 1, "reason": "expired",
            "epoch": server.news.epoch, "oldest": 4,
        }
        old_epoch = await server.stream("/sse?event=e", **{"Last-Event-ID": "0123abcd:4"})
        assert data(await old_epoch.wait(lambda b: b.get("event") == "_gap"))["reason"] == "epoch"
        await server.news.publish("e", "live")
        for client in (expired, old_epoch):
            await client.wait(lambda b: "id" in b)
            assert [data(b)["data"] for b in client.events() if "id" in b] == ["live"]
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_heartbeat_comments() -> None:
    server = await start_server(heartbeat=0.05)
    try:
        client = await server.stream("/sse?event=e")
        await client.wait(lambda b: b.get("comment") == "keepalive")
        await client.wait(lambda b: len([f for f in client.inbox.frames if "comment" in f]) > 1)
    finally:
        await stop_server(server)


@pytest.mark.parametrize(
    ("target", "headers", "reason"),
    [
        ("/sse?channel=nope", {}, "no channel named 'nope'"),
        ("/sse?channel=news&channel=sports", {}, "at most one 'channel'"),
        ("/sse?event=_secret", {}, "reserved"),
        ("/sse?event=", {}, "must not be empty"),
        ("/sse?since=yesterday", {}, "expected '<epoch>:<offset>'"),
        ("/sse", {"Last-Event-ID": "abc:-3"}, "expected '<epoch>:<offset>'"),
        ("/sse?" + "&".join(f"event=e{n}" for n in range(101)), {}, "at most 100 events"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_get_400_naming_the_problem(
    server: Server, target: str, headers: dict[str, str], reason: str
) -> None:
    client = await server.stream(target, **headers)
    await client.finished
    assert client.status == 400
    assert reason in json.loads(client.body)["error"]
    assert server.news.carrier_count == 0


@pytest_twisted.ensureDeferred
async def test_authorize_hook() -> None:
    def authorize(request: Request) -> str | None:
        token = request.getHeader("authorization")
        return None if token == "Bearer s3cret" else "a valid token is required"

    server = await start_server(authorize=authorize)
    try:
        refused = await server.stream("/sse")
        await refused.finished
        assert refused.status == 401
        accepted = await server.stream("/sse", Authorization="Bearer s3cret")
        await subscribed(accepted)
        assert accepted.status == 200
    finally:
        await stop_server(server)


async def flood(server: Server, slow: SSEClient, count: int) -> None:
    assert slow.transport is not None
    slow.transport.pauseProducing()  # type: ignore[attr-defined]
    payload = "x" * 65536
    for n in range(count):
        await server.news.publish("bulk", {"n": n, "pad": payload})
        await deferLater(reactor, 0.002, lambda: None)


@pytest_twisted.ensureDeferred
async def test_slow_consumer_drop_oldest() -> None:
    server = await start_server(max_queue=10)
    try:
        fast = await server.stream("/sse?event=bulk")
        slow = await server.stream("/sse?event=bulk")
        await subscribed(fast)
        await subscribed(slow)
        await flood(server, slow, 200)
        await fast.wait(lambda b: "id" in b and data(b)["data"]["n"] == 199, timeout=20)
        assert max(c.queued for c in server.resource.streams) <= 10
        assert slow.transport is not None
        slow.transport.resumeProducing()  # type: ignore[attr-defined]
        await slow.wait(lambda b: "id" in b and data(b)["data"]["n"] == 199, timeout=20)
        got = [data(b)["data"]["n"] for b in slow.events() if "id" in b]
        dropped = sum(data(b)["count"] for b in slow.events("_dropped"))
        assert got == sorted(got) and dropped > 0 and len(got) + dropped == 200
        assert len([b for b in fast.events() if "id" in b]) == 200
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_slow_consumer_disconnect() -> None:
    server = await start_server(max_queue=10, overflow="disconnect")
    try:
        fast = await server.stream("/sse?event=bulk")
        slow = await server.stream("/sse?event=bulk")
        await subscribed(fast)
        await subscribed(slow)
        await flood(server, slow, 200)
        await fast.wait(lambda b: "id" in b and data(b)["data"]["n"] == 199, timeout=20)
        assert server.news.carrier_count == 1
        assert slow.transport is not None
        slow.transport.resumeProducing()  # type: ignore[attr-defined]
        await slow.finished
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_dead_stream_is_unsubscribed_and_close_all(server: Server) -> None:
    gone = await server.stream("/sse?event=a")
    staying = await server.stream("/sse?event=a")
    await subscribed(gone)
    await subscribed(staying)
    assert gone.transport is not None
    gone.transport.abortConnection()  # type: ignore[attr-defined]
    while server.news.carrier_count != 1:
        await deferLater(reactor, 0.01, lambda: None)
    server.resource.close_all()
    await staying.finished
    assert server.news.carrier_count == 0


def test_parse_last_event_id() -> None:
    assert parse_last_event_id("abc123:42") == (42, "abc123")
    assert parse_last_event_id("7") == (7, None)
    for bad in ("", "x", "a:b", "ab-c:1", "1.5"):
        with pytest.raises(ValueError):
            parse_last_event_id(bad)


@pytest_twisted.ensureDeferred
async def test_a_multi_event_resume_stays_in_offset_order() -> None:
    # Found by an attacker on a Redis hub: live events of the first subscription to
    # complete went out before the _subscribed blocks and the replay of the others.
    server = await start_server()
    slow = SlowResume("slow")
    server.channels._channels["slow"] = slow
    try:
        for n in range(4):
            await slow.publish("a" if n % 2 else "b", n)
        client = await server.stream("/sse?channel=slow&event=a&event=b&since=0")
        await until(lambda: slow.carrier_count == 1)  # "a" is subscribed, "b" is not yet
        await slow.publish("a", "live a")
        await slow.publish("b", "live b")
        slow.gate.callback(None)
        await client.wait(lambda b: b.get("event") == "a" and data(b)["data"] == "live a")
        await slow.publish("b", "later")
        await client.wait(lambda b: "id" in b and data(b)["data"] == "later")
        kinds = [b.get("event") for b in client.events() if b.get("event") != "_gap"]
        assert kinds[:2] == ["_subscribed", "_subscribed"], kinds
        ids = [int(b["id"].split(":")[1]) for b in client.events() if "id" in b]
        assert ids == [1, 2, 3, 4, 5, 6, 7], "every message once, in offset order"
    finally:
        await stop_server(server)
