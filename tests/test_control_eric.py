"""
eric-sse's own ``SocketClient`` against the hub's control socket, and the half-close it
relies on (one request, no newline, ``shutdown(SHUT_WR)``, read to the end), with plain
sockets. The hub is a real process; these blocking sockets never wait on this process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from tests._hub import HubProcess, start_hub

#: The longest control line (the hub's default ``--max-frame``).
MAX_LINE = 65536


class EricHub:
    """A hub process with a control socket in a private directory."""

    def __init__(self, process: HubProcess, directory: str) -> None:
        self.process = process
        self.directory = directory
        self.path = os.path.join(directory, "hub.sock")
        self._names = 0

    def name(self, prefix: str = "e") -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    def connect(self) -> Conn:
        return Conn(self.path)

    def no_traceback(self) -> None:
        text = self.process.text
        assert "Traceback" not in text and "Unhandled error" not in text, text[-3000:]


@pytest_twisted.async_yield_fixture(scope="module")
async def hub() -> AsyncIterator[EricHub]:
    directory = tempfile.mkdtemp(prefix="ted-eric-")
    process = await start_hub("--control", f"unix:{os.path.join(directory, 'hub.sock')}")
    yield EricHub(process, directory)
    await process.stop()
    shutil.rmtree(directory, ignore_errors=True)


class Conn:
    """A blocking control connection (5 s timeout on every read)."""

    def __init__(self, path: str, family: int = socket.AF_UNIX) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path if family == socket.AF_UNIX else ("127.0.0.1", int(path)))
        self._buffer = b""

    def send(self, value: Any, newline: bool = True) -> None:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.sock.sendall(raw + (b"\n" if newline else b""))

    def half_close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def line(self) -> Any:
        """The next line, parsed; EOFError if the hub closed first."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed; unterminated rest: {self._buffer[:200]!r}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(raw)

    def request(self, value: Any) -> Any:
        self.send(value)
        return self.line()

    def rest(self) -> list[Any]:
        """Every line until the hub closes (socket.timeout if it never does)."""
        lines = []
        while True:
            try:
                lines.append(self.line())
            except EOFError:
                assert self._buffer == b"", self._buffer
                return lines

    def close(self) -> None:
        self.sock.close()


def exchange(path: str, data: bytes) -> list[Any]:
    """Send ``data``, half-close, read to the end: the answer lines."""
    conn = Conn(path)
    try:
        conn.sock.sendall(data)
        conn.half_close()
        return conn.rest()
    finally:
        conn.close()


def channel_with(hub: EricHub, conn: Conn, *listeners: str) -> str:
    name = hub.name()
    assert conn.request({"v": "c", "c": name}) == {"c": name}
    for listener in listeners:
        assert conn.request({"v": "r", "c": name, "r": listener}) == {"r": listener, "c": name}
    return name


# -- eric-sse's SocketClient -------------------------------------------------------------

ERIC_SCRIPT = r"""
import asyncio, json, sys
from eric_sse.clients import SocketClient

async def take(stream, count):
    lines = []
    async for line in stream:
        if line:
            lines.append(json.loads(line))
        if len(lines) == count:
            return lines

async def rest(stream):
    return [json.loads(line) async for line in stream if line]

async def main(path):
    client = SocketClient(path)
    out = {"create_channel": await client.create_channel()}
    channel = json.loads(out["create_channel"])["c"]
    out["register"] = await client.register(channel)
    listener = json.loads(out["register"])["r"]
    out["dispatch"] = await client.dispatch(channel, listener, "t", {"n": 1})
    out["broadcast_message"] = await client.broadcast_message(channel, "news", {"n": 2})
    first = client.stream(channel, listener)
    out["first"] = await take(first, 3)  # the answer, then two mails
    second = client.stream(channel, listener)  # takes the listener over
    out["second"] = await take(second, 1)
    out["first_rest"] = await rest(first)
    out["dispatch_2"] = await client.dispatch(channel, listener, "t", {"n": 3})
    out["second"] += await take(second, 1)
    out["remove_listener"] = await client.remove_listener(channel, listener)
    out["second_rest"] = await rest(second)
    out["remove_channel"] = await client.remove_channel(channel)
    out["channel"], out["listener"] = channel, listener
    print(json.dumps(out))

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 20))
"""


def one_line(text: str) -> Any:
    """What SocketClient.send_payload read to the end: exactly one JSON line."""
    assert text.endswith("\n") and text.count("\n") == 1, text
    return json.loads(text)


