"""
HubClient, BlockingHubClient and ``python -m twisted_event_dispatcher client`` against the
real hub process, over both transports: its control socket and its WebSocket.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogLevel, formatEvent

from tests._hub import ROOT, HubProcess, start_hub
from tests._log import LogCapture
from twisted_event_dispatcher.client import (
    BlockingHubClient,
    ClientEvent,
    ClientMail,
    ClientNotice,
    ClientRefusal,
    ClientStream,
    ClientWatch,
    HubClient,
    HubConnectionError,
    HubRequestError,
)
from twisted_event_dispatcher.errors import (
    ChannelExistsError,
    DefaultChannelError,
    InvalidDataError,
    ListenerExistsError,
    MailboxFullError,
    ReactorThreadError,
    RemoteActionError,
    RequestTimeoutError,
    ReservedTypeError,
    SyncTimeoutError,
    UnknownChannelError,
    UnknownGroupError,
    UnknownListenerError,
)

#: Bound on every wait of the tests (never reached when all is well).
WAIT = 10.0
TRANSPORTS = ("socket", "ws")


class Hub:
    """A hub process with a control socket in a private directory."""

    def __init__(self, process: HubProcess, directory: str) -> None:
        self.process = process
        self.directory = directory
        self.socket = os.path.join(directory, "hub.sock")
        self.clients: list[HubClient] = []
        self._names = 0

    def url(self, transport: str) -> str:
        if transport == "socket":
            return f"unix:{self.socket}"
        return f"ws://127.0.0.1:{self.process.port}/ws"

    def name(self, prefix: str = "c") -> str:
        """A channel name no other test of this hub uses."""
        self._names += 1
        return f"client-{prefix}{self._names}"

    async def connect(self, transport: str, **options: Any) -> HubClient:
        client = await HubClient.connect(self.url(transport), **options)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest_twisted.async_yield_fixture(scope="module")
async def hub() -> AsyncIterator[Hub]:
    """One hub for the tests of this module: each test uses channels of its own."""
    directory = tempfile.mkdtemp(prefix="ted-client-")
    process = await start_hub(
        "--history", "20", "--control", f"unix:{os.path.join(directory, 'hub.sock')}"
    )
    running = Hub(process, directory)
    yield running
    await running.stop()


@pytest.fixture(params=TRANSPORTS)
def transport(request: Any) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def no_unhandled_error(log: LogCapture) -> Iterator[None]:
    """
    Every test here: nothing in this process (the client library, the helpers) left a
    failing Deferred unobserved (see ``LogCapture.unhandled``).
    """
    yield
    gc.collect()
    assert log.unhandled() == []


def no_traceback(hub: Hub) -> None:
    text = hub.process.text
    assert "Traceback" not in text and "Unhandled" not in text, text[-3000:]


def within(d: Deferred[Any], seconds: float = WAIT) -> Deferred[Any]:
    """``d``, failing with a timeout instead of hanging the test."""
    return d.addTimeout(seconds, reactor)


def kill(stream: ClientStream | ClientWatch) -> None:
    """Break the connection that carries ``stream`` (as a network failure would)."""
    feed: Any = stream._feed
    assert feed is not None
    holder = getattr(feed, "connection", None) or feed.protocol
    holder.transport.abortConnection()


def hold_reconnects(stream: ClientStream | ClientWatch) -> Clock:
    """
    Make ``stream``'s reconnects wait for the returned Clock (``advance`` it to let one
    go), so that what happens while it is away does not race its 0.1 s backoff.
    """
    clock = Clock()
    resuming: Any = stream
    resuming._clock = clock
    return clock


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (a reactor turn at a time, bounded) until ``predicate()`` holds."""
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return
        d: Deferred[None] = Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d
    raise AssertionError(f"timed out waiting for {what}")


async def next_mail(stream: ClientStream) -> ClientMail:
    mail = await within(stream.next())
    assert isinstance(mail, ClientMail), mail
    return mail


