"""
The control plane (issue 12) against a real hub process: the same three workloads over
its UNIX control socket and over its WebSocket (``/ws``), interleaved in one run.

1. **Dispatch throughput**: one connection pipelines ``dispatch`` requests to one listener
   (``{"v": "d", ...}`` lines; ``{"type": "dispatch", ...}`` frames), at most
   :data:`WINDOW` awaiting their answer (each answer lets the next one go); another
   connection is that listener's stream with auto-ack and ``max_in_flight`` 1000 (``{"v":
   "l", "a": true, "m": 1000}``; ``{"type": "listen", "auto_ack": true, ...}``) and counts
   the mail. Dispatches answered per second, and mails received per second (both from
   the first dispatch sent until the last answer / the last mail is in).
2. **Request/reply round trip**: one connection listens and answers each request mail
   (``{"ack": id, "reply": data}``; an ``ack`` frame with ``reply``); another sends
   ``request``\\s one at a time; p50 and p99 of the time until the answer carrying the
   reply is in.
3. The same through :class:`twisted_event_dispatcher.client.HubClient` (the listener side
   stays the raw one), labelled as such: what a Python caller gets from the library's
   client on top of the hub.
4. **The floor**: a plain Twisted line echo in another process (``bench/_echo.py``) over a
   UNIX socket, one line at a time: what one round trip between two processes costs on
   this machine, whatever the hub does (a request/reply is two of them).

The hub runs as ``python -m twisted_event_dispatcher serve --listen
tcp:0:interface=127.0.0.1 --control unix:TMPDIR/hub.sock --log-level warn
--max-request-rate 1000000000`` (a memory channel): the WebSocket request rate limit (by default
1000 requests a second per connection, which would cap the WebSocket rows) is raised
rather than turned off, so that its check still runs on every frame. The clients run in
this process: plain Twisted protocols (a ``LineReceiver`` on the socket, an Autobahn
client on the WebSocket), so the numbers are the hub's, not a client library's. Each
round runs every workload on both transports, the order alternating; rates and CPU costs
are the best round's, latency percentiles are over the samples of every round. The CPU
rows are the CPU time (``/proc``) the hub process, and this process (both clients), used
per dispatch or request: on a shared machine rates follow the CPU the processes get,
while CPU per operation does not. With the environment variable ``BENCH_PROFILE`` set to
a directory, the hub runs under cProfile and writes its stats there as ``hub.prof``.

Run with ``bash scripts/bench`` (``--quick`` for a smoke run, under a minute). Every loop
is bounded (a round that does not finish within :data:`ROUND_TIMEOUT` seconds fails the
run); the hub and every connection are stopped at the end. This is a benchmark, not a
test: targets are printed next to the measurements so a regression is visible.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from tests._hub import HubProcess, start_hub
from twisted_event_dispatcher.client import HubClient

from ._harness import options
from ._processes import BenchProcess, react_main, spawn_ready
from .bench_listeners import cpu_seconds, percentile, stop_worker

#: Dispatches awaiting their answer on the sending connection.
WINDOW = 256
#: The listen stream's max_in_flight (the hub's bound).
MAX_IN_FLIGHT = 1000
#: The listeners' mailbox size: a whole round fits, whatever the stream's pace.
MAILBOX = 100_000
#: Seconds one workload of one round may take before the run fails.
ROUND_TIMEOUT = 120.0
#: Dispatches and requests before the measured ones (connections and code paths warm up).
WARM_UP = 200
DATA = {"n": 0, "text": "hello"}

#: The hub's --max-request-rate: WebSocket requests one connection may send a second.
REQUEST_RATE = 1_000_000_000
#: Rounds of a full run (unless --rounds says otherwise).
ROUNDS = 5

SOCKET = "control socket"
WEBSOCKET = "WebSocket"


_T = TypeVar("_T")


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# -- the two wire forms -----------------------------------------------------------------------


class Wire:
    """How one transport spells the requests the workloads send (see the subclasses)."""

    name = ""
    #: How every mail (and nothing else) the hub sends a listening connection starts.
    mail_prefix = b""
    #: The key of the data in a mail and in a request's answer.
    data_key = ""

    def frame(self, value: dict[str, Any]) -> bytes:
        return _json(value)

    def register(self, listener: str) -> bytes:
        raise NotImplementedError

    def listen(self, listener: str, auto_ack: bool) -> bytes:
        raise NotImplementedError

    def dispatch(self, listener: str, n: int) -> bytes:
        raise NotImplementedError

    def request(self, listener: str, n: int) -> bytes:
        raise NotImplementedError

    def reply(self, listener: str, mail: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def failed(self, answer: bytes) -> bool:
        """True if ``answer`` is an error (or not an answer at all)."""
        return b'"ok":true' not in answer


class SocketWire(Wire):
    """Control socket lines: eric-sse's short keys, one JSON object a line."""

    name = SOCKET
    mail_prefix = b'{"id":'
    data_key = "p"

    def frame(self, value: dict[str, Any]) -> bytes:
        return _json(value) + b"\n"

    def register(self, listener: str) -> bytes:
        return self.frame({"v": "r", "r": listener, "size": MAILBOX})

    def listen(self, listener: str, auto_ack: bool) -> bytes:
        return self.frame({"v": "l", "r": listener, "a": auto_ack, "m": MAX_IN_FLIGHT})

    def dispatch(self, listener: str, n: int) -> bytes:
        return self.frame({"v": "d", "r": listener, "t": "tick", "p": dict(DATA, n=n)})

    def request(self, listener: str, n: int) -> bytes:
        return self.frame({"v": "q", "r": listener, "t": "echo", "p": dict(DATA, n=n)})

    def reply(self, listener: str, mail: dict[str, Any]) -> bytes:
        return self.frame({"ack": mail["id"], "reply": mail["p"]})

    def failed(self, answer: bytes) -> bool:
        return not answer.startswith(b'{"ok":true')


