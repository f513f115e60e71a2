"""
The multi-channel hub: :class:`HubChannels` (channels created and removed at run time),
``POST /channels/{c}/dispatch|broadcast|dispatch_group`` and ``/health``'s channel list,
against real hubs (a subprocess where the control socket drives it, else a real
HubService in this process, whose log is at hand) and a real redis-server.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests._clients import connect_ws
from tests._control import connect_control
from tests._fuzz import examples
from tests._hub import HubProcess, start_hub
from tests._local_hub import LocalHub, start_local_hub
from tests._raw_http import Answer, request, send
from tests._redis import RedisServer, until
from twisted_event_dispatcher.channels import ChannelRegistry, MemoryChannel
from twisted_event_dispatcher.channels.base import Channel
from twisted_event_dispatcher.channels.redis import RedisStreamChannel
from twisted_event_dispatcher.errors import (
    ChannelExistsError,
    ChannelLimitError,
    ChannelUnavailableError,
    DefaultChannelError,
    UnknownChannelError,
)
from twisted_event_dispatcher.hub._channels import HubChannels
from twisted_event_dispatcher.hub._health import HEALTH_DEADLINE
from twisted_event_dispatcher.testing import RecordingCarrier

# -- HubChannels ----------------------------------------------------------------------------


def memory_channels(max_channels: int = 3) -> HubChannels:
    clock = Clock()
    registry = ChannelRegistry()
    default = registry.register(MemoryChannel("events", clock=clock))
    return HubChannels(
        registry, lambda name: MemoryChannel(name, clock=clock), default,
        max_channels=max_channels,
    )


@pytest_twisted.ensureDeferred
async def test_channels_are_created_by_name_or_generated_and_found() -> None:
    channels = memory_channels()
    named = await channels.create("orders")
    generated = await channels.create()
    assert named.name == "orders" and len(generated.name) == 32
    assert channels.names() == ["events", "orders", generated.name]
    assert channels.get("orders") is named and channels.get(None) is channels.default
    with pytest.raises(UnknownChannelError):
        channels.get("nothing")
    for bad in ("", "_reserved", "*", "a\nb", 7):
        with pytest.raises((TypeError, ValueError)):
            channels.create(bad)  # type: ignore[arg-type]  # at once, not a failed Deferred
    assert len(channels) == 3


@pytest_twisted.ensureDeferred
async def test_max_channels_counts_the_default_one_and_frees_a_slot_on_removal() -> None:
    channels = memory_channels(max_channels=2)
    await channels.create("one")
    with pytest.raises(ChannelLimitError, match="has 2 channels"):
        await channels.create("two")
    with pytest.raises(ChannelExistsError):
        await channels.create("one")
    assert channels.names() == ["events", "one"]
    await channels.remove("one")
    assert (await channels.create("two")).name == "two"


@pytest_twisted.ensureDeferred
async def test_the_default_channel_cannot_be_removed() -> None:
    channels = memory_channels()
    with pytest.raises(DefaultChannelError, match="default channel"):
        channels.remove("events")
    with pytest.raises(UnknownChannelError):
        channels.remove("nothing")
    assert channels.get("events") is channels.default


@pytest_twisted.ensureDeferred
async def test_removing_a_channel_tells_its_subscribers_and_ends_its_listener_streams() -> None:
    channels = memory_channels()
    channel = await channels.create("jobs")
    carrier, other = RecordingCarrier(), RecordingCarrier()
    await channel.subscribe("*", carrier)
    await channel.subscribe("news", carrier)
    await channels.default.subscribe("*", other)
    await channel.publish("news", 1)
    await channel.add_listener("worker")
    stream = channel.listener("worker").messages()
    removed: list[str] = []
    channels.removed_callbacks.append(removed.append)
    await channels.remove("jobs")
    assert [(c, e, g.reason) for c, e, g in carrier.gaps] == [
        ("jobs", "*", "removed"), ("jobs", "news", "removed")
    ]
    assert carrier.gaps[0][2].since == 1, "the gap says the last offset it got"
    assert channel.carrier_count == 0 and removed == ["jobs"]
    assert other.gaps == [], "the other channels' subscribers are not told"
    assert [m async for m in stream] == [] and stream.reason == "closed"
    assert channels.names() == ["events"]
    again = await channels.create("jobs")
    assert again is not channel and again.carrier_count == 0


@pytest_twisted.ensureDeferred
async def test_redis_channels_are_connected_on_creation_and_disconnected_on_removal(
    redis: RedisServer,
) -> None:
    registry = ChannelRegistry()
    made: list[RedisStreamChannel] = []

    def make(name: str) -> Channel:
        made.append(RedisStreamChannel(name, url=redis.url, connect_timeout=0.5, block=200))
        return made[-1]

    registry.register(make("events"))
    default = made[-1]
    await default.connect()
    channels = HubChannels(registry, make, default, max_channels=3)
    jobs = await channels.create("jobs")
    assert jobs is made[-1] and made[-1].connected
    first = await jobs.publish("news", "kept")
    await jobs.add_listener("worker")
    await channels.remove("jobs")
    assert not made[-1].connected and channels.names() == ["events"]
    # The stream and the listener stay in Redis for the channel's other hubs.
    again = await channels.create("jobs")
    assert again is made[-1] and made[-1].last_id == first.id
    assert await again.listener_ids() == ["worker"]
    await redis.kill()
    with pytest.raises(ChannelUnavailableError):
        await channels.create("refused")
    assert channels.names() == ["events", "jobs"], "nothing is kept of a failed creation"
    assert not made[-1].connected
    await channels.close_all()
    assert not any(channel.connected for channel in made)


# -- HTTP: POST /channels/{c}/... -----------------------------------------------------------


async def post(
    port: int, target: str, body: Any, headers: list[tuple[str, str]] | None = None
) -> tuple[int, Any, Answer]:
    """POST ``body`` (JSON, or raw bytes) to ``target``: the status, the JSON answer, all."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = await send(port, request("POST", target, headers or [], raw))
    assert answer.status is not None, "the hub answered"
    assert answer.header("content-type") == b"application/json", answer
    assert answer.header("content-length") == b"%d" % len(answer.body), "not chunked"
    return answer.status, json.loads(answer.body), answer


