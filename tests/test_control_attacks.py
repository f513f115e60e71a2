"""
The control plane's answers to the outside attack (issue 12): a hub-wide bound on open
listens (each a Redis connection on Redis), requests in flight when their channel or
listener is removed, acks of requests without a reply, concurrent registers, a tiny
``ack_timeout``, ``/health`` with a token, the hub stopping under streams and requests,
ids in ack errors, and refused control connections in the log. Real hub processes, or a
real HubService in this process (to reach its plane and log), and a real redis-server.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.python import usage

from tests._clients import WSClient, connect_ws
from tests._control import LineClient, connect_control
from tests._hub import spawn_hub
from tests._local_hub import LocalHub
from tests._raw_http import request, send
from tests._redis import RedisServer, until
from tests.test_control import ControlHub, control_hub, no_traceback
from twisted_event_dispatcher.channels import MemoryChannel
from twisted_event_dispatcher.channels.redis import RedisStreamChannel
from twisted_event_dispatcher.hub import Hub, HubService
from twisted_event_dispatcher.hub._control_socket import ControlFactory
from twisted_event_dispatcher.hub._limits import descriptor_shortfall
from twisted_event_dispatcher.hub.options import HubOptions


@pytest_twisted.async_yield_fixture(scope="module")
async def hub() -> AsyncIterator[ControlHub]:
    """A memory hub for the tests of this module: each test uses channels of its own."""
    running = await control_hub()
    yield running
    await running.stop()


class Local(LocalHub):
    """A HubService in this process with a control socket (``path``), and its log."""

    def __init__(self, hub: Hub, service: HubService, directory: str) -> None:
        super().__init__(hub, service, 0)
        self.directory = directory
        self.path = os.path.join(directory, "hub.sock")
        self.clients: list[LineClient] = []

    async def connect(self) -> LineClient:
        client = await connect_control(self.path)
        self.clients.append(client)
        return client

    async def ws(self) -> WSClient:
        return await connect_ws(self.port, path="/ws")

    async def stop(self) -> None:
        for client in self.clients:
            if client.transport is not None and not client.closed.called:
                client.close()
        try:
            await super().stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


async def local_hub(**options: Any) -> Local:
    directory = tempfile.mkdtemp(prefix="ted-ctl-")
    hub = Hub(**options)
    service = HubService(
        hub, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        control=UNIXServerEndpoint(reactor, os.path.join(directory, "hub.sock")),
    )
    local = Local(hub, service, directory)
    globalLogPublisher.addObserver(local.observe)
    service.startService()
    try:
        address: Any = (await service.ready).getHost()
    except BaseException:
        globalLogPublisher.removeObserver(local.observe)
        raise
    local.port = address.port
    return local


async def ws_call(ws: WSClient, frame: dict[str, Any], timeout: float = 5) -> dict[str, Any]:
    """Send a request frame with a fresh ref; its ``result`` or ``error`` frame."""
    ref = f"r{len(ws.inbox.frames)}-{id(frame)}"
    ws.send_json({**frame, "ref": ref})
    answer: dict[str, Any] = await ws.wait(
        lambda f: isinstance(f, dict) and f.get("ref") == ref, timeout
    )
    return answer


async def redis_clients(redis: RedisServer) -> int:
    """Connections Redis has open now (CLIENT LIST, from a connection of its own)."""
    import txredisapi

    connection = await txredisapi.Connection("127.0.0.1", redis.port, reconnect=False)
    try:
        listed = await connection.execute_command("CLIENT", "LIST")
    finally:
        await connection.disconnect()
    return len([line for line in listed.splitlines() if line.strip()]) - 1


# -- 1. a hub-wide bound on open listens ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_open_listens_are_bounded_hub_wide_over_every_transport(
    redis: RedisServer,
) -> None:
    local = await local_hub(redis_url=redis.url)
    try:
        plane = local.hub.control
        assert plane.max_listens == 1000, "the default"
        plane.max_listens = 3
        for name in "abcde":
            await local.hub.channel.add_listener(name)
        ws = await local.ws()
        for name in "ab":
            answer = await ws_call(ws, {"type": "listen", "listener": name})
            assert answer["type"] == "result" and answer["ok"] is True, answer
        socket = await local.connect()
        assert (await socket.request({"v": "l", "r": "c"}))["ok"] is True
        before = await redis_clients(redis)
        # one more, on either transport: refused, naming the option; no Redis connection
        refused = await ws_call(ws, {"type": "listen", "listener": "d"})
        assert refused["type"] == "error" and refused["code"] == "limit", refused
        assert "--max-listens 3" in refused["reason"]
        other = await local.connect()
        answer = await other.request({"v": "l", "r": "d", "i": 1})
        assert (answer["code"], answer["i"]) == ("limit", 1)
        assert "--max-listens" in answer["error"]
        assert await redis_clients(redis) == before
        assert plane.open_listens == 3
        # a listen that ends frees its slot; one that fails to open takes none
        socket.close()
        await until(lambda: plane.open_listens == 2, limit=5)
        assert (await other.request({"v": "l", "r": "nobody"}))["code"] == "unknown_listener"
        assert plane.open_listens == 2
        assert (await other.request({"v": "l", "r": "d"}))["ok"] is True
        unlisten = await ws_call(ws, {"type": "unlisten", "listener": "a"})
        assert unlisten["type"] == "result"
        await until(lambda: plane.open_listens == 2, limit=5)
        assert (await ws_call(ws, {"type": "listen", "listener": "e"}))["type"] == "result"
        ws.sendClose()
    finally:
        await local.stop()
    assert not local.problems()


def test_max_listens_option() -> None:
    options = HubOptions()
    options.parseOptions([])  # type: ignore[no-untyped-call]
    assert options["max-listens"] == 1000
    options = HubOptions()
    options.parseOptions(["--max-listens", "5"])  # type: ignore[no-untyped-call]
    assert options["max-listens"] == 5
    with pytest.raises(usage.UsageError, match="--max-listens must be at least 1"):
        HubOptions().parseOptions(["--max-listens", "0"])  # type: ignore[no-untyped-call]


def test_the_descriptor_check_counts_listens_and_control_connections() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no file descriptor limit to check against")
    assert descriptor_shortfall(10, max_control_connections=10, max_listens=10) is None
    warning = descriptor_shortfall(10, max_listens=soft)
    assert warning is not None and f"--max-listens {soft}" in warning, warning
    assert "Redis connection" in warning and f"ulimit -n) is {soft}" in warning
    warning = descriptor_shortfall(10, max_control_connections=soft)
    assert warning is not None and f"--max-control-connections {soft}" in warning
    assert "--max-listens" not in warning, "a bound that costs nothing is not named"


@pytest_twisted.ensureDeferred
async def test_a_redis_hub_started_with_a_low_ulimit_warns_and_refuses_listens(
    redis: RedisServer,
) -> None:
    directory = tempfile.mkdtemp(prefix="ted-ctl-")
    path = os.path.join(directory, "hub.sock")
    process = spawn_hub(
        "--channel", "redis", "--redis-url", redis.url, "--control", f"unix:{path}",
        "--max-listens", "2", "--max-connections", "100", "--max-control-connections", "50",
        command=("/bin/sh", "-c", 'ulimit -n 256 && exec "$0" -m twisted_event_dispatcher '
                 'serve "$@"', sys.executable),
    )
    try:
        await process.listening
        client = await connect_control(path)
        for name in "abc":
            assert (await client.request({"v": "r", "r": name}))["r"] == name
        streams = [await connect_control(path) for _ in range(3)]
        for stream, name in zip(streams, "ab", strict=False):
            assert (await stream.request({"v": "l", "r": name}))["ok"] is True
        refused = await streams[2].request({"v": "l", "r": "c"})
        assert refused["code"] == "limit" and "--max-listens 2" in refused["error"]
        for stream in [client, *streams]:
            stream.close()
        assert "ulimit -n" not in process.text, "152 connections and listens fit in 256"
    finally:
        await process.stop()
        shutil.rmtree(directory, ignore_errors=True)
    low = spawn_hub(
        "--channel", "redis", "--redis-url", redis.url, "--max-listens", "1000",
        command=("/bin/sh", "-c", 'ulimit -n 256 && exec "$0" -m twisted_event_dispatcher '
                 'serve "$@"', sys.executable),
    )
    try:
        await low.listening
        await until(lambda: "ulimit -n" in low.text, limit=5)  # (logged after "listening")
        assert "--max-listens 1000 (one Redis connection each)" in low.text, low.text
    finally:
        await low.stop()


# -- 2. requests in flight when their channel or listener is removed ---------------------------


@pytest_twisted.ensureDeferred
async def test_a_request_waiting_on_a_removed_channel_fails_at_once(hub: ControlHub) -> None:
    requester, admin = await hub.connect(), await hub.connect()
    name = hub.name()
    assert await admin.request({"v": "c", "c": name}) == {"c": name}
    assert (await admin.request({"v": "r", "c": name, "r": "w"}))["r"] == "w"
    assert (await admin.request({"v": "r", "c": name, "r": "m", "g": "pool"}))["r"] == "m"
    requester.send({"v": "q", "c": name, "r": "w", "t": "ask", "timeout": 60, "i": "one"})
    requester.send({"v": "q", "c": name, "g": "pool", "t": "ask", "timeout": 60, "i": "grp"})
    # (once this is answered, the requests before it on the connection are waiting)
    assert (await requester.request({"v": "b", "c": name, "t": "sync"}))["ok"] is True
    assert await admin.request({"v": "rc", "c": name}) == {"ok": True}
    answers = {a["i"]: a for a in [await requester.next(), await requester.next()]}
    for answer in answers.values():
        assert answer["code"] == "unknown_channel" and answer["v"] == "q", answer
        assert answer["error"] == f"channel {name!r} was removed"
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_a_request_to_a_listener_removed_through_the_hub_fails_at_once(
    hub: ControlHub,
) -> None:
    requester, admin = await hub.connect(), await hub.connect()
    name = hub.name()
    assert await admin.request({"v": "c", "c": name}) == {"c": name}
    for listener in ("w", "other"):
        assert (await admin.request({"v": "r", "c": name, "r": listener}))["r"] == listener
    requester.send({"v": "q", "c": name, "r": "w", "t": "ask", "timeout": 60, "i": "w"})
    requester.send({"v": "q", "c": name, "r": "other", "t": "ask", "timeout": 60, "i": "o"})
    assert (await requester.request({"v": "b", "c": name, "t": "sync"}))["ok"] is True
    assert await admin.request({"v": "rl", "c": name, "r": "w"}) == {"ok": True}
    answer = await requester.next()
    assert answer["i"] == "w" and answer["code"] == "unknown_listener", answer
    assert "removed while the request waited" in answer["error"]
    # the other request still waits for its own listener, which answers it
    stream = await hub.connect()
    assert (await stream.request({"v": "l", "c": name, "r": "other"}))["ok"] is True
    asked, sync = await stream.next(), await stream.next()
    assert (asked["t"], asked["q"], sync["t"]) == ("ask", True, "sync")
    stream.send({"ack": sync["id"]})
    stream.send({"ack": asked["id"], "reply": "fine"})
    assert await requester.next() == {"ok": True, "p": "fine", "i": "o"}
    no_traceback(hub)


def http_requests_in_progress(local: Local) -> int:
    """Requests the hub's HTTP server has received and not answered yet."""
    wrappers: Any = local.service.factory.protocols
    return sum(1 for wrapper in wrappers if wrapper.wrappedProtocol._handlingRequest)


