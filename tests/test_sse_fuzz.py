"""
Property-based fuzzing of ``GET /sse`` (issue 9): random query strings (text, bytes,
percent-encoded or raw, offsets of every shape) and ``Last-Event-ID`` headers, against
the hub and against the SSE carrier mounted alone. Every request gets an answer (a stream
or a 4xx naming the problem), never a 5xx nor a hang-up; nothing is logged as an error;
no stream is left behind; and the subscriber that was there all along still gets a
normal event afterwards.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
import pytest_twisted
from hypothesis import settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests._clients import connect_sse
from tests._fuzz import examples
from tests._local_hub import log_observer, start_local_hub
from tests._raw_http import Answer, request, send

_TEXT = st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass"))
_BYTES = st.binary(max_size=30)
_OFFSETS = st.one_of(
    st.integers(min_value=0, max_value=50).map(lambda n: str(n).encode()),
    st.integers(min_value=-5, max_value=2**70).map(lambda n: str(n).encode()),
    st.tuples(st.text("0123456789abcdefXYZ:é", max_size=20), st.integers(0, 2**66)).map(
        lambda pair: f"{pair[0]}:{pair[1]}".encode()
    ),
    st.sampled_from(("٣", "３", "1_000", " 7 ", "0x10", "1e3", "-0", "epoch:", ":5", "a:b:3"))
    .map(str.encode),
)
_EVENTS = st.sampled_from(("greeting", "*", "_subscribed", "a" * 201, "", "x\ty", "é")).map(
    str.encode
)
_VALUES = {
    "event": st.one_of(_TEXT, _BYTES),
    "channel": st.one_of(st.sampled_from((b"events", b"news", b"sports", b"nope")), _TEXT),
    "since": st.one_of(_TEXT, _BYTES),
    "token": st.one_of(_TEXT, _BYTES),
}
_PARAMETER = st.one_of(
    *(st.tuples(st.just(name.encode()), values) for name, values in _VALUES.items()),
    st.tuples(st.just(b"event"), _EVENTS),
    st.tuples(st.just(b"since"), _OFFSETS),
    st.tuples(st.one_of(_TEXT, _BYTES), st.one_of(_TEXT, _BYTES)),
)
#: Raw (not percent-encoded) bytes are kept out of what splits a request line or a query.
_UNSAFE = frozenset(b" \t\r\n\x0b\x0c#&;=?")
QUERIES = st.tuples(
    st.lists(_PARAMETER, max_size=3),
    st.sampled_from((True, True, True, False)),  # percent-encoded, or the bytes raw
)
LAST_EVENT_IDS = st.one_of(
    st.none(), st.none(), st.none(), _OFFSETS, _OFFSETS, _TEXT, _BYTES
).map(lambda b: None if b is None else b.replace(b"\r", b"").replace(b"\n", b""))


def _target(parameters: list[tuple[bytes, bytes]], encode: bool) -> bytes:
    def part(value: bytes) -> bytes:
        if encode:
            return quote_from_bytes(value, safe="").encode()
        return bytes(b for b in value if b not in _UNSAFE)

    query = b"&".join(part(key) + b"=" + part(value) for key, value in parameters)
    return b"/sse?" + query if query else b"/sse"


def _check(answer: Answer, example: Any) -> None:
    assert answer.status is not None, f"no answer to {example!r}"
    assert answer.status < 500, (example, answer)
    if answer.status == 200:
        assert answer.streaming and answer.body.startswith(b"retry: "), (example, answer)
    elif answer.header("content-type") == b"application/json":
        assert isinstance(json.loads(answer.body)["error"], str), (example, answer)
    else:  # only twisted.web's own answer to a request line it cannot parse has no JSON
        assert answer.status == 400 and not answer.body, (example, answer)


async def _streams_gone(streams: Any, left: int) -> None:
    for _ in range(250):
        if len(streams) <= left:
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{len(streams) - left} stream(s) were never cleaned up")


async def _fuzz(port: int, streams: Any, post: Any) -> None:
    """Send every example to ``port``; then check the old subscriber still gets events."""
    subscriber = await connect_sse(port, "/sse?event=greeting")
    await subscriber.wait(lambda b: b.get("event") == "_subscribed")
    count = max(200, settings().max_examples)
    for (parameters, encode), last_event_id in zip(
        examples(QUERIES, count), examples(LAST_EVENT_IDS, count), strict=True
    ):
        headers = [] if last_event_id is None else [(b"Last-Event-ID", last_event_id)]
        target = _target(parameters, encode)
        answer = await send(
            port, request("GET", target, headers=headers), until=b"\n\n", timeout=5
        )
        _check(answer, (target, last_event_id))
    await _streams_gone(streams, 1)
    await post()
    block = await subscriber.wait(lambda b: b.get("event") == "greeting")
    assert json.loads(block["data"])["data"] == "after the fuzz"
    assert subscriber.transport is not None
    subscriber.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_fuzz_sse_query_and_last_event_id_on_the_hub() -> None:
    local = await start_local_hub()
    try:

        async def post() -> None:
            answer = await send(local.port, request(
                "POST", "/events", body=b'{"event": "greeting", "data": "after the fuzz"}'
            ))
            assert answer.status == 202

        await _fuzz(local.port, local.hub.sse.streams, post)
    finally:
        await local.stop()
    assert local.problems() == []


@pytest_twisted.ensureDeferred
async def test_fuzz_sse_query_and_last_event_id_on_the_carrier_alone() -> None:
    """No hub guard in front: the carrier's own parsing must hold."""
    from twisted.logger import globalLogPublisher

    from tests.test_sse import start_server

    logged: list[dict[str, Any]] = []
    observer = log_observer(logged)
    globalLogPublisher.addObserver(observer)
    server = await start_server()
    try:

        async def post() -> None:
            await server.channels.get("news").publish("greeting", "after the fuzz")

        await _fuzz(server.port, server.resource.streams, post)
    finally:
        await server.stop()
        globalLogPublisher.removeObserver(observer)
    assert [e for e in logged if "log_failure" in e or e.get("isError")] == []


@pytest.mark.parametrize(
    ("last_event_id", "code"),
    [
        (b"0", 200),
        (b"deadbeef:3", 200),
        (b"\xd9\xa3", 400),  # Arabic-Indic digit three: not an offset
        (b"9" * 30, 400),
        (b"e" * 65 + b":1", 400),
        (b"\xff", 400),
    ],
)
@pytest_twisted.ensureDeferred
async def test_last_event_id_examples(last_event_id: bytes, code: int) -> None:
    local = await start_local_hub()
    try:
        answer = await send(local.port, request(
            "GET", "/sse", headers=[(b"Last-Event-ID", last_event_id)]
        ), until=b"\n\n")
        assert answer.status == code
    finally:
        await local.stop()
    assert local.problems() == []