def refused(answer: Any, code: str) -> bool:
    """An error answer with ``code`` and a message."""
    return (
        isinstance(answer, dict) and set(answer) == {"error", "code"}
        and answer["code"] == code and isinstance(answer["error"], str) and answer["error"] != ""
    )


@pytest_twisted.async_yield_fixture
async def local() -> AsyncIterator[LocalHub]:
    hub = await start_local_hub(max_rate=0)
    yield hub
    await hub.stop()
    assert not hub.problems()


async def next_mail(stream: Any, timeout: float = 5) -> Any:
    waiting: Deferred[Any] = Deferred.fromCoroutine(stream.__anext__())
    mail = await waiting.addTimeout(timeout, reactor)
    mail.ack()
    return mail


@pytest_twisted.ensureDeferred
async def test_dispatch_broadcast_and_dispatch_group_reach_a_streaming_listener(
    local: LocalHub,
) -> None:
    hub = local.hub
    name = "work queue/1"  # a space and a slash, percent-encoded in the path
    channel = await hub.hub_channels.create(name)
    await channel.add_listener("worker", group="pool")
    stream = channel.listener("worker").messages(max_in_flight=10)
    ws = await connect_ws(local.port, path="/ws")
    ws.send_json({"type": "subscribe", "event": "*", "channel": name})
    await ws.wait_type("subscribed")
    base = "/channels/" + quote(name, safe="")

    status, answer, _ = await post(
        local.port, base + "/dispatch", {"listener": "worker", "event": "job", "data": {"n": 1}}
    )
    assert status == 202 and answer == {"id": answer["id"], "channel": name}
    mail = await next_mail(stream)
    assert (mail.id, mail.event, mail.data) == (answer["id"], "job", {"n": 1})

    status, answer, _ = await post(local.port, base + "/broadcast", {"event": "news", "data": [2]})
    assert status == 202 and answer == {"id": 1, "epoch": channel.epoch, "channel": name}
    mail = await next_mail(stream)
    assert (mail.event, mail.data) == ("news", [2])
    frame = await ws.wait_type("event")
    assert (frame["channel"], frame["event"], frame["data"], frame["id"]) == (name, "news", [2], 1)

    status, answer, _ = await post(local.port, base + "/dispatch_group", {"group": "pool",
                                                                         "event": "task"})
    assert status == 202 and set(answer) == {"id", "channel"}
    mail = await next_mail(stream)
    # the wire id of a group mail: its id in the group's queue, with "g:" in front
    assert ("g:" + mail.id, mail.event, mail.data) == (answer["id"], "task", None)

    # start/stop without data stop and start the listener: no mail id.
    status, answer, _ = await post(local.port, base + "/dispatch",
                                   {"listener": "worker", "event": "stop"})
    assert status == 202 and answer == {"id": None, "channel": name}
    assert not (await channel.listener("worker").info()).running
    ws.sendClose()


