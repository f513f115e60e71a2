"""bridge(): dispatcher -> channel -> carriers, including a real WebSocket client."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests._clients import connect_ws
from twisted_event_dispatcher import EventDispatcher
from twisted_event_dispatcher.bridge import bridge
from twisted_event_dispatcher.carriers.websocket import EventWebSocketFactory
from twisted_event_dispatcher.channels import ChannelRegistry, MemoryChannel
from twisted_event_dispatcher.testing import (
    RecordingCarrier,
    captured_failures,
    success_result_of,
)


def setup(**kw: Any) -> tuple[EventDispatcher, MemoryChannel, RecordingCarrier]:
    dispatcher = EventDispatcher(("kind", "region"))
    dispatcher.start()
    channel = MemoryChannel("orders")
    carrier = RecordingCarrier()
    success_result_of(channel.subscribe("*", carrier))
    return dispatcher, channel, carrier


def test_default_key_and_payload() -> None:
    dispatcher, channel, carrier = setup()
    success_result_of(bridge(dispatcher, channel))
    success_result_of(dispatcher.fire_event({"event": "paid", "data": {"total": 3}}))
    success_result_of(dispatcher.fire_event("shipped"))
    success_result_of(dispatcher.fire_event([1, 2]))
    assert carrier.events == [("paid", {"total": 3}), ("shipped", None), ("list", [1, 2])]


def test_match_spec_key_and_serialize() -> None:
    dispatcher, channel, carrier = setup()
    handler_id = success_result_of(
        bridge(
            dispatcher, channel, key=lambda e: f"order-{e['kind']}",
            serialize=lambda e: {"id": e["id"]}, region="eu",
        )
    )
    success_result_of(dispatcher.fire_event({"kind": "paid", "id": 1}, kind="paid", region="eu"))
    success_result_of(dispatcher.fire_event({"kind": "paid", "id": 2}, kind="paid", region="us"))
    assert carrier.events == [("order-paid", {"id": 1})]
    dispatcher.remove_event_handler(handler_id)
    success_result_of(dispatcher.fire_event({"kind": "paid", "id": 3}, region="eu"))
    assert len(carrier.events) == 1


def test_runs_in_the_after_phase_so_a_veto_stops_it() -> None:
    dispatcher = EventDispatcher(("kind",), abort_on_failure=("before",))
    dispatcher.start()
    channel = MemoryChannel("orders")
    carrier = RecordingCarrier()
    success_result_of(channel.subscribe("*", carrier))
    success_result_of(bridge(dispatcher, channel, key="order"))

    def veto(event: Any) -> None:
        if event == "fraud":
            raise PermissionError("fraud")

    dispatcher.add_event_handler(veto, "before")
    with captured_failures():
        success_result_of(dispatcher.fire_event("fraud"))
    success_result_of(dispatcher.fire_event("fine"))
    assert carrier.events == [("order", None)]


def test_unencodable_event_is_a_handler_failure_and_publishes_nothing() -> None:
    dispatcher, channel, carrier = setup()
    success_result_of(bridge(dispatcher, channel, key="x"))
    other: list[object] = []
    dispatcher.add_event_handler(other.append, "after")
    with captured_failures() as logged:
        result = success_result_of(dispatcher.fire_event(object()))
    assert result.failures[0].failure is not None
    assert result.failures[0].failure.check(TypeError)
    assert carrier.messages == [] and len(other) == 1 and len(logged) == 1


def test_bad_arguments() -> None:
    dispatcher, channel, _ = setup()
    with pytest.raises(TypeError, match="IChannel"):
        bridge(dispatcher, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserved"):
        bridge(dispatcher, channel, key="_internal")
    with pytest.raises(TypeError, match="key must be"):
        bridge(dispatcher, channel, key=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="serialize must be callable"):
        bridge(dispatcher, channel, serialize="json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown phase"):
        bridge(dispatcher, channel, phase="later")
    with pytest.raises(ValueError, match="colour"):
        bridge(dispatcher, channel, colour="red")
    assert dispatcher.handler_count == 0


@pytest_twisted.ensureDeferred
async def test_fired_event_reaches_a_websocket_client() -> None:
    channels = ChannelRegistry()
    channel = channels.get_or_create("orders")
    dispatcher = EventDispatcher(("kind",))
    dispatcher.start()
    await bridge(dispatcher, channel, key=lambda e: e["kind"], serialize=lambda e: e)
    factory = EventWebSocketFactory(channels=channels, default_channel="orders")
    port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        client = await connect_ws(port.getHost().port)
        client.send_json({"type": "subscribe", "event": "paid"})
        await client.wait_type("subscribed")
        result = await dispatcher.fire_event({"kind": "paid", "total": 9}, kind="paid")
        assert result.succeeded
        frame = await client.wait_type("event")
        assert frame["event"] == "paid" and frame["data"] == {"kind": "paid", "total": 9}
        assert frame["id"] == result.results[0].id
        client.sendClose()
        await client.closed
    finally:
        await port.stopListening()
