"""
The hub's HTTP security (issue 9, defects 5, 7 and 11): cross-site requests and DNS
rebinding are refused, bytes that are not UTF-8 get a 400 naming the header, tokens stay
out of the access log and of ``ps``, every answer carries the security headers, and the
slow-consumer policy is an option.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_twisted
from hypothesis import settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import deferLater

from tests._clients import connect_ws
from tests._fuzz import examples
from tests._hub import HubProcess, spawn_hub, start_hub
from tests._local_hub import LocalHub, start_local_hub
from tests._raw_http import Answer, request, send
from twisted_event_dispatcher.hub import Hub, HubOptions, make_service
from twisted_event_dispatcher.hub._security import (
    SECURITY_HEADERS,
    Guard,
    redact_token,
    redacting_log_formatter,
)

EVIL = "http://evil.example"


@pytest_twisted.async_yield_fixture
async def hub() -> AsyncIterator[LocalHub]:
    local = await start_local_hub()
    yield local
    await local.stop()
    assert local.problems() == []


def error_of(answer: Answer) -> str:
    assert answer.header("content-type") == b"application/json", answer
    error: str = json.loads(answer.body)["error"]
    return error


async def post(port: int, body: Any = None, **options: Any) -> Answer:
    payload = json.dumps(body if body is not None else {"event": "x"}).encode()
    return await send(port, request("POST", "/events", body=payload, **options))


async def get(port: int, target: str, **options: Any) -> Answer:
    return await send(port, request("GET", target, **options))


async def handshake(port: int, headers: Any = (), **options: Any) -> Answer:
    """A WebSocket opening handshake on /ws."""
    upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    return await send(port, request("GET", "/ws", headers=[*upgrade, *headers], **options))


async def no_event_arrives(hub: LocalHub, ws: Any) -> None:
    """A marker event posted after the refused ones is the first thing ``ws`` gets."""
    assert (await post(hub.port, {"event": "marker"})).status == 202
    frame = await ws.wait_type("event")
    assert frame["event"] == "marker", "a refused request reached the subscriber"


# -- defect 7: cross-site requests --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cross_site_post_is_refused_and_reaches_no_subscriber(hub: LocalHub) -> None:
    ws = await hub.subscriber()
    # What a page on evil.example can send without a CORS preflight: a text/plain POST.
    for origin in (EVIL, "null", f"http://127.0.0.1.evil.example:{hub.port}", "file://"):
        answer = await post(
            hub.port, headers=[("Origin", origin), ("Content-Type", "text/plain")]
        )
        assert answer.status == 403, origin
        assert "Origin" in error_of(answer) and "not allowed" in error_of(answer)
    await no_event_arrives(hub, ws)
    ws.sendClose()


@pytest_twisted.ensureDeferred
async def test_allowed_origins_and_requests_without_origin_pass(hub: LocalHub) -> None:
    for origin in (f"http://127.0.0.1:{hub.port}", "http://localhost:3000", "http://[::1]:80"):
        answer = await post(hub.port, headers=[("Origin", origin)])
        assert answer.status == 202, (origin, answer)
    assert (await post(hub.port)).status == 202  # curl, another service: no Origin


@pytest_twisted.ensureDeferred
async def test_foreign_origin_is_refused_on_every_path(hub: LocalHub) -> None:
    for target in ("/", "/hub.js", "/health", "/sse", "/nothing-here"):
        answer = await get(hub.port, target, headers=[("Origin", EVIL)])
        assert answer.status == 403, target
        assert "Origin 'http://evil.example' is not allowed" in error_of(answer)
    refused = await handshake(hub.port, [("Origin", EVIL)])
    assert refused.status == 403 and b"origin" in refused.phrase
    accepted = await handshake(hub.port, [("Origin", f"http://[::1]:{hub.port}")])
    assert accepted.status == 101


@pytest_twisted.ensureDeferred
async def test_configured_origins_replace_the_loopback_ones() -> None:
    local = await start_local_hub(origins=("https://app.example", "http://*.test.example:*"))
    try:
        for origin, code in [
            ("https://app.example", 202),
            ("https://app.example:443", 202),
            ("http://a.test.example:8080", 202),
            ("http://app.example", 403),  # another scheme, another port
            ("https://app.example.evil.example", 403),
            (f"http://127.0.0.1:{local.port}", 403),
        ]:
            answer = await post(local.port, headers=[("Origin", origin)])
            assert answer.status == code, origin
    finally:
        await local.stop()


@pytest_twisted.ensureDeferred
async def test_dns_rebinding_host_is_refused_without_a_token(hub: LocalHub) -> None:
    rebound = f"evil.example:{hub.port}"
    for target in ("/", "/health", "/sse"):
        answer = await get(hub.port, target, host=rebound)
        assert answer.status == 403, target
        assert f"Host '{rebound}' is not allowed" in error_of(answer)
    assert (await post(hub.port, host=rebound)).status == 403
    refused = await handshake(hub.port, host=rebound)
    assert refused.status == 403 and b"host" in refused.phrase
    assert (await handshake(hub.port, host=f"localhost:{hub.port}")).status == 101
    for host in (f"127.0.0.1:{hub.port}", f"localhost:{hub.port}", f"[::1]:{hub.port}",
                 "LOCALHOST.", "127.0.0.2"):
        assert (await get(hub.port, "/health", host=host)).status == 200, host
    assert (await get(hub.port, "/health", host=None)).status == 200  # HTTP/1.0 style
    assert (await get(hub.port, "/health", host="a:b:c")).status == 400


@pytest_twisted.ensureDeferred
async def test_host_names_and_token_open_other_names() -> None:
    named = await start_local_hub(host_names=("hub.example",))
    try:
        assert (await get(named.port, "/health", host="hub.example")).status == 200
        assert (await get(named.port, "/health", host="Hub.Example:8443")).status == 200
        assert (await get(named.port, "/health", host="evil.example")).status == 403
    finally:
        await named.stop()
    tokened = await start_local_hub(token="s3cret")
    try:
        # with a token a rebinding page has nothing to gain: it cannot authenticate
        answer = await get(tokened.port, "/health", host="hub.example")
        assert answer.status == 200
        answer = await post(tokened.port, host="hub.example")
        assert answer.status == 401
    finally:
        await tokened.stop()


def test_hub_allows_the_address_it_listens_on() -> None:
    hub = Hub()
    assert not hub.guard.host_allowed("192.0.2.7:8080")
    hub.allow_host("192.0.2.7")
    assert hub.guard.host_allowed("192.0.2.7:8080")
    assert hub.guard.host_allowed("[::1]:1") and not hub.guard.host_allowed("[2001:db8::1]")
    named = Hub(host_names=("192.0.2.8", "[2001:db8::1]", "Hub.Example."))
    assert named.guard.host_allowed("192.0.2.8:80") and named.guard.host_allowed("[2001:db8::1]")
    assert named.guard.host_allowed("hub.example") and not named.guard.host_allowed("192.0.2.9")
    assert not Hub(host_names=("*",)).guard.check_hosts


def test_guard_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="looks like"):
        Guard(("https://app.example",), host_names=("http://hub.example/",))
    with pytest.raises(ValueError, match="looks like"):
        Guard(("app.example",))


@pytest_twisted.ensureDeferred
async def test_no_cors_headers(hub: LocalHub) -> None:
    origin = f"http://127.0.0.1:{hub.port}"
    answer = await post(hub.port, headers=[("Origin", origin)])
    assert answer.status == 202 and answer.header("access-control-allow-origin") is None
    preflight = await send(
        hub.port,
        request("OPTIONS", "/events", headers=[
            ("Origin", origin), ("Access-Control-Request-Method", "POST")
        ]),
    )
    assert preflight.status == 405 and preflight.header("access-control-allow-origin") is None


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("HEAD", "/events", b"POST"),  # was a 500: EventsResource has no render_GET
        ("GET", "/events", b"POST"),
        ("PUT", "/events", b"POST"),  # unknown to twisted.web: was a 501
        ("DELETE", "/health", b"GET, HEAD"),
        ("POST", "/health", b"GET, HEAD"),
        ("PATCH", "/", b"GET, HEAD"),
        ("HEAD", "/sse", b"GET"),  # would open a stream that never writes a byte
        ("FOO", "/sse", b"GET"),
        ("OPTIONS", "/health", b"GET, HEAD"),
        ("POST", "/ws", b"GET"),  # was Autobahn's bare 405 without the hub's headers
        ("HEAD", "/ws", b"GET"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_methods_a_resource_does_not_answer_are_405_naming_the_allowed_ones(
    hub: LocalHub, method: str, target: str, allow: bytes
) -> None:
    answer = await send(hub.port, request(method, target))
    assert answer.status == 405 and answer.header("allow") == allow, answer
    assert answer.header("x-content-type-options") == b"nosniff"
    if method != "HEAD":
        assert "not" in error_of(answer)


@pytest_twisted.ensureDeferred
async def test_ws_without_a_handshake_is_a_426_with_the_hubs_headers(hub: LocalHub) -> None:
    answer = await get(hub.port, "/ws")  # was Autobahn's HTML status page, bare
    assert answer.status == 426 and answer.header("upgrade") == b"websocket"
    assert "WebSocket handshake" in error_of(answer)
    assert answer.header("content-security-policy") is not None
    assert (await handshake(hub.port)).status == 101, "a real handshake still opens"


# -- defect 5: bytes that are not UTF-8 ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_authorization_that_is_not_utf8_is_400_not_500() -> None:
    for options in ({}, {"token": "s3cret"}):
        local = await start_local_hub(**options)
        try:
            header = [(b"Authorization", b"Bearer \xff\xfe")]
            answer = await post(local.port, headers=header)
            assert answer.status == 400
            assert error_of(answer) == "the Authorization header is not valid UTF-8"
            answer = await get(local.port, "/sse", headers=header)
            assert answer.status == 400
            assert error_of(answer) == "the Authorization header is not valid UTF-8"
            assert (await handshake(local.port, header)).status == 400
            assert (await post(local.port, headers=[("Authorization", "Bearer s3cret")])
                    ).status == 202
        finally:
            await local.stop()
        assert local.problems() == []


@pytest.mark.parametrize(
    ("target", "headers", "message"),
    [
        ("/sse", [(b"Last-Event-ID", b"\xff1")], "the Last-Event-ID header is not valid UTF-8"),
        ("/sse?event=%ff", [], "query parameter 'event' is not valid UTF-8"),
        ("/sse?channel=%c3%28", [], "query parameter 'channel' is not valid UTF-8"),
        ("/sse?since=%ff", [], "query parameter 'since' is not valid UTF-8"),
        ("/sse?token=%ff", [], "query parameter 'token' is not valid UTF-8"),
        ("/health?%ff=1", [], "a query parameter's name is not valid UTF-8"),
        ("/sse", [(b"Origin", b"http://\xff")], "the Origin header is not valid UTF-8"),
        ("/sse", [(b"Origin", b"http://a/b?c")], "is not an origin"),
        ("/sse?since=%d9%a3", [], "expected '<epoch>:<offset>'"),  # an Arabic-Indic 3
        ("/sse?since=99999999999999999999", [], "expected '<epoch>:<offset>'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_bytes_get_400_naming_the_problem(
    hub: LocalHub, target: str, headers: list[tuple[bytes, bytes]], message: str
) -> None:
    answer = await get(hub.port, target, headers=headers)
    assert answer.status == 400
    assert message in error_of(answer)


@pytest_twisted.ensureDeferred
async def test_sse_resource_alone_names_bad_bytes() -> None:
    """The SSE carrier used in any twisted.web site (no hub guard) says the same."""
    from tests.test_sse import start_server

    server = await start_server()
    try:
        answer = await get(server.port, "/sse", headers=[(b"Last-Event-ID", b"\xfe")])
        assert answer.status == 400
        assert error_of(answer) == "the Last-Event-ID header is not valid UTF-8"
        answer = await get(server.port, "/sse?event=%ff")
        assert error_of(answer) == "query parameter 'event' is not valid UTF-8"
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_form_encoded_body_is_not_a_source_of_token() -> None:
    local = await start_local_hub(token="s3cret")
    try:
        answer = await send(local.port, request(
            "POST", "/events", body=b"token=s3cret",
            headers=[("Content-Type", "application/x-www-form-urlencoded")],
        ))
        assert answer.status == 401
    finally:
        await local.stop()


# -- defect 11: headers, access log, token sources, queue options --------------------------


@pytest_twisted.ensureDeferred
async def test_security_headers_on_page_files_and_json(hub: LocalHub) -> None:
    answers = [
        await get(hub.port, "/"),
        await get(hub.port, "/hub.js"),
        await get(hub.port, "/hub.css"),
        await get(hub.port, "/health"),
        await get(hub.port, "/missing"),
        await post(hub.port),
        await post(hub.port, headers=[("Origin", EVIL)]),
    ]
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.header(name.decode()) == value, (name, answer.status)
    csp = SECURITY_HEADERS[b"content-security-policy"].decode()
    page = answers[0].body.decode()
    # The policy forbids inline code: the demo page must have none.
    assert "<script src=" in page and "<script>" not in page and "style=" not in page
    assert "default-src 'self'" in csp and "ws:" in csp and "frame-ancestors 'none'" in csp


def test_redact_token() -> None:
    assert redact_token(b"/sse?event=a&token=s3cret&x=1") == b"/sse?event=a&token=***&x=1"
    assert redact_token(b"/ws?tok%65n=s3cret;token=2") == b"/ws?tok%65n=***;token=***"
    assert redact_token(b"/health") == b"/health"
    assert redact_token(b"/?tokens=1") == b"/?tokens=1"

    class Logged:
        method, uri, clientproto = b"GET", b"/sse?token=s3cret", b"HTTP/1.1"
        code, sentLength = 200, 0

        def getClientAddress(self) -> IPv4Address:
            return IPv4Address("TCP", "127.0.0.1", 4321)

        def getHeader(self, name: bytes) -> bytes | None:
            return b"http://127.0.0.1/?token=s3cret" if name == b"referer" else None

    line = redacting_log_formatter("[now]", cast(Any, Logged()))
    assert line.startswith('"127.0.0.1" - - [now] "GET /sse?token=*** HTTP/1.1" 200')
    assert "s3cret" not in line and line.count("token=***") == 2


@pytest_twisted.ensureDeferred
async def test_access_log_hides_the_token() -> None:
    hub = await start_hub("--token", "s3cret-value")
    try:
        answer = await send(hub.port, request("GET", "/health?token=s3cret-value"))
        assert answer.status == 200
        # a stream is logged when it ends; a refused one ends at once
        answer = await send(hub.port, request("GET", "/sse?event=a&token=s3cret-valu"))
        assert answer.status == 401
        answer = await send(hub.port, request(
            "POST", "/events?token=s3cret-value", body=b'{"event": "x"}'
        ))
        assert answer.status == 202
        for _ in range(200):  # the access log is written as each request ends
            if hub.output.count(b"token=***") >= 3:
                break
            await deferLater(reactor, 0.02, lambda: None)
    finally:
        await hub.stop()
    assert hub.output.count(b"token=***") >= 3, hub.text
    assert b"s3cret-valu" not in hub.output, hub.text


async def _token_works(hub: HubProcess, token: str) -> None:
    assert (await post(hub.port)).status == 401
    answer = await post(hub.port, headers=[("Authorization", f"Bearer {token}")])
    assert answer.status == 202


def _command_line(hub: HubProcess) -> bytes:
    assert hub.transport is not None
    with open(f"/proc/{hub.transport.pid}/cmdline", "rb") as file:
        return file.read()


@pytest_twisted.ensureDeferred
async def test_token_file_and_environment_keep_the_token_out_of_ps(tmp_path: Any) -> None:
    path = tmp_path / "token"
    path.write_text("from-a-file  \nsecond line is ignored\n")
    hub = await start_hub("--token-file", str(path))
    try:
        await _token_works(hub, "from-a-file")
        assert b"from-a-file" not in _command_line(hub)
    finally:
        await hub.stop()
    os.environ["EVENT_HUB_TOKEN"] = "from-the-environment"
    try:
        hub = await start_hub()
    finally:
        del os.environ["EVENT_HUB_TOKEN"]
    try:
        await _token_works(hub, "from-the-environment")
    finally:
        await hub.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--token-file", "/nonexistent/token"), "--token-file: cannot read '/nonexistent/token'"),
        (("--token-file", "EMPTY"), "is empty; it must hold the token"),
        (("--token", "a", "--token-file", "EMPTY"), "give --token or --token-file, not both"),
        (("--overflow", "drop"), "--overflow must be one of drop-oldest, disconnect"),
        (("--max-queue", "0"), "--max-queue must be positive"),
        (("--host-name", "http://hub.example"), "--host-name: a host name looks like"),
        (("--origin", "https://app.example/path"), "--origin: an allowed origin looks like"),
    ],
)
def test_security_options_usage_errors(
    tmp_path: Any, monkeypatch: Any, options: tuple[str, ...], message: str
) -> None:
    from twisted.python.usage import UsageError

    monkeypatch.delenv("EVENT_HUB_TOKEN", raising=False)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    arguments = [str(empty) if o == "EMPTY" else o for o in options]
    with pytest.raises(UsageError) as raised:
        HubOptions().parseOptions(arguments)  # type: ignore[no-untyped-call]
    assert message in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_missing_token_file_stops_the_hub_with_a_usage_error() -> None:
    process = spawn_hub("--token-file", "/nonexistent/token")
    assert await process.ended == 2
    assert "--token-file: cannot read '/nonexistent/token': No such file" in process.text


def test_empty_token_environment_variable_is_a_usage_error(monkeypatch: Any) -> None:
    from twisted.python.usage import UsageError

    monkeypatch.setenv("EVENT_HUB_TOKEN", " ")
    with pytest.raises(UsageError, match="EVENT_HUB_TOKEN is set but empty"):
        HubOptions().parseOptions([])  # type: ignore[no-untyped-call]


def test_overflow_and_queue_options_reach_both_carriers(monkeypatch: Any) -> None:
    monkeypatch.delenv("EVENT_HUB_TOKEN", raising=False)
    options = HubOptions()
    options.parseOptions(  # type: ignore[no-untyped-call]
        ["--overflow", "disconnect", "--max-queue", "7", "--host-name", "Hub.Example"]
    )
    hub = make_service(options).hub
    assert (hub.websocket.max_queue, hub.websocket.overflow) == (7, "disconnect")
    assert (hub.sse.max_queue, hub.sse.overflow) == (7, "disconnect")
    assert hub.guard.host_allowed("hub.example:80")
    defaults = HubOptions()
    defaults.parseOptions([])  # type: ignore[no-untyped-call]
    hub = make_service(defaults).hub
    assert (hub.websocket.max_queue, hub.sse.overflow) == (1000, "drop_oldest")
    with pytest.raises(ValueError, match="overflow must be one of"):
        Hub(overflow="drop-newest")


# -- fuzzing: POST /events headers ---------------------------------------------------------

SELF = "{self}"  # replaced by http://127.0.0.1:<the hub's port>
ALLOWED_ORIGINS = (SELF, "http://localhost:1234", "http://[::1]:80", "HTTP://LOCALHOST:9")
OK_HOSTS = ("127.0.0.1:{port}", "localhost", "[::1]:1", "127.0.0.9", "LocalHost.:80")
_NO_NEWLINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_TEXT = st.text(max_size=40).map(
    lambda t: t.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"")
)
_ANY = st.one_of(_NO_NEWLINE, _TEXT)
_FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"host", b"origin",
            b"authorization", b"content-type", b"expect"}
REFUSED_ORIGINS = (
    EVIL, "null", "file://", "https://127.0.0.1:1", "http://127.0.0.1.evil.example",
    "http://[::1", "http://127.0.0.1:99999", "http://localhost:1/path", "",
)
REFUSED_HOSTS = (
    "evil.example", "evil.example:{port}", "127.0.0.1.nip.io", "", "a:b:c", "[zz]",
    "localhost.evil.example",
)
AUTHORIZATIONS = ("Bearer s3cret", "Bearer wrong", "Bearer ", "Basic czNjcmV0", "bearer s3cret")
CONTENT_TYPES = (
    "text/plain", "application/json", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "multipart/form-data",
)
_HEADER_NAME = st.from_regex(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True)


def _one_of(*samples: tuple[str, ...]) -> st.SearchStrategy[str | bytes | None]:
    """None, one of the samples, or any bytes."""
    return st.one_of(st.none(), *(st.sampled_from(s) for s in samples), _ANY)


HEADERS: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries({
    "origin": _one_of(ALLOWED_ORIGINS, REFUSED_ORIGINS),
    "host": _one_of(OK_HOSTS, REFUSED_HOSTS),
    "authorization": st.one_of(
        st.just("Bearer s3cret"), _one_of(AUTHORIZATIONS), _ANY.map(lambda b: b"Bearer " + b)
    ),
    "content-type": _one_of(CONTENT_TYPES),
    "extra": st.lists(
        st.tuples(_HEADER_NAME, _ANY).filter(lambda header: header[0].lower() not in _FRAMING),
        max_size=3,
    ),
})


def _raw(value: str | bytes, port: int) -> bytes:
    if isinstance(value, str):
        value = value.replace(SELF, f"http://127.0.0.1:{port}").replace("{port}", str(port))
        return value.encode()
    return value


@pytest.mark.parametrize("token", [None, "s3cret"])
@pytest_twisted.ensureDeferred
async def test_fuzz_post_headers(token: str | None) -> None:
    drawn = examples(HEADERS, count=max(150, settings().max_examples))
    local = await start_local_hub(token=token)
    try:
        ws = await connect_ws(local.port, path="/ws?token=s3cret")
        ws.send_json({"type": "subscribe", "event": "fuzz"})
        await ws.wait_type("subscribed")
        accepted = []
        for number, example in enumerate(drawn):
            headers: list[tuple[bytes, bytes]] = [
                (name.encode(), _raw(example[name], local.port))
                for name in ("origin", "authorization", "content-type")
                if example[name] is not None
            ]
            headers += example["extra"]
            host = example["host"]
            body = json.dumps({"event": "fuzz", "data": number}).encode()
            answer = await send(local.port, request(
                "POST", "/events", headers=headers, body=body,
                host=None if host is None else _raw(host, local.port),
            ))
            assert answer.status is not None, f"no answer to {example!r}"
            assert answer.status < 500, (example, answer)
            if answer.header("content-type") == b"application/json" and answer.status >= 400:
                assert isinstance(json.loads(answer.body)["error"], str)
            if answer.status == 202:
                accepted.append(json.loads(answer.body)["id"])
                assert example["origin"] in (None, *ALLOWED_ORIGINS), example
                if token is None:
                    assert host in (None, *OK_HOSTS), example
                else:
                    assert example["authorization"] in ("Bearer s3cret", "bearer s3cret"), example
        assert accepted, "some examples were valid requests"
        answer = await post(local.port, {"event": "fuzz", "data": "after"},
                            headers=[("Authorization", "Bearer s3cret")])
        assert answer.status == 202
        last = await ws.wait(lambda f: f.get("data") == "after")
        assert [f["id"] for f in ws.events()] == [*accepted, last["id"]]
        ws.sendClose()
        await ws.closed
    finally:
        await local.stop()
    assert local.problems() == []