@pytest_twisted.ensureDeferred
async def test_every_error_is_json_with_its_status_and_code(local: LocalHub) -> None:
    channel = local.hub.channel
    await channel.add_listener("tiny", mailbox_size=1)
    port = local.port
    cases: list[tuple[str, Any, int, str, str]] = [
        ("/channels/events/dispatch", b"{", 400, "bad_request", "not valid JSON"),
        ("/channels/events/dispatch", b"\xff", 400, "bad_request", "not UTF-8"),
        ("/channels/events/dispatch", [1], 400, "bad_request", "must be a JSON object"),
        ("/channels/events/dispatch", {"listener": "tiny", "event": "a", "x": 1}, 400,
         "bad_request", "unknown field(s) 'x'; expected 'listener', 'event' and 'data'"),
        ("/channels/events/dispatch", {"event": "a"}, 400, "bad_request",
         "missing field 'listener'"),
        ("/channels/events/dispatch_group", {"group": "g"}, 400, "bad_request",
         "missing field 'event'"),
        ("/channels/events/dispatch", {"listener": 5, "event": "a"}, 400, "bad_request",
         "'listener' must be a str"),
        ("/channels/events/broadcast", {"event": "_x"}, 400, "bad_request",
         "'event' '_x' starts with '_'"),
        ("/channels/events/broadcast", b'{"event": "a", "data": NaN}', 400, "bad_request",
         "NaN is not JSON"),
        ("/channels/events/broadcast", b'{"event": "a", "data": "\\ud800"}', 400,
         "invalid_data", "lone surrogate"),
        ("/channels/events/broadcast", {"event": "a", "data": "x" * 70000}, 413, "too_large",
         "larger than 65536 bytes"),
        ("/channels/events/broadcast", {"event": "start"}, 400, "reserved", "reserved"),
        ("/channels/events/dispatch", {"listener": "tiny", "event": "stop", "data": 1}, 400,
         "reserved", "takes no data"),
        ("/channels/%5Fx/broadcast", {"event": "a"}, 400, "bad_request",
         "channel name '_x' starts with '_'"),
        ("/channels/%FF/broadcast", {"event": "a"}, 400, "bad_request", "\\xff' once"),
        ("/channels/nothing/broadcast", {"event": "a"}, 404, "unknown_channel", "'nothing'"),
        ("/channels/events/dispatch", {"listener": "ghost", "event": "a"}, 404,
         "unknown_listener", "'ghost'"),
        ("/channels/events/dispatch_group", {"group": "nobody", "event": "a"}, 404,
         "unknown_group", "'nobody'"),
        ("/channels/events/publish", {"event": "a"}, 404, "not_found", "/channels/events/publish"),
        ("/channels/events", {"event": "a"}, 404, "not_found", "dispatch|broadcast"),
        ("/channels", {"event": "a"}, 404, "not_found", "POST /channels/{channel}/"),
        ("/channels/events/broadcast/", {"event": "a"}, 404, "not_found", "no such resource"),
    ]
    for target, body, status, code, words in cases:
        got, answer, _ = await post(port, target, body)
        assert (got, refused(answer, code)) == (status, True), (target, body, answer)
        assert words in answer["error"], (target, answer)
    got, answer, _ = await post(port, "/channels/events/dispatch",
                                {"listener": "tiny", "event": "a"})
    assert got == 202
    got, answer, _ = await post(port, "/channels/events/dispatch",
                                {"listener": "tiny", "event": "a"})
    assert (got, refused(answer, "mailbox_full")) == (409, True), answer
    for method in ("GET", "PUT", "DELETE"):
        answer_ = await send(port, request(method, "/channels/events/broadcast"))
        assert answer_.status == 405 and answer_.header("allow") == b"POST"
        assert refused(json.loads(answer_.body), "method_not_allowed")


