"""
The hub's operational limits: what it may listen on without a token, request header
timeout, connection cap, and what it logs (issue 9, defects 8, 9 and 10).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, cast

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests._clients import connect_sse, connect_ws
from tests._hub import HubProcess, spawn_hub, start_hub
from tests._local_hub import start_local_hub
from tests._raw_http import send
from twisted_event_dispatcher.hub import Hub, HubService
from twisted_event_dispatcher.hub._limits import (
    ConnectionLimit,
    HeaderTimeoutChannel,
    descriptor_shortfall,
    limit,
)
from twisted_event_dispatcher.hub.options import HubOptions, is_loopback, listen_interface

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
TWISTD = (os.path.join(os.path.dirname(sys.executable), "twistd"), "--pidfile=", "-n", "event-hub")


async def ended(process: HubProcess, timeout: float = 15) -> int:
    """The exit code; a hub still running after ``timeout`` seconds is stopped: -1."""
    done: Deferred[int] = Deferred()
    process.ended.addCallback(lambda code: done.callback(code) if not done.called else None)
    call = reactor.callLater(timeout, lambda: None if done.called else done.callback(-1))
    code = await done
    if call.active():
        call.cancel()
    if code == -1:
        await process.stop()
    return code


# -- defect 8: what may listen without a token ---------------------------------------------

BYPASSES = [
    ("tcp:0:interface=127.0.0.1:interface=0.0.0.0", "0.0.0.0"),
    ("tcp:0:interface=localhost:interface=", ""),
    ("tcp:0:0.0.0.0", "0.0.0.0"),
    ("tcp6:0:interface=\\:\\:1:interface=\\:\\:", "::"),
    ("tcp6:0", "::"),
]
LOOPBACK = [
    ("tcp:0:interface=127.0.0.1", "127.0.0.1"),
    ("tcp:0:interface=0.0.0.0:interface=127.0.0.1", "127.0.0.1"),
    ("tcp:0:interface=localhost", "localhost"),
    ("tcp6:0:interface=\\:\\:1", "::1"),
]


@pytest.mark.parametrize(("endpoint", "interface"), BYPASSES + LOOPBACK)
def test_listen_interface_is_what_twisted_binds(endpoint: str, interface: str) -> None:
    assert listen_interface(endpoint) == interface
    assert is_loopback(interface) == ((endpoint, interface) in LOOPBACK)


@pytest.mark.parametrize("endpoint", [e for e, _ in BYPASSES])
def test_public_bind_without_token_is_a_usage_error(endpoint: str) -> None:
    with pytest.raises(usage.UsageError, match="refusing to listen on .* without --token"):
        HubOptions().parseOptions(["--listen", endpoint])  # type: ignore[no-untyped-call]
    options = HubOptions()
    options.parseOptions(["--listen", endpoint, "--token", "s3cret"])  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("endpoint", [e for e, _ in LOOPBACK] + ["unix:/tmp/hub-test.sock"])
def test_loopback_and_unix_endpoints_need_no_token(endpoint: str) -> None:
    options = HubOptions()
    options.parseOptions(["--listen", endpoint])  # type: ignore[no-untyped-call]
    assert options["token"] is None


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [("bogus:1", "Unknown endpoint type"), ("tcp:0:backlogg=5", "backlogg")],
)
def test_unparsable_listen_is_a_usage_error(endpoint: str, message: str) -> None:
    with pytest.raises(usage.UsageError, match=f"--listen .*{message}"):
        HubOptions().parseOptions(["--listen", endpoint])  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("endpoint", "where"),
    [
        ("tcp:0:interface=127.0.0.1:interface=0.0.0.0", "refusing to listen on 0.0.0.0"),
        ("tcp:0:interface=localhost:interface=", "refusing to listen on all interfaces"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_hub_refuses_the_bypass_strings(endpoint: str, where: str) -> None:
    process = spawn_hub("--listen", endpoint)
    assert await ended(process) == 2, process.text
    assert where in process.text and "without --token" in process.text
    assert "event hub listening" not in process.text


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [("tcp6:0:interface=\\:\\:1", "[::1]"), ("tcp:0:interface=localhost", "127.0.0.1")],
)
@pytest_twisted.ensureDeferred
async def test_hub_serves_on_loopback_variants(endpoint: str, host: str) -> None:
    hub = await start_hub("--listen", endpoint)
    try:
        assert hub.url.startswith(f"http://{host}:")
        address = host.strip("[]")
        client = _Raw()
        connect = (TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint)(
            reactor, address, hub.port
        )
        await connect.connect(Factory.forProtocol(lambda: client))
        assert client.transport is not None
        client.transport.write(
            f"GET /health HTTP/1.1\r\nHost: {host}:{hub.port}\r\nConnection: close\r\n\r\n"
            .encode()
        )
        answer = await client.closed
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["status"] == "ok"
    finally:
        await hub.stop()


class _PublicPort:
    """A real port on 127.0.0.1 that says it is bound elsewhere (as an adopted socket may)."""

    def __init__(self, port: Any) -> None:
        self.port = port
        self.number: int = port.getHost().port
        self.stopped: list[Deferred[None]] = []

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.7", self.number)

    def stopListening(self) -> Deferred[None]:
        d: Deferred[None] = self.port.stopListening()
        self.stopped.append(d)
        return d


class _PublicEndpoint:
    def __init__(self) -> None:
        self.ports: list[_PublicPort] = []

    def listen(self, factory: Any) -> Deferred[_PublicPort]:
        async def go() -> _PublicPort:
            real = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
            port = _PublicPort(real)
            self.ports.append(port)
            return port

        return Deferred.fromCoroutine(go())


@pytest_twisted.ensureDeferred
async def test_service_checks_the_address_it_actually_listens_on() -> None:
    endpoint = _PublicEndpoint()
    service = HubService(Hub(), endpoint)  # type: ignore[arg-type]
    service.stop_reactor_on_failure = False
    service.startService()
    with pytest.raises(RuntimeError, match=r"refusing to serve on http://192\.0\.2\.7:\d+/"):
        await service.ready
    [port] = endpoint.ports
    assert len(port.stopped) == 1
    number = port.getHost().port
    await port.stopped[0]
    with pytest.raises(ConnectionRefusedError):
        await TCP4ClientEndpoint(reactor, "127.0.0.1", number).connect(
            Factory.forProtocol(Protocol)
        )
    await service.stopService()
    # with a token (or allow_public) the same address is served
    for hub, allow in ((Hub(token="s3cret"), False), (Hub(), True)):
        service = HubService(hub, _PublicEndpoint(), allow_public=allow)  # type: ignore[arg-type]
        service.startService()
        await service.ready
        assert service.url is not None and service.url.startswith("http://192.0.2.7:")
        await service.stopService()


# -- defect 9: header timeout and connection cap, unit (Clock, StringTransport) -------------


class _Stream(Resource):
    """GET: a response that never ends (like /sse). POST: echo the body length."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render_GET(self, request: Request) -> int:
        request.write(b"data: hello\n\n")
        return NOT_DONE_YET

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        return str(len(request.content.read())).encode()