@pytest_twisted.ensureDeferred
async def test_redis_requests_in_flight_on_a_removed_channel_answer_unknown_channel(
    redis: RedisServer,
) -> None:
    local = await local_hub(redis_url=redis.url)
    try:
        admin, busy, listening = [await local.connect() for _ in range(3)]
        assert await admin.request({"v": "c", "c": "jobs"}) == {"c": "jobs"}
        for listener in ("w", "m"):
            line = {"v": "r", "c": "jobs", "r": listener, "g": "pool"}
            assert (await admin.request(line))["r"] == listener
        redis.signal("STOP")  # everything below waits for Redis
        try:
            listening.send({"v": "l", "c": "jobs", "r": "w", "i": "l"})
            mailboxes: Any = local.hub.channels["jobs"].mailboxes
            await until(lambda: bool(mailboxes._attaching), limit=5)  # (under way)
            posted = Deferred.fromCoroutine(send(local.port, request(
                "POST", "/channels/jobs/dispatch", [],
                json.dumps({"listener": "w", "event": "job"}).encode(),
            ), timeout=10))
            await until(lambda: http_requests_in_progress(local) == 1, limit=5)
            lines: list[dict[str, Any]] = [
                {"v": "d", "c": "jobs", "r": "w", "t": "job", "i": "d"},
                {"v": "b", "c": "jobs", "t": "news", "i": "b"},
                {"v": "g", "c": "jobs", "g": "pool", "t": "job", "i": "g"},
                {"v": "q", "c": "jobs", "r": "w", "t": "ask", "timeout": 60, "i": "q"},
                {"v": "r", "c": "jobs", "r": "late", "i": "r"},
                {"v": "rl", "c": "jobs", "r": "m", "i": "rl"},
                {"v": "rc", "c": "jobs", "i": "rc"},  # (after the others: same connection)
            ]
            for line in lines:
                busy.send(line)
            answers = [await busy.next(timeout=10) for _ in range(7)]
            answers.append(await listening.next(timeout=10))
            http = await posted
        finally:
            redis.signal("CONT")
        assert {"ok": True, "i": "rc"} in answers, answers
        answers.remove({"ok": True, "i": "rc"})
        for answer in answers:
            assert answer["code"] == "unknown_channel", answers
            assert answer["error"] == "channel 'jobs' was removed", answers
        assert sorted(a["i"] for a in answers) == ["b", "d", "g", "l", "q", "r", "rl"]
        assert http.status == 404 and http.header("retry-after") is None, http
        assert json.loads(http.body) == {"error": "channel 'jobs' was removed",
                                         "code": "unknown_channel"}
    finally:
        await local.stop()
    assert not local.problems()


