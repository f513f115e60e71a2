"""
``python -m twisted_event_dispatcher client`` as a subprocess against a real hub: ``--wait``
bounds the opening of a listen/watch, SIGINT/SIGTERM stop quietly with 130/143, the
client's own refusals are usage errors (2), a closed stdout stops ``listen`` quietly
without acknowledging the mail it could not print, and the error line's one format.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests._hub import ROOT, HubProcess, start_hub
from twisted_event_dispatcher.client import ClientMail, ClientStream, HubClient

#: Bound on every wait of the tests (never reached when all is well).
WAIT = 15.0


class Cli(ProcessProtocol):
    """A running ``client`` command: its output as it comes, its exit status."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.status: int | None = None
        self.stdout_closed = False
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []

    @classmethod
    def spawn(cls, *args: str, shell: str | None = None) -> Cli:
        cli = cls()
        env = {k: v for k, v in os.environ.items() if k != "EVENT_HUB_TOKEN"}
        argv = [sys.executable, "-m", "twisted_event_dispatcher", "client", *args]
        if shell is not None:  # argv inside a bash pipeline: shell holds "{}" for it
            command = shell.replace("{}", " ".join(map(_quote, argv)))
            argv = ["bash", "-c", command]
        reactor.spawnProcess(cli, argv[0], argv, env=env, path=ROOT)
        return cli

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self._check()

    def outConnectionLost(self) -> None:
        self.stdout_closed = True
        self._check()

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        assert isinstance(value, ProcessDone | ProcessTerminated)
        self.status = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        self._check()

    def _check(self) -> None:
        for entry in list(self._waiting):
            predicate, d = entry
            if predicate():
                self._waiting.remove(entry)
                d.callback(None)

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait (bounded) until ``predicate()`` holds; checked as output arrives."""
        if predicate():
            return
        d: Deferred[None] = Deferred()
        entry = (predicate, d)
        self._waiting.append(entry)
        d.addTimeout(WAIT, reactor)
        try:
            await d
        except Exception:
            raise AssertionError(
                f"timed out waiting for {what}; stdout {self.out[-500:]!r}, "
                f"stderr {self.err[-1500:]!r}"
            ) from None

    async def lines(self, count: int) -> list[dict[str, Any]]:
        await self.until(lambda: self.out.count(b"\n") >= count, f"{count} lines")
        return [json.loads(line) for line in self.out.splitlines()[:count]]

    async def exit(self) -> int:
        await self.until(lambda: self.status is not None, "the command to exit")
        assert self.status is not None
        return self.status

    def signal(self, name: str) -> None:
        assert self.transport is not None
        self.transport.signalProcess(name)

    def kill(self) -> None:
        if self.status is None and self.transport is not None:
            self.transport.signalProcess("KILL")

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


class Hub:
    """A hub process with a control socket in a private directory."""

    def __init__(self, process: HubProcess, directory: str) -> None:
        self.process = process
        self.directory = directory
        self.socket = f"unix:{os.path.join(directory, 'hub.sock')}"
        self.clients: list[HubClient] = []
        self._names = 0

    def name(self) -> str:
        self._names += 1
        return f"cli-{self._names}"

    async def client(self) -> HubClient:
        client = await HubClient.connect(self.socket)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


async def _start() -> Hub:
    directory = tempfile.mkdtemp(prefix="ted-cli-")
    process = await start_hub("--control", f"unix:{os.path.join(directory, 'hub.sock')}")
    return Hub(process, directory)


@pytest_twisted.async_yield_fixture(scope="module")
async def hub() -> AsyncIterator[Hub]:
    running = await _start()
    yield running
    await running.stop()


async def run(*args: str) -> tuple[int, str, str]:
    """Run the command to its end: (status, stdout, stderr)."""
    cli = Cli.spawn(*args)
    try:
        status = await cli.exit()
    finally:
        cli.kill()
    return status, cli.out.decode(), cli.stderr


async def next_mail(stream: ClientStream) -> ClientMail:
    mail = await stream.next().addTimeout(WAIT, reactor)
    assert isinstance(mail, ClientMail), mail
    return mail


def no_traceback(hub: Hub) -> None:
    text = hub.process.text
    assert "Traceback" not in text and "Unhandled" not in text, text[-3000:]


# -- 1. --wait bounds the opening of a listen or watch ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_listen_and_watch_give_up_after_wait_on_a_hub_that_does_not_answer() -> None:
    # They used to wait forever for the answer to "l"/"w" (create-channel gave up).
    stopped = await _start()
    try:
        client = await stopped.client()
        await client.register(None, "sl")
        stopped.process.signal("STOP")  # accepts connections (the backlog), answers nothing
        try:
            for verb in (("listen", "events", "sl"), ("watch", "events")):
                status, out, err = await run("--control", stopped.socket, "--wait", "1", *verb)
                assert (status, out) == (1, ""), err
                what = "stream of listener 'sl'" if verb[0] == "listen" else "watch of channel"
                assert err.startswith(f"error: opening the {what}"), err
                assert err.endswith("no answer within 1 s (--wait)\n"), err
                assert err.count("\n") == 1, err
        finally:
            assert stopped.process.transport is not None  # (signalProcess knows no "CONT")
            stopped.process.transport.signalProcess(signal.SIGCONT)
    finally:
        await stopped.stop()


# -- 2. SIGINT / SIGTERM ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "status"), [("INT", 130), ("TERM", 143)])
@pytest_twisted.ensureDeferred
async def test_a_signal_stops_listen_quietly(hub: Hub, name: str, status: int) -> None:
    # It used to warn that "the request may or may not have been carried out",
    # "reconnecting", and exit 0.
    client = await hub.client()
    channel = await client.create_channel(hub.name())
    await client.register(channel, "w")
    first = await client.dispatch(channel, "w", "job", 1)
    cli = Cli.spawn("--control", hub.socket, "listen", channel, "w")
    try:
        assert [m["id"] for m in await cli.lines(1)] == [first]  # printed: it is running
        cli.signal(name)
        assert await cli.exit() == status, cli.stderr
    finally:
        cli.kill()
    assert cli.stderr == ""
    # Its stream was closed: a new one takes the listener and gets the next mail.
    stream = client.stream(channel, "w")
    second = await client.dispatch(channel, "w", "job", 2)
    mail = await next_mail(stream)
    assert (mail.id, mail.deliveries) == (second, 1)  # the printed one was acknowledged
    await stream.close()
    no_traceback(hub)


@pytest_twisted.ensureDeferred
async def test_a_signal_abandons_a_verb_awaiting_its_answer_with_one_line(hub: Hub) -> None:
    client = await hub.client()
    channel = await client.create_channel(hub.name())
    await client.register(channel, "slow")
    stream = client.stream(channel, "slow")
    cli = Cli.spawn("--control", hub.socket, "request", channel, "slow", "work", "--timeout",
                    "60")
    try:
        request = await next_mail(stream)  # the hub has the request: it awaits the reply
        assert request.is_request and request.event == "work"
        cli.signal("INT")
        assert await cli.exit() == 130
    finally:
        cli.kill()
    assert cli.out == b""
    assert cli.stderr == (
        "interrupted before the hub answered: the request may or may not have been "
        "carried out\n"
    )
    await stream.close()


# -- 3. exit codes, stdout closed, the error line -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_what_the_client_refuses_before_sending_is_a_usage_error(hub: Hub) -> None:
    # These exited 1 ("the hub refused"), though nothing was sent.
    where = ("--control", hub.socket)
    cases = [
        (("listen", "events", "w", "--max-in-flight", "5000"), "from 1 to 1000"),
        (("broadcast", "events", "x", "1e999"), "NaN and infinities have no JSON form"),
        (("broadcast", "events", "x", "[" * 65 + "]" * 65), "deeper than 64 levels"),
        (("dispatch", "events", "w", "x", "[" * 70 + "]" * 70), "deeper than 64 levels"),
        (("broadcast", "events", "x", json.dumps("x" * 70000)), "max_request 65536"),
    ]
    for args, message in cases:
        status, out, err = await run(*where, *args)
        assert (status, out) == (2, ""), (args, err)
        assert err.startswith("usage: ") and message in err, (args, err)
        assert "\nerror: " in err and "Traceback" not in err, (args, err)


@pytest_twisted.ensureDeferred
async def test_an_error_line_names_the_hubs_code(hub: Hub) -> None:
    channel = hub.name()
    status, out, err = await run("--control", hub.socket, "dispatch", channel, "nobody", "x")
    assert (status, out) == (1, "")
    assert err == f"error: no channel named '{channel}' (unknown_channel)\n"
    client = await hub.client()
    await client.create_channel(channel)
    status, out, err = await run("--control", hub.socket, "dispatch", channel, "nobody", "x")
    assert (status, err) == (1, f"error: no listener 'nobody' on channel '{channel}' "
                                "(unknown_listener)\n")
    status, out, err = await run("--control", hub.socket, "frobnicate")
    assert status == 2 and err.startswith("usage: ") and "\nerror: " in err
    assert "invalid choice" in err


@pytest_twisted.ensureDeferred
async def test_listen_stops_quietly_when_stdout_is_closed(hub: Hub) -> None:
    # "listen | head -1" printed "error: [Errno 32] Broken pipe" and exited 1.
    client = await hub.client()
    channel = await client.create_channel(hub.name())
    await client.register(channel, "w")
    first = await client.dispatch(channel, "w", "job", 1)
    cli = Cli.spawn("--control", hub.socket, "listen", channel, "w")
    try:
        assert [m["id"] for m in await cli.lines(1)] == [first]
        assert cli.transport is not None
        cli.transport.closeChildFD(1)  # the reader goes away, as head does
        await cli.until(lambda: cli.stdout_closed, "stdout to be closed")
        second = await client.dispatch(channel, "w", "job", 2)  # its write fails: EPIPE
        assert await cli.exit() == 0, cli.stderr
    finally:
        cli.kill()
    assert cli.stderr == ""
    # The mail it could not print was not acknowledged: it comes again; the first was.
    stream = client.stream(channel, "w")
    mail = await next_mail(stream)
    assert (mail.id, mail.deliveries) == (second, 2)
    await stream.close()
