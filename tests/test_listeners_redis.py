"""
Listeners on a RedisStreamChannel: the backend-agnostic contract (tests/_listeners.py)
against a real redis-server, then what only Redis can show: other OS processes (a consumer
in a child process, requests answered across processes, a member killed with ``kill -9``
mid-message), Redis restarted under a consumer, and entries written by another program.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater

from tests._listener_proc import spawn_listener
from tests._listeners import WAIT, ChannelFactory, Inbox, ListenerContract, unique
from tests._log import LogCapture
from tests._redis import RedisServer, until
from twisted_event_dispatcher.channels._redis_connect import open_connection, wait_connected
from twisted_event_dispatcher.channels.base import Channel
from twisted_event_dispatcher.channels.redis import RedisStreamChannel
from twisted_event_dispatcher.errors import (
    ChannelUnavailableError,
    EventDispatcherError,
    RemoteActionError,
    RequestTimeoutError,
    UnknownListenerError,
)
from twisted_event_dispatcher.listeners import Listener, Mail, _redis_mailboxes
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


# -- an operator, another program, a hung Redis ------------------------------------------


async def raw_connection(channel: RedisStreamChannel) -> Any:
    """A connection of the test's own to the channel's Redis (another program's)."""
    raw = open_connection(channel.url, 0.2, 1.0)
    await wait_connected(raw, channel.url, WAIT, reactor)
    return raw


async def client_count(raw: Any, expected: int | None = None) -> int:
    """
    The connections Redis has open (``CLIENT LIST``), this one included; with
    ``expected``, once it is that many (closing takes Redis a moment), or after WAIT.
    """
    for _ in range(int(WAIT / 0.02)):
        clients = await raw.execute_command("CLIENT", "LIST")
        count = len([line for line in clients.splitlines() if line.strip()])
        if expected is None or count == expected:
            break
        await deferLater(reactor, 0.02, lambda: None)
    return count


@pytest_twisted.ensureDeferred
async def test_a_broadcast_skips_listeners_whose_keys_another_program_broke(
    make_redis_channel: ChannelFactory, log: LogCapture
) -> None:
    channel = await make_redis_channel()
    assert isinstance(channel, RedisStreamChannel)
    boxes = channel.mailboxes
    assert isinstance(boxes, RedisMailboxes)
    inboxes = {name: Inbox() for name in "abcd"}
    for name, inbox in inboxes.items():
        await (await channel.add_listener(name)).consume(inbox)
    raw = await raw_connection(channel)
    try:
        # An operator deletes b's mailbox (to free memory); another program writes a
        # string where c's mailbox is, and a list where d's record is.
        await raw.execute_command("DEL", boxes.keys.mailbox("b"))
        await raw.execute_command("DEL", boxes.keys.mailbox("c"))
        await raw.execute_command("SET", boxes.keys.mailbox("c"), "garbage")
        await raw.execute_command("DEL", f"{boxes.keys.root}:l:d")
        await raw.execute_command("RPUSH", f"{boxes.keys.root}:l:d", "garbage")
        # Never a failure that stored something: each call succeeds once, or changes nothing.
        messages = [await channel.broadcast("news", n) for n in range(2)]
        assert [m.id for m in messages] == [1, 2]
        assert await raw.execute_command("XLEN", channel._stream) == 2
        assert await channel.dispatch("b", "own", "b") is not None
        with pytest.raises(ChannelUnavailableError, match="'c'"):
            await channel.dispatch("c", "own", "c")
        with pytest.raises(ChannelUnavailableError):
            await channel.dispatch("d", "own", "d")
        await until(lambda: len(inboxes["b"].mails) == 3)
        assert inboxes["a"].data == [0, 1]
        assert inboxes["b"].data == [0, 1, "b"]
        assert {m.deliveries for m in inboxes["b"].mails} == {1}
        assert await raw.execute_command("GET", boxes.keys.mailbox("c")) == "garbage"
        assert inboxes["c"].mails == inboxes["d"].mails == []
        skipped = [e for e in log.events if "skipped listener" in e.get("log_format", "")]
        assert len(skipped) == 1 and skipped[0]["ids"] == ["c", "d"]  # said once
        assert not log.failures()
    finally:
        await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_an_attach_that_timed_out_while_redis_hung_replaces_no_consumer(
    redis: RedisServer, make_redis_channel: ChannelFactory, log: LogCapture
) -> None:
    working = await make_redis_channel()
    # The same channel in another process, which gives up sooner.
    hasty = RedisStreamChannel(working.name, url=redis.url, block=200, reply_timeout=0.5)
    await hasty.connect()
    try:
        listener = await working.add_listener("a")
        inbox = Inbox()
        consumer = await listener.consume(inbox)
        redis.signal("STOP")
        try:
            started = reactor.seconds()
            with pytest.raises(ChannelUnavailableError, match="within 0.5 s"):
                await hasty.listener("a").consume(Inbox())
            assert reactor.seconds() - started < 1.0
        finally:
            redis.signal("CONT")
        # The attach reached Redis after its deadline: refused there, so the working
        # consumer was not replaced by one that no longer exists.
        await working.dispatch("a", "e", "after")
        await until(lambda: inbox.data == ["after"], limit=5)
        assert not consumer.done.called
        await until_info(listener, in_flight=0, attached=True)
    finally:
        await hasty.disconnect()
    gc.collect()  # an unhandled error in a Deferred is logged when it is collected
    assert not log.failures()


@pytest_twisted.ensureDeferred
async def test_acknowledgements_lost_while_redis_is_down_are_one_warning_not_tracebacks(
    redis: RedisServer, make_redis_channel: ChannelFactory, log: LogCapture
) -> None:
    channel = await make_redis_channel()
    listener = await channel.add_listener("a")
    held = Inbox(hold=True)
    await listener.consume(held, max_in_flight=10)
    for n in range(10):
        await channel.dispatch("a", "e", n)
    await held.wait(10)
    await redis.kill()
    for finished in held.held:
        finished.callback(None)  # each acknowledgement fails: Redis is away
    said = "could not {operation} mail"
    await until(lambda: any(said in e.get("log_format", "") for e in log.events))
    await redis.start()
    await until(lambda: len(held.mails) == 20)  # delivered again, counted
    assert [(m.data, m.deliveries) for m in held.mails[10:]] == [(n, 2) for n in range(10)]
    assert not log.failures()
    assert len([e for e in log.events if said in e.get("log_format", "")]) == 1


@pytest_twisted.ensureDeferred
async def test_a_request_on_a_disconnected_channel_opens_no_connection(
    redis: RedisServer, make_redis_channel: ChannelFactory
) -> None:
    channel = await make_redis_channel()
    assert isinstance(channel, RedisStreamChannel)
    await channel.add_listener("a")
    raw = await raw_connection(channel)
    try:
        connected = await client_count(raw)
        await channel.disconnect()
        assert await client_count(raw, connected - 2) == connected - 2  # the channel's gone
        with pytest.raises(ChannelUnavailableError, match="disconnected"):
            await channel.request("a", "e", 1, timeout=WAIT)
        await deferLater(reactor, 0.3, lambda: None)  # (a connection would be made by now)
        assert await client_count(raw) == connected - 2
    finally:
        await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_own_mail_pushed_to_a_consumer_as_it_detaches_keeps_its_delivery_count(
    make_redis_channel: ChannelFactory,
) -> None:
    channel = await make_redis_channel()
    listener = await channel.add_listener("a")
    first = await listener.consume(Inbox(hold=True))
    # Dispatched, and read for the consumer into its control stream, as it detaches: it
    # never reached a handler.
    dispatched = channel.dispatch("a", "e", "pushed")
    await first.stop()
    await dispatched
    inbox = Inbox()
    await listener.consume(inbox)
    (mail,) = await inbox.wait(1)
    assert (mail.data, mail.deliveries) == ("pushed", 1)


@pytest_twisted.ensureDeferred
async def test_keys_of_a_group_another_program_overwrote_break_nothing_else(
    make_redis_channel: ChannelFactory, log: LogCapture
) -> None:
    channel = await make_redis_channel()
    assert isinstance(channel, RedisStreamChannel)
    boxes = channel.mailboxes
    assert isinstance(boxes, RedisMailboxes)
    a = await channel.add_listener("a", group="g")
    b = await channel.add_listener("b", group="g")
    await channel.add_listener("c", group="g")
    held, inbox = Inbox(hold=True), Inbox()
    await a.consume(held)
    await b.stop()
    await b.consume(inbox)
    sent = await channel.dispatch_group("g", "job", 1)
    await held.wait(1)
    await b.start()
    raw = await raw_connection(channel)
    try:
        # Another program writes a string where member c's record is.
        await raw.execute_command("DEL", f"{boxes.keys.root}:l:c")
        await raw.execute_command("SET", f"{boxes.keys.root}:l:c", "garbage")
        await a.stop()  # gives its mail back to the group: to b, woken (c is skipped)
        (mail,) = await inbox.wait(1)
        assert (mail.id, mail.deliveries) == (sent, 2)
        with pytest.raises(ChannelUnavailableError, match="record of listener c"):
            await channel.listener("c").info()
        await channel.remove_listener("c")  # what is left of it can be removed
        assert await channel.listener_ids() == ["a", "b"]
        # ...and a hash where the group's queue is: group mail is refused (nothing
        # stored), own mail still flows, and the consumer says why once.
        await raw.execute_command("DEL", boxes.keys.group("g"))
        await raw.execute_command("HSET", boxes.keys.group("g"), "x", "y")
        with pytest.raises(ChannelUnavailableError, match="queue of group 'g' is a hash"):
            await channel.dispatch_group("g", "job", 2)
        await channel.dispatch("b", "own", 3)
        await until(lambda: inbox.data == [1, 3], limit=2)
        await until(lambda: any("overwrote" in e.get("log_format", "") for e in log.events))
        assert not log.failures()
    finally:
        await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_reply_that_came_while_this_process_was_busy_is_not_a_failure(
    redis: RedisServer,
) -> None:
    clock = Clock()  # the channel's timers; Redis and the sockets are real
    channel = RedisStreamChannel(
        unique("redis-listeners"), url=redis.url, block=200, reply_timeout=0.5, clock=clock
    )
    await channel.connect()
    raw = await raw_connection(channel)
    try:
        listener = await channel.add_listener("a")
        boxes = channel.mailboxes
        assert isinstance(boxes, RedisMailboxes)
        socket = channel._writer._factory.pool[0].transport
        socket.pauseProducing()  # this process is busy (a handler blocks the reactor)...
        dispatched = channel.dispatch("a", "e", 1)
        clock.advance(0)  # (the batch goes out at the end of the reactor turn)
        mailbox = boxes.keys.mailbox("a")
        for _ in range(int(WAIT / 0.01)):
            if await raw.execute_command("XLEN", mailbox) == 1:
                break  # ...while Redis stores the mail and answers
            await deferLater(reactor, 0.01, lambda: None)
        clock.advance(0.5)  # busy past the reply timeout: its timer comes first
        socket.resumeProducing()
        await until(lambda: dispatched.called)  # the answer, read before giving up
        clock.advance(0.01)
        assert isinstance(await dispatched, str)  # it happened: not reported as failed
        assert (await listener.info()).queued == 1
    finally:
        await raw.disconnect()
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_many_entries_of_another_program_do_not_hold_up_the_mail_behind_them(
    make_redis_channel: ChannelFactory, log: LogCapture
) -> None:
    channel = await make_redis_channel()
    assert isinstance(channel, RedisStreamChannel)
    boxes = channel.mailboxes
    assert isinstance(boxes, RedisMailboxes)
    listener = await channel.add_listener("a")
    raw = await raw_connection(channel)
    try:
        for n in range(200):
            await raw.execute_command("XADD", boxes.keys.mailbox("a"), "*", "junk", str(n))
    finally:
        await raw.disconnect()
    await channel.dispatch("a", "e", "real")
    inbox = Inbox()
    await listener.consume(inbox)  # one slot: one entry at a time
    await until(lambda: inbox.data == ["real"], limit=4)
    assert boxes.skipped == 200  # each skipped (and logged) once
    assert len([e for e in log.events if "not mail" in e.get("log_format", "")]) == 200


@pytest_twisted.ensureDeferred
async def test_a_consumer_attaching_as_its_channel_disconnects_ends_and_leaks_nothing(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = RedisStreamChannel(unique("redis-listeners"), url=redis.url, block=200)
    await channel.connect()
    raw = await raw_connection(channel)
    try:
        listener = await channel.add_listener("a")
        before = await client_count(raw)
        # The consumer's own connection is slow to come (Redis busy, a slow network).
        reached: Deferred[None] = Deferred()
        gate: Deferred[None] = Deferred()
        connect = wait_connected

        async def slowly(*args: Any) -> None:
            reached.callback(None)
            await gate
            await connect(*args)

        monkeypatch.setattr(_redis_mailboxes, "wait_connected", slowly)
        consuming = listener.consume(Inbox())
        await reached  # attached in Redis; its connection on its way
        await channel.disconnect()
        gate.callback(None)
        with pytest.raises(ChannelUnavailableError, match="disconnected"):
            await consuming
        assert not channel.mailboxes._attachments  # type: ignore[attr-defined]
        # The channel's two closed, and no reader left.
        assert await client_count(raw, before - 2) == before - 2
        root = channel.mailboxes.keys.root  # type: ignore[attr-defined]
        assert await raw.execute_command("EXISTS", f"{root}:a:a") == 0  # told Redis
    finally:
        await raw.disconnect()
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_consumer_of_a_listener_removed_and_added_again_ends_removed(
    redis: RedisServer, make_redis_channel: ChannelFactory
) -> None:
    channel = await make_redis_channel()
    other = RedisStreamChannel(channel.name, url=redis.url, block=200)  # another process
    await other.connect()
    try:
        listener = await channel.add_listener("a")
        consumer = await listener.consume(Inbox())
        removed, added = other.remove_listener("a"), other.add_listener("a")
        await removed
        await added
        assert await consumer.done.addTimeout(WAIT, reactor) == "removed"
        assert not (await other.listener("a").info()).attached
    finally:
        await other.disconnect()


@pytest_twisted.ensureDeferred
async def test_consumers_and_requests_release_their_connections(
    redis: RedisServer, log: LogCapture
) -> None:
    channel = RedisStreamChannel(unique("redis-listeners"), url=redis.url, block=200)
    await channel.connect()
    raw = await raw_connection(channel)
    try:
        listener = await channel.add_listener("a")
        listener.set_action("echo", lambda mail: mail.data)
        base = await client_count(raw)  # this test's, and the channel's two
        for _ in range(5):
            with pytest.raises(UnknownListenerError):
                await channel.listener("ghost").consume(Inbox())
            await (await listener.consume(Inbox())).stop()
        replaced = [await listener.consume(Inbox()) for _ in range(3)]
        assert [c.done.called for c in replaced] == [True, True, False]
        stream = listener.messages()
        await until(lambda: replaced[2].done.called)
        await stream.close()
        await listener.serve()
        assert await channel.request("a", "echo", 1, timeout=WAIT) == 1
        # The consumer's and the reply reader's; the others' closed.
        assert await client_count(raw, base + 2) == base + 2
        await channel.disconnect()
        assert await client_count(raw, base - 2) == base - 2  # only this test's left
        gc.collect()
        assert not log.failures()
    finally:
        await raw.disconnect()
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_of_two_consumers_attached_at_once_the_last_called_wins(
    make_redis_channel: ChannelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = await make_redis_channel()
    listener = await channel.add_listener("a")
    # The first consumer's connection comes last (connections race).
    gate: Deferred[None] = Deferred()
    calls = 0

    async def racing(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate
        await wait_connected(*args)

    monkeypatch.setattr(_redis_mailboxes, "wait_connected", racing)
    first, second = Inbox(), Inbox()
    attaching = listener.consume(first)
    last = await listener.consume(second)
    gate.callback(None)
    earlier = await attaching
    assert await earlier.done.addTimeout(WAIT, reactor) == "replaced"
    assert not last.done.called
    await channel.dispatch("a", "e", 1)
    await second.wait(1)
    assert first.mails == [] and (await listener.info()).attached


@pytest_twisted.ensureDeferred
async def test_late_group_mail_is_found_within_a_quarter_of_its_ack_timeout(
    redis: RedisServer,
) -> None:
    # Readers idle 2 s between looks (block); the ack deadline is 0.4 s.
    channel = RedisStreamChannel(unique("redis-listeners"), url=redis.url, block=2000)
    await channel.connect()
    try:
        slow = await channel.add_listener("slow", group="g", ack_timeout=0.4)
        quick = await channel.add_listener("quick", group="g", ack_timeout=0.4)
        await quick.stop()
        held, taker = Inbox(hold=True), Inbox()
        await slow.consume(held)
        await quick.consume(taker)
        await slow.stop()
        await slow.start()  # (both readers have just looked)
        sent = await channel.dispatch_group("g", "job", 1)
        await held.wait(1)
        taken_at = reactor.seconds()
        await quick.start()
        await until(lambda: bool(taker.mails), limit=3)
        assert taker.mails[0].id == sent
        assert 0.35 <= reactor.seconds() - taken_at <= 0.4 + 0.1 + 0.3
    finally:
        await channel.disconnect()


#: What another program may leave where a listener key is (``<root>:<key>``): a value of
#: the wrong type, or a stream without our consumer group.
WRONG_VALUES: list[tuple[str, ...]] = [("SET", "garbage"), ("XADD", "*", "x", "y")]
WRONG_KEYS = ["L", "l:x", "mb:x", "g:g", "m:g", "a:x", "seq", "c:<token of x>", "mb:ok"]


async def calls_on_a_broken_key(
    redis: RedisServer, target: str, command: str, *arguments: str
) -> list[str]:
    """
    Every listener call, on a channel where another program overwrote ``<root>:<target>``;
    the calls that failed other than with an error of this library.
    """
    problems = []
    channel = RedisStreamChannel(unique("redis-listeners"), url=redis.url, block=200)
    await channel.connect()
    raw = await raw_connection(channel)
    try:
        ok = await channel.add_listener("ok", group="h")
        x = await channel.add_listener("x", group="g")
        await channel.add_listener("y", group="g")
        inbox = Inbox()
        await ok.consume(inbox)
        await x.consume(Inbox())
        boxes = channel.mailboxes
        assert isinstance(boxes, RedisMailboxes)
        token = boxes._attachments["x"].token
        key = f"{boxes.keys.root}:{target.replace('<token of x>', token)}"
        await raw.execute_command("DEL", key)
        await raw.execute_command(command, key, *arguments)
        calls: list[tuple[str, Callable[[], Deferred[Any]]]] = [
            ("dispatch ok", lambda: channel.dispatch("ok", "e", 1)),
            ("dispatch x", lambda: channel.dispatch("x", "e", 1)),
            ("dispatch_group g", lambda: channel.dispatch_group("g", "e", 2)),
            ("dispatch_group h", lambda: channel.dispatch_group("h", "e", 2)),
            ("broadcast", lambda: channel.broadcast("b", 3)),
            ("stop", lambda: x.stop()),
            ("start", lambda: x.start()),
            ("info", lambda: x.info()),
            ("listener_ids", lambda: channel.listener_ids()),
            ("listener_ids g", lambda: channel.listener_ids("g")),
            ("add_listener", lambda: channel.add_listener("z", group="g")),
            ("remove_listener", lambda: channel.remove_listener("y")),
            ("consume", lambda: channel.listener("x").consume(Inbox())),
        ]
        for name, call in calls:
            try:
                await call()
            except EventDispatcherError:
                pass  # (ChannelUnavailableError: this key is broken)
            except Exception as e:
                problems.append(f"{name}: {e!r:.100}")
        if target not in ("L", "mb:ok"):  # a sound listener notices nothing
            await until(lambda: len(inbox.mails) == 3)
            assert sorted(inbox.data) == [1, 2, 3]
    finally:
        await raw.disconnect()
        await channel.disconnect()
    return problems


@pytest_twisted.ensureDeferred
async def test_no_call_fails_half_way_on_keys_another_program_overwrote(
    redis: RedisServer, log: LogCapture
) -> None:
    problems = {}
    for target in WRONG_KEYS:
        for command, *arguments in WRONG_VALUES:
            found = await calls_on_a_broken_key(redis, target, command, *arguments)
            found += [f"logged: {failure}"[:100] for failure in log.failures()]
            log.events.clear()
            if found:
                problems[f"{target} {command}"] = found
    assert problems == {}


@pytest_twisted.ensureDeferred
async def test_a_request_times_out_across_channel_objects_and_its_late_reply_is_ignored(
    make_redis_channel: ChannelFactory, redis: RedisServer, log: LogCapture
) -> None:
    requester = await make_redis_channel()
    server = RedisStreamChannel(requester.name, url=redis.url, block=200)
    await server.connect()
    try:
        slow: list[Deferred[Any]] = []

        def work(mail: Mail) -> Any:
            if mail.data == "slow":
                slow.append(Deferred())
                return slow[-1]
            return f"done {mail.data}"

        listener = await server.add_listener("worker")
        listener.set_action("work", work)
        await listener.serve(max_in_flight=4)

        started = reactor.seconds()
        with pytest.raises(RequestTimeoutError, match="no reply from 'worker' to 'work'") as info:
            await requester.request("worker", "work", "slow", timeout=0.5)
        assert isinstance(info.value, TimeoutError)
        assert 0.45 <= reactor.seconds() - started < 3
        await until(lambda: len(slow) == 1)

        # The action finishes after the requester gave up: its reply is dropped quietly,
        # and the next request gets its own answer, not the stale one.
        slow[0].callback("too late")
        assert await requester.request("worker", "work", "fast", timeout=5) == "done fast"
        assert log.failures() == []
    finally:
        await server.disconnect()