@pytest_twisted.ensureDeferred
async def test_a_register_done_after_its_redis_channel_was_removed_is_undone(
    redis: RedisServer,
) -> None:
    local = await local_hub(redis_url=redis.url)
    try:
        channel = await local.hub.hub_channels.create("jobs")
        real = channel.add_listener
        stored: Deferred[None] = Deferred()
        gate: Deferred[None] = Deferred()

        async def late(*args: Any, **kwargs: Any) -> Any:
            listener = await real(*args, **kwargs)  # in Redis now
            stored.callback(None)
            await gate  # ... but its answer comes after the removal
            return listener

        setattr(channel, "add_listener",  # noqa: B010
                lambda *a, **k: Deferred.fromCoroutine(late(*a, **k)))
        client, admin = await local.connect(), await local.connect()
        client.send({"v": "r", "c": "jobs", "r": "late", "i": 1})
        await stored
        assert await admin.request({"v": "rc", "c": "jobs"}) == {"ok": True}
        gate.callback(None)
        answer = await client.next()
        assert answer == {"error": "channel 'jobs' was removed", "v": "r",
                          "code": "unknown_channel", "i": 1}
        observer = RedisStreamChannel("jobs", url=redis.url)
        await observer.connect()
        try:
            for _ in range(100):  # (the undo is under way once the answer is out)
                if not await observer.listener_ids():
                    break
                await deferLater(reactor, 0.05, lambda: None)
            assert await observer.listener_ids() == [], "the register was undone"
        finally:
            await observer.disconnect()
    finally:
        await local.stop()
    assert not local.problems()


