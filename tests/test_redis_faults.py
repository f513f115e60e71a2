"""
Redis killed (``kill -9``) and restarted under load: every event answered with an id
reaches every subscriber in order, or the subscriber is told (a gap) that it cannot.

First the races of an epoch change, one at a time, on RedisStreamChannels; then two real
hubs with WebSocket and SSE clients, a publisher posting through the outage, and Redis
with and without persistence.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests._clients import SSEClient, WSClient, connect_sse, connect_ws
from tests._hub import HubProcess, start_hub
from tests._log import LogCapture
from tests._redis import RedisServer, channel_on, until
from twisted_event_dispatcher.carriers.sse import SSEResource
from twisted_event_dispatcher.carriers.websocket import EventWebSocketFactory
from twisted_event_dispatcher.channels import ChannelRegistry
from twisted_event_dispatcher.channels.base import Gap
from twisted_event_dispatcher.channels.redis import RedisStreamChannel
from twisted_event_dispatcher.errors import ChannelUnavailableError
from twisted_event_dispatcher.testing import RecordingCarrier


async def publish_when_back(channel: RedisStreamChannel, data: Any) -> Any:
    """Publish, retrying while the channel's Redis is not back yet."""
    for _ in range(200):
        try:
            return await channel.publish("e", data)
        except ChannelUnavailableError:
            await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("Redis did not come back")


# -- the races of an epoch change ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_new_epoch_written_before_the_reader_notices_is_read_from_its_start(
    volatile: RedisServer,
) -> None:
    # Defect 3: the reader jumped to the end of the new epoch (or read it from the old
    # epoch's last offset), silently skipping its first messages.
    slow = RedisStreamChannel("news", url=volatile.url, block=200)
    slow.RECONNECT_INITIAL = 2.0  # comes back well after the other one
    await slow.connect()
    fast = await channel_on(volatile)
    try:
        carrier = RecordingCarrier()
        await slow.subscribe("*", carrier)
        for n in range(20):
            await fast.publish("e", n)
        await until(lambda: len(carrier.messages) == 20)
        old_epoch = slow.epoch
        await volatile.restart()
        new = [await publish_when_back(fast, "new 1")]
        new += [await fast.publish("e", f"new {n}") for n in range(2, 6)]
        assert [m.id for m in new] == [1, 2, 3, 4, 5] and new[0].epoch != old_epoch
        assert not slow.connected, "the test needs the slow reader to be still away"
        await until(lambda: len(carrier.messages) == 25)
        assert carrier.gaps == [("news", "*", Gap(20, "epoch", new[0].epoch, 1))]
        assert [(m.epoch, m.id, m.data) for m in carrier.messages[20:]] == [
            (m.epoch, m.id, m.data) for m in new
        ]
        assert slow.epoch == new[0].epoch and slow.epoch_changes == 1
        live = await fast.publish("e", "live")
        await until(lambda: carrier.messages[-1].data == "live")
        assert carrier.messages[-1].id == live.id == 6
    finally:
        await slow.disconnect()
        await fast.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_resume_racing_an_epoch_change_gets_a_gap_then_the_new_epoch(
    volatile: RedisServer,
) -> None:
    channel = await channel_on(volatile)
    try:
        live = RecordingCarrier()
        await channel.subscribe("*", live)
        for n in range(10):
            await channel.publish("e", n)
        await until(lambda: len(live.messages) == 10)
        old_epoch = channel.epoch
        # Hold the resume's history read back until the epoch has changed.
        fetched: Deferred[None] = Deferred()
        release: Deferred[None] = Deferred()
        writer = channel._writer
        original = writer.execute_command

        async def held(*args: Any) -> Any:
            result = await original(*args)
            fetched.callback(None)
            await release
            return result

        def patched(*args: Any) -> Any:
            if args[0] == "XRANGE" and args[2] == "4-0":
                return Deferred.fromCoroutine(held(*args))
            return original(*args)

        writer.execute_command = patched
        resuming = channel.subscribe("*", RecordingCarrier(), since=3, epoch=old_epoch)
        await fetched
        await volatile.restart()
        new = [await publish_when_back(channel, "new 1"), await channel.publish("e", "new 2")]
        await until(lambda: len(live.messages) == 12)
        release.callback(None)
        resumed = await resuming
        # oldest: 1, or None if the reader saw the new epoch before its first message
        assert resumed.gap is not None and resumed.gap.oldest in (None, 1)
        assert resumed.gap._replace(oldest=1) == Gap(3, "epoch", new[0].epoch, 1)
        assert [(m.epoch, m.id, m.data) for m in resumed.replay] == [
            (m.epoch, m.id, m.data) for m in new
        ]
        [(_, _, gap)] = live.gaps
        assert gap._replace(oldest=1) == Gap(10, "epoch", new[0].epoch, 1)
        assert [m.data for m in live.messages[10:]] == ["new 1", "new 2"]
    finally:
        await channel.disconnect()