# -- every verb -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_verb(hub: Hub, transport: str) -> None:
    client = await hub.connect(transport)
    generated = await client.create_channel()
    assert isinstance(generated, str) and len(generated) == 32
    name = await client.create_channel(hub.name())
    assert name.startswith("client-")
    worker = await client.register(name, "worker", group="workers", mailbox_size=10,
                                   ack_timeout=5.0)
    assert worker == "worker"
    anonymous = await client.register(name)
    assert isinstance(anonymous, str) and anonymous != worker
    sent = await client.dispatch(name, worker, "job", {"n": 1})
    assert isinstance(sent, str)
    assert await client.dispatch(name, worker, "stop") is None
    assert await client.dispatch(name, worker, "start") is None
    grouped = await client.dispatch_group(name, "workers", "job", [2])
    assert isinstance(grouped, str)
    offset = await client.broadcast_message(name, "news", "hi")
    assert isinstance(offset, int) and offset >= 1

    stream = client.stream(name, worker)
    answer = await within(stream.wait_open())
    assert answer["r"] == worker and answer["c"] == name
    got = [await next_mail(stream) for _ in range(3)]
    assert sorted((m.event, json.dumps(m.data), m.source) for m in got) == [
        ("job", "[2]", "group"), ("job", '{"n": 1}', "dispatch"), ("news", '"hi"', "broadcast"),
    ]
    assert all(m.deliveries == 1 and m.listener == worker and m.channel == name for m in got)
    assert all(not m.is_request for m in got)
    assert [await m.ack() for m in got] == [True, True, True]
    assert await got[0].ack() is False  # settled already: nothing sent
    await stream.close()
    assert await within(stream.wait_ended()) == "closed"

    await client.remove_listener(name, anonymous)
    with pytest.raises(UnknownListenerError):
        await client.dispatch(name, anonymous, "job")
    await client.remove_channel(name)
    with pytest.raises(UnknownChannelError) as caught:
        await client.broadcast_message(name, "news")
    assert caught.value.name == name and name in str(caught.value)
    # no channel: the hub's default one
    assert isinstance(await client.broadcast_message(None, "news"), int)
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_auto_ack_stream_is_not_redelivered(hub: Hub, transport: str) -> None:
    client = await hub.connect(transport)
    name = await client.create_channel(hub.name())
    await client.register(name, "l")
    first = await client.dispatch(name, "l", "a", 1)
    await client.dispatch(name, "l", "b", 2)
    stream = client.stream(name, "l", auto_ack=True, max_in_flight=1)
    mails = [await next_mail(stream) for _ in range(2)]
    assert [(m.id == first, m.event) for m in mails] == [(True, "a"), (False, "b")]
    await stream.close()
    if transport == "ws":
        # close() fired once the hub answered the unlisten: later mail is for the next
        third = await client.dispatch(name, "l", "c", 3)
        again = client.stream(name, "l")
    else:
        # On the control socket the hub ends the closed stream when it reads the close,
        # which may come after a dispatch sent meanwhile on another connection: that mail
        # would be written to the old stream and auto-acknowledged (at most once; see
        # ClientStream.close). A new stream takes the listener over once it is open.
        again = client.stream(name, "l")
        await within(again.wait_open())
        third = await client.dispatch(name, "l", "c", 3)
    mail = await next_mail(again)
    assert (mail.id, mail.event, mail.deliveries) == (third, "c", 1)  # a and b: acked by the hub
    await again.close()


@pytest_twisted.ensureDeferred
async def test_request_reply_and_remote_errors(hub: Hub, transport: str) -> None:
    client = await hub.connect(transport)
    name = await client.create_channel(hub.name())
    await client.register(name, "calc", group="calcs")
    stream = client.stream(name, "calc")
    seen: list[ClientMail] = []

    async def serve(mail: ClientMail) -> Any:
        seen.append(mail)
        if mail.event == "add":
            return sum(mail.data)
        raise ZeroDivisionError("division by zero")

    stream.on_mail(serve)
    assert await within(client.request(name, "calc", "add", [1, 2, 3])) == 6
    assert await within(client.request(name, "calcs", "add", [4], group=True)) == 4
    with pytest.raises(RemoteActionError) as caught:
        await within(client.request(name, "calc", "divide", [1, 0]))
    assert caught.value.remote_type == "ClientError"
    assert caught.value.remote_message == "ZeroDivisionError: division by zero"
    assert all(m.is_request for m in seen) and [m.settled for m in seen] == [
        "reply", "reply", "fail",
    ]
    # nobody consumes "idle": the hub answers the request with a timeout
    await client.register(name, "idle")
    with pytest.raises(RequestTimeoutError) as timed_out:
        await within(client.request(name, "idle", "add", [1], timeout=0.2))
    assert isinstance(timed_out.value, TimeoutError) and timed_out.value.target == "idle"
    assert "within 0.2 s" in str(timed_out.value)
    await stream.close()
    no_traceback(hub)