@pytest_twisted.ensureDeferred
async def test_eric_sse_socket_client_drives_the_hub(hub: EricHub) -> None:
    pytest.importorskip("eric_sse")
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-c", ERIC_SCRIPT, hub.path], env=dict(os.environ), reactor=reactor
    )
    assert code == 0, err.decode(errors="replace")[-3000:]
    got = json.loads(out)
    channel, listener = got["channel"], got["listener"]
    assert re.fullmatch(r"[0-9a-f]{32}", channel), channel
    # each one-shot answer is one JSON line, then the hub closed the connection
    assert one_line(got["create_channel"]) == {"c": channel}
    assert one_line(got["register"]) == {"r": listener, "c": channel}
    dispatched = one_line(got["dispatch"])
    assert dispatched["ok"] is True and isinstance(dispatched["id"], str)
    broadcast = one_line(got["broadcast_message"])
    assert broadcast["ok"] is True and isinstance(broadcast["id"], int)
    answer, mail, copy = got["first"]
    assert answer == {"ok": True, "r": listener, "c": channel}
    assert mail == {"id": dispatched["id"], "t": "t", "p": {"n": 1}, "n": 1, "s": "dispatch",
                    "r": listener, "c": channel}
    assert (copy["t"], copy["p"], copy["s"], copy["n"]) == ("news", {"n": 2}, "broadcast", 1)
    # taken over by the second stream: the first ends, and was acknowledged as written
    assert got["first_rest"] == [{"end": "replaced"}]
    second_answer, new_mail = got["second"]
    assert second_answer == answer
    assert new_mail["id"] == one_line(got["dispatch_2"])["id"]  # no redelivery
    assert (new_mail["p"], new_mail["n"]) == ({"n": 3}, 1)
    assert one_line(got["remove_listener"]) == {"ok": True}
    assert got["second_rest"] == [{"end": "removed"}]
    assert one_line(got["remove_channel"]) == {"ok": True}
    hub.no_traceback()


# -- half-close with plain sockets -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_one_request_without_a_newline_then_half_close(hub: EricHub) -> None:
    name = hub.name()
    line = json.dumps({"v": "c", "c": name, "i": 1}).encode()
    assert exchange(hub.path, line) == [{"c": name, "i": 1}]
    answers = exchange(hub.path, json.dumps({"v": "b", "c": name, "t": "x"}).encode())
    assert len(answers) == 1 and answers[0]["ok"] is True and answers[0]["id"] == 1
    # the same checks as any line
    (bad,) = exchange(hub.path, b'{"v": "b", "c": "' + name.encode() + b'", "x": 1}')
    assert bad["code"] == "bad_request" and "'x'" in bad["error"]
    (malformed,) = exchange(hub.path, b'{"v": "b"')
    assert malformed["code"] == "bad_request"
    assert exchange(hub.path, b"") == []  # nothing sent: nothing answered, closed
    hub.no_traceback()


