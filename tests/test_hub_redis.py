"""Several hub processes sharing one private Redis: one order everywhere, resume anywhere."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests._clients import connect_ws
from tests._hub import HubProcess, spawn_hub, start_hub
from tests._redis import RedisServer


@pytest_twisted.async_yield_fixture
async def redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    yield server
    await server.stop()


async def post(hub: HubProcess, event: str, data: Any) -> dict[str, Any]:
    response = await treq.post(hub.url + "events", json={"event": event, "data": data})
    answer: dict[str, Any] = json.loads(await response.content())
    answer["code"] = response.code
    return answer


async def health(hub: HubProcess) -> dict[str, Any]:
    response = await treq.get(hub.url + "health")
    result: dict[str, Any] = json.loads(await response.content())
    return result


@pytest_twisted.ensureDeferred
async def test_two_hubs_share_events_in_one_order_and_clients_resume_anywhere(
    redis: RedisServer,
) -> None:
    first = await start_hub("--channel", "redis", "--redis-url", redis.url)
    second = await start_hub("--channel", "redis", "--redis-url", redis.url)
    try:
        clients = []
        for hub in (first, second):
            ws = await connect_ws(hub.port, path="/ws")
            ws.send_json({"type": "subscribe", "event": "*"})
            await ws.wait_type("subscribed")
            clients.append(ws)
        answers = [await post((first, second)[n % 2], "tick", n) for n in range(20)]
        assert all(a["code"] == 202 for a in answers)
        assert [a["id"] for a in answers] == list(range(1, 21))
        for ws in clients:
            await ws.wait(lambda f: f.get("data") == 19)
        orders = [[(e["id"], e["data"]) for e in ws.events()] for ws in clients]
        assert orders[0] == orders[1] == [(n + 1, n) for n in range(20)]

        # a client of the first hub drops, misses events, and resumes on the second
        last = clients[0].events()[-1]
        clients[0].sendClose()
        await clients[0].closed
        for n in range(20, 25):
            await post(first, "tick", n)
        again = await connect_ws(second.port, path="/ws")
        again.send_json(
            {"type": "subscribe", "event": "*", "since": last["id"], "epoch": last["epoch"]}
        )
        subscribed = await again.wait_type("subscribed")
        assert subscribed["replayed"] == 5
        await again.wait(lambda f: f.get("data") == 24)
        assert [e["data"] for e in again.events()] == [20, 21, 22, 23, 24]

        status = await health(second)
        assert status["status"] == "ok" and status["channel"]["backend"] == "redis"
        assert status["channel"]["redis"]["connected"] is True
        for ws in (clients[1], again):
            ws.sendClose()
            await ws.closed
    finally:
        await first.stop()
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_redis_outage_is_reported_and_recovered(redis: RedisServer) -> None:
    hub = await start_hub("--channel", "redis", "--redis-url", redis.url)
    try:
        assert (await post(hub, "before", 1))["code"] == 202
        await redis.kill()
        for _ in range(100):
            if (await health(hub))["status"] == "degraded":
                break
            await deferLater(reactor, 0.05, lambda: None)
        status = await health(hub)
        assert status["status"] == "degraded" and status["channel"]["redis"]["connected"] is False
        assert status["reason"].startswith(f"Redis at redis://127.0.0.1:{redis.port}/0: ")
        assert "down, reconnecting" in status["reason"]
        down = await post(hub, "during", 2)
        assert down["code"] == 503 and "Redis" in down["error"]
        await redis.start()
        for _ in range(200):
            if (await health(hub))["status"] == "ok":
                break
            await deferLater(reactor, 0.05, lambda: None)
        status = await health(hub)
        assert status["status"] == "ok" and "reason" not in status
        redis_status = status["channel"]["redis"]
        assert redis_status["reader"] is redis_status["writer"] is True
        assert redis_status["problem"] is None and redis_status["reconnects"] >= 1
        after = await post(hub, "after", 3)
        assert after["code"] == 202 and after["id"] == 2, "nothing was published while down"
    finally:
        await hub.stop()


@pytest_twisted.ensureDeferred
async def test_unreachable_redis_and_bad_url_are_clear_errors(redis: RedisServer) -> None:
    await redis.stop()
    # Defect 12: this used to end in "cannot connect to Redis at ...: (5.0, 'Deferred')".
    unreachable = spawn_hub(
        "--channel", "redis", "--redis-url", f"redis://:s3cret@127.0.0.1:{redis.port}/0"
    )
    unreachable.listening.addErrback(lambda _: None)
    assert await unreachable.ended == 1
    assert (
        f"Redis at redis://***@127.0.0.1:{redis.port}/0 is unreachable: no connection "
        "within 5 s (last attempt: Connection was refused" in unreachable.text
    ), unreachable.text
    assert "s3cret" not in unreachable.text and "Deferred" not in unreachable.text
    bad = spawn_hub("--channel", "redis", "--redis-url", "http://nope")
    bad.listening.addErrback(lambda _: None)
    assert await bad.ended == 2
    assert "--redis-url: a Redis URL starts with 'redis://'" in bad.text
    protected = RedisServer(password="s3cret")
    await protected.start()
    try:
        wrong = spawn_hub(
            "--channel", "redis", "--redis-url", f"redis://:wrong@127.0.0.1:{protected.port}/0"
        )
        wrong.listening.addErrback(lambda _: None)
        assert await wrong.ended == 1
        assert "refused the credentials" in wrong.text
    finally:
        await protected.stop()
