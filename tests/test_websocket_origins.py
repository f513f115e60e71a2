"""
Which browser origins an embedded ``EventWebSocketFactory`` accepts: by default the hub's
policy (pages served from loopback addresses) plus clients that send no ``Origin``;
``"*"`` only when asked for. Real Autobahn clients over 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests._clients import WSClient, connect_ws
from tests._local_hub import start_local_hub
from tests._servers import make_channels
from twisted_event_dispatcher.carriers.websocket import LOOPBACK_ORIGINS, EventWebSocketFactory
from twisted_event_dispatcher.hub import app

EVIL = "http://evil.example"


async def subscribed(client: WSClient) -> None:
    """The connection works: a subscribe is answered with ``subscribed``."""
    client.send_json({"type": "subscribe", "event": "a"})
    frame = await client.wait(lambda f: f.get("type") in ("subscribed", "error"))
    assert frame["type"] == "subscribed", frame
    client.sendClose()
    await client.closed


async def refused(port: int, origin: str, path: str = "/") -> None:
    """The handshake with ``origin`` is answered 403 (Autobahn's client reports the status)."""
    with pytest.raises(ConnectionError, match="handshake failed") as failure:
        await connect_ws(port, path=path, origin=origin)
    assert "[403]" in str(failure.value), str(failure.value)


async def serve(**options: Any) -> tuple[Any, int]:
    factory = EventWebSocketFactory(channels=make_channels(), default_channel="news", **options)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address: Any = port.getHost()
    return port, address.port


@pytest_twisted.ensureDeferred
async def test_default_factory_accepts_only_loopback_pages_and_clients_without_origin() -> None:
    port, number = await serve()
    try:
        await refused(number, EVIL)
        await refused(number, f"http://127.0.0.1.evil.example:{number}")
        await refused(number, "null")
        for origin in (f"http://127.0.0.1:{number}", "http://localhost:3000", "http://[::1]:80"):
            await subscribed(await connect_ws(number, origin=origin))
        await subscribed(await connect_ws(number))  # no Origin: curl, a service
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_star_is_an_explicit_opt_in_to_every_origin() -> None:
    port, number = await serve(allowed_origins=("*",))
    try:
        await subscribed(await connect_ws(number, origin=EVIL))
        await subscribed(await connect_ws(number))
    finally:
        await port.stopListening()


def test_the_hub_and_the_factory_share_one_policy() -> None:
    assert app.LOOPBACK_ORIGINS is LOOPBACK_ORIGINS
    assert "LOOPBACK_ORIGINS" in app.__all__
    defaults = EventWebSocketFactory.__init__.__kwdefaults__
    assert defaults is not None and defaults["allowed_origins"] is LOOPBACK_ORIGINS


@pytest_twisted.ensureDeferred
async def test_the_hubs_websocket_policy_is_unchanged() -> None:
    local = await start_local_hub()
    try:
        await refused(local.port, EVIL, path="/ws")
        page = await connect_ws(local.port, path="/ws", origin=f"http://127.0.0.1:{local.port}")
        await subscribed(page)
        await subscribed(await connect_ws(local.port, path="/ws"))
    finally:
        await local.stop()
    local = await start_local_hub(origins=("https://app.example",))
    try:
        await refused(local.port, f"http://127.0.0.1:{local.port}", path="/ws")
        await subscribed(await connect_ws(local.port, path="/ws", origin="https://app.example"))
    finally:
        await local.stop()