@pytest_twisted.ensureDeferred
async def test_every_line_is_answered_before_the_close(hub: EricHub) -> None:
    name = hub.name()
    lines = [
        {"v": "c", "c": name, "i": "c"},
        {"v": "r", "c": name, "r": "w", "i": "r"},
        # no stream: answered (timeout) after 0.3 s, the last of all
        {"v": "q", "c": name, "r": "w", "t": "ask", "timeout": 0.3, "i": "q"},
        {"v": "nope", "i": "bad"},
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    data += json.dumps({"v": "d", "c": name, "r": "w", "t": "job", "i": "d"}).encode()
    answers = exchange(hub.path, data)
    assert [a["i"] for a in answers] == ["c", "r", "bad", "d", "q"], answers
    by_ref = {a["i"]: a for a in answers}
    assert by_ref["c"] == {"c": name, "i": "c"} and by_ref["r"] == {"r": "w", "c": name, "i": "r"}
    assert by_ref["bad"]["code"] == "bad_request" and by_ref["d"]["ok"] is True
    assert by_ref["q"]["code"] == "timeout"
    hub.no_traceback()


@pytest_twisted.ensureDeferred
async def test_an_over_long_unterminated_last_line(hub: EricHub) -> None:
    name = hub.name()
    assert exchange(hub.path, json.dumps({"v": "c", "c": name}).encode()) == [{"c": name}]
    prefix = json.dumps({"v": "b", "c": name, "t": "x", "p": ""}).encode()[:-2]
    exact = prefix + b"x" * (MAX_LINE - len(prefix) - 2) + b'"}'
    assert len(exact) == MAX_LINE
    (answer,) = exchange(hub.path, exact)  # at the limit: carried out
    assert answer["ok"] is True
    (refused,) = exchange(hub.path, exact[:-2] + b'x"}')
    assert refused["code"] == "too_large" and refused["v"] is None
    hub.no_traceback()


@pytest_twisted.ensureDeferred
async def test_a_half_closed_listen_acknowledges_as_written_and_refuses_requests(
    hub: EricHub,
) -> None:
    control = hub.connect()
    name = channel_with(hub, control, "w")
    ids = [control.request({"v": "d", "c": name, "r": "w", "t": "job", "p": n})["id"]
           for n in range(2)]
    stream = hub.connect()
    stream.send({"v": "l", "c": name, "r": "w"}, newline=False)
    stream.half_close()
    assert stream.line() == {"ok": True, "r": "w", "c": name}
    assert [(m["id"], m["p"], m["n"]) for m in (stream.line(), stream.line())] == [
        (ids[0], 0, 1), (ids[1], 1, 1)
    ]
    # a request: written, and failed back at once (nobody can reply to it)
    refused = control.request({"v": "q", "c": name, "r": "w", "t": "ask", "p": 7, "i": 1})
    assert refused["code"] == "remote" and refused["remote_type"] == "ClientError", refused
    assert "half-closed" in refused["error"]
    request = stream.line()
    assert (request["t"], request["p"], request["q"]) == ("ask", 7, True)
    later = control.request({"v": "d", "c": name, "r": "w", "t": "job", "p": 2})["id"]
    assert (stream.line()["id"]) == later
    # another stream takes over: the first ends; nothing comes again (all acknowledged)
    other = hub.connect()
    assert other.request({"v": "l", "c": name, "r": "w"})["ok"] is True
    assert stream.rest() == [{"end": "replaced"}]
    fresh = control.request({"v": "d", "c": name, "r": "w", "t": "job", "p": 3})["id"]
    assert other.line()["id"] == fresh
    for conn in (control, stream, other):
        conn.close()
    hub.no_traceback()


@pytest_twisted.ensureDeferred
async def test_a_listen_that_half_closes_later_acknowledges_what_it_holds(
    hub: EricHub,
) -> None:
    control = hub.connect()
    name = channel_with(hub, control, "w")
    ids = [control.request({"v": "d", "c": name, "r": "w", "t": "job", "p": n})["id"]
           for n in range(3)]
    stream = hub.connect()
    assert stream.request({"v": "l", "c": name, "r": "w", "m": 5})["ok"] is True
    assert [stream.line()["id"] for _ in ids] == ids
    stream.send({"ack": ids[0]})  # (read before the end: carried out, answers nothing)
    stream.send({"ack": ids[1]}, newline=False)  # the last line, unterminated
    stream.half_close()
    later = control.request({"v": "d", "c": name, "r": "w", "t": "job", "p": 3})["id"]
    mail = stream.line()  # the stream goes on (no error line came before it)
    assert (mail["id"], mail["n"]) == (later, 1)
    other = hub.connect()
    assert other.request({"v": "l", "c": name, "r": "w"})["ok"] is True
    assert stream.rest() == [{"end": "replaced"}]
    fresh = control.request({"v": "d", "c": name, "r": "w", "t": "job", "p": 4})["id"]
    assert other.line()["id"] == fresh  # ids[2] (held at the half-close) was acknowledged
    for conn in (control, stream, other):
        conn.close()
    hub.no_traceback()


@pytest_twisted.ensureDeferred
async def test_a_listen_whose_client_closes_is_redelivered_not_acknowledged(
    hub: EricHub,
) -> None:
    # A close is not a half-close: the mail it held goes to the next stream.
    control = hub.connect()
    name = channel_with(hub, control, "w")
    first = control.request({"v": "d", "c": name, "r": "w", "t": "job", "p": 0})["id"]
    stream = hub.connect()
    assert stream.request({"v": "l", "c": name, "r": "w"})["ok"] is True
    assert stream.line()["id"] == first
    stream.close()
    again = hub.connect()
    assert again.request({"v": "l", "c": name, "r": "w"})["ok"] is True
    mail = again.line()
    assert (mail["id"], mail["n"]) == (first, 2)
    for conn in (control, again):
        conn.close()
    hub.no_traceback()


@pytest_twisted.ensureDeferred
async def test_a_half_closed_watch_goes_on_until_it_ends(hub: EricHub) -> None:
    control = hub.connect()
    name = channel_with(hub, control)
    watch = hub.connect()
    watch.send({"v": "w", "c": name}, newline=False)
    watch.half_close()
    assert watch.line()["ok"] is True
    assert control.request({"v": "b", "c": name, "t": "news", "p": 1})["ok"] is True
    event = watch.line()
    assert (event["type"], event["event"], event["data"]) == ("event", "news", 1)
    assert control.request({"v": "rc", "c": name}) == {"ok": True}
    (gap,) = watch.rest()
    assert (gap["type"], gap["reason"]) == ("gap", "removed")
    control.close()
    hub.no_traceback()


async def control_port(process: HubProcess) -> str:
    """The port of the hub's TCP control endpoint, from its log (bounded wait)."""
    for _ in range(250):
        match = re.search(r"control socket listening on .*port=(\d+)", process.text)
        if match:
            return match.group(1)
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"no control socket in the log:\n{process.text}")