@pytest_twisted.ensureDeferred
async def test_the_token_the_origin_and_the_rate_are_checked_as_for_events() -> None:
    hub = await start_local_hub(token="s3cret", max_rate=0.1)  # one request, then 10 s
    try:
        await hub.hub.channel.add_listener("worker")
        target, body = "/channels/events/dispatch", {"listener": "worker", "event": "a"}
        status, answer, raw = await post(hub.port, target, body)
        assert (status, refused(answer, "unauthorized")) == (401, True)
        assert raw.header("www-authenticate") == b'Bearer realm="event-hub"'
        status, answer, _ = await post(
            hub.port, target, body,
            [("Authorization", "Bearer s3cret"), ("Origin", "https://evil.example")],
        )
        assert (status, refused(answer, "forbidden")) == (403, True), answer
        assert "Origin 'https://evil.example' is not allowed" in answer["error"]
        status, answer, raw = await post(
            hub.port, target, body, [("Authorization", "Bearer s3cret")]
        )
        assert (status, refused(answer, "limit")) == (429, True), answer
        assert raw.header("retry-after") is not None and "too many requests" in answer["error"]
        assert await hub.hub.channel.listener_ids() == ["worker"]
        assert (await hub.hub.channel.listener("worker").info()).queued == 0, "nothing came in"
    finally:
        await hub.stop()
    assert not hub.problems()


@pytest_twisted.ensureDeferred
async def test_the_token_lets_a_dispatch_through() -> None:
    hub = await start_local_hub(token="s3cret")
    try:
        await hub.hub.channel.add_listener("worker")
        for headers, target in (
            ([("Authorization", "Bearer s3cret")], "/channels/events/dispatch"),
            ([], "/channels/events/dispatch?token=s3cret"),
        ):
            status, answer, _ = await post(
                hub.port, target, {"listener": "worker", "event": "a"}, headers
            )
            assert status == 202 and answer["id"], answer
        assert (await hub.hub.channel.listener("worker").info()).queued == 2
    finally:
        await hub.stop()
    assert not hub.problems()


@pytest_twisted.ensureDeferred
async def test_redis_down_is_503_and_health_still_answers(redis: RedisServer) -> None:
    hub = await start_local_hub(redis_url=redis.url, max_rate=0)
    try:
        channel = await hub.hub.hub_channels.create("jobs")
        await channel.add_listener("worker")
        await hub.hub.channel.add_listener("a")
        await hub.hub.channel.add_listener("b")
        health = json.loads((await send(hub.port, request("GET", "/health"))).body)
        assert health["channels"] == [
            {"name": "events", "backend": "redis", "subscribers": 0, "listeners": 2},
            {"name": "jobs", "backend": "redis", "subscribers": 0, "listeners": 1},
        ]
        await redis.kill()
        await until(lambda: hub.hub.health()["status"] == "degraded", limit=5)
        status, answer, raw = await post(
            hub.port, "/channels/jobs/dispatch", {"listener": "worker", "event": "a"}
        )
        assert (status, refused(answer, "unavailable")) == (503, True), answer
        assert raw.header("retry-after") == b"1"
        answer_ = await send(hub.port, request("GET", "/health"), timeout=3)
        health = json.loads(answer_.body)
        assert answer_.status == 200 and health["status"] == "degraded"
        assert [c["listeners"] for c in health["channels"]] == [None, None]
    finally:
        await hub.stop()
    assert not hub.problems()