# -- errors -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_hub_errors_are_the_library_exceptions(hub: Hub, transport: str) -> None:
    client = await hub.connect(transport)
    name = await client.create_channel(hub.name())
    await client.register(name, "small", mailbox_size=1)

    with pytest.raises(UnknownListenerError) as unknown:
        await client.dispatch(name, "nobody", "job")
    assert isinstance(unknown.value, KeyError) and unknown.value.listener_id == "nobody"
    assert str(unknown.value) == f"no listener 'nobody' on channel '{name}'"
    with pytest.raises(UnknownGroupError):
        await client.dispatch_group(name, "nogroup", "job")
    with pytest.raises(UnknownChannelError):
        await client.register(hub.name("missing"), "x")

    await client.dispatch(name, "small", "job", 1)
    with pytest.raises(MailboxFullError) as full:
        await client.dispatch(name, "small", "job", 2)
    assert full.value.limit == 1 and full.value.target == "small" and "full" in str(full.value)

    with pytest.raises(ListenerExistsError):
        await client.register(name, "small")
    with pytest.raises(ChannelExistsError):
        await client.create_channel(name)
    with pytest.raises(ReservedTypeError):
        await client.dispatch_group(name, "g", "start")
    with pytest.raises(DefaultChannelError):
        await client.remove_channel("events")
    with pytest.raises(HubRequestError) as bad:
        await client.register(name, "x", mailbox_size=-1)
    assert isinstance(bad.value, ValueError) and bad.value.code == "bad_request"
    assert "size" in str(bad.value) or "mailbox_size" in str(bad.value)
    with pytest.raises(HubRequestError) as bad_name:
        await client.dispatch(name, "small", "")
    assert bad_name.value.code == "bad_request"

    # refused by the client before anything is sent
    with pytest.raises(InvalidDataError):
        client.dispatch(name, "small", "job", math.nan)
    with pytest.raises(HubRequestError) as large:
        client.broadcast_message(name, "job", "x" * 70000)
    assert large.value.code == "too_large"
    # the connection is still usable after all that
    assert isinstance(await client.broadcast_message(name, "news"), int)
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_data_may_nest_64_levels(hub: Hub, transport: str) -> None:
    # The client refused 64 levels (it counted the request around the data).
    def nested(levels: int) -> Any:
        value: Any = []
        for _ in range(levels - 1):
            value = [value]
        return value

    client = await hub.connect(transport)
    name = await client.create_channel(hub.name())
    await client.register(name, "w")
    sent = await within(client.dispatch(name, "w", "job", nested(64)))
    stream = client.stream(name, "w")
    mail = await next_mail(stream)
    assert (mail.id, mail.data) == (sent, nested(64))
    with pytest.raises(InvalidDataError) as refused:
        client.dispatch(name, "w", "job", nested(65))
    assert str(refused.value) == "data must not nest deeper than 64 levels"
    await stream.close()


@pytest_twisted.ensureDeferred
async def test_a_lost_call_fails_and_is_not_sent_again(hub: Hub, transport: str) -> None:
    client = await hub.connect(transport)
    name = await client.create_channel(hub.name())
    await client.register(name, "slow")
    pending = client.request(name, "slow", "work", 1, timeout=30)
    # the request waits for a reply; break the connection it was sent on
    worker = await hub.connect("socket")
    stream = worker.stream(name, "slow")
    mail = await next_mail(stream)
    link: Any = client._link
    holder = link._calls if transport == "socket" else link._protocol
    holder.transport.abortConnection()
    with pytest.raises(HubConnectionError) as lost:
        await within(pending)
    assert isinstance(lost.value, ConnectionError) and "may or may not" in str(lost.value)
    # the next call opens a new connection; the request was not sent twice
    assert isinstance(await client.create_channel(), str)
    assert mail.deliveries == 1 and await mail.reply("late") is True
    # A second copy would have been sent before that call, so it would be in the mailbox
    # before this mail: the next mail the worker gets.
    marker = await client.dispatch(name, "slow", "marker")
    after = await next_mail(stream)
    assert (after.id, after.event, after.is_request) == (marker, "marker", False)
    await stream.close()


