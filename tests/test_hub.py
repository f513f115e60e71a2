"""The event hub as a real subprocess, driven by real HTTP, WebSocket and SSE clients."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests._clients import connect_sse, connect_ws
from tests._hub import HubProcess, start_hub


@pytest_twisted.async_yield_fixture
async def hub() -> AsyncIterator[HubProcess]:
    process = await start_hub("--keyword", "user", "-k", "role", "--history", "50")
    yield process
    await process.stop()


async def post(hub: HubProcess, body: Any, raw: bytes | None = None, **kw: Any) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    response = await treq.post(hub.url + "events", data=data, **kw)
    content = await response.content()
    try:
        return response.code, json.loads(content)
    except ValueError:
        return response.code, content


@pytest_twisted.ensureDeferred
async def test_health_and_demo_page(hub: HubProcess) -> None:
    response = await treq.get(hub.url + "health")
    health = json.loads(await response.content())
    assert response.code == 200
    assert health["status"] == "ok" and health["channel"]["name"] == "events"
    assert health["channel"]["backend"] == "memory" and health["channel"]["history_size"] == 50
    assert health["auth"] is False
    page = await treq.get(hub.url)
    assert page.code == 200
    assert page.headers.getRawHeaders("content-type")[0].startswith("text/html")
    html = (await page.content()).decode()
    assert "<title>Event hub</title>" in html and 'src="hub.js"' in html
    script = await treq.get(hub.url + "hub.js")
    assert script.code == 200 and b"new WebSocket" in await script.content()


@pytest_twisted.ensureDeferred
async def test_post_reaches_websocket_and_sse_clients(hub: HubProcess) -> None:
    ws = await connect_ws(hub.port, path="/ws")
    ws.send_json({"type": "subscribe", "event": "greeting"})
    await ws.wait_type("subscribed")
    sse = await connect_sse(hub.port, "/sse?event=greeting")
    await sse.wait(lambda b: b.get("event") == "_subscribed")
    code, answer = await post(
        hub, {"event": "greeting", "keywords": {"user": "bob"}, "data": {"text": "hi"}}
    )
    assert code == 202 and answer["event"] == "greeting" and answer["channel"] == "events"
    frame = await ws.wait_type("event")
    block = await sse.wait(lambda b: b.get("event") == "greeting")
    assert frame["id"] == answer["id"] and frame["data"] == {"text": "hi"}
    assert block["id"] == f"{answer['epoch']}:{answer['id']}"
    assert json.loads(block["data"])["data"] == {"text": "hi"}
    code, _ = await post(hub, {"event": "other"})
    assert code == 202
    ws.sendClose()
    await ws.closed
    assert sse.transport is not None
    sse.transport.loseConnection()


@pytest.mark.parametrize(
    ("raw", "code", "reason"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"data": 1}', 400, "missing field 'event'"),
        (b'{"event": "x", "extra": 1}', 400, "unknown field(s) 'extra'"),
        (b'{"event": 7}', 400, "'event' must be a str"),
        (b'{"event": ""}', 400, "must not be empty"),
        (b'{"event": "_x"}', 400, "reserved"),
        (b'{"event": "x", "keywords": [1]}', 400, "'keywords' must be a JSON object"),
        (b'{"event": "x", "keywords": {"colour": "red"}}', 400, "unknown match-spec keyword"),
        (b'{"event": "x", "keywords": {"user": ["a"]}}', 400, "value of 'user' must be"),
        (b'{"event": "x", "data": "' + b"y" * 70000 + b'"}', 413, "larger than 65536"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_posts_are_refused_and_fire_nothing(
    hub: HubProcess, raw: bytes, code: int, reason: str
) -> None:
    ws = await connect_ws(hub.port, path="/ws")
    ws.send_json({"type": "subscribe", "event": "*"})
    await ws.wait_type("subscribed")
    got, answer = await post(hub, None, raw=raw)
    assert got == code and reason in answer["error"], answer
    health = json.loads(await (await treq.get(hub.url + "health")).content())
    assert health["channel"]["last_id"] is None, "nothing was published"
    ws.sendClose()
    await ws.closed


@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405(hub: HubProcess) -> None:
    response = await treq.get(hub.url + "events")
    assert response.code == 405


@pytest_twisted.ensureDeferred
async def test_token_protects_post_websocket_and_sse() -> None:
    hub = await start_hub("--token", "s3cret")
    try:
        code, answer = await post(hub, {"event": "x"})
        assert code == 401 and "token" in answer["error"]
        code, _ = await post(hub, {"event": "x"}, headers={"Authorization": "Bearer wrong"})
        assert code == 401
        code, _ = await post(hub, {"event": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert code == 202
        code, _ = await post(hub, {"event": "x"}, params={"token": "s3cret"})
        assert code == 202
        with pytest.raises(ConnectionError, match="401"):
            await connect_ws(hub.port, path="/ws")
        ws = await connect_ws(hub.port, path="/ws?token=s3cret")
        ws.send_json({"type": "ping"})
        await ws.wait_type("pong")
        refused = await connect_sse(hub.port, "/sse")
        await refused.finished
        assert refused.status == 401
        accepted = await connect_sse(hub.port, "/sse", {"Authorization": "Bearer s3cret"})
        await accepted.wait(lambda b: b.get("event") == "_subscribed")
        ws.sendClose()
        await ws.closed
        assert accepted.transport is not None
        accepted.transport.loseConnection()
    finally:
        await hub.stop()


@pytest_twisted.ensureDeferred
async def test_websocket_origin_check(hub: HubProcess) -> None:
    ws = await connect_ws(hub.port, path="/ws", origin=f"http://127.0.0.1:{hub.port}")
    ws.sendClose()
    await ws.closed
    with pytest.raises(ConnectionError, match="origin"):
        await connect_ws(hub.port, path="/ws", origin="https://evil.example")


@pytest_twisted.ensureDeferred
async def test_refuses_public_interface_without_token() -> None:
    from tests._hub import spawn_hub

    process = spawn_hub("--listen", "tcp:0:interface=0.0.0.0")
    code = await process.ended
    assert code == 2
    assert "refusing to listen on 0.0.0.0 without --token" in process.text
    process = spawn_hub("--listen", "tcp:0")
    assert await process.ended == 2
    assert "all interfaces" in process.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--channel", "cassandra"), "--channel must be one of memory"),
        (("--history", "-1"), "--history must be positive"),
        (("--log-level", "chatty"), "--log-level must be one of"),
        (("--channel-name", "_x"), "reserved"),
        (("--origin", "example.com"), "--origin looks like"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_options_are_usage_errors(options: tuple[str, ...], message: str) -> None:
    from tests._hub import spawn_hub

    process = spawn_hub(*options)
    assert await process.ended == 2
    assert message in process.text


@pytest_twisted.ensureDeferred
async def test_sigterm_closes_clients_with_going_away(hub: HubProcess) -> None:
    ws = await connect_ws(hub.port, path="/ws")
    ws.send_json({"type": "subscribe", "event": "*"})
    await ws.wait_type("subscribed")
    sse = await connect_sse(hub.port, "/sse")
    await sse.wait(lambda b: b.get("event") == "_subscribed")
    hub.signal("TERM")
    _, code, _ = await ws.closed
    assert code == 1001
    await sse.finished
    assert await hub.ended == 0
    assert "draining events in flight" in hub.text and "event hub stopped" in hub.text


@pytest_twisted.ensureDeferred
async def test_sigint_also_stops_gracefully(hub: HubProcess) -> None:
    hub.signal("INT")
    assert await hub.ended == 0
    assert "event hub stopped" in hub.text


@pytest_twisted.ensureDeferred
async def test_twistd_plugin_runs_the_same_hub() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    twistd = (script, "--pidfile=", "-n", "event-hub")
    hub = await start_hub("-k", "user", command=twistd)
    try:
        code, answer = await post(hub, {"event": "hi", "keywords": {"user": "u"}})
        assert code == 202 and answer["id"] == 1
    finally:
        await hub.stop()
    # twistd exits by re-raising the signal it stopped on, after a clean shutdown
    assert hub.ended_by == signal.SIGTERM
    assert "event hub stopped" in hub.text


@pytest_twisted.ensureDeferred
async def test_log_level_under_twistd() -> None:
    from tests._hub import spawn_hub
    from tests._redis import free_port

    port = free_port()
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = spawn_hub(
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--log-level", "warn",
        command=(script, "--pidfile=", "-n", "event-hub"),
    )
    try:
        for _ in range(200):
            try:
                response = await treq.get(f"http://127.0.0.1:{port}/health")
                break
            except Exception:
                await deferLater(reactor, 0.05, lambda: None)
        assert response.code == 200
        process.url = f"http://127.0.0.1:{port}/"
        assert (await post(process, {"event": "x"}))[0] == 202
        await deferLater(reactor, 0.2, lambda: None)
    finally:
        await process.stop()
    assert "event hub listening" not in process.text, "info messages filtered"
    assert '"POST /events' not in process.text


@pytest_twisted.ensureDeferred
async def test_log_level_filters(hub: HubProcess) -> None:
    quiet = await start_hub("--log-level", "warn")
    try:
        await post(quiet, {"event": "x"})
        await deferLater(reactor, 0.1, lambda: None)
    finally:
        await quiet.stop()
    assert quiet.url, "the address is printed whatever the level"
    assert '"POST /events' not in quiet.text, "info-level access log filtered out"
    assert "event hub stopped" not in quiet.text
    await post(hub, {"event": "x"})
    await deferLater(reactor, 0.2, lambda: None)
    assert '"POST /events' in hub.text


@pytest_twisted.ensureDeferred
async def test_shutdown_drains_events_in_flight_before_closing_clients() -> None:
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.error import ConnectionRefusedError

    from twisted_event_dispatcher.hub import Hub, HubService
    from twisted_event_dispatcher.testing import DeferredHandler

    hub = Hub(("user",))
    service = HubService(hub, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    service.startService()
    address: Any = (await service.ready).getHost()
    port = address.port
    slow = DeferredHandler()
    await hub.dispatcher.add_event_handler(slow, "during")
    ws = await connect_ws(port, path="/ws")
    ws.send_json({"type": "subscribe", "event": "*"})
    await ws.wait_type("subscribed")
    posted = treq.post(f"http://127.0.0.1:{port}/events", json={"event": "late", "data": 1})
    while not slow.calls:
        await deferLater(reactor, 0.01, lambda: None)
    stopped = service.stopService()
    await deferLater(reactor, 0.05, lambda: None)
    assert not stopped.called, "waiting for the event in flight"
    with pytest.raises(ConnectionRefusedError):  # no longer accepting connections
        await connect_ws(port, path="/ws")
    assert not ws.closed.called, "clients stay connected while events drain"
    slow.succeed_all()
    response = await posted
    assert response.code == 202
    frame = await ws.wait_type("event")
    assert frame["event"] == "late"
    _, code, _ = await ws.closed
    assert code == 1001
    await stopped