@pytest_twisted.ensureDeferred
async def test_health_answers_within_its_deadline_while_redis_hangs(redis: RedisServer) -> None:
    hub = await start_local_hub(redis_url=redis.url)
    try:
        await hub.hub.channel.add_listener("a")
        redis.signal("STOP")  # connections stay open, nothing answers
        try:
            start = reactor.seconds()
            answer = await send(hub.port, request("GET", "/health"), timeout=4)
            took = reactor.seconds() - start
        finally:
            redis.signal("CONT")
        assert answer.status == 200 and took < HEALTH_DEADLINE + 1.5, took
        assert json.loads(answer.body)["channels"][0]["listeners"] is None
        health = json.loads((await send(hub.port, request("GET", "/health"))).body)
        assert health["channels"][0]["listeners"] == 1, "counted again once Redis answers"
    finally:
        await hub.stop()
    assert not hub.problems()


@pytest_twisted.ensureDeferred
async def test_a_stopping_hub_answers_503() -> None:
    hub = await start_local_hub()
    try:
        await hub.hub.channel.add_listener("worker")
        await hub.hub.dispatcher.stop()  # what stopping the service does first
        status, answer, raw = await post(
            hub.port, "/channels/events/dispatch", {"listener": "worker", "event": "a"}
        )
        assert (status, refused(answer, "unavailable")) == (503, True), answer
        assert "shutting down" in answer["error"] and raw.header("retry-after") == b"1"
        assert (await hub.hub.channel.listener("worker").info()).queued == 0
    finally:
        await hub.stop()
    assert not hub.problems()


@pytest_twisted.ensureDeferred
async def test_health_lists_every_channel_with_its_counts(local: LocalHub) -> None:
    hub = local.hub
    jobs = await hub.hub_channels.create("jobs")
    await jobs.add_listener("w1")
    await jobs.add_listener("w2", group="g")
    ws = await local.subscriber()
    other = await connect_ws(local.port, path="/ws")
    other.send_json({"type": "subscribe", "event": "a", "channel": "jobs"})
    other.send_json({"type": "subscribe", "event": "b", "channel": "jobs"})
    await other.wait(lambda f: f.get("type") == "subscribed" and f["event"] == "b")
    answer = await send(local.port, request("GET", "/health"))
    assert answer.header("content-length") == b"%d" % len(answer.body), "not chunked"
    health = json.loads(answer.body)
    assert health["channels"] == [
        {"name": "events", "backend": "memory", "subscribers": 1, "listeners": 0},
        {"name": "jobs", "backend": "memory", "subscribers": 1, "listeners": 2},
    ]
    # Every field the demo page and the other tests read is still there.
    assert health["status"] == "ok" and health["channel"]["name"] == "events"
    assert {"uptime", "connections", "handlers", "in_flight", "auth"} <= set(health)
    await hub.hub_channels.remove("jobs")
    health = json.loads((await send(local.port, request("GET", "/health"))).body)
    assert [c["name"] for c in health["channels"]] == ["events"]
    ws.sendClose()
    other.sendClose()


