"""
The README's Twisted-native embedding example (examples/embedded.tac), run as a user runs
it: ``twistd -n -y examples/embedded.tac``, then a browser's view of it over real sockets.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests._clients import connect_sse, connect_ws
from tests._hub import ROOT

TAC = os.path.join(ROOT, "examples", "embedded.tac")
README = os.path.join(ROOT, "README.md")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
#: What twisted.internet.tcp logs once the site listens (the .tac listens on port 0 here).
_LISTENING = re.compile(rb"Site starting on (\d+)")


class Twistd(ProcessProtocol):
    """twistd's output, the port its site listens on, and how it ended."""

    def __init__(self) -> None:
        self.output = b""
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = _LISTENING.search(self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        signalled = getattr(reason.value, "signal", None)
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"twistd exited ({code}):\n{self.text}"))
        self.ended.callback((code, signalled))

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")


def test_readme_shows_the_example_as_it_is() -> None:
    with open(TAC, encoding="utf-8") as file:
        tac = file.read()
    with open(README, encoding="utf-8") as file:
        readme = file.read()
    assert f"```python\n{tac}```\n" in readme, (
        "README.md must show examples/embedded.tac verbatim in a ```python block"
    )


def test_example_passes_the_linter() -> None:
    """ruff checks *.py only: give it the .tac as a Python file."""
    with open(TAC, "rb") as file:
        result = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--stdin-filename", "examples/embedded.py",
             "-"],
            stdin=file, capture_output=True, cwd=ROOT, timeout=60,
        )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@pytest_twisted.ensureDeferred
async def test_embedded_tac_serves_its_page_and_pushes_its_events() -> None:
    process = Twistd()
    args = [TWISTD, "--pidfile=", "-n", "-y", TAC]
    env = dict(os.environ, EMBEDDED_PORT="0", PYTHONUNBUFFERED="1")
    reactor.spawnProcess(process, TWISTD, args, env=env, path=ROOT)
    clients: list[object] = []
    try:
        port = await process.listening.addTimeout(30, reactor)
        base = f"http://127.0.0.1:{port}"

        # The app's own page, on the same site as the streams.
        page = await treq.get(f"{base}/")
        assert page.code == 200
        assert b'new EventSource("/sse?event=paid")' in await page.content()

        # A WebSocket as the page's script would open it (the page's origin is a
        # loopback one, which the factory accepts by default), and an SSE stream.
        ws = await connect_ws(port, "/ws", origin=base)
        clients.append(ws)
        ws.send_json({"type": "subscribe", "event": "paid"})
        subscribed = await ws.wait_type("subscribed")
        assert subscribed["channel"] == "orders"
        sse = await connect_sse(port, "/sse?event=paid")
        clients.append(sse)
        await sse.wait(lambda block: block.get("event") == "_subscribed")
        assert sse.status == 200

        # The app's handler fires the event; the bridge names it and publishes its data.
        paid = await treq.post(f"{base}/pay?order=17&total=1250")
        assert paid.code == 202, await paid.text()
        frame = await ws.wait_type("event")
        assert (frame["channel"], frame["event"], frame["data"]) == (
            "orders", "paid", {"order": 17, "total": 1250},
        )
        block = await sse.wait(lambda block: block.get("event") == "paid")
        streamed = json.loads(block["data"])
        assert (streamed["event"], streamed["data"]) == ("paid", {"order": 17, "total": 1250})
        assert block["id"] == f"{frame['epoch']}:{frame['id']}" == (
            f"{streamed['epoch']}:{streamed['id']}"
        )

        # Bad input to the app's handler is the app's 400, and nothing is fired.
        bad = await treq.post(f"{base}/pay?order=seventeen&total=1")
        assert bad.code == 400 and b"POST /pay?order=" in await bad.content()

        # A page of another site may not open the WebSocket (the default origins).
        try:
            await connect_ws(port, "/ws", origin="http://evil.example")
        except ConnectionError as e:
            assert "403" in str(e)
        else:
            raise AssertionError("a foreign origin was accepted")
        assert [f["data"] for f in ws.events()] == [{"order": 17, "total": 1250}]
    finally:
        if not process.ended.called:
            process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        code, signalled = await process.ended
    # twistd stops cleanly with the clients still connected: it re-raises the SIGTERM it
    # stopped on, after shutting down, with nothing wrong in its log.
    assert (code, signalled) in ((0, None), (None, signal.SIGTERM)), process.text
    assert "Server Shut Down." in process.text
    for bad_sign in ("Traceback", "Unhandled", "CRITICAL", "Error"):
        assert bad_sign not in process.text, process.text