@pytest_twisted.ensureDeferred
async def test_over_tcp_a_half_close_answers_requests_but_ends_a_listen() -> None:
    # On TCP a close cannot be told from a half-close: requests are answered, but a
    # listen ends as at a disconnect (its mail goes to the next stream, never acknowledged
    # to a client that may be gone).
    process = await start_hub("--control", "tcp:0:interface=127.0.0.1")
    try:
        port = await control_port(process)
        conn = Conn(port, socket.AF_INET)
        conn.send({"v": "c", "c": "tcp", "i": 1}, newline=False)
        conn.half_close()
        assert conn.rest() == [{"c": "tcp", "i": 1}]
        conn.close()
        control = Conn(port, socket.AF_INET)
        assert control.request({"v": "r", "c": "tcp", "r": "w"})["r"] == "w"
        sent = control.request({"v": "d", "c": "tcp", "r": "w", "t": "job"})["id"]
        stream = Conn(port, socket.AF_INET)
        stream.send({"v": "l", "c": "tcp", "r": "w"}, newline=False)
        stream.half_close()
        answer, mail = stream.rest()  # then closed, no end line
        assert answer == {"ok": True, "r": "w", "c": "tcp"}
        assert (mail["id"], mail["n"]) == (sent, 1)
        stream.close()
        again = Conn(port, socket.AF_INET)
        assert again.request({"v": "l", "c": "tcp", "r": "w"})["ok"] is True
        mail = again.line()
        assert (mail["id"], mail["n"]) == (sent, 2)  # not acknowledged: redelivered
        for c in (control, again):
            c.close()
    finally:
        await process.stop()
    assert "Traceback" not in process.text, process.text[-3000:]


@pytest_twisted.ensureDeferred
async def test_a_closed_auto_ack_stream_gets_no_mail_after_its_end_of_data() -> None:
    # The client closes (not a half-close): its stream ends at once, before the
    # transport's connectionLost a reactor turn later. Mail arriving in between waits for
    # the next stream; it was auto-acknowledged to the dead socket, and lost, before.
    from tests._control import connect_control
    from twisted_event_dispatcher.hub._control_socket import ControlFactory
    from twisted_event_dispatcher.hub.app import Hub

    directory = tempfile.mkdtemp(prefix="ted-eric-")
    path = os.path.join(directory, "hub.sock")
    hub = Hub()
    factory = ControlFactory(hub.control)
    listening: Any = reactor
    port = listening.listenUNIX(path, factory)
    try:
        channel = hub.channel
        await channel.add_listener("w")
        client = await connect_control(path)
        assert (await client.request({"v": "l", "r": "w", "a": True}))["ok"] is True
        (server,) = factory.connections
        ended: Deferred[None] = Deferred()
        end_of_data = server.readConnectionLost

        def then_mail() -> None:
            end_of_data()
            channel.dispatch("w", "job", "late")  # (in the same reactor turn)
            ended.callback(None)

        patched: Any = server
        patched.readConnectionLost = then_mail
        client.close()
        await ended
        again = await connect_control(path)
        assert (await again.request({"v": "l", "r": "w"}))["ok"] is True
        mail = await again.next()
        assert (mail["p"], mail["n"]) == ("late", 1)
        again.close()
    finally:
        factory.close_all()
        await port.stopListening()
        shutil.rmtree(directory, ignore_errors=True)