@pytest_twisted.ensureDeferred
async def test_a_websocket_subscriber_of_a_removed_channel_gets_a_removed_gap(
    local: LocalHub,
) -> None:
    hub = local.hub
    await hub.hub_channels.create("jobs")
    ws = await connect_ws(local.port, path="/ws")
    ws.send_json({"type": "subscribe", "event": "*", "channel": "jobs"})
    ws.send_json({"type": "subscribe", "event": "*"})
    await ws.wait(lambda f: f.get("type") == "subscribed" and f["channel"] == "events")
    status, _, _ = await post(local.port, "/channels/jobs/broadcast", {"event": "a"})
    assert status == 202
    await ws.wait_type("event")
    await hub.hub_channels.remove("jobs")
    gap = await ws.wait_type("gap")
    assert (gap["channel"], gap["event"], gap["reason"], gap["since"]) == ("jobs", "*",
                                                                          "removed", 1)
    # A channel made again under that name is a new one: the client is not subscribed.
    await hub.hub_channels.create("jobs")
    start = len(ws.inbox.frames)
    assert (await post(local.port, "/channels/jobs/broadcast", {"event": "lost"}))[0] == 202
    assert (await post(local.port, "/channels/events/broadcast", {"event": "kept"}))[0] == 202
    frame = await ws.wait_type("event", start=start)
    assert (frame["channel"], frame["event"]) == ("events", "kept"), "same connection, in order"
    ws.sendClose()


# -- fuzz -------------------------------------------------------------------------------------