class WebSocketWire(Wire):
    """WebSocket text frames: the same verbs with long names and a ``type``."""

    name = WEBSOCKET
    mail_prefix = b'{"type":"mail"'
    data_key = "data"

    def register(self, listener: str) -> bytes:
        return self.frame({"type": "register", "listener": listener, "mailbox_size": MAILBOX})

    def listen(self, listener: str, auto_ack: bool) -> bytes:
        return self.frame({
            "type": "listen", "listener": listener, "auto_ack": auto_ack,
            "max_in_flight": MAX_IN_FLIGHT,
        })

    def dispatch(self, listener: str, n: int) -> bytes:
        return self.frame({
            "type": "dispatch", "listener": listener, "event": "tick", "data": dict(DATA, n=n)
        })

    def request(self, listener: str, n: int) -> bytes:
        return self.frame({
            "type": "request", "listener": listener, "event": "echo", "data": dict(DATA, n=n)
        })

    def reply(self, listener: str, mail: dict[str, Any]) -> bytes:
        return self.frame(
            {"type": "ack", "listener": listener, "id": mail["id"], "reply": mail["data"]}
        )


# -- raw connections ----------------------------------------------------------------------------


class Connection(Protocol):
    """What the workloads need of a connection: send one payload, get each one back."""

    on_message: Callable[[bytes], None]
    #: Fires once the connection is closed.
    lost: Deferred[None]

    def send(self, payload: bytes) -> None: ...

    def close(self) -> None: ...


def _unexpected(payload: bytes) -> None:
    raise RuntimeError(f"a message nobody waits for: {payload[:300]!r}")


class NotConnected:
    """A connection not made yet (the run failed before): closed already."""

    def __init__(self) -> None:
        self.on_message: Callable[[bytes], None] = _unexpected
        self.lost: Deferred[None] = succeed(None)

    def send(self, payload: bytes) -> None:
        raise RuntimeError("not connected")

    def close(self) -> None:
        pass