@pytest_twisted.ensureDeferred
async def test_pending_calls_are_bounded(hub: Hub, transport: str) -> None:
    client = await hub.connect(transport, max_pending=2)
    name = await client.create_channel(hub.name())
    await client.register(name, "idle")
    waiting = [client.request(name, "idle", "work", i, timeout=0.5) for i in range(2)]
    with pytest.raises(HubRequestError) as refused:
        await client.request(name, "idle", "work", 3)
    assert refused.value.code == "limit" and "max_pending 2" in str(refused.value)
    for d in waiting:
        with pytest.raises(RequestTimeoutError):
            await within(d)
    assert isinstance(await client.broadcast_message(name, "news"), int)


@pytest_twisted.ensureDeferred
async def test_a_line_over_max_line_ends_the_stream(hub: Hub, transport: str) -> None:
    client = await hub.connect(transport, max_line=400, max_request=300)
    name = await client.create_channel(hub.name())
    await client.register(name, "l")
    sender = await hub.connect("socket")
    await sender.dispatch(name, "l", "big", "x" * 1000)
    stream = client.stream(name, "l")
    with pytest.raises(HubConnectionError) as broken:
        await within(stream.next())
    assert "max_line" in str(broken.value)
    assert stream.ended and stream.reconnects == 0  # not reconnecting into the same line
    with pytest.raises(HubConnectionError):
        await within(stream.wait_ended())


@pytest_twisted.ensureDeferred
async def test_streaming_an_unknown_listener_fails(hub: Hub, transport: str) -> None:
    client = await hub.connect(transport)
    name = await client.create_channel(hub.name())
    stream = client.stream(name, "nobody")
    with pytest.raises(UnknownListenerError):
        await within(stream.next())
    assert stream.ended and stream.reconnects == 0
    watch = client.watch(hub.name("missing"))
    with pytest.raises(UnknownChannelError):
        await within(watch.next())


# -- reconnecting -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_stream_reconnects_and_gets_its_unacknowledged_mail_again(
    hub: Hub, transport: str
) -> None:
    client = await hub.connect(transport)
    name = await client.create_channel(hub.name())
    await client.register(name, "w")
    for n in range(3):
        await client.dispatch(name, "w", "job", n)
    stream = client.stream(name, "w", max_in_flight=2)
    first, second = await next_mail(stream), await next_mail(stream)
    assert await first.ack() is True
    third = await next_mail(stream)  # sent once the hub had the ack (2 in flight at most)
    held = hold_reconnects(stream)
    kill(stream)
    await until(lambda: bool(held.getDelayedCalls()), "the loss")
    assert not stream.connected
    assert await second.ack() is False  # its connection is gone: it comes again
    held.advance(1)
    again = [await next_mail(stream) for _ in range(2)]
    assert [(m.id, m.data) for m in again] == [(second.id, 1), (third.id, 2)]
    assert [m.deliveries for m in again] == [2, 2]  # each delivered once before the loss
    assert stream.reconnects == 1 and stream.connected
    for m in again:
        assert await m.ack() is True
    await stream.close()
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_a_watch_resumes_after_its_last_event(hub: Hub, transport: str) -> None:
    client = await hub.connect(transport)
    publisher = await hub.connect("socket")
    name = await client.create_channel(hub.name())
    watch = client.watch(name)
    opened = await within(watch.wait_open())
    assert opened["c"] == name and opened["last_id"] is None and opened["replayed"] == 0
    await publisher.broadcast_message(name, "news", 1)
    first = await within(watch.next())
    assert isinstance(first, ClientEvent) and (first.event, first.data) == ("news", 1)
    assert watch.since == first.id and watch.epoch == first.epoch
    held = hold_reconnects(watch)
    kill(watch)
    await until(lambda: bool(held.getDelayedCalls()), "the reconnect to be scheduled")
    # sent while the watch is away; then it reconnects
    await publisher.broadcast_message(name, "news", 2)
    await publisher.broadcast_message(name, "news", 3)
    held.advance(1)
    items = [await within(watch.next()) for _ in range(2)]
    assert [(i.id, i.data) for i in items] == [(first.id + 1, 2), (first.id + 2, 3)]
    assert watch.reconnects == 1 and watch.answer is not None
    assert watch.answer["replayed"] == 2  # resumed with since: replayed, not lost
    await publisher.broadcast_message(name, "news", 4)
    live = await within(watch.next())
    assert isinstance(live, ClientEvent) and live.data == 4
    await watch.close()


