"""RedisStreamChannel against private redis-server processes on 127.0.0.1."""

from __future__ import annotations

import gc
import json
import time
from typing import Any

import pytest
import pytest_twisted
import txredisapi
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import implementer

from tests._fuzz import examples
from tests._log import LogCapture
from tests._redis import RedisServer, channel_on, free_port, until
from twisted_event_dispatcher.channels._redis_stream import parse_entry
from twisted_event_dispatcher.channels.message import encode_json
from twisted_event_dispatcher.channels.redis import RedisStreamChannel, parse_redis_url
from twisted_event_dispatcher.errors import ChannelUnavailableError
from twisted_event_dispatcher.testing import RecordingCarrier


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


@pytest_twisted.ensureDeferred
async def test_unreachable_redis_is_named_within_the_connect_timeout() -> None:
    # Defect 12: a refused connection used to end in "(5.0, 'Deferred')".
    port = free_port()
    nobody = RedisStreamChannel(
        "x", url=f"redis://user:s3cret@127.0.0.1:{port}/2", connect_timeout=1
    )
    started = time.monotonic()
    with pytest.raises(ChannelUnavailableError) as raised:
        await nobody.connect()
    assert time.monotonic() - started < 2.5
    message = str(raised.value)
    assert message.startswith(
        f"Redis at redis://***@127.0.0.1:{port}/2 is unreachable: no connection within 1 s"
    ), message
    assert "refused" in message and "s3cret" not in message and "Deferred" not in message
    # and the same again for a publish on a channel never connected: it tries to connect
    with pytest.raises(ChannelUnavailableError, match="is unreachable"):
        await nobody.publish("e", 1)


@pytest_twisted.ensureDeferred
async def test_a_channel_used_without_connect_connects_on_first_use(redis: RedisServer) -> None:
    # Defect 12: publish without connect() used to say "Redis ... is unreachable".
    channel = RedisStreamChannel("lazy", url=redis.url, block=200)
    other = RedisStreamChannel("lazy", url=redis.url, block=200)
    try:
        carrier = RecordingCarrier()
        subscribed = await other.subscribe("*", carrier)
        assert subscribed.epoch == other.epoch and other.connected
        first, second = await gatherResults([channel.publish("e", 1), channel.publish("e", 2)])
        assert (first.id, second.id) == (1, 2) and channel.connected
        assert first.epoch == other.epoch
        await until(lambda: [m.data for m in carrier.messages] == [1, 2])
        await channel.disconnect()
        with pytest.raises(ChannelUnavailableError, match=r"disconnected .*call connect\(\)"):
            await channel.publish("e", 3)
        with pytest.raises(ChannelUnavailableError, match=r"call connect\(\)"):
            await channel.subscribe("e", RecordingCarrier())
        await channel.connect()
        assert (await channel.publish("e", 3)).id == 3
        await until(lambda: len(carrier.messages) == 3)
    finally:
        await channel.disconnect()
        await other.disconnect()