# -- two hubs, clients on both, Redis killed under load ------------------------------------


class Client:
    """One subscribed client's frames, as dicts in the WebSocket protocol's shape."""

    def __init__(self, name: str, ws: WSClient | None = None, sse: SSEClient | None = None):
        self.name = name
        self.ws = ws
        self.sse = sse

    def frames(self) -> list[dict[str, Any]]:
        if self.ws is not None:
            return [f for f in self.ws.inbox.frames if isinstance(f, dict)]
        assert self.sse is not None
        frames = []
        for block in self.sse.inbox.frames:
            kind = block.get("event", "")
            if "data" not in block:
                continue
            payload = json.loads(block["data"])
            if kind.startswith("_"):
                payload["type"] = kind[1:]
            frames.append(payload)
        return frames


async def subscribed_clients(hubs: list[HubProcess]) -> list[Client]:
    clients = []
    for n, hub in enumerate(hubs):
        ws = await connect_ws(hub.port, path="/ws")
        ws.send_json({"type": "subscribe", "event": "*"})
        await ws.wait_type("subscribed")
        clients.append(Client(f"ws@hub{n}", ws=ws))
    sse = await connect_sse(hubs[0].port, "/sse")
    await sse.wait(lambda b: b.get("event") == "_subscribed")
    clients.append(Client("sse@hub0", sse=sse))
    return clients


class Audit:
    """Checks one client's frames against the events that were accepted (202)."""

    def __init__(self, client: Client, accepted: dict[tuple[str, int], int]) -> None:
        self.lost: list[tuple[str, int]] = []  # accepted, not received, no gap covers it
        self.problems: list[str] = []
        self.gaps: list[dict[str, Any]] = []
        self.received = 0
        received: dict[tuple[str, int], Any] = {}
        covered: list[tuple[str, float, float]] = []  # (epoch, after, before) lost
        epoch: str | None = None
        last = 0
        for frame in client.frames():
            kind = frame.get("type")
            if kind == "subscribed":
                epoch = frame["epoch"]
            elif kind == "event":
                key = (frame["epoch"], frame["id"])
                if key in received:
                    self.problems.append(f"duplicate {key}")
                if frame["epoch"] != epoch:
                    self.problems.append(f"{key}: another epoch without a gap before it")
                    epoch, last = frame["epoch"], 0
                if frame["id"] <= last:
                    self.problems.append(f"{key} after offset {last}: out of order")
                if key in accepted and accepted[key] != frame["data"]:
                    self.problems.append(f"{key}: data {frame['data']}, not {accepted[key]}")
                received[key] = frame["data"]
                last = frame["id"]
            elif kind == "gap":
                self.gaps.append(frame)
                oldest = frame["oldest"]
                if frame["reason"] == "epoch":
                    if epoch is not None:
                        covered.append((epoch, frame["since"], math.inf))
                    covered.append((frame["epoch"], 0, oldest or 1))
                    epoch, last = frame["epoch"], 0
                else:
                    covered.append((frame["epoch"], frame["since"], oldest or math.inf))
            elif kind in ("dropped", "error"):
                self.problems.append(f"unexpected frame {frame}")
        self.received = len(received)
        for key in accepted:
            if key not in received and not any(
                e == key[0] and after < key[1] < before for e, after, before in covered
            ):
                self.lost.append(key)


async def post(hub: HubProcess, n: int) -> dict[str, Any] | None:
    """POST one event; the answer if it was accepted (202), else None."""
    response = await treq.post(hub.url + "events", json={"event": "tick", "data": n})
    answer: dict[str, Any] = json.loads(await response.content())
    return answer if response.code == 202 else None