class SocketConnection(LineReceiver):
    """A control socket connection: lines in, lines out."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 22

    def __init__(self) -> None:
        self.on_message: Callable[[bytes], None] = _unexpected
        self.lost: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.on_message(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        raise RuntimeError(f"a line of {len(line)} bytes from the hub")

    def send(self, payload: bytes) -> None:  # (the payload ends with its newline)
        assert self.transport is not None
        self.transport.write(payload)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


class WebSocketConnection(WebSocketClientProtocol):
    """An Autobahn client connection: text frames in, text frames out."""

    def __init__(self) -> None:
        super().__init__()
        self.on_message: Callable[[bytes], None] = _unexpected
        self.opened: Deferred[WebSocketConnection] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.on_message(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(RuntimeError(f"WebSocket closed before opening: {reason}"))
        if not self.lost.called:
            self.lost.callback(None)

    def send(self, payload: bytes) -> None:
        self.sendMessage(payload)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.sendClose()


async def connect(wire: Wire, control: str, port: int) -> Connection:
    if wire.name == SOCKET:
        socket = SocketConnection()
        await connectProtocol(UNIXClientEndpoint(reactor, control), socket)
        return socket
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws")
    factory.protocol = WebSocketConnection
    protocol = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    assert isinstance(protocol, WebSocketConnection)
    return await protocol.opened


async def call(connection: Connection, payload: bytes) -> dict[str, Any]:
    """Send one request and return its answer (the next message), which must not fail."""
    answered: Deferred[bytes] = Deferred()
    connection.on_message = answered.callback
    connection.send(payload)
    answer = await answered.addTimeout(ROUND_TIMEOUT, reactor)
    connection.on_message = _unexpected
    value: dict[str, Any] = json.loads(answer)
    if "error" in value or value.get("type") == "error":
        raise RuntimeError(f"the hub refused {payload!r}: {value}")
    return value


# -- workloads ----------------------------------------------------------------------------


class Done:
    """A deferred end of a workload that fails, once, with the first thing gone wrong."""

    def __init__(self) -> None:
        self.deferred: Deferred[float] = Deferred()

    def finish(self) -> None:
        if not self.deferred.called:
            self.deferred.callback(time.perf_counter())

    def fail(self, why: str) -> None:
        if not self.deferred.called:
            self.deferred.errback(RuntimeError(why))


async def finished(*ends: Done) -> list[float]:
    """When each of ``ends`` happened (``time.perf_counter``), within the round's timeout."""
    whens: list[float] = await gatherResults(
        [end.deferred for end in ends], consumeErrors=True
    ).addTimeout(ROUND_TIMEOUT, reactor)
    return whens


async def one_at_a_time(
    connection: Connection,
    payloads: list[bytes],
    good: Callable[[bytes], bool],
    samples: list[float],
) -> bytes:
    """
    Send each payload once the previous one is answered; the seconds from sending to
    the answer go to ``samples``. The last answer, once every answer was ``good``.
    """
    done, count = Done(), len(payloads)
    state = [0, 0.0]  # answered, when the latest payload was sent
    last = [b""]

    def answer(payload: bytes) -> None:
        samples.append(time.perf_counter() - state[1])
        if not good(payload):
            done.fail(f"{payload[:300]!r} answered {payloads[int(state[0])][:300]!r}")
            return
        n = int(state[0]) + 1
        state[0] = n
        if n < count:
            state[1] = time.perf_counter()
            connection.send(payloads[n])
        else:
            last[0] = payload
            done.finish()

    connection.on_message = answer
    state[1] = time.perf_counter()
    connection.send(payloads[0])
    try:
        await finished(done)
    finally:
        connection.on_message = _unexpected
    return last[0]


