"""RedisStreamChannel against private redis-server processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests._redis import RedisServer
from twisted_event_dispatcher.channels.redis import RedisStreamChannel, parse_redis_url
from twisted_event_dispatcher.errors import ChannelUnavailableError
from twisted_event_dispatcher.testing import RecordingCarrier


@pytest_twisted.async_yield_fixture
async def redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    yield server
    await server.stop()


async def channel_on(redis: RedisServer, name: str = "news", **kw: Any) -> RedisStreamChannel:
    channel = RedisStreamChannel(name, url=redis.url, block=200, **kw)
    await channel.connect()
    return channel


async def until(condition: Callable[[], bool], limit: float = 10) -> None:
    for _ in range(int(limit / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not reached in time")


@pytest_twisted.ensureDeferred
async def test_publish_reaches_local_and_other_process_subscribers_in_one_order(
    redis: RedisServer,
) -> None:
    one, two = await channel_on(redis), await channel_on(redis)
    try:
        assert one.epoch == two.epoch
        here, there = RecordingCarrier(), RecordingCarrier()
        await one.subscribe("*", here)
        await two.subscribe("headline", there)
        published = []
        for n in range(20):
            source = one if n % 2 else two
            published.append(await source.publish("headline" if n % 3 else "weather", n))
        await until(lambda: len(here.messages) == 20)
        assert [m.id for m in published] == list(range(1, 21))
        assert [(m.id, m.data) for m in here.messages] == [(m.id, m.data) for m in published]
        expected = [m.id for m in published if m.event == "headline"]
        await until(lambda: len(there.messages) == len(expected))
        assert [m.id for m in there.messages] == expected
        assert all(m.epoch == one.epoch for m in here.messages)
    finally:
        await one.disconnect()
        await two.disconnect()


@pytest_twisted.ensureDeferred
async def test_resume_replays_from_redis_history_on_another_instance(
    redis: RedisServer,
) -> None:
    writer, other = await channel_on(redis), await channel_on(redis)
    try:
        for n in range(10):
            await writer.publish("e" if n % 2 else "f", n)
        await until(lambda: other.last_id == 10)
        carrier = RecordingCarrier()
        result = await other.subscribe("e", carrier, since=4, epoch=writer.epoch)
        assert result.gap is None
        assert [(m.id, m.data) for m in result.replay] == [(6, 5), (8, 7), (10, 9)]
        everything = await other.subscribe("*", RecordingCarrier(), since=8)
        assert [m.id for m in everything.replay] == [9, 10]
        await writer.publish("e", "live")
        await until(lambda: len(carrier.messages) == 1)
        assert carrier.messages[0].data == "live"
    finally:
        await writer.disconnect()
        await other.disconnect()


@pytest_twisted.ensureDeferred
async def test_gaps_expired_and_epoch(redis: RedisServer) -> None:
    channel = await channel_on(redis, history_size=5)
    try:
        for n in range(300):  # MAXLEN ~ trims whole nodes: publish well past the bound
            await channel.publish("e", n)
        await until(lambda: channel.last_id == 300)
        expired = await channel.subscribe("e", RecordingCarrier(), since=1)
        assert expired.gap is not None and expired.gap.reason == "expired"
        assert expired.gap.oldest is not None and expired.gap.oldest > 2
        other = await channel.subscribe("e", RecordingCarrier(), since=299, epoch="old")
        assert other.gap is not None and other.gap.reason == "epoch"
        future = await channel.subscribe("e", RecordingCarrier(), since=5000)
        assert future.gap is not None and future.gap.reason == "unknown"
    finally:
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_redis_killed_and_restarted_mid_stream_loses_nothing(redis: RedisServer) -> None:
    channel = await channel_on(redis)
    try:
        carrier = RecordingCarrier()
        await channel.subscribe("*", carrier)
        for n in range(20):
            await channel.publish("e", n)
        await until(lambda: len(carrier.messages) == 20)
        await redis.kill()
        with pytest.raises(ChannelUnavailableError, match="not published|failed"):
            await channel.publish("e", "while down")
        await redis.start()
        await until(lambda: channel.connected, limit=20)
        published = []
        for n in range(20, 40):
            published.append(await channel.publish("e", n))
        await until(lambda: len(carrier.messages) == 40)
        assert [m.data for m in carrier.messages] == list(range(40)), "no loss, no duplicate"
        assert [m.id for m in carrier.messages] == list(range(1, 41))
        assert channel.reconnects >= 1
    finally:
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_lost_stream_starts_a_new_epoch() -> None:
    redis = RedisServer(persistent=False)
    await redis.start()
    channel = await channel_on(redis)
    try:
        carrier = RecordingCarrier()
        await channel.subscribe("*", carrier)
        await channel.publish("e", "before")
        await until(lambda: len(carrier.messages) == 1)
        old_epoch = channel.epoch
        await redis.restart()  # no persistence: the stream is gone
        await until(lambda: channel.connected, limit=20)
        for _ in range(100):
            try:
                after = await channel.publish("e", "after")
                break
            except ChannelUnavailableError:
                await deferLater(reactor, 0.1, lambda: None)
        await until(lambda: len(carrier.messages) == 2)
        assert after.id == 1 and after.epoch != old_epoch
        assert carrier.messages[1].data == "after" and channel.epoch == after.epoch
        resumed = await channel.subscribe("e", RecordingCarrier(), since=1, epoch=old_epoch)
        assert resumed.gap is not None and resumed.gap.reason == "epoch"
    finally:
        await channel.disconnect()
        await redis.stop()


@pytest_twisted.ensureDeferred
async def test_connection_errors_are_clear() -> None:
    protected = RedisServer(password="s3cret")
    await protected.start()
    try:
        wrong = RedisStreamChannel("x", url=f"redis://:wrong@127.0.0.1:{protected.port}")
        with pytest.raises(ChannelUnavailableError, match="refused the credentials"):
            await wrong.connect()
        right = RedisStreamChannel("x", url=protected.url)
        await right.connect()
        await right.publish("e", 1)
        await right.disconnect()
    finally:
        await protected.stop()
    nobody = RedisStreamChannel("x", url=f"redis://127.0.0.1:{protected.port}", connect_timeout=1)
    with pytest.raises(ChannelUnavailableError, match="cannot connect to Redis"):
        await nobody.connect()


def test_bad_urls() -> None:
    for url, message in [
        ("http://127.0.0.1", "starts with 'redis://'"),
        ("redis://", "no host"),
        ("redis://127.0.0.1:notaport", "bad port"),
        ("redis://127.0.0.1/db", "must be a number"),
        ("redis://127.0.0.1/0?x=1", "unexpected query"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_redis_url(url)
    parsed = parse_redis_url("redis://user:p%40ss@example:7000/3")
    assert (parsed.host, parsed.port, parsed.db, parsed.username, parsed.password) == (
        "example", 7000, 3, "user", "p@ss"
    )
    assert "p@ss" not in str(parsed)
    with pytest.raises(ValueError, match="history_size"):
        RedisStreamChannel("x", history_size=0)


@pytest_twisted.ensureDeferred
async def test_publishes_of_one_turn_share_a_round_trip_and_keep_their_order(
    redis: RedisServer,
) -> None:
    from twisted.internet.defer import gatherResults

    channel = await channel_on(redis)
    try:
        carrier = RecordingCarrier()
        await channel.subscribe("*", carrier)
        sent: list[str] = []
        writer = channel._writer
        original = writer.execute_command

        def counting(*args: Any) -> Any:
            sent.append(args[0])
            return original(*args)

        writer.execute_command = counting
        messages = await gatherResults([channel.publish("e", n) for n in range(50)])
        assert [m.id for m in messages] == list(range(1, 51))
        assert [m.data for m in messages] == list(range(50))
        assert sent == ["EVALSHA"], "one script call for the whole turn"
        await until(lambda: len(carrier.messages) == 50)
        assert [m.data for m in carrier.messages] == list(range(50))
    finally:
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_reader_behind_the_history_bound_counts_what_it_missed(
    redis: RedisServer,
) -> None:
    channel = await channel_on(redis)
    try:
        carrier = RecordingCarrier()
        await channel.subscribe("*", carrier)
        await channel.publish("e", "first")
        await until(lambda: channel.last_id == 1)
        # as if entries 2..9 had been trimmed before this reader got to them
        channel._deliver("10-0", ["e", "e", "d", '"tenth"', "p", channel.epoch])
        assert channel.missed == 8 and channel.health()["missed"] == 8
        assert [m.data for m in carrier.messages] == ["first", "tenth"]
    finally:
        await channel.disconnect()