async def publisher(
    hub: HubProcess, numbers: range, accepted: dict[tuple[str, int], int]
) -> None:
    """Post ``numbers`` to ``hub``, a few milliseconds apart; record what was accepted."""
    for n in numbers:
        answer = await post(hub, n)
        if answer is not None:
            accepted[(answer["epoch"], answer["id"])] = n
        await deferLater(reactor, 0.004, lambda: None)


async def kill_redis_under_load(persistent: bool) -> tuple[dict[tuple[str, int], int], list[Any]]:
    """
    Two hubs on one Redis, a WebSocket client on each and an SSE client on one; post
    events to both hubs, ``kill -9`` Redis and restart it while posting; post on until
    enough events were accepted after the restart. The accepted events, and each client's
    audit once it has every event or a gap for it (or after 10 s).
    """
    redis = RedisServer(persistent=persistent)
    await redis.start()
    hubs = []
    try:
        for _ in range(2):
            hubs.append(await start_hub("--channel", "redis", "--redis-url", redis.url))
        clients = await subscribed_clients(hubs)
        accepted: dict[tuple[str, int], int] = {}
        before = gatherResults([
            Deferred.fromCoroutine(publisher(hub, range(n, 200, 2), accepted))
            for n, hub in enumerate(hubs)
        ])
        await until(lambda: len(accepted) >= 100)
        await redis.restart()  # kill -9; start again
        await before
        before_count, after = len(accepted), 0
        for attempt in range(40):  # until 100 more are accepted (at most 40 rounds of 20)
            start = 200 + attempt * 20
            await gatherResults([
                Deferred.fromCoroutine(publisher(hub, range(start + n, start + 20, 2), accepted))
                for n, hub in enumerate(hubs)
            ])
            after = len(accepted) - before_count
            if after >= 100:
                break
        assert after >= 100, "Redis did not come back in time"

        def audits() -> list[Audit]:
            return [Audit(client, accepted) for client in clients]

        try:
            await until(lambda: not any(a.lost for a in audits()), limit=10)
        except AssertionError:
            pass  # reported below, with what was lost
        for client in clients:
            if client.ws is not None:
                client.ws.sendClose()
            elif client.sse is not None and client.sse.transport is not None:
                client.sse.transport.loseConnection()
        return accepted, audits()
    finally:
        for hub in hubs:
            await hub.stop()
        await redis.stop()


@pytest.mark.parametrize("persistent", [False, True], ids=["volatile", "appendonly"])
@pytest_twisted.ensureDeferred
async def test_redis_killed_under_load_loses_nothing_unsaid(persistent: bool) -> None:
    accepted, audits = await kill_redis_under_load(persistent)
    epochs = {epoch for epoch, _ in accepted}
    for audit in audits:
        assert audit.problems == []
        assert audit.lost == [], f"{len(audit.lost)} accepted events lost without a gap"
    if persistent:
        assert len(epochs) == 1, "Redis kept its data: the same epoch"
        for audit in audits:
            assert audit.gaps == [] and audit.received >= len(accepted)
    else:
        assert len(epochs) == 2, "Redis lost its data: a new epoch"
        for audit in audits:
            assert [g["reason"] for g in audit.gaps] == ["epoch"]


# -- a resume while Redis is down or hangs -------------------------------------------------


async def resume_fails(
    channel: RedisStreamChannel, since: int, epoch: str | None = None
) -> tuple[float, str]:
    """Resume from ``since``: how long it took to fail, and why (bounded: never hangs)."""
    start = time.monotonic()
    resuming = channel.subscribe("e", RecordingCarrier(), since=since, epoch=epoch)
    resuming.addTimeout(5, reactor)  # the old code waited for Redis to come back
    with pytest.raises(ChannelUnavailableError) as error:
        await resuming
    return time.monotonic() - start, str(error.value)