@pytest_twisted.ensureDeferred
async def test_a_request_to_a_hung_redis_does_not_blame_the_listener(
    redis: RedisServer,
) -> None:
    hub = await control_hub("--channel", "redis", "--redis-url", redis.url)
    try:
        client = await hub.connect()
        assert (await client.request({"v": "r", "r": "w"}))["r"] == "w"
        # Redis answers: the request is stored, the listener does not reply
        stored = await client.request({"v": "q", "r": "w", "t": "ask", "timeout": 0.3})
        assert stored["code"] == "timeout"
        assert stored["error"] == "no reply from 'w' to 'ask' within 0.3 s", stored
        redis.signal("STOP")
        try:
            hung = await client.request({"v": "q", "r": "w", "t": "ask", "timeout": 0.3})
        finally:
            redis.signal("CONT")
        assert hung["code"] == "timeout", hung
        assert hung["error"] == (
            "no reply within 0.3 s (the request may not have reached the listener: Redis did "
            "not answer)"
        )
    finally:
        await hub.stop()


# -- 3. a request is answered, never just acknowledged ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_ack_of_a_request_without_a_reply_is_refused(hub: ControlHub) -> None:
    requester, stream = await hub.connect(), await hub.connect()
    name = hub.name()
    assert await requester.request({"v": "c", "c": name}) == {"c": name}
    assert (await requester.request({"v": "r", "c": name, "r": "w"}))["r"] == "w"
    assert (await stream.request({"v": "l", "c": name, "r": "w"}))["ok"] is True
    requester.send({"v": "q", "c": name, "r": "w", "t": "ask", "p": 1, "timeout": 60, "i": 5})
    asked = await stream.next()
    refused = await stream.request({"ack": asked["id"]})
    assert refused == {
        "error": f"mail {asked['id']!r} is a request: answer it with reply or error (or "
                 "release it)",
        "v": "ack", "code": "bad_request", "id": asked["id"],
    }
    stream.send({"ack": asked["id"], "reply": 2})  # still in flight: it can be answered
    assert await requester.next() == {"ok": True, "p": 2, "i": 5}
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_a_websocket_ack_of_a_request_without_a_reply_is_refused(
    hub: ControlHub,
) -> None:
    requester = await hub.connect()
    name = hub.name()
    assert await requester.request({"v": "c", "c": name}) == {"c": name}
    assert (await requester.request({"v": "r", "c": name, "r": "w"}))["r"] == "w"
    ws = await connect_ws(hub.process.port, path="/ws")
    try:
        listening = await ws_call(ws, {"type": "listen", "channel": name, "listener": "w"})
        assert listening["type"] == "result"
        requester.send({"v": "q", "c": name, "r": "w", "t": "ask", "timeout": 60, "i": 1})
        mail = await ws.wait_type("mail")
        assert mail["request"] is True
        ack = {"type": "ack", "channel": name, "listener": "w", "id": mail["id"]}
        refused = await ws_call(ws, ack)
        assert refused["type"] == "error" and refused["code"] == "bad_request", refused
        assert "is a request: answer it with reply or error" in refused["reason"]
        failed = await ws_call(ws, {**ack, "error": "no"})
        assert failed["type"] == "result"
        answer = await requester.next()
        assert answer["code"] == "remote" and answer["remote_type"] == "ClientError"
    finally:
        ws.sendClose()
    no_traceback(hub)