class Streams:
    """One transport's connections and listeners, set up once for the whole run."""

    def __init__(self, wire: Wire, hub_pid: int) -> None:
        self.wire = wire
        self.hub_pid = hub_pid
        self.sender: Connection = NotConnected()
        self.requester: Connection = NotConnected()
        self.stream: Connection = NotConnected()  # "tick"'s listen stream (auto-ack)
        self.server: Connection = NotConnected()  # "echo"'s listen stream (answers requests)
        self.client: HubClient | None = None
        short = "sock" if wire.name == SOCKET else "ws"
        self.tick = f"{short}-tick"
        self.echo = f"{short}-echo"

    async def open(self, control: str, port: int) -> None:
        wire = self.wire
        self.sender = await connect(wire, control, port)
        self.requester = await connect(wire, control, port)
        self.stream = await connect(wire, control, port)
        self.server = await connect(wire, control, port)
        for listener, connection, auto_ack in (
            (self.tick, self.stream, True), (self.echo, self.server, False)
        ):
            await call(self.sender, wire.register(listener))
            await call(connection, wire.listen(listener, auto_ack))
        self.server.on_message = self.serve
        url = f"unix:{control}" if wire.name == SOCKET else f"ws://127.0.0.1:{port}/ws"
        self.client = await HubClient.connect(url)

    def serve(self, payload: bytes) -> None:
        """The "echo" listener: answer each request mail with its data."""
        wire = self.wire
        if payload.startswith(wire.mail_prefix):
            self.server.send(wire.reply(self.echo, json.loads(payload)))
        elif wire.failed(payload):  # (the WebSocket answers each ack)
            raise RuntimeError(f"the echo listener's stream got {payload[:300]!r}")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        for connection in (self.sender, self.requester, self.stream, self.server):
            if not connection.lost.called:
                connection.close()
                await connection.lost

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by the hub and by this process (the clients)."""
        return cpu_seconds(self.hub_pid), time.process_time()

    def cpu_per(self, before: tuple[float, float], count: int, what: str) -> dict[str, float]:
        """CPU µs per ``what`` of the hub and of the clients since ``before``."""
        hub, clients = self.cpu()
        return {
            f"cpu hub {what}": (hub - before[0]) / count * 1e6,
            f"cpu clients {what}": (clients - before[1]) / count * 1e6,
        }

    # -- 1. dispatch throughput ---------------------------------------------------------

    def count_mail(self, count: int) -> Done:
        """Count the next ``count`` mails of "tick"'s stream; check the last one's data."""
        wire, mailed, received = self.wire, Done(), [0]

        def mail(payload: bytes) -> None:
            if not payload.startswith(wire.mail_prefix):
                mailed.fail(f"{wire.name}: the listen stream got {payload[:300]!r}")
                return
            received[0] += 1
            if received[0] == count:
                last = json.loads(payload)[wire.data_key]["n"]
                if last != count - 1:
                    mailed.fail(f"{wire.name}: the last mail was #{last} of {count}")
                mailed.finish()

        self.stream.on_message = mail
        return mailed

    async def dispatches(self, count: int) -> dict[str, float]:
        """Pipeline ``count`` dispatches on one connection, WINDOW in flight."""
        wire, sender = self.wire, self.sender
        payloads = [wire.dispatch(self.tick, n) for n in range(count)]
        answered, mailed = Done(), self.count_mail(count)
        state = [min(WINDOW, count), 0]  # sent, answered

        def answer(payload: bytes) -> None:
            if wire.failed(payload):
                answered.fail(f"{wire.name}: a dispatch was answered {payload[:300]!r}")
                return
            state[1] += 1
            if state[0] < count:
                sender.send(payloads[state[0]])
                state[0] += 1
            elif state[1] == count:
                answered.finish()

        sender.on_message = answer
        before = self.cpu()
        start = time.perf_counter()
        for payload in payloads[: state[0]]:
            sender.send(payload)
        last_answer, last_mail = await finished(answered, mailed)
        sender.on_message = self.stream.on_message = _unexpected
        return {
            "dispatches": count / (last_answer - start),
            "mails": count / (last_mail - start),
            **self.cpu_per(before, count, "dispatch"),
        }

    async def client_dispatches(self, count: int) -> dict[str, float]:
        """The same through HubClient.dispatch, WINDOW calls awaiting their answer."""
        assert self.client is not None
        client, tick, answered = self.client, self.tick, Done()
        mailed = self.count_mail(count)
        state = [0, 0]  # sent, answered

        def settled(mail_id: object) -> None:
            state[1] += 1
            if state[0] < count:
                send()
            elif state[1] == count:
                answered.finish()

        def failed(failure: Failure) -> None:
            answered.fail(f"HubClient.dispatch failed: {failure.getErrorMessage()}")

        def send() -> None:
            n = state[0]
            state[0] += 1
            client.dispatch(None, tick, "tick", dict(DATA, n=n)).addCallbacks(settled, failed)

        start = time.perf_counter()
        for _ in range(min(WINDOW, count)):
            send()
        last_answer, last_mail = await finished(answered, mailed)
        self.stream.on_message = _unexpected
        return {
            "dispatches": count / (last_answer - start),
            "mails": count / (last_mail - start),
        }

    # -- 2. request/reply ---------------------------------------------------------------

    async def requests(self, count: int, samples: list[float]) -> dict[str, float]:
        """
        ``count`` requests one at a time; the seconds each took go to ``samples``; the
        CPU they cost is returned.
        """
        wire = self.wire
        payloads = [wire.request(self.echo, n) for n in range(count)]
        before = self.cpu()
        last = await one_at_a_time(
            self.requester, payloads, lambda answer: not wire.failed(answer), samples
        )
        cpu = self.cpu_per(before, count, "request")
        reply = json.loads(last)[wire.data_key]
        if reply != dict(DATA, n=count - 1):
            raise RuntimeError(f"{wire.name}: the last reply was {reply!r}")
        return cpu

    async def client_requests(self, count: int, samples: list[float]) -> None:
        """The same through HubClient.request, awaited one at a time."""
        assert self.client is not None
        client, echo = self.client, self.echo
        for n in range(count):
            data = dict(DATA, n=n)
            start = time.perf_counter()
            reply = await client.request(None, echo, "echo", data)
            samples.append(time.perf_counter() - start)
            if reply != data:
                raise RuntimeError(f"HubClient.request over the {self.wire.name}: {reply!r}")


# -- the run ------------------------------------------------------------------------------


def keep_best(best: dict[str, float], result: dict[str, float]) -> None:
    """Merge one round into ``best``: the highest rates, the lowest CPU costs."""
    for key, value in result.items():
        previous = best.get(key, value)
        best[key] = min(previous, value) if key.startswith("cpu") else max(previous, value)


class Results:
    """One transport's results: best of the rounds; every latency sample."""

    def __init__(self) -> None:
        self.best: dict[str, float] = {}
        self.client: dict[str, float] = {}
        self.latency: list[float] = []
        self.client_latency: list[float] = []

    def p(self, which: str, fraction: float) -> float:
        """A latency percentile in ms (``which``: "raw" or "client")."""
        samples = self.latency if which == "raw" else self.client_latency
        return percentile(samples, fraction) * 1000