@pytest_twisted.ensureDeferred
async def test_a_resume_while_redis_is_down_fails_at_once_and_leaves_nothing(
    redis: RedisServer,
) -> None:
    # Found by an attacker: the history read of a resume waited (silently, for ever) for
    # Redis to come back; the client got neither its replay nor an error.
    channel = await channel_on(redis, reply_timeout=0.5)
    try:
        epoch = channel.epoch
        for n in range(5):
            await channel.publish("e", n)
        await until(lambda: channel.last_id == 5)
        await channel.subscribe("*", RecordingCarrier())
        await redis.kill()
        await until(lambda: not channel.health()["writer"])
        # the history (XRANGE), the oldest offset for an unknown offset and another epoch
        for since, other in [(2, None), (2, epoch), (9, None), (2, "another")]:
            took, reason = await resume_fails(channel, since, other)
            assert took < 0.4, "Redis is known to be down: no need to wait for it"
            assert "is unreachable" in reason and f"after offset {since}" in reason
            assert channel.carrier_count == 1 and channel._pending == []
        # Subscribing without since needs nothing from Redis: live once it is back.
        live = RecordingCarrier()
        await channel.subscribe("e", live)
        assert channel.carrier_count == 2
    finally:
        await channel.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_resume_while_redis_hangs_fails_within_the_reply_timeout(
    redis: RedisServer,
) -> None:
    channel = await channel_on(redis, reply_timeout=0.5)
    try:
        for n in range(5):
            await channel.publish("e", n)
        await until(lambda: channel.last_id == 5)
        redis.signal("STOP")
        try:
            took, reason = await resume_fails(channel, 2)
            assert 0.4 < took < 2.5 and "did not answer XRANGE" in reason, (took, reason)
            assert channel.carrier_count == 0 and channel._pending == []
            # Once the channel knows (the reader heard nothing either), at once.
            await until(lambda: channel.health()["reader"] is False, limit=5)
            took, reason = await resume_fails(channel, 2)
            assert took < 0.4 and "has not answered" in reason, (took, reason)
            assert channel.carrier_count == 0 and channel._pending == []
        finally:
            redis.signal("CONT")
        # Redis is back: the late replies went nowhere, a resume works again.
        await until(lambda: channel.health()["problem"] is None, limit=5)
        carrier = RecordingCarrier()
        resumed = await channel.subscribe("e", carrier, since=2)
        assert [m.data for m in resumed.replay] == [2, 3, 4]
        await channel.publish("e", 5)
        await until(lambda: len(carrier.messages) == 1)
        assert channel.carrier_count == 1 and [m.data for m in carrier.messages] == [5]
    finally:
        await channel.disconnect()


@pytest.mark.parametrize("outage", ["killed", "hung"])
@pytest_twisted.ensureDeferred
async def test_clients_resuming_while_redis_is_away_are_told_without_a_traceback(
    redis: RedisServer, log: LogCapture, outage: str
) -> None:
    channels = ChannelRegistry()
    channel = channels.get_or_create("news", RedisStreamChannel, url=redis.url, reply_timeout=0.5)
    await channel.connect()
    root = Resource()
    root.putChild(b"sse", SSEResource(channels=channels, default_channel="news"))
    sse_port: Any = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[arg-type]
    factory = EventWebSocketFactory(channels=channels, default_channel="news")
    ws_port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    ws: Any = None
    try:
        for n in range(3):
            await channel.publish("a", n)
        await until(lambda: channel.last_id == 3)
        ws = await connect_ws(ws_port.getHost().port)
        if outage == "killed":
            await redis.kill()
            await until(lambda: not channel.health()["writer"])
        else:
            redis.signal("STOP")
        ws.send_json({"type": "subscribe", "event": "a", "since": 1, "epoch": channel.epoch})
        sse = await connect_sse(
            sse_port.getHost().port, f"/sse?event=a&event=b&since={channel.epoch}:1"
        )
        error = await ws.wait_type("error", timeout=3)
        assert error["request"] == "subscribe" and "subscribe failed: Redis at" in error["reason"]
        block = await sse.wait(lambda b: b.get("event") == "_error", timeout=3)
        assert "Redis at" in json.loads(block["data"])["reason"]
        await sse.finished  # the stream ends: the browser retries
        assert sse.status == 200 and not ws.events()
        assert channel.carrier_count == 0
        assert log.failures() == [], "an outage is expected: a warning, no traceback"
        warnings = [e for e in log.events if "subscribe" in e.get("log_format", "")]
        assert len(warnings) == 2 and all(e["log_level"].name == "warn" for e in warnings)
    finally:
        if outage == "hung":
            redis.signal("CONT")
        if ws is not None and ws.transport is not None:
            ws.transport.abortConnection()
        await sse_port.stopListening()
        await ws_port.stopListening()
        await channel.disconnect()