_NAMES = st.sampled_from(["worker", "pool", "events", "jobs", "a", "start", "stop", "_x", "*"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
_BODY_FIELD = st.sampled_from(["listener", "group", "event", "data", "keywords", "x"])
_BODIES = st.one_of(
    st.dictionaries(_BODY_FIELD, st.one_of(_NAMES, _JSON), max_size=4).map(
        lambda body: json.dumps(body).encode()
    ),
    st.binary(max_size=40),
    st.sampled_from([b"", b"null", b"[]", b'{"event": "a", "data": Infinity}', b"{" * 100]),
)
_SEGMENT = st.one_of(
    _NAMES, st.text(max_size=12), st.sampled_from(["dispatch", "broadcast", "dispatch_group"])
).map(lambda text: quote(text, safe=""))
_PATHS = st.one_of(
    st.tuples(st.sampled_from(["events", "jobs", "nothing"]) | _SEGMENT,
              st.sampled_from(["dispatch", "broadcast", "dispatch_group"]))
    .map(lambda p: f"/channels/{p[0]}/{p[1]}"),
    st.lists(_SEGMENT, max_size=4).map(lambda parts: "/channels/" + "/".join(parts)),
)


_FIELDS = {"dispatch": "listener", "broadcast": None, "dispatch_group": "group"}
#: Well-formed requests (most are accepted; some names are refused, some are unknown).
_WELL_FORMED = st.tuples(
    st.sampled_from(["events", "jobs", "nothing"]), st.sampled_from(sorted(_FIELDS)),
    _NAMES, _NAMES, _JSON,
).map(lambda c: (
    f"/channels/{c[0]}/{c[1]}",
    json.dumps({"event": c[2], "data": c[4], **({_FIELDS[c[1]]: c[3]} if _FIELDS[c[1]] else {})})
    .encode(),
))


@pytest_twisted.ensureDeferred
async def test_fuzzed_requests_get_2xx_or_4xx_json_never_a_5xx(local: LocalHub) -> None:
    hub = local.hub
    jobs = await hub.hub_channels.create("jobs")
    for channel in (hub.channel, jobs):
        await channel.add_listener("worker", group="pool", mailbox_size=5)
    cases = examples(st.one_of(_WELL_FORMED, st.tuples(_PATHS, _BODIES)), count=80)
    statuses: set[int] = set()
    for target, body in cases:
        answer = await send(local.port, request("POST", target, [], body))
        assert answer.status is not None and answer.status < 500, (target, body, answer)
        statuses.add(answer.status)
        payload = json.loads(answer.body)
        if answer.status == 202:
            assert "id" in payload and payload["channel"] in ("events", "jobs"), payload
        else:
            assert set(payload) == {"error", "code"} and payload["error"], (target, payload)
    assert {202, 400, 404} <= statuses, statuses
    health = json.loads((await send(local.port, request("GET", "/health"))).body)
    assert health["status"] == "ok" and len(health["channels"]) == 2
    assert not local.problems(), "no traceback, no error logged"


# -- the hub process, driven over its control socket ----------------------------------------


@pytest_twisted.async_yield_fixture
async def controlled() -> AsyncIterator[tuple[HubProcess, str]]:
    """A hub process with a control socket and room for three channels."""
    folder = tempfile.mkdtemp(prefix="ted-hub-")
    path = os.path.join(folder, "hub.sock")
    process = await start_hub("--control", f"unix:{path}", "--max-channels", "3")
    try:
        yield process, path
    finally:
        await process.stop()
        shutil.rmtree(folder, ignore_errors=True)
    assert "Traceback" not in process.text, process.text


@pytest_twisted.ensureDeferred
async def test_channels_made_over_the_control_socket_are_served_over_http(
    controlled: tuple[HubProcess, str],
) -> None:
    hub, path = controlled
    control = await connect_control(path)
    assert await control.request({"v": "c", "c": "jobs"}) == {"c": "jobs"}
    generated = (await control.request({"v": "c"}))["c"]
    answer = await control.request({"v": "c", "c": "fourth"})
    assert answer["code"] == "limit" and "--max-channels" in answer["error"], answer
    answer = await control.request({"v": "rc", "c": "events"})
    assert answer["code"] == "default_channel", answer
    assert await control.request({"v": "rc", "c": generated}) == {"ok": True}
    answer = await control.request({"v": "r", "c": "jobs", "r": "worker", "g": "pool"})
    assert answer == {"r": "worker", "c": "jobs"}
    stream = await connect_control(path)
    assert (await stream.request({"v": "l", "c": "jobs", "r": "worker", "a": True}))["ok"]
    ws = await connect_ws(hub.port, path="/ws")
    ws.send_json({"type": "subscribe", "event": "*", "channel": "jobs"})
    await ws.wait_type("subscribed")

    status, answer, _ = await post(
        hub.port, "/channels/jobs/dispatch", {"listener": "worker", "event": "job", "data": 1}
    )
    assert status == 202
    mail = await stream.next()
    assert (mail["id"], mail["t"], mail["p"], mail["r"], mail["c"]) == (
        answer["id"], "job", 1, "worker", "jobs"
    )
    status, answer, _ = await post(hub.port, "/channels/jobs/broadcast",
                                   {"event": "news", "data": "hello"})
    assert status == 202 and answer["id"] == 1
    assert ((await stream.next())["t"], (await ws.wait_type("event"))["data"]) == (
        "news", "hello"
    )
    status, answer, _ = await post(hub.port, "/channels/jobs/dispatch_group",
                                   {"group": "pool", "event": "task", "data": [3]})
    assert status == 202
    mail = await stream.next()
    assert (mail["id"], mail["t"], mail["p"]) == (answer["id"], "task", [3])
    assert mail["id"].startswith("g:")

    health = json.loads((await send(hub.port, request("GET", "/health"))).body)
    assert health["channels"] == [
        {"name": "events", "backend": "memory", "subscribers": 0, "listeners": 0},
        {"name": "jobs", "backend": "memory", "subscribers": 1, "listeners": 1},
    ]
    # Removing the channel: the WebSocket subscriber is told, the listener's stream ends.
    assert await control.request({"v": "rc", "c": "jobs"}) == {"ok": True}
    gap = await ws.wait_type("gap")
    assert (gap["channel"], gap["reason"], gap["since"]) == ("jobs", "removed", 1)
    assert "end" in await stream.next()
    await stream.wait_closed()
    status, answer, _ = await post(hub.port, "/channels/jobs/broadcast", {"event": "late"})
    assert (status, refused(answer, "unknown_channel")) == (404, True)
    health = json.loads((await send(hub.port, request("GET", "/health"))).body)
    assert [c["name"] for c in health["channels"]] == ["events"]
    control.close()
    ws.sendClose()