# -- 4. concurrent registers of one id -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrent_registers_of_one_id_on_redis_answer_exists(redis: RedisServer) -> None:
    hub = await control_hub(
        "--channel", "redis", "--redis-url", redis.url, "--max-listeners", "2"
    )
    try:
        client = await hub.connect()
        for n in range(3):
            client.send({"v": "r", "r": "dup", "i": n})
        answers = sorted([await client.next() for _ in range(3)], key=lambda a: a["i"])
        assert [a.get("code") for a in answers].count(None) == 1, answers
        assert sorted(a.get("code", "ok") for a in answers) == ["exists", "exists", "ok"]
        assert all("already registered" in a["error"] for a in answers if "code" in a)
        # the bound still holds: one more id fits, the next is the limit
        assert (await client.request({"v": "r", "r": "two"}))["r"] == "two"
        assert (await client.request({"v": "r", "r": "three"}))["code"] == "limit"
        no_traceback(hub)
    finally:
        await hub.stop()


# -- 5. ack_timeout has a floor ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ack_timeout_is_at_least_a_tenth_of_a_second(hub: ControlHub) -> None:
    client = await hub.connect()
    name = hub.name()
    assert await client.request({"v": "c", "c": name}) == {"c": name}
    for tiny in (1e-300, 0.05, 0.0999):
        refused = await client.request({"v": "r", "c": name, "g": "g", "ack_timeout": tiny})
        assert refused["code"] == "bad_request", refused
        assert "'ack_timeout' must be a number of seconds >= 0.1" in refused["error"]
    assert (await client.request({"v": "r", "c": name, "r": "ok", "ack_timeout": 0.1}))["r"]
    channel = MemoryChannel("library", clock=Clock())
    with pytest.raises(ValueError, match="ack_timeout must be at least 0.1 seconds"):
        channel.add_listener("w", ack_timeout=1e-300)
    added: list[Any] = []
    channel.add_listener("w", ack_timeout=0.1).addCallback(added.append)
    assert [listener.id for listener in added] == ["w"]