def test_bad_urls() -> None:
    for url, message in [
        ("http://127.0.0.1", "starts with 'redis://'"),
        ("redis://", "no host"),
        ("redis://127.0.0.1:notaport", "bad port"),
        ("redis://127.0.0.1/db", "must be a number"),
        ("redis://127.0.0.1/0?x=1", "unexpected query"),
        ("redis://:s3cret@127.0.0.1:notaport", r"bad port in Redis URL 'redis://:\*\*\*@"),
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
async def test_a_reader_behind_the_history_bound_tells_its_clients(redis: RedisServer) -> None:
    # Defect 3: a reader that fell behind MAXLEN used to only log and count.
    channel = await channel_on(redis, history_size=5)
    writer = await channel_on(redis, history_size=5)
    try:
        carrier = RecordingCarrier()
        await channel.subscribe("*", carrier)
        await writer.publish("e", 0)
        await until(lambda: len(carrier.messages) == 1)
        # one script call adds (and trims) all 300 before the reader can read any of them
        await gatherResults([writer.publish("e", n) for n in range(1, 301)])
        await until(lambda: carrier.messages[-1].data == 300)
        assert len(carrier.gaps) == 1
        _, event, gap = carrier.gaps[0]
        first = carrier.messages[1].id
        assert (event, gap.reason, gap.since, gap.oldest) == ("*", "expired", 1, first)
        assert first > 2 and channel.missed == first - 2
        assert [m.id for m in carrier.messages[1:]] == list(range(first, 302))
        health = channel.health()
        assert health["missed"] == first - 2 and health["gaps"] == 1
    finally:
        await channel.disconnect()
        await writer.disconnect()


async def raw_connection(redis: RedisServer) -> Any:
    """A plain txredisapi connection, to write to the stream as another program would."""
    connection = await txredisapi.Connection(
        "127.0.0.1", redis.port, reconnect=False, convertNumbers=False
    )
    return connection


@implementer(ILogObserver)
class RedisLog:
    """Collects what the channel logs, to count its lines."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "twisted_event_dispatcher.redis":
            self.events.append(event)

    def __enter__(self) -> RedisLog:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)

    def lines(self, containing: str) -> list[str]:
        texts = [formatEvent(e) for e in self.events]
        return [t for t in texts if containing in t]


@pytest_twisted.ensureDeferred
async def test_malformed_stream_entries_are_skipped_and_reading_goes_on(
    redis: RedisServer,
) -> None:
    channel = await channel_on(redis, "poison")
    raw = await raw_connection(redis)
    try:
        carrier = RecordingCarrier()
        await channel.subscribe("*", carrier)
        first = await channel.publish("e", "first")
        epoch = channel.epoch
        good = ["e", "e", "d", '"x"', "p", epoch]
        garbage: list[tuple[str, list[Any]]] = [
            ("2-0", ["e", "e", "p", epoch]),  # no data
            ("3-0", ["e", "e", "d", "{not json", "p", epoch]),
            ("4-0", ["e", "e", "d", b'"\xff\xfe"', "p", epoch]),  # not UTF-8
            ("5-0", ["e", "e", "d", "NaN", "p", epoch]),
            ("6-0", ["e", "_reserved", "d", "1", "p", epoch]),
            ("7-0", ["e", "a\nb", "d", "1", "p", epoch]),
            ("8-0", ["e", "e", "d", "1", "p", "bad epoch!"]),
            ("8-1", good),  # not an offset
            ("9-0", ["e", "e", "d", "[" * 100 + "]" * 100, "p", epoch]),
            ("10-0", ["e", "e", "d", '"\\ud800"', "p", epoch]),
            ("11-0", ["e", "e", "d", "1\n", "p", epoch]),
            ("12-0", ["e", "e", "d", '"old"', "p", "0123456789abcdef"]),  # another epoch
            ("*", ["x", "y"]),  # a time-based id, far beyond the offsets
        ]
        with RedisLog() as log:
            for entry_id, fields in garbage:
                await raw.execute_command("XADD", "ted:poison", entry_id, *fields)
            # publishing goes on past the garbage's ids, and the reader reads on
            second = await channel.publish("e", "second")
            third = await channel.publish("f", "third")
            await until(lambda: len(carrier.messages) == 3)
            skipped = log.lines("skipped stream entry")
            other_epoch = log.lines("of another epoch")
        assert [m.data for m in carrier.messages] == ["first", "second", "third"]
        assert [m.id for m in carrier.messages] == [first.id, second.id, third.id]
        assert second.id > 1_000_000_000_000 and third.id == second.id + 1
        assert carrier.gaps == [] and channel.connected
        assert channel.skipped == len(garbage) and channel.health()["skipped"] == len(garbage)
        assert len(skipped) == len(garbage) - 1 and len(other_epoch) == 1, log.events
        reasons = [
            "no field 'd'", "not JSON", "not UTF-8", "bad event name", "not '<offset>-0'",
            "deeper than 64", "not valid Unicode", "line break", "epoch 'bad epoch!'",
        ]
        for reason in reasons:
            assert any(reason in line for line in skipped), reason
        assert not [e for e in log.events if "log_failure" in e]
        # a resume reads through the same entries
        resumed = await channel.subscribe("*", RecordingCarrier(), since=1, epoch=epoch)
        assert resumed.gap is None
        assert [m.data for m in resumed.replay] == ["second", "third"]
        only_f = await channel.subscribe("f", RecordingCarrier(), since=1, epoch=epoch)
        assert [m.data for m in only_f.replay] == ["third"]
    finally:
        raw.disconnect()
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_health_is_degraded_while_the_reading_connection_is_down(
    redis: RedisServer,
) -> None:
    # Defect 3: "connected" used to come back as soon as the publishing connection worked.
    channel = RedisStreamChannel("down", url=redis.url, block=200)
    channel.RECONNECT_INITIAL = 2.0  # the reader comes back after about 2 s
    await channel.connect()
    raw = await raw_connection(redis)
    try:
        assert channel.health()["problem"] is None
        reader_id = None
        for _ in range(100):
            for line in (await raw.execute_command("CLIENT", "LIST")).splitlines():
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                if fields.get("cmd") == "xread":
                    reader_id = fields["id"]
            if reader_id:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert reader_id is not None
        await raw.execute_command("CLIENT", "KILL", "ID", reader_id)
        await until(lambda: not channel.connected)
        for _ in range(50):  # and it stays so while the reader is away (about 2 s)
            health = channel.health()
            assert health["connected"] is False and health["reader"] is False
            assert health["writer"] is True
            assert "the reading connection is down" in health["problem"]
            await deferLater(reactor, 0.02, lambda: None)
        await until(lambda: channel.connected)
        assert channel.health()["problem"] is None and channel.reconnects == 1
        carrier = RecordingCarrier()
        await channel.subscribe("*", carrier)
        await channel.publish("e", "after")
        await until(lambda: len(carrier.messages) == 1)
    finally:
        raw.disconnect()
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_health_is_degraded_while_redis_hangs(redis: RedisServer) -> None:
    # SIGSTOP: the connections stay open, nothing answers. Found by an attacker: /health
    # said "ok" for as long as Redis hung.
    channel = RedisStreamChannel("hung", url=redis.url, block=100, reply_timeout=0.5)
    await channel.connect()
    carrier = RecordingCarrier()
    await channel.subscribe("*", carrier)
    try:
        await channel.publish("e", "before")
        assert channel.health()["problem"] is None
        redis.signal("STOP")
        try:
            await until(lambda: channel.health()["reader"] is False, limit=5)
            health = channel.health()
            assert "has not answered the reading connection" in health["problem"]
            with pytest.raises(ChannelUnavailableError):
                await channel.publish("e", "while hung")  # refused, not accepted and lost
        finally:
            redis.signal("CONT")
        await until(lambda: channel.health()["problem"] is None, limit=5)
        await channel.publish("e", "after")
        await until(lambda: any(m.data == "after" for m in carrier.messages))
        assert [m.data for m in carrier.messages] == ["before", "after"], (
            "the publish refused while Redis hung was not stored when it woke up"
        )
    finally:
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_stepped_clock_costs_one_refused_publish_not_all(redis: RedisServer) -> None:
    # Found in review: the deadline's clock offset was measured once, so a clock step
    # made every later publish late (EXPIRED: 503s) until Redis reconnected.
    channel = await channel_on(redis, "stepped")
    carrier = RecordingCarrier()
    await channel.subscribe("*", carrier)
    try:
        measured = channel._clock_offset
        channel._clock_offset -= 3600  # as if Redis' clock had stepped back an hour
        with pytest.raises(ChannelUnavailableError, match="EXPIRED"):
            await channel.publish("e", "late")
        await until(lambda: abs(channel._clock_offset - measured) < 60)  # measured again
        await channel.publish("e", "on time")
        await until(lambda: len(carrier.messages) == 1)
        assert [m.data for m in carrier.messages] == ["on time"], "the late one was not stored"
    finally:
        await channel.disconnect()


_names = st.sampled_from(["e", "d", "p", "x", ""])
_values = st.one_of(
    st.text(max_size=30),
    st.binary(max_size=30),
    st.sampled_from(['"x"', "1", "[]", "{}", "NaN", '"\\ud800"', "abcdef0123", "tick"]),
    st.recursive(st.just("1"), lambda inner: inner.map(lambda t: f"[{t}]"), max_leaves=80),
)
_fields = st.lists(st.tuples(_names, _values), max_size=5).map(
    lambda pairs: [item for pair in pairs for item in pair]
)
_json_texts = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
).map(json.dumps)  # NaN, infinities and escaped lone surrogates among them
_near_messages = st.tuples(
    st.one_of(st.just("tick"), st.text(max_size=10)),
    st.one_of(_json_texts, st.text(max_size=20)),
    st.one_of(st.just("abcdef0123"), st.text(max_size=10)),
).map(lambda t: ["e", t[0], "d", t[1], "p", t[2]])
_ids = st.one_of(
    st.sampled_from(["1-0", "5-0", "5-1", "0-1", "99999999999999999999-0", "-0", "x-0"]),
    st.text(max_size=12),
    st.none(),
)


@settings(max_examples=300)
@given(
    entry_id=st.one_of(st.just("7-0"), _ids),
    fields=st.one_of(_near_messages, _fields, st.none(), st.integers()),
)
def test_parse_entry_never_raises_and_only_lets_deliverable_messages_through(
    entry_id: Any, fields: Any
) -> None:
    message = parse_entry(entry_id, fields, "fuzz")
    if isinstance(message, str):
        assert message
        return
    # everything a carrier will do with it works
    assert json.loads(message.json)["data"] == message.data
    message.json.encode("utf-8")
    assert encode_json(message.data) and "\n" not in message.data_json
    assert message.epoch.isalnum() and message.id >= 1


@pytest_twisted.ensureDeferred
async def test_fuzzed_entries_written_to_the_stream_never_stop_the_reader(
    redis: RedisServer,
) -> None:
    channel = await channel_on(redis, "fuzz")
    raw = await raw_connection(redis)
    try:
        carrier = RecordingCarrier()
        await channel.subscribe("*", carrier)
        with RedisLog() as log:
            for fields in examples(st.one_of(_near_messages, _fields.filter(bool)), 40):
                await raw.execute_command("XADD", "ted:fuzz", "*", *fields)
            after = await channel.publish("e", "after")
            await until(lambda: [m.data for m in carrier.messages][-1:] == ["after"])
        assert carrier.messages[-1].id == after.id and channel.connected
        assert not [e for e in log.events if "log_failure" in e]
    finally:
        raw.disconnect()
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_connect_to_a_hung_redis_fails_clearly_and_leaves_no_unhandled_error(
    redis: RedisServer, log: LogCapture
) -> None:
    # Found by an attacker: the connections given up on were closed before they had said
    # SELECT, and their first Deferred failed unhandled ("could not set dbid").
    redis.signal("STOP")
    try:
        channel = RedisStreamChannel(
            "hung-connect", url=redis.url, connect_timeout=0.3, reply_timeout=0.3
        )
        with pytest.raises(ChannelUnavailableError):
            await channel.connect()
    finally:
        redis.signal("CONT")
    await channel.disconnect()
    await deferLater(reactor, 0.3, lambda: None)  # let the closed connections settle
    gc.collect()  # an unhandled failure is logged when its Deferred is collected
    assert [e for e in log.failures() if "Unhandled" in formatEvent(e)] == []
    assert not any("Unhandled error" in formatEvent(e) for e in log.events)