@pytest_twisted.ensureDeferred
async def test_a_watch_surfaces_gaps_and_ends_when_its_channel_is_removed(
    hub: Hub, transport: str
) -> None:
    client = await hub.connect(transport)
    name = await client.create_channel(hub.name())
    for n in range(3):
        await client.broadcast_message(name, "news", n)
    replaying = client.watch(name, since=1)
    replayed = [await within(replaying.next()) for _ in range(2)]
    assert [(i.id, i.data) for i in replayed] == [(2, 1), (3, 2)]
    await replaying.close()

    stale = client.watch(name, since=1, epoch="not-this-epoch")
    gap = await within(stale.next())
    assert isinstance(gap, ClientNotice) and gap.type == "gap" and gap.reason == "epoch"
    assert gap.since == 1 and gap.epoch == replayed[0].epoch
    await client.broadcast_message(name, "news", "after")
    after = await within(stale.next())
    assert isinstance(after, ClientEvent) and after.data == "after"
    await client.remove_channel(name)
    removed = await within(stale.next())
    assert isinstance(removed, ClientNotice) and removed.reason == "removed"
    assert await within(stale.next()) is None  # the end of the watch
    assert await within(stale.wait_ended()) == "removed"


@pytest_twisted.ensureDeferred
async def test_a_stream_ends_when_its_listener_is_removed_or_replaced(
    hub: Hub, transport: str
) -> None:
    client = await hub.connect(transport)
    other = await hub.connect("socket")
    name = await client.create_channel(hub.name())
    await client.register(name, "a")
    await client.register(name, "b")
    removed = client.stream(name, "a")
    await within(removed.wait_open())
    await client.remove_listener(name, "a")
    assert await within(removed.next()) is None
    assert await within(removed.wait_ended()) == "removed"
    replaced = client.stream(name, "b")
    await within(replaced.wait_open())
    newer = other.stream(name, "b")
    await within(newer.wait_open())
    assert await within(replaced.wait_ended()) == "replaced"
    await newer.close()


def client_log(log: LogCapture, level: LogLevel) -> list[str]:
    """What the client library logged at ``level``."""
    return [
        formatEvent(e) for e in log.events
        if e.get("log_namespace") == "twisted_event_dispatcher.client"
        and e.get("log_level") == level
    ]


async def next_retry(held: Clock) -> None:
    """Let ``held``'s scheduled reconnect attempt go, and wait until it failed again."""
    (call,) = held.getDelayedCalls()
    held.advance(call.getTime() - held.seconds())
    await until(lambda: bool(held.getDelayedCalls()), "the attempt to fail")