def _connect(factory: Any) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    return protocol, transport


def _site(clock: Clock, header_timeout: float = 10.0) -> Any:
    site = Site(_Stream(), reactor=clock)
    return limit(site, max_connections=None, header_timeout=header_timeout)


def test_trickled_headers_get_408_at_the_deadline() -> None:
    clock = Clock()
    channel, transport = _connect(_site(clock))
    assert isinstance(channel, HeaderTimeoutChannel)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n"
    for byte in request[:9]:  # one byte a second: Twisted's idle timeout never fires
        channel.dataReceived(bytes([byte]))
        clock.advance(1)
    assert not transport.disconnecting and transport.value() == b""
    channel.dataReceived(request[9:10])
    clock.advance(1)  # 10 s since the connection opened
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"within 10 seconds" in transport.value()
    assert b"x-content-type-options: nosniff\r\n" in transport.value()
    assert transport.disconnecting


def test_a_header_line_too_long_gets_431_not_a_silent_close() -> None:
    channel, transport = _connect(_site(Clock()))
    channel.dataReceived(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    body = transport.value().split(b"\r\n\r\n", 1)[1]
    assert "longer than 16384 bytes" in json.loads(body)["error"]
    assert transport.disconnecting


def test_silent_connection_gets_408() -> None:
    clock = Clock()
    _, transport = _connect(_site(clock, 2.5))
    clock.advance(2.4)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting


def test_trickled_body_gets_408() -> None:
    clock = Clock()
    channel, transport = _connect(_site(clock))
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    for _ in range(10):
        channel.dataReceived(b"x")
        clock.advance(1)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting


def test_stream_outlives_the_header_timeout() -> None:
    clock = Clock()
    channel, transport = _connect(_site(clock))
    channel.dataReceived(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(3600)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert b"408" not in transport.value() and not transport.disconnecting
    assert not clock.getDelayedCalls() or all(
        c.getTime() > 3600 for c in clock.getDelayedCalls()
    )


def test_kept_alive_connection_gets_a_new_deadline_per_request() -> None:
    clock = Clock()
    channel, transport = _connect(_site(clock))
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert transport.value().endswith(b"3") and not transport.disconnecting
    transport.clear()
    clock.advance(30)  # idle between requests: Twisted's idle timeout (60 s) applies
    assert not transport.disconnecting
    channel.dataReceived(b"POST / HTT")
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting


# -- a body over --max-body is refused at once (issue 9, attack finding A) --------------------


def _hub_channel(clock: Clock, max_body: int = 65536) -> tuple[Any, StringTransport]:
    hub = Hub(clock=clock, max_body=max_body)
    hub.site.reactor = clock  # the header deadline runs on the test's clock
    return _connect(limit(hub.site, max_connections=None, header_timeout=10.0))


def _only_413(transport: StringTransport, limit_bytes: int) -> None:
    """One 413 naming the limit, with the security headers, and the connection closing."""
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 413 Payload Too Large\r\n"), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert b"x-content-type-options: nosniff\r\n" in answer
    assert b"content-security-policy: " in answer and b"x-frame-options: DENY\r\n" in answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body == {"error": f"the body is larger than {limit_bytes} bytes", "code": "too_large"}
    assert transport.disconnecting


@pytest.mark.parametrize("length", [65537, 10_000_000])
def test_declared_length_over_max_body_gets_413_before_any_body(length: int) -> None:
    # It used to wait for the body and answer 408 at the header deadline.
    clock = Clock()
    channel, transport = _hub_channel(clock)
    channel.dataReceived(
        b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n{" % length
    )
    _only_413(transport, 65536)  # at once: the clock never moved
    channel.dataReceived(b'"event": "x"}' + b" " * 1000)  # read no further
    assert not transport.disconnected
    clock.advance(10)  # a client that does not read its 413 is cut off; no 408 after it
    _only_413(transport, 65536)
    assert transport.disconnected


def test_declared_length_over_max_body_with_expect_continue_is_not_continued() -> None:
    clock = Clock()
    channel, transport = _hub_channel(clock, max_body=100)
    channel.dataReceived(
        b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
        b"Content-Length: 101\r\n\r\n"
    )
    assert b"100 Continue" not in transport.value()
    _only_413(transport, 100)


def test_chunked_body_over_max_body_gets_413_at_the_chunk_that_crosses_it() -> None:
    clock = Clock()
    channel, transport = _hub_channel(clock, max_body=100)
    channel.dataReceived(
        b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"40\r\n" + b"a" * 64 + b"\r\n"
    )
    assert transport.value() == b"", "64 bytes are within the limit"
    channel.dataReceived(b"40\r\n" + b"a" * 64 + b"\r\n")  # never terminated
    _only_413(transport, 100)


def test_chunked_body_over_max_body_and_its_end_in_one_read_is_answered_once() -> None:
    clock = Clock()
    channel, transport = _hub_channel(clock, max_body=100)
    channel.dataReceived(
        b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"80\r\n" + b"a" * 128 + b"\r\n0\r\n\r\n"
    )
    _only_413(transport, 100)


def test_declared_length_within_max_body_is_still_read() -> None:
    clock = Clock()
    channel, transport = _hub_channel(clock, max_body=100)
    channel.dataReceived(
        b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
    )
    assert transport.value() == b"" and not transport.disconnecting
    channel.dataReceived(b"[" + b" " * 98 + b"]")
    assert transport.value().startswith(b"HTTP/1.1 400 "), transport.value()[:200]
    assert b"must be a JSON object" in transport.value()


@pytest_twisted.ensureDeferred
async def test_declared_length_over_max_body_is_answered_at_once_over_a_socket() -> None:
    local = await start_local_hub(max_body=1000)
    try:
        start = reactor.seconds()
        answer = await send(
            local.port,
            b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n\r\n{",
            timeout=3,  # the header timeout is 10 s: this fails if the hub waits for it
        )
        assert answer.status == 413 and reactor.seconds() - start < 3
        assert json.loads(answer.body) == {
            "error": "the body is larger than 1000 bytes", "code": "too_large"
        }
        assert answer.header("x-content-type-options") == b"nosniff"
        assert not local.problems()
    finally:
        await local.stop()


def test_connections_over_the_cap_get_503_and_others_keep_working() -> None:
    clock = Clock()
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        factory = limit(
            Site(_Stream(), reactor=clock), max_connections=2, header_timeout=None, clock=clock
        )
        assert isinstance(factory, ConnectionLimit)
        first, first_transport = _connect(factory)
        _connect(factory)
        refused = [_connect(factory) for _ in range(3)]
        first.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert first_transport.value().startswith(b"HTTP/1.1 200 "), "open ones still work"
        clock.advance(59)
        refused.append(_connect(factory))
        clock.advance(1)
        refused.append(_connect(factory))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert factory.open_connections == 2 and factory.refused == 5
    for _, transport in refused:
        assert transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"retry-after: 1" in transport.value() and transport.disconnecting
        assert b"x-frame-options: DENY\r\n" in transport.value()
        body = transport.value().split(b"\r\n\r\n", 1)[1]
        assert "too many connections" in json.loads(body)["error"]
    warnings = [e for e in events if "refusing new connections" in e.get("log_format", "")]
    assert [w["count"] for w in warnings] == [1, 4], "one warning, then a summary a minute on"
    first.connectionLost(Failure(ConnectionError("closed")))
    _, transport = _connect(factory)
    assert transport.value() == b"" and factory.open_connections == 2


def test_descriptor_shortfall() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert descriptor_shortfall(10) is None
    if soft != resource.RLIM_INFINITY:
        warning = descriptor_shortfall(soft)
        assert warning is not None and "ulimit -n" in warning and f"is {soft}" in warning


def test_limit_options() -> None:
    options = HubOptions()
    options.parseOptions([])  # type: ignore[no-untyped-call]
    assert options["max-connections"] == 1000 and options["header-timeout"] == 10.0
    for bad in (["--max-connections", "-1"], ["--header-timeout", "-2"],
                ["--header-timeout", "inf"], ["--header-timeout", "nan"]):
        with pytest.raises(usage.UsageError, match="must be 0 \\(no limit\\) or more"):
            HubOptions().parseOptions(bad)  # type: ignore[no-untyped-call]


# -- defect 9: real sockets against a hub process -----------------------------------------


class _Raw(Protocol):
    """A raw TCP client: what it received, and when the server closed."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(self.received)


async def _raw(port: int) -> _Raw:
    client = _Raw()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
        Factory.forProtocol(lambda: client)
    )
    return client


async def _post(url: str, event: str) -> tuple[int, bytes]:
    response = await treq.post(url + "events", json={"event": event})
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_connection_cap_refuses_the_excess_and_existing_ones_keep_working() -> None:
    hub = await start_hub("--max-connections", "20", "--header-timeout", "60")
    try:
        sse = await connect_sse(hub.port, "/sse?event=after")
        await sse.wait(lambda b: b.get("event") == "_subscribed")
        idle = [await _raw(hub.port) for _ in range(30)]
        refused: list[_Raw] = []
        eleven: Deferred[None] = Deferred()

        def closed(_: object, client: _Raw) -> None:
            refused.append(client)
            if len(refused) == 11:
                eleven.callback(None)

        for client in idle:
            client.closed.addCallback(closed, client)
        await eleven.addTimeout(5, reactor)
        at_cap = await _raw(hub.port)  # accepted after the 30: its refusal comes after theirs
        assert (await at_cap.closed).startswith(b"HTTP/1.1 503 ")
        assert len(refused) == 11, "20 open (1 stream + 19 idle), the other 11 refused"
        for client in refused:
            assert client.received.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        kept = [c for c in idle if c not in refused]
        assert not any(c.closed.called for c in kept)
        for client in kept[:5]:
            assert client.transport is not None
            client.transport.loseConnection()
            await client.closed
        code = 0
        for _ in range(100):  # until the hub has seen the 5 closes
            try:
                code, _ = await _post(hub.url, "after")
            except Exception:
                code = 0
            if code == 202:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert code == 202
        block = await sse.wait(lambda b: b.get("event") == "after")
        assert json.loads(block["data"])["event"] == "after"
        assert "refusing new connections: 20 are open" in hub.text
        for client in kept[5:]:
            assert not client.closed.called
            assert client.transport is not None
            client.transport.loseConnection()
    finally:
        await hub.stop()


@pytest_twisted.ensureDeferred
async def test_slowloris_is_cut_off_but_streams_outlive_the_header_timeout() -> None:
    hub = await start_hub("--header-timeout", "1")
    try:
        sse = await connect_sse(hub.port, "/sse?event=later")
        await sse.wait(lambda b: b.get("event") == "_subscribed")
        ws = await connect_ws(hub.port, path="/ws")
        ws.send_json({"type": "subscribe", "event": "later"})
        await ws.wait_type("subscribed")
        # a slowloris: one byte of headers every 0.1 s, for at most 10 s
        slow = await _raw(hub.port)
        request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\nX-Pad: {'a' * 100}"
        sent = iter(request.encode())

        def trickle() -> None:
            assert slow.transport is not None
            byte = next(sent, None)
            if byte is not None and not slow.closed.called:
                slow.transport.write(bytes([byte]))

        loop = LoopingCall(trickle)
        loop.start(0.1)
        try:
            slow.closed.addTimeout(10, reactor)
            answer = await slow.closed
        finally:
            loop.stop()
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        # the streams are older than the timeout and still deliver
        code, _ = await _post(hub.url, "later")
        assert code == 202
        assert (await ws.wait_type("event"))["event"] == "later"
        assert json.loads((await sse.wait(lambda b: b.get("event") == "later"))["data"])
        assert not sse.finished.called and not ws.closed.called
        assert "no complete request within 1.0 s" in hub.text
        ws.sendClose()
        await ws.closed
    finally:
        await hub.stop()


# -- defect 10: logging ---------------------------------------------------------------------

_FAILING_HUB = (
    "import sys\n"
    "from twisted_event_dispatcher.hub import resources\n"
    "def broken(self, request):\n"
    "    raise ZeroDivisionError('health check exploded')\n"
    "resources.HealthResource.render_GET = broken\n"
    "from twisted_event_dispatcher.__main__ import main\n"
    "raise SystemExit(main(['serve', *sys.argv[1:]]))\n"
)


@pytest_twisted.ensureDeferred
async def test_serve_logs_failures_with_their_traceback() -> None:
    hub = await start_hub(command=(sys.executable, "-c", _FAILING_HUB))
    try:
        response = await treq.get(hub.url + "health")
        assert response.code == 500
        await response.content()
        for _ in range(100):  # the log line follows the response
            if b"exploded" in hub.output:
                break
            await deferLater(reactor, 0.02, lambda: None)
    finally:
        await hub.stop()
    text = hub.text
    assert "Traceback (most recent call last)" in text
    assert "ZeroDivisionError: health check exploded" in text
    assert "in broken" in text, "the frames are there, not just the message"
    assert "\n\n" not in text, "no blank line where an event should be"


@pytest.mark.parametrize("command", [None, TWISTD], ids=["serve", "twistd"])
@pytest_twisted.ensureDeferred
async def test_shutdown_with_an_sse_client_logs_no_error(
    command: tuple[str, ...] | None,
) -> None:
    hub = await start_hub(command=command)
    sse = await connect_sse(hub.port, "/sse")
    await sse.wait(lambda b: b.get("event") == "_subscribed")
    await hub.stop()
    await sse.finished
    assert "event hub stopped" in hub.text
    for bad in ("Producer was not unregistered", "Unhandled", "Traceback", "critical"):
        assert bad not in hub.text, hub.text
    assert "\n\n" not in hub.text, "no blank line where an event should be"
