"""
Listeners on a RedisStreamChannel: the backend-agnostic contract (tests/_listeners.py)
against a real redis-server, then what only Redis can show: other OS processes (a consumer
in a child process, requests answered across processes, a member killed with ``kill -9``
mid-message), Redis restarted under a consumer, and entries written by another program.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from tests._listener_proc import spawn_listener
from tests._listeners import WAIT, ChannelFactory, Inbox, ListenerContract, unique
from tests._log import LogCapture
from tests._redis import RedisServer, until
from twisted_event_dispatcher.channels._redis_connect import open_connection
from twisted_event_dispatcher.channels.base import Channel
from twisted_event_dispatcher.channels.redis import RedisStreamChannel
from twisted_event_dispatcher.errors import (
    ChannelUnavailableError,
    RemoteActionError,
    UnknownListenerError,
)
from twisted_event_dispatcher.listeners import Listener, Mail
from twisted_event_dispatcher.listeners._redis_mailboxes import RedisMailboxes


@pytest_twisted.async_yield_fixture
async def make_redis_channel(redis: RedisServer) -> AsyncIterator[ChannelFactory]:
    """Connected RedisStreamChannels on a private Redis, disconnected after the test."""
    made: list[RedisStreamChannel] = []

    async def make(**options: Any) -> Channel:
        name = unique("redis-listeners")
        channel = RedisStreamChannel(name, url=redis.url, block=200, **options)
        made.append(channel)
        await channel.connect()
        return channel

    yield make
    for channel in made:
        await channel.disconnect()


async def until_info(listener: Listener, **expected: object) -> None:
    """Wait until ``listener.info()`` shows ``expected`` (acks may be on their way)."""
    info: dict[str, object] = {}
    for _ in range(int(WAIT / 0.02)):
        info = (await listener.info())._asdict()
        if all(info[k] == v for k, v in expected.items()):
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{listener!r}: {info} never showed {expected}")


async def retry_while_down(call: Callable[[], Deferred[Any]]) -> Any:
    """``await call()``, again while Redis is not back (ChannelUnavailableError)."""
    for _ in range(200):
        try:
            return await call()
        except ChannelUnavailableError:
            await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("Redis did not come back")


class TestRedisListeners(ListenerContract):
    """The contract on RedisStreamChannel."""

    @pytest.fixture
    def make_channel(self, make_redis_channel: ChannelFactory) -> ChannelFactory:
        return make_redis_channel


# -- across processes ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_consumer_in_another_process_gets_what_this_one_dispatches(
    redis: RedisServer, make_redis_channel: ChannelFactory
) -> None:
    channel = await make_redis_channel()
    listener = await channel.add_listener("worker")
    for n in range(3):  # kept until a consumer attaches
        await channel.dispatch("worker", "job", n)
    child = await spawn_listener(redis.url, channel.name, "worker", "consume")
    try:
        await child.wait(lambda: len(child.mails) == 3)
        for n in range(3, 6):
            await channel.dispatch("worker", "job", n)
        message = await channel.broadcast("news", "all")
        await child.wait(lambda: len(child.mails) == 7)
        assert [(m["event"], m["data"]) for m in child.mails] == [
            *(("job", n) for n in range(6)), ("news", "all"),
        ]
        assert [m["source"] for m in child.mails[5:]] == ["dispatch", "broadcast"]
        assert child.mails[6]["offset"] == message.id
        assert {m["deliveries"] for m in child.mails} == {1}
        # Stopped from this process: the consumer in the other one takes nothing...
        await listener.stop()
        await channel.dispatch("worker", "job", "held")
        info = await listener.info()
        assert (info.running, info.queued, info.attached) == (False, 1, True)
        # ...until it is started again.
        await channel.dispatch("worker", "start")
        await child.wait(lambda: len(child.mails) == 8)
        assert child.mails[-1]["data"] == "held"
        await until_info(listener, queued=0, in_flight=0)
        # A consumer attached here replaces the other process's, which is told so.
        inbox = Inbox()
        await listener.consume(inbox)
        await child.wait(lambda: {"ended": "replaced"} in child.events)
        await channel.dispatch("worker", "job", "here")
        (mail,) = await inbox.wait(1)
        assert mail.data == "here" and len(child.mails) == 8
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_requests_are_answered_by_another_process(
    redis: RedisServer, make_redis_channel: ChannelFactory
) -> None:
    channel = await make_redis_channel()
    service = await channel.add_listener("calc", group="calculators")
    child = await spawn_listener(redis.url, channel.name, "calc", "serve")
    try:
        pid = next(event["ready"] for event in child.events if "ready" in event)
        assert await channel.request("calc", "add", [1, 2, 3], timeout=WAIT) == 6
        assert await channel.request("calculators", "pid", group=True, timeout=WAIT) == pid
        answers = await gatherResults([
            channel.request("calc", "add", [n, n], timeout=WAIT) for n in range(50)
        ])
        assert answers == [2 * n for n in range(50)]
        with pytest.raises(RemoteActionError) as failed:
            await channel.request("calc", "fail", "fly", timeout=WAIT)
        assert (failed.value.remote_type, failed.value.remote_message) == (
            "ValueError", "cannot fly",
        )
        await until_info(service, queued=0, in_flight=0)
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_group_mail_of_a_killed_member_goes_to_another_within_its_ack_deadline(
    redis: RedisServer, make_redis_channel: ChannelFactory
) -> None:
    channel = await make_redis_channel()
    await channel.add_listener("doomed", group="workers", ack_timeout=1.0)
    survivor = await channel.add_listener("survivor", group="workers", ack_timeout=1.0)
    await survivor.stop()  # so that the doomed member takes the mail
    inbox = Inbox()
    await survivor.consume(inbox)
    child = await spawn_listener(redis.url, channel.name, "doomed", "hold")
    try:
        sent = await channel.dispatch_group("workers", "job", "important")
        await child.wait(lambda: len(child.mails) == 1)
        taken_at = reactor.seconds()
        await survivor.start()
        child.kill("KILL")  # mid-message: never acknowledged
        await child.ended
        (mail,) = await inbox.wait(1)
        elapsed = reactor.seconds() - taken_at
        assert (mail.id, mail.data, mail.deliveries, mail.listener) == (
            sent, "important", 2, "survivor",
        )
        assert 0.8 <= elapsed <= 1.0 + 2.0, elapsed  # its ack deadline, then soon after
        # The dead member takes nothing more: new group mail goes to the survivor.
        for n in range(3):
            await channel.dispatch_group("workers", "job", n)
        await inbox.wait(4)
        assert [m.data for m in inbox.mails[1:]] == [0, 1, 2]
    finally:
        child.kill("KILL")
        await child.ended


@pytest_twisted.ensureDeferred
async def test_group_mail_of_a_slow_member_goes_to_another_after_its_ack_deadline(
    make_redis_channel: ChannelFactory,
) -> None:
    channel = await make_redis_channel()
    slow = await channel.add_listener("slow", group="g", ack_timeout=0.5)
    quick = await channel.add_listener("quick", group="g", ack_timeout=0.5)
    await quick.stop()
    held, taker = Inbox(hold=True), Inbox()
    await slow.consume(held)
    await quick.consume(taker)
    await channel.dispatch_group("g", "job", 1)
    (late,) = await held.wait(1)
    started = reactor.seconds()
    await quick.start()
    (mail,) = await taker.wait(1)
    assert 0.4 <= reactor.seconds() - started <= 0.5 + 1.5
    assert (mail.id, mail.deliveries) == (late.id, 2)
    assert await late.ack() is False  # no longer the slow member's


@pytest_twisted.ensureDeferred
async def test_calls_of_one_reactor_turn_keep_their_order(
    make_redis_channel: ChannelFactory,
) -> None:
    channel = await make_redis_channel()
    await channel.add_listener("a")
    # Sent together (dispatches are batched): still in call order.
    dispatched = channel.dispatch("a", "e", 1)
    removed = channel.remove_listener("a")
    assert isinstance(await dispatched, str)
    await removed
    with pytest.raises(UnknownListenerError):
        await channel.dispatch("a", "e", 2)
    published = channel.publish("e", "first")
    broadcast = channel.broadcast("e", "second")
    assert [(await published).id, (await broadcast).id] == [1, 2]


# -- Redis restarted -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_consumer_gets_its_unacknowledged_mail_again_after_a_redis_restart(
    redis: RedisServer, make_redis_channel: ChannelFactory
) -> None:
    channel = await make_redis_channel()
    listener = await channel.add_listener("a")
    finish: Deferred[None] = Deferred()
    seen: list[tuple[Any, int]] = []

    def handler(mail: Mail) -> Deferred[None] | None:
        seen.append((mail.data, mail.deliveries))
        return finish if len(seen) == 1 else None

    consumer = await listener.consume(handler)
    await channel.dispatch("a", "e", "before")
    await until(lambda: len(seen) == 1)
    await redis.kill()
    finish.callback(None)  # handled while Redis is down: the acknowledgement fails
    await redis.start()
    await until(lambda: len(seen) == 2)
    assert seen == [("before", 1), ("before", 2)]
    await retry_while_down(lambda: channel.dispatch("a", "e", "after"))
    await until(lambda: len(seen) == 3)
    assert seen[2] == ("after", 1) and not consumer.done.called
    await until_info(listener, queued=0, in_flight=0)


@pytest_twisted.ensureDeferred
async def test_a_channel_connects_on_its_first_listener_call(redis: RedisServer) -> None:
    channel = RedisStreamChannel(unique("redis-listeners"), url=redis.url, block=200)
    try:
        listener = await channel.add_listener("a")  # no connect() before
        assert channel.connected and await channel.listener_ids() == ["a"]
        await channel.disconnect()
        with pytest.raises(ChannelUnavailableError, match="disconnected"):
            await listener.info()
        await channel.connect()
        assert (await listener.info()).id == "a"
    finally:
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_disconnect_ends_the_consumers_here_and_tells_redis(
    redis: RedisServer, make_redis_channel: ChannelFactory, log: LogCapture
) -> None:
    observer = await make_redis_channel()
    channel = RedisStreamChannel(observer.name, url=redis.url, block=200)
    await channel.connect()
    listener = await channel.add_listener("a", group="g")
    held = Inbox(hold=True)
    consumer = await listener.consume(held)
    await channel.dispatch_group("g", "job", 1)
    await held.wait(1)
    await channel.disconnect()
    assert consumer.done.called and await consumer.done == "closed"
    info = await observer.listener("a").info()  # seen from another channel object
    assert (info.attached, info.in_flight, info.running) == (False, 0, True)
    taker = Inbox()
    await observer.listener("a").consume(taker)
    (mail,) = await taker.wait(1)  # its group mail went back to the group
    assert (mail.data, mail.deliveries) == (1, 2)
    assert not log.failures() and not [e for e in log.events if e.get("log_level") == "warn"]


@pytest_twisted.ensureDeferred
async def test_calls_fail_within_reply_timeout_while_redis_hangs_and_change_nothing(
    redis: RedisServer,
) -> None:
    channel = RedisStreamChannel(
        unique("redis-listeners"), url=redis.url, block=200, reply_timeout=0.5
    )
    await channel.connect()
    try:
        listener = await channel.add_listener("a", group="g")
        redis.signal("STOP")
        try:
            calls: list[Callable[[], Deferred[Any]]] = [
                lambda: channel.dispatch("a", "e", 1),
                lambda: channel.dispatch_group("g", "e", 2),
                lambda: channel.broadcast("e", 3),
                lambda: channel.add_listener("b"),
                lambda: listener.stop(),
                lambda: listener.info(),
                lambda: channel.request("a", "e", 4, timeout=WAIT),
            ]
            for call in calls:
                started = reactor.seconds()
                with pytest.raises(ChannelUnavailableError, match="within 0.5 s"):
                    await call()
                assert reactor.seconds() - started < 0.5 + 0.5
        finally:
            redis.signal("CONT")
        # What reached Redis after its deadline was refused there: nothing changed.
        info = await listener.info()
        assert (info.queued, info.running) == (0, True)
        assert await channel.listener_ids() == ["a"]
        assert (await channel.publish("e", "after")).id == 1  # the broadcast took no offset
    finally:
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_consumer_ends_when_redis_lost_its_listener(volatile: RedisServer) -> None:
    channel = RedisStreamChannel(unique("redis-listeners"), url=volatile.url, block=200)
    await channel.connect()
    try:
        listener = await channel.add_listener("a")
        consumer = await listener.consume(Inbox())
        await volatile.restart()  # without persistence: the listener is gone
        assert await consumer.done.addTimeout(WAIT, reactor) == "removed"
        with pytest.raises(UnknownListenerError):
            await retry_while_down(lambda: channel.dispatch("a", "e"))
    finally:
        await channel.disconnect()


# -- bad entries ---------------------------------------------------------------------------

#: Entries another program might add to a mailbox (``s`` is left out in a group's queue).
GARBAGE: list[list[str]] = [
    ["x", "1"],
    ["e", "_secret", "d", "1", "s", "d"],
    ["e", "ok", "d", "{not json", "s", "d"],
    ["e", "ok", "d", "NaN", "s", "d"],
    ["e", "ok", "d", "[" * 100 + "]" * 100, "s", "d"],
    ["e", "ok", "d", '"\\ud800"', "s", "d"],
    ["e", "ok", "d", "1", "s", "?"],
    ["e", "ok", "d", "1", "s", "b", "o", "first"],
    ["e", "ok", "d", "1", "s", "d", "r", "ted:somewhere:else", "c", "abc"],
    ["e", "ok", "d", "1", "s", "d", "r", "x"],
]


@pytest_twisted.ensureDeferred
async def test_entries_written_by_another_program_are_skipped(
    redis: RedisServer, make_redis_channel: ChannelFactory, log: LogCapture
) -> None:
    channel = await make_redis_channel()
    assert isinstance(channel, RedisStreamChannel)
    listener = await channel.add_listener("a", group="g")
    boxes = channel.mailboxes
    assert isinstance(boxes, RedisMailboxes)
    raw = open_connection(channel.url, 0.2, 1.0)
    try:
        mailbox, queue = boxes.keys.mailbox("a"), boxes.keys.group("g")
        for fields in GARBAGE:
            await raw.execute_command("XADD", mailbox, "*", *fields)
            if fields[-2:] != ["s", "d"] or len(fields) != 6:
                continue
            await raw.execute_command("XADD", queue, "*", *fields[:4])
        await raw.execute_command("XADD", queue, "*", "e", "ok", "d", "1", "r", "x", "c", "y")
        await channel.dispatch("a", "e", "fine")
        await channel.dispatch_group("g", "e", "fine too")
        inbox = Inbox()
        await listener.consume(inbox, max_in_flight=4)
        await inbox.wait(2)
        assert sorted(inbox.data) == ["fine", "fine too"]
        # Skipped, logged (no traceback) and deleted; the good ones acknowledged.
        for _ in range(int(WAIT / 0.02)):
            lengths = [await raw.execute_command("XLEN", key) for key in (mailbox, queue)]
            if lengths == [0, 0]:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert lengths == [0, 0]
        assert boxes.skipped >= len(GARBAGE) + 4
        warnings = [e for e in log.events if "not mail" in e.get("log_format", "")]
        assert len(warnings) == boxes.skipped and not log.failures()
        # A reply stream holding garbage still delivers the real replies.
        listener.set_action("echo", lambda mail: mail.data)
        await raw.execute_command("XADD", boxes.reply_address, "*", "c", "1", "k", "2")
        await raw.execute_command("XADD", boxes.reply_address, "*", "c", "!", "k", "1", "v", "1")
        await listener.serve()
        assert await channel.request("a", "echo", [1, "two"], timeout=WAIT) == [1, "two"]
        assert boxes._replies.skipped == 2
    finally:
        await raw.disconnect()