@pytest_twisted.ensureDeferred
async def test_a_hub_that_stays_down_is_logged_once_a_minute_not_at_every_attempt(
    log: LogCapture,
) -> None:
    # It logged a warning at every attempt: every 5 s, 720 lines an hour.
    directory = tempfile.mkdtemp(prefix="ted-client-")
    socket = f"unix:{os.path.join(directory, 'hub.sock')}"
    process = await start_hub("--control", socket)
    client = await HubClient.connect(socket)
    try:
        await client.register(None, "w")
        stream = client.stream(None, "w")
        await within(stream.wait_open())
        held = hold_reconnects(stream)
        process.signal("KILL")  # (not stopping: its stream is not ended, but lost)
        await process.ended
        await until(lambda: bool(held.getDelayedCalls()), "the loss")
        began = held.seconds()
        attempts = 0
        while held.seconds() - began < 600:  # ten minutes of a hub that stays down
            await next_retry(held)
            attempts += 1
        warned = client_log(log, LogLevel.warn)
        assert attempts > 100 and 10 <= len(warned) <= 12, warned  # the loss, one a minute
        assert warned[0] == (
            "stream 'w' on the hub's default channel: the stream's connection was lost; "
            "reconnecting in 0.1 s; unacknowledged mail will be delivered again"
        )
        assert "may or may not" not in " ".join(warned)
        counts = [int(re.findall(r"still reconnecting: (\d+) failed attempt", w)[0])
                  for w in warned[1:]]
        assert counts == sorted(counts) and attempts - 13 < counts[-1] < attempts  # a minute
        assert "cannot connect" in warned[-1] and "refused" in warned[-1]

        process = await start_hub("--control", socket)
        await client.register(None, "w")  # (a memory hub: its listeners went with it)
        (call,) = held.getDelayedCalls()
        held.advance(call.getTime() - held.seconds())
        await within(stream.wait_open())
        assert stream.reconnects == 1
        assert client_log(log, LogLevel.warn) == warned  # nothing more while it was back
        (back,) = client_log(log, LogLevel.info)
        assert back.startswith(f"stream 'w' on the hub's default channel: reconnected after "
                               f"{attempts} failed attempt(s) in ")
    finally:
        await client.close()
        await process.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_a_refused_ack_is_logged_and_kept_on_the_stream(
    hub: Hub, transport: str, log: LogCapture
) -> None:
    # ack() fires True when the line is sent; the hub's refusal used to be a generic
    # warning (WebSocket) or a line naming no mail (control socket), nothing a program
    # could look at.
    client = await hub.connect(transport)
    name = await client.create_channel(hub.name())
    await client.register(name, "w", group="g")
    job = await client.dispatch_group(name, "g", "job", 1)
    stream = client.stream(name, "w")
    mail = await next_mail(stream)
    assert mail.id == job
    await client.dispatch(name, "w", "stop")  # a stopped member's group mail goes back
    assert await mail.ack() is True  # sent, which is no confirmation
    await until(lambda: bool(stream.refused), "the hub's refusal")
    (refusal,) = stream.refused
    assert isinstance(refusal, ClientRefusal)
    assert (refusal.id, refusal.how, refusal.code) == (job, "ack", "unknown_mail")
    assert job in refusal.message
    (warned,) = [w for w in client_log(log, LogLevel.warn) if "refused" in w]
    assert warned.startswith(
        f"stream 'w' on channel '{name}': the hub refused the ack of mail {job!r}: "
    ) and warned.endswith(" (unknown_mail)")
    await client.dispatch(name, "w", "start")
    again = await next_mail(stream)
    assert (again.id, again.deliveries) == (job, 2)
    assert await again.ack() is True
    marker = await client.dispatch(name, "w", "marker")
    assert (await next_mail(stream)).id == marker  # the hub took that ack: nothing more
    assert len(stream.refused) == 1
    await stream.close()
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_calls_work_again_after_a_hub_restart(transport: str) -> None:
    directory = tempfile.mkdtemp(prefix="ted-client-")
    socket = f"unix:{os.path.join(directory, 'hub.sock')}"
    process = await start_hub("--control", socket)
    port = process.port
    url = socket if transport == "socket" else f"ws://127.0.0.1:{port}/ws"
    client = await HubClient.connect(url)
    try:
        await client.register(None, "idle")
        pending = client.request(None, "idle", "work", timeout=60)
        # (answered after the hub read the request, sent before it on the same connection)
        assert isinstance(await within(client.broadcast_message(None, "news")), int)
        process.signal("KILL")  # a crash (a stopping hub answers it "unavailable")
        await process.ended
        with pytest.raises(HubConnectionError) as lost:
            await within(pending)
        assert "may or may not" in str(lost.value)
        with pytest.raises(HubConnectionError) as down:  # at once, while it is down
            await within(client.create_channel())
        assert "cannot connect" in str(down.value)

        process = await start_hub("--control", socket, "--listen",
                                  f"tcp:{port}:interface=127.0.0.1")
        assert isinstance(await within(client.create_channel()), str)  # a new connection
        await client.register(None, "idle")
        stream = client.stream(None, "idle")
        marker = await client.dispatch(None, "idle", "marker")
        first = await next_mail(stream)
        assert (first.id, first.event) == (marker, "marker")  # the request was not resent
        await stream.close()
    finally:
        await client.close()
        await process.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- the blocking client ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_blocking_client_from_a_thread(hub: Hub, transport: str) -> None:
    url = hub.url(transport)
    name = hub.name()

    def run() -> dict[str, Any]:
        found: dict[str, Any] = {}
        with BlockingHubClient.connect(url, timeout=WAIT) as client:
            assert client.create_channel(name) == name
            assert client.register(name, "w") == "w"
            found["id"] = client.dispatch(name, "w", "job", {"n": 1})
            found["offset"] = client.broadcast_message(name, "news", timeout=WAIT)
            stream = client.stream(name, "w")
            mails = [stream.get(timeout=WAIT), next(stream)]
            found["mails"] = [(m.event, m.data, m.source) for m in mails if m is not None]
            found["acked"] = [m.ack() for m in mails if m is not None]
            try:
                stream.get(timeout=0.2)
            except SyncTimeoutError as e:
                found["quiet"] = str(e)
            try:
                client.request(name, "w", "work", timeout=0.2)  # w's stream does not reply
            except RequestTimeoutError as e:
                found["timeout"] = str(e)
            request = stream.get(timeout=WAIT)
            assert request is not None and request.is_request
            found["late_reply"] = request.reply("late")
            watch = client.watch(name, since=0)
            found["watched"] = next(watch)
            stream.close()
            watch.close()
            found["ended"] = stream.ended
            try:
                client.dispatch(name, "nobody", "job")
            except UnknownListenerError as e:
                found["unknown"] = str(e)
        return found

    found = await threads.deferToThread(run)
    assert isinstance(found["id"], str) and isinstance(found["offset"], int)
    assert sorted(found["mails"]) == [("job", {"n": 1}, "dispatch"), ("news", None, "broadcast")]
    assert found["acked"] == [True, True]
    assert found["quiet"] == "nothing arrived within 0.2s"
    assert "within 0.2 s" in found["timeout"]
    assert found["late_reply"] is True and found["ended"] is True
    assert isinstance(found["watched"], ClientEvent) and found["watched"].event == "news"
    assert found["unknown"] == f"no listener 'nobody' on channel '{name}'"