# -- 6. /health -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_health_lists_channel_names_only_to_holders_of_the_token() -> None:
    local = await local_hub(token="s3cret")
    try:
        await local.hub.hub_channels.create("secret-plans")
        answer = await send(local.port, request("GET", "/health"))
        health = json.loads(answer.body)
        assert answer.status == 200 and health["channels"] == 2
        assert b"secret-plans" not in answer.body
        for headers, target in (
            ([("Authorization", "Bearer wrong")], "/health"),
            ([], "/health?token=wrong"),
        ):
            refused = await send(local.port, request("GET", target, headers))
            assert refused.status == 200 and json.loads(refused.body)["channels"] == 2
        answer = await send(local.port, request("GET", "/health", [
            ("Authorization", "Bearer s3cret")
        ]))
        names = [c["name"] for c in json.loads(answer.body)["channels"]]
        assert names == ["events", "secret-plans"]
        answer = await send(local.port, request("GET", "/health?token=s3cret"))
        assert len(json.loads(answer.body)["channels"]) == 2
    finally:
        await local.stop()
    assert not local.problems()


@pytest_twisted.ensureDeferred
async def test_health_is_degraded_while_listener_counts_cannot_be_read(
    redis: RedisServer,
) -> None:
    local = await local_hub(redis_url=redis.url)
    try:
        healthy = json.loads((await send(local.port, request("GET", "/health"))).body)
        assert healthy["status"] == "ok" and "reason" not in healthy
        redis.signal("STOP")  # the connections stay up: only the counts tell
        try:
            answer = await send(local.port, request("GET", "/health"), timeout=4)
        finally:
            redis.signal("CONT")
        health = json.loads(answer.body)
        assert answer.status == 200 and health["channels"][0]["listeners"] is None
        assert health["status"] == "degraded", health
        assert health["reason"] == (
            "the listeners of 1 channel(s) could not be counted: Redis did not answer "
            "within 1 s"
        )
    finally:
        await local.stop()


# -- 7. the hub stopping -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_streams_and_waiting_requests_are_told_when_the_hub_stops() -> None:
    hub = await control_hub()
    try:
        admin, watcher, requester, stream = [await hub.connect() for _ in range(4)]
        assert (await admin.request({"v": "r", "r": "w"}))["r"] == "w"
        assert (await admin.request({"v": "r", "r": "idle"}))["r"] == "idle"
        assert (await watcher.request({"v": "w"}))["ok"] is True
        assert (await stream.request({"v": "l", "r": "idle"}))["ok"] is True
        requester.send({"v": "q", "r": "w", "t": "ask", "timeout": 60, "i": "q"})
        assert (await admin.request({"v": "b", "t": "sync"}))["ok"] is True
        assert (await watcher.next())["event"] == "sync"
        assert (await stream.next())["t"] == "sync"
    finally:
        await hub.process.stop()
    for client in (watcher, stream):
        await client.wait_closed()
        assert client.lines[-1] == {"end": "stopping"}, client.lines
    await requester.wait_closed()
    assert requester.lines == [
        {"error": "the hub is stopping", "v": "q", "code": "unavailable", "i": "q"}
    ]
    shutil.rmtree(hub.directory, ignore_errors=True)
    text = hub.process.text
    assert "Traceback" not in text and "Unhandled error" not in text, text[-3000:]


