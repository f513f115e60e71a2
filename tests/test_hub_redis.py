"""Several hub processes sharing one private Redis: one order everywhere, resume anywhere."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from tests._clients import connect_ws
from tests._hub import HubProcess, spawn_hub, start_hub
from tests._local_hub import start_local_hub
from tests._log import LogCapture
from tests._redis import RedisServer
from twisted_event_dispatcher.channels.message import Message
from twisted_event_dispatcher.errors import ChannelUnavailableError, InvalidDataError
from twisted_event_dispatcher.hub._publish import NotPublished, Publisher


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


# -- an outage is answered 503, and logged once, not as a traceback per request --------------


class _Flaky:
    """A channel whose publish fails with ``error`` while it is set, else succeeds."""

    name = "events"

    def __init__(self) -> None:
        self.error: Exception | None = None

    def publish(self, key: str, data: Any) -> Deferred[Message]:
        if isinstance(self.error, InvalidDataError):
            raise self.error
        if self.error is not None:
            return fail(self.error)
        return succeed(Message(1, "e", self.name, key, data, json.dumps(data)))


def _outcome(publisher: Publisher, event: Any) -> Any:
    """What the handler returned, or what its (already fired) Deferred settled with."""
    result: Any = publisher(event)
    if not isinstance(result, Deferred):
        return result
    settled: list[Any] = []
    result.addBoth(settled.append)
    return settled[0]


def _warnings(log: LogCapture) -> list[str]:
    return [
        formatEvent(e) for e in log.events
        if e.get("log_namespace") == "twisted_event_dispatcher.hub"
        and e.get("log_level") in (LogLevel.warn, LogLevel.info)
    ]


def test_publisher_answers_refusals_and_logs_an_outage_once_then_a_count(
    log: LogCapture,
) -> None:
    clock, channel = Clock(), _Flaky()
    publisher = Publisher(channel, clock)
    event = {"event": "tick", "data": 1}
    channel.error = ChannelUnavailableError("Redis at redis://127.0.0.1:1/0 is unreachable")
    results = []
    for _ in range(31):  # one refusal every 2 s: the 31st is 60 s after the first
        results.append(_outcome(publisher, event))
        clock.advance(2)
    assert results == [
        NotPublished(503, "the channel is unavailable, retry later: Redis at "
                     "redis://127.0.0.1:1/0 is unreachable")
    ] * 31
    assert publisher.refused == 31
    assert _warnings(log) == [
        "channel events is unavailable: events are refused (503) until it is back. "
        "First: Redis at redis://127.0.0.1:1/0 is unreachable",
        "channel events is still unavailable: 30 more event(s) refused (503) in the last "
        "60 s. Last: Redis at redis://127.0.0.1:1/0 is unreachable",
    ]
    channel.error = None
    assert isinstance(_outcome(publisher, event), Message)
    assert _warnings(log)[2:] == [
        "channel events: publishing works again; 31 event(s) were refused (503) while it "
        "was unavailable"
    ]
    channel.error = ChannelUnavailableError("down again")
    assert _outcome(publisher, event).code == 503
    assert _warnings(log)[3:] == [
        "channel events is unavailable: events are refused (503) until it is back. "
        "First: down again"
    ], "a new outage is reported at once"
    channel.error = InvalidDataError("data is 2000000 bytes as JSON")
    assert publisher(event) == NotPublished(400, "'data': data is 2000000 bytes as JSON")
    channel.error = RuntimeError("a bug")
    unexpected = _outcome(publisher, event)
    assert isinstance(unexpected, Failure) and unexpected.check(RuntimeError)
    unexpected.trap(RuntimeError)  # handled here (the dispatcher would log it)
    assert len(_warnings(log)) == 4 and log.failures() == []


@pytest_twisted.ensureDeferred
async def test_redis_outage_answers_503_without_a_traceback_per_request(
    redis: RedisServer, log: LogCapture
) -> None:
    # Every 503 used to log "event handler <function bridge to events> failed ...:
    # ChannelUnavailableError" with its traceback: hundreds a second during an outage.
    local = await start_local_hub(redis_url=redis.url)
    try:
        first = await treq.post(local.url + "events", json={"event": "before", "data": 0})
        assert first.code == 202
        await first.content()
        await redis.kill()
        for _ in range(100):
            if local.hub.health()["status"] == "degraded":
                break
            await deferLater(reactor, 0.05, lambda: None)
        answers = []
        for n in range(50):
            response = await treq.post(local.url + "events", json={"event": "during", "data": n})
            answers.append((response.code, response.headers.getRawHeaders("retry-after"),
                            json.loads(await response.content())))
        for code, retry_after, answer in answers:
            assert code == 503 and retry_after == ["1"], (code, answer)
            assert answer["error"].startswith("the channel is unavailable, retry later: ")
            assert "Redis at redis://127.0.0.1:" in answer["error"], answer
        assert log.failures() == [], local.problems()
        assert not local.problems()
        refusals = [w for w in _warnings(log) if "events are refused" in w]
        assert len(refusals) == 1, _warnings(log)
        assert local.hub.publisher.refused == 50
    finally:
        await local.stop()