@pytest_twisted.ensureDeferred
async def test_blocking_client_refuses_the_reactor_thread(hub: Hub) -> None:
    client = await hub.connect("socket")
    with pytest.raises(ReactorThreadError):
        BlockingHubClient(client).create_channel()
    with pytest.raises(ValueError):
        BlockingHubClient(client, timeout=0)


@pytest_twisted.ensureDeferred
async def test_a_blocking_call_that_times_out_leaves_no_unhandled_error(log: LogCapture) -> None:
    # It used to be logged as "Unhandled error in EventualResult ... CancelledError" (the
    # cancelled call's result, which crochet held for nobody), in users' programs too.
    silent = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Protocol)  # accepts, never answers
    )
    url = f"tcp:127.0.0.1:{silent.getHost().port}"

    def run() -> str:
        with BlockingHubClient.connect(url, timeout=WAIT) as client:
            try:
                client.create_channel(timeout=0.1)
            except SyncTimeoutError as e:
                return str(e)
        return "answered"

    try:
        # (the cancel was queued to the reactor before this thread's result was)
        message = await threads.deferToThread(run)
    finally:
        await silent.stopListening()
    assert message == "create_channel did not finish within 0.1s"
    gc.collect()
    assert log.unhandled() == []


# -- connecting ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connecting_fails_clearly(hub: Hub) -> None:
    with pytest.raises(HubConnectionError) as missing:
        await HubClient.connect(f"unix:{hub.directory}/nothing.sock")
    assert "cannot connect" in str(missing.value)
    with pytest.raises(ValueError):
        HubClient.connect("bogus:thing")
    with pytest.raises(ValueError):
        HubClient.connect(hub.url("socket"), token="secret")  # the socket has no token