async def gc_paused(work: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``work()`` with the garbage collector paused, as the harness times."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return await work()
    finally:
        if was_enabled:
            gc.enable()


async def one_round(
    streams: Streams, results: Results, dispatches: int, requests: int
) -> None:
    """Every workload on one transport, the raw clients' then HubClient's."""
    keep_best(results.best, await gc_paused(lambda: streams.dispatches(dispatches)))
    keep_best(results.client, await gc_paused(lambda: streams.client_dispatches(dispatches)))
    keep_best(
        results.best, await gc_paused(lambda: streams.requests(requests, results.latency))
    )
    await gc_paused(lambda: streams.client_requests(requests, results.client_latency))


def machine() -> str:
    return (
        f"Python {sys.version.split()[0]}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )


#: A row of the table: label, the value on each transport, its format, the target (text
#: and test) if it has one.
Row = tuple[str, Callable[[Results], float], str, str, Callable[[float], bool] | None]

ROWS: list[Row] = [
    (f"dispatches/s answered, {WINDOW} in flight", lambda r: r.best["dispatches"], "{:,.0f}",
     ">= 20,000/s", lambda v: v >= 20_000),
    ("mails/s received (auto-ack stream)", lambda r: r.best["mails"], "{:,.0f}", "", None),
    ("hub CPU µs/dispatch", lambda r: r.best["cpu hub dispatch"], "{:.0f}", "", None),
    ("clients' CPU µs/dispatch", lambda r: r.best["cpu clients dispatch"], "{:.0f}", "", None),
    ("request/reply p50 ms", lambda r: r.p("raw", 0.5), "{:.3f}", "<= 1 ms",
     lambda v: v <= 1.0),
    ("request/reply p99 ms", lambda r: r.p("raw", 0.99), "{:.3f}", "", None),
    ("hub CPU µs/request", lambda r: r.best["cpu hub request"], "{:.0f}", "", None),
    ("HubClient: dispatches/s answered", lambda r: r.client["dispatches"], "{:,.0f}", "",
     None),
    ("HubClient: mails/s received", lambda r: r.client["mails"], "{:,.0f}", "", None),
    ("HubClient: request/reply p50 ms", lambda r: r.p("client", 0.5), "{:.3f}", "", None),
    ("HubClient: request/reply p99 ms", lambda r: r.p("client", 0.99), "{:.3f}", "", None),
]


class Floor:
    """
    A plain Twisted line echo in another process (``bench/_echo.py``) over a UNIX
    socket: what one round trip between two processes costs on this machine.
    """

    def __init__(self) -> None:
        self.process: BenchProcess | None = None
        self.connection: Connection = NotConnected()
        self.samples: list[float] = []

    async def open(self, path: str) -> None:
        self.process = await spawn_ready("bench._echo", path)
        connection = SocketConnection()
        await connectProtocol(UNIXClientEndpoint(reactor, path), connection)
        self.connection = connection

    async def measure(self, count: int) -> None:
        payload = SocketWire().request("echo", 0)
        await one_at_a_time(
            self.connection, [payload] * count, lambda line: line + b"\n" == payload,
            self.samples,
        )

    async def close(self) -> None:
        if not self.connection.lost.called:
            self.connection.close()
            await self.connection.lost
        if self.process is not None:
            await stop_worker(self.process)


def table(
    results: dict[str, Results], floor: Floor, rounds: int, dispatches: int, requests: int
) -> int:
    """Print the table; the number of missed targets (on either transport)."""
    sock, ws = results[SOCKET], results[WEBSOCKET]
    out = sys.stdout.write
    out(
        f"### Control plane\n\n{machine()}; the hub in a separate process (memory channel), "
        f"the clients in this one; {rounds} interleaved round(s) of {dispatches:,} "
        f"dispatches and {requests:,} requests one at a time per transport; rates and CPU: "
        "best round; latency: every round's samples; met: control socket; WebSocket\n\n"
        "| metric | control socket | WebSocket | WebSocket / socket | target | met |\n"
        "| --- | ---: | ---: | ---: | --- | --- |\n"
    )
    missed = 0
    for label, value, fmt, target, test in ROWS:
        ours, theirs = value(sock), value(ws)
        met = ""
        if test is not None:
            verdicts = [test(ours), test(theirs)]
            missed += verdicts.count(False)
            met = "; ".join("yes" if ok else "**no**" for ok in verdicts)
        out(
            f"| {label} | {fmt.format(ours)} | {fmt.format(theirs)} | {theirs / ours:.2f}x "
            f"| {target} | {met} |\n"
        )
    floor_p50, floor_p99 = (percentile(floor.samples, p) * 1000 for p in (0.5, 0.99))
    out(
        f"\nThe floor on this machine: a plain Twisted line echo in another process, over a "
        f"UNIX socket, answers in p50 {floor_p50:.3f} ms, p99 {floor_p99:.3f} ms (one "
        "round trip; a request/reply is two: requester, hub, listener, hub, requester).\n"
        f"\n{missed} target(s) missed.\n\n"
    )
    return missed


async def run(argv: list[str]) -> None:
    rounds, n = options(__doc__ or "", argv)
    if not any(arg.startswith("--rounds") for arg in argv) and "--quick" not in argv:
        rounds = ROUNDS
    dispatches, requests = n(20_000), n(2_000)
    profile = os.environ.pop("BENCH_PROFILE", "")
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        control = os.path.join(tmp, "hub.sock")
        command: tuple[str, ...] = (sys.executable, "-m", "twisted_event_dispatcher", "serve")
        if profile:
            command = (
                sys.executable, "-m", "cProfile", "-o", os.path.join(profile, "hub.prof"),
                *command[1:],
            )
        hub: HubProcess | None = None
        all_streams: list[Streams] = []
        floor = Floor()
        try:
            await floor.open(os.path.join(tmp, "echo.sock"))
            hub = await start_hub(
                "--control", f"unix:{control}", "--log-level", "warn",
                "--max-request-rate", str(REQUEST_RATE), command=command,
            )
            assert hub.transport is not None and hub.transport.pid is not None
            for wire in (SocketWire(), WebSocketWire()):
                all_streams.append(Streams(wire, hub.transport.pid))
                await all_streams[-1].open(control, hub.port)
            results = {streams.wire.name: Results() for streams in all_streams}
            for streams in all_streams:  # warm up
                await one_round(streams, Results(), WARM_UP, WARM_UP)
            await floor.measure(WARM_UP)
            floor.samples.clear()
            for round_number in range(rounds):
                order = all_streams if round_number % 2 == 0 else all_streams[::-1]
                for streams in order:
                    await one_round(streams, results[streams.wire.name], dispatches, requests)
                await gc_paused(lambda: floor.measure(requests))
        finally:
            for streams in all_streams:
                await streams.close()
            await floor.close()
            if hub is not None:
                code = await hub.stop()
                if code != 0:
                    sys.stderr.write(f"the hub exited with {code}:\n{hub.text}\n")
    table(results, floor, rounds, dispatches, requests)


if __name__ == "__main__":
    react_main(run)