# -- 8. ack and release errors name their mail ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ack_and_release_errors_carry_the_mail_id(hub: ControlHub) -> None:
    admin, a, b = await hub.connect(), await hub.connect(), await hub.connect()
    name = hub.name()
    assert await admin.request({"v": "c", "c": name}) == {"c": name}
    for listener in ("a", "b"):
        line = {"v": "r", "c": name, "r": listener, "g": "pool"}
        assert (await admin.request(line))["r"] == listener
    assert (await a.request({"v": "l", "c": name, "r": "a"}))["ok"] is True
    assert await a.request({"ack": "nope"}) == {
        "error": "mail 'nope' is not in flight on this stream (never sent, acknowledged "
                 "already, auto-acknowledged, or given back)",
        "v": "ack", "code": "unknown_mail", "id": "nope",
    }
    released = await a.request({"release": "g:7"})
    assert (released["v"], released["code"], released["id"]) == ("release", "unknown_mail", "g:7")
    # a group mail taken back (its listener was stopped) is no longer this stream's
    sent = await admin.request({"v": "g", "c": name, "g": "pool", "t": "job"})
    mail = await a.next()
    assert mail["id"] == sent["id"]
    assert (await b.request({"v": "l", "c": name, "r": "b"}))["ok"] is True
    assert await admin.request({"v": "d", "c": name, "r": "a", "t": "stop"}) == {
        "ok": True, "id": None
    }
    again = await b.next()
    assert (again["id"], again["n"]) == (mail["id"], 2)
    late = await a.request({"ack": mail["id"]})
    assert (late["v"], late["code"], late["id"]) == ("ack", "unknown_mail", mail["id"])
    assert late["error"] == (
        f"mail {mail['id']!r} was not this stream's to acknowledge (its ack deadline passed, "
        "the listener was stopped, or the backend lost track of it); if it was not settled "
        "it will be delivered again"
    )
    no_traceback(hub)


# -- 9. refused control connections in the log ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_refused_control_connections_are_logged_once_then_summarized() -> None:
    from tests._local_hub import log_observer

    directory = tempfile.mkdtemp(prefix="ted-ctl-")
    path = os.path.join(directory, "hub.sock")
    clock = Clock()
    factory = ControlFactory(Hub().control, max_connections=1, clock=clock)
    port: Any = reactor.listenUNIX(path, factory)  # type: ignore[attr-defined]
    logged: list[dict[str, Any]] = []
    observer = log_observer(logged)
    globalLogPublisher.addObserver(observer)
    try:
        kept = await connect_control(path)
        assert (await kept.request({"v": "b", "t": "x"}))["ok"] is True

        async def refused() -> None:
            client = await connect_control(path)
            assert (await client.next())["code"] == "limit"
            await client.wait_closed()

        def warnings() -> list[dict[str, Any]]:
            return [e for e in logged if "control connection" in e.get("log_format", "")]

        for _ in range(5):
            await refused()
        assert len(warnings()) == 1 and warnings()[0]["count"] == 1
        clock.advance(30)
        await refused()
        assert len(warnings()) == 1, "nothing more within the minute"
        clock.advance(30)
        assert len(warnings()) == 2 and warnings()[1]["count"] == 5, "one summary with the count"
        clock.advance(300)
        assert len(warnings()) == 2, "no refusal since: no summary"
        await refused()
        assert len(warnings()) == 3 and warnings()[2]["count"] == 1
        assert factory.refused == 7
        kept.close()
    finally:
        globalLogPublisher.removeObserver(observer)
        factory.close_all()
        await port.stopListening()
        shutil.rmtree(directory, ignore_errors=True)