@pytest_twisted.ensureDeferred
async def test_websocket_token_is_sent_as_a_bearer_header() -> None:
    process = await start_hub("--token", "s3cret")
    url = f"ws://127.0.0.1:{process.port}/ws"
    try:
        client = await HubClient.connect(url, token="s3cret")
        assert isinstance(await client.broadcast_message(None, "news"), int)
        await client.close()
        with pytest.raises(HubConnectionError) as refused:
            await HubClient.connect(url, token="wrong")
        assert "401" in str(refused.value)
    finally:
        await process.stop()


# -- the command line ---------------------------------------------------------------------------


async def cli(*args: str) -> tuple[int, str, str]:
    """Run ``python -m twisted_event_dispatcher client ARGS``: (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "EVENT_HUB_TOKEN"}
    d: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
        sys.executable, ("-m", "twisted_event_dispatcher", "client", *args), env=env, path=ROOT
    )
    out, err, status = await within(d, 30)
    return status, out.decode(), err.decode()


@pytest_twisted.ensureDeferred
async def test_command_line(hub: Hub, transport: str) -> None:
    where = ("--control", hub.url("socket")) if transport == "socket" else (
        "--url", hub.url("ws"))
    name = hub.name()
    status, out, err = await cli(*where, "create-channel", name)
    assert (status, json.loads(out)) == (0, {"channel": name}), err
    status, out, err = await cli(*where, "register", name, "--id", "w", "--group", "g")
    assert (status, json.loads(out)) == (0, {"listener": "w", "channel": name}), err
    status, out, err = await cli(*where, "dispatch", name, "w", "job", '{"n": 1}')
    assert status == 0 and isinstance(json.loads(out)["id"], str), err
    client = await hub.connect(transport)
    await client.dispatch_group(name, "g", "job", 2)
    status, out, err = await cli(*where, "listen", name, "w", "--count", "2")
    lines = [json.loads(line) for line in out.splitlines()]
    assert status == 0, err
    assert sorted((m["event"], json.dumps(m["data"]), m["source"]) for m in lines) == [
        ("job", "2", "group"), ("job", '{"n": 1}', "dispatch"),
    ]
    assert all(m["deliveries"] == 1 and m["listener"] == "w" for m in lines)
    # acknowledged after printing: a new stream gets nothing of them
    third = await client.dispatch(name, "w", "job", 3)
    stream = client.stream(name, "w")
    assert (await next_mail(stream)).id == third
    await stream.close()

    status, out, err = await cli(*where, "dispatch", name, "nobody", "job")
    assert status == 1 and out == "" and f"no listener 'nobody' on channel '{name}'" in err
    status, out, err = await cli(*where, "dispatch", name, "w", "job", "{not json")
    assert status == 2 and "DATA must be JSON" in err
    status, out, err = await cli(*where, "frobnicate")
    assert status == 2 and "invalid choice" in err


@pytest_twisted.ensureDeferred
async def test_command_line_watch_and_usage(hub: Hub) -> None:
    where = ("--control", hub.url("socket"))
    name = hub.name()
    assert (await cli(*where, "create-channel", name))[0] == 0
    client = await hub.connect("socket")
    await client.broadcast_message(name, "news", {"n": 1})
    status, out, err = await cli(*where, "watch", name, "--since", "0", "--count", "1")
    assert status == 0, err
    event = json.loads(out)
    assert (event["type"], event["id"], event["event"], event["data"]) == (
        "event", 1, "news", {"n": 1},
    )
    status, out, err = await cli(*where, "remove-channel", name)
    assert (status, json.loads(out)) == (0, {"ok": True}), err
    status, _, err = await cli("--control", f"unix:{hub.directory}/none.sock", "create-channel")
    assert status == 1 and "cannot connect" in err
    status, _, err = await cli("--control", hub.url("socket"), "--token", "t", "create-channel")
    assert status == 2 and "--token goes with --url" in err
    status, _, err = await cli("create-channel")
    assert status == 2 and "--control" in err


def test_main_usage_lists_the_client(capsys: Any) -> None:
    from twisted_event_dispatcher.__main__ import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage:") and "serve|demo|client" in out.splitlines()[0]
