"""
Property-based fuzzing of what WebSocket clients send (issue 9): JSON-ish requests with
random fields, text that is not JSON, binary frames, malformed UTF-8, frames over the size
limit, deep nesting and raw frames that break the protocol, each on a fresh connection to
a real server on 127.0.0.1. For every example the server answers each message (an
``error`` frame or a reply) or closes with a proper code, never drops the connection
without a close frame, never logs a traceback, and still delivers events afterwards.

The examples come from Hypothesis under the active profile (fixed seeds in CI;
``pytest --hypothesis-profile=long`` for more).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import pytest_twisted
from hypothesis import settings
from hypothesis import strategies as st

from tests._clients import OP_BINARY, OP_CLOSE, OP_PONG, OP_TEXT, connect_raw_ws, ws_frame
from tests._fuzz import examples
from tests._log import LogCapture
from tests.test_websocket import Server, start_server, stop_server, subscribe

MAX_MESSAGE = 4096
#: Close codes a bad client may get: protocol error, invalid UTF-8, policy, too big.
PROPER_CODES = {1002, 1007, 1008, 1009}
#: Frames the server may answer a request with (before the sentinel's pong).
REPLIES = {"error", "pong", "subscribed", "unsubscribed", "gap", "event"}
SENTINEL = {"type": "ping", "id": "sentinel"}

_text = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=12)
_names = st.sampled_from(["news", "sports", "a", "*", "", "_x", "nope", " "]) | _text
_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_requests = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["subscribe", "unsubscribe", "ping"]) | _values,
        "event": _names | _values,
        "channel": _names | _values,
        "since": st.integers(-3, 10) | st.integers() | _values,
        "epoch": _text | _values,
        "id": _values,
    },
)


# Mostly valid requests with one odd field: they reach the handlers' checks.
_likely_requests = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["subscribe", "unsubscribe", "ping"]),
        "event": st.sampled_from(["a", "*", "news"]),
    },
    optional={
        "channel": st.sampled_from(["news", "sports"]) | _names,
        "since": st.integers(-3, 10) | _values,
        "epoch": _text,
        "id": _values,
    },
)


def _deep(depth: int, opener: str) -> bytes:
    closer = "]" if opener == "[" else "}"
    inner = opener * depth if opener == "[" else '{"a":' * depth
    return f'{{"type":"ping","id":{inner}1{closer * depth}}}'.encode()


def _dump(request: dict[str, Any], ascii_only: bool) -> bytes:
    # NaN and infinities come out as bare NaN/Infinity; lone surrogates as \\ud800 escapes,
    # or (not ASCII-only) as the bytes they would have: invalid UTF-8.
    return json.dumps(request, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


class Example(NamedTuple):
    """One frame to send; ``kind`` says what the server must do with it."""

    kind: str  # "text", "binary", "huge" (over the limit) or "raw" (any header bits)
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = True

    def frame(self) -> bytes:
        return ws_frame(self.opcode, self.payload, self.fin, rsv=self.rsv, masked=self.masked)


def _text_example(payload: bytes) -> Example:
    return Example("text", OP_TEXT, payload)


_examples = st.one_of(
    st.builds(_text_example, st.builds(_dump, _requests | _likely_requests, st.booleans())),
    st.builds(lambda t: _text_example(t.encode("utf-8", "surrogatepass")), _text),
    st.builds(lambda b: Example("binary", OP_BINARY, b), st.binary(max_size=64)),
    st.builds(_text_example, st.binary(max_size=64)),
    st.builds(
        lambda n: Example("huge", OP_TEXT, b'{"type":"ping","id":"' + b"x" * n + b'"}'),
        st.integers(MAX_MESSAGE, 3 * MAX_MESSAGE),
    ),
    st.builds(
        lambda d, o: _text_example(_deep(d, o)), st.integers(1, 2000), st.sampled_from("[{")
    ),
    st.builds(
        Example,
        st.just("raw"),
        st.integers(0, 15).filter(lambda op: op != OP_CLOSE),
        st.binary(max_size=130),
        st.booleans(),
        st.integers(0, 7),
        st.booleans(),
    ),
)


async def _try(server: Server, example: Example) -> None:
    client = await connect_raw_ws(server.port)
    server.clients.append(client)
    assert client.transport is not None
    client.transport.write(example.frame() + ws_frame(OP_TEXT, json.dumps(SENTINEL).encode()))
    sentinel = client.wait_json(lambda f: f == {"type": "pong", "id": "sentinel"}, timeout=5)
    # False when the connection ended first (or on the timeout)
    answered = await sentinel.addCallbacks(lambda _: True, lambda _: False)
    if not answered:
        assert client.lost.called, "neither an answer nor a close within 5 s"
        assert client.close_code in PROPER_CODES, (client.close_code, client.inbox.frames)
        return
    kind = example.kind
    assert kind != "huge", "a frame over the size limit was accepted"
    answers = [json.loads(p) for op, p in client.inbox.frames if op == OP_TEXT][:-1]
    for answer in answers:
        assert isinstance(answer, dict) and answer.get("type") in REPLIES, answer
    if kind in ("text", "binary"):
        assert answers and answers[0]["type"] != "event", "the message got no answer"
    if kind == "binary":
        assert answers[0]["type"] == "error"
    if answers and answers[0]["type"] == "error":
        assert isinstance(answers[0]["reason"], str) and len(answers[0]["reason"]) <= 300
    assert all(op in (OP_TEXT, OP_PONG) for op, _ in client.inbox.frames)
    transport: Any = client.transport
    transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_fuzzed_client_messages(log: LogCapture) -> None:
    server = await start_server(max_message_size=MAX_MESSAGE)
    try:
        # 600 in CI (about two seconds); more under a longer profile
        for example in examples(_examples, max(600, settings().max_examples)):
            try:
                await _try(server, example)
                assert log.failures() == [], "a traceback was logged"
            except BaseException as e:
                shown = example._replace(payload=example.payload[:200])
                raise AssertionError(f"{shown}: {e!r}") from e
        fresh = await server.client()
        await subscribe(fresh, "after")
        await server.news.publish("after", {"still": "working"})
        event = await fresh.wait_type("event")
        assert event["data"] == {"still": "working"}
    finally:
        await stop_server(server)


def test_examples_cover_every_kind() -> None:
    kinds = [example.kind for example in examples(_examples, 150)]
    assert {"text", "binary", "huge", "raw"} <= set(kinds)

