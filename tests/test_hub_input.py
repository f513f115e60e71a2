"""
POST /events under bad and adversarial bodies: every refusal is a 4xx naming the problem,
before any handler runs or anything is stored; every acceptance reaches subscribers intact.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import treq
from hypothesis import strategies as st

from tests._clients import WSClient, connect_sse, connect_ws
from tests._fuzz import examples
from tests._hub import HubProcess, start_hub


@pytest_twisted.async_yield_fixture
async def hub() -> AsyncIterator[HubProcess]:
    process = await start_hub("--keyword", "user", "--history", "1000")
    yield process
    await process.stop()


JSON_TYPE: dict[bytes | str, bytes | str] = {"Content-Type": "application/json"}


async def post(hub: HubProcess, body: bytes) -> tuple[int, Any]:
    response = await treq.post(hub.url + "events", data=body, headers=JSON_TYPE)
    content = await response.content()
    try:
        return response.code, json.loads(content)
    except ValueError:
        return response.code, content


async def health(hub: HubProcess) -> Any:
    return json.loads(await (await treq.get(hub.url + "health")).content())


async def watcher(hub: HubProcess, since: int | None = None) -> WSClient:
    ws = await connect_ws(hub.port, path="/ws")
    request: dict[str, Any] = {"type": "subscribe", "event": "*"}
    if since is not None:
        request["since"] = since
    ws.send_json(request)
    await ws.wait_type("subscribed")
    return ws


def nested(depth: int) -> bytes:
    return b'{"event": "e", "data": ' + b"[" * depth + b"]" * depth + b"}"


BAD_BODIES = [
    # a lone surrogate is valid JSON, but has no UTF-8 form: it could never be delivered
    (b'{"event": "e", "data": "\\ud800"}', "lone surrogate"),
    (b'{"event": "e", "data": {"\\udfff": 1}}', "lone surrogate"),
    (b'{"event": "e", "keywords": {"user": "\\ud800"}, "data": 1}', "'keywords'"),
    (b'{"event": "e\\ud800"}', "lone surrogate"),
    (b'{"event": "e", "data": NaN}', "NaN is not JSON"),
    (b'{"event": "e", "data": [Infinity]}', "Infinity is not JSON"),
    (b'{"event": "e", "data": -Infinity}', "-Infinity is not JSON"),
    (b'{"event": "e", "data": 1e999}', "1e999 is out of range"),
    (b'{"event": "e", "data": {"x": -1E400}}', "out of range"),
    (b'{"event": "e", "data": "\xff"}', "not UTF-8"),
    (nested(65), "nested deeper than 64"),
    (nested(1200), "nested deeper than 64"),  # json.loads would raise RecursionError
    (nested(30000), "nested deeper than 64"),
    (b'{"event": "e", "data": ' + b"9" * 5000 + b"}", "not valid JSON"),
]


@pytest_twisted.ensureDeferred
async def test_bad_data_is_a_400_naming_it_and_reaches_no_one(hub: HubProcess) -> None:
    ws = await watcher(hub)
    for body, reason in BAD_BODIES:
        code, answer = await post(hub, body)
        assert code == 400, (body[:80], code, answer)
        assert reason in answer["error"], (body[:80], answer)
    assert (await health(hub))["channel"]["last_id"] is None, "nothing was stored"
    code, answer = await post(hub, nested(64))  # the limit itself is accepted
    assert code == 202 and answer["id"] == 1
    frame = await ws.wait_type("event")
    assert frame["id"] == 1 and ws.events() == [frame]
    assert "Traceback" not in hub.text and "Unhandled" not in hub.text


@pytest_twisted.ensureDeferred
async def test_a_refused_poison_message_never_breaks_resume(hub: HubProcess) -> None:
    # Issue 9, defect 1: the poison message used to be stored with an offset, then every
    # resume that reached it stopped there silently.
    assert (await post(hub, b'{"event": "e", "data": 1}'))[0] == 202
    assert (await post(hub, b'{"event": "e", "data": "\\ud800"}'))[0] == 400
    assert (await post(hub, b'{"event": "e", "data": 2}'))[0] == 202
    ws = await watcher(hub, since=0)
    await ws.wait(lambda f: f.get("type") == "event" and f["id"] == 2)
    assert [(f["id"], f["data"]) for f in ws.events()] == [(1, 1), (2, 2)]
    sse = await connect_sse(hub.port, "/sse?since=0")
    await sse.wait(lambda b: b.get("id", "").endswith(":2"))
    assert [json.loads(b["data"])["data"] for b in sse.events("e")] == [1, 2]
    assert sse.transport is not None
    sse.transport.loseConnection()


# -- property-based: any body gets 202 (delivered intact) or a 4xx, never a 5xx ----------

_names = st.one_of(
    st.sampled_from(["e", "news", "*", "_x", "", "a" * 201, "ok\u2028", "\U0001f600"]),
    st.text(max_size=12),
)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from(["\ud800", "\udfff", "\x00", "\u2028"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


def _envelope(fields: dict[str, Any]) -> bytes:
    # json.dumps writes NaN/Infinity and escapes lone surrogates: what a peer could send
    return json.dumps(fields).encode()


_bodies = st.one_of(
    st.fixed_dictionaries(
        {"event": _names},
        optional={
            "data": _values,
            "keywords": st.dictionaries(st.sampled_from(["user", "other"]), _values),
            "extra": _scalars,
        },
    ).map(_envelope),
    st.builds(nested, st.integers(0, 3000)),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@pytest_twisted.ensureDeferred
async def test_fuzzed_bodies_never_5xx_and_accepted_ones_arrive_intact(hub: HubProcess) -> None:
    ws = await watcher(hub)
    accepted: list[tuple[int, Any]] = []
    for body in examples(_bodies, 150):
        code, answer = await post(hub, body)
        assert code in (202, 400, 413), (body[:100], code, answer)
        if code == 202:
            accepted.append((answer["id"], json.loads(body).get("data")))
        else:
            assert isinstance(answer, dict) and answer["error"], (body[:100], answer)
    assert accepted, "the strategy produced some valid events"
    code, last = await post(hub, b'{"event": "after", "data": "still delivering"}')
    assert code == 202
    await ws.wait(lambda f: f.get("type") == "event" and f["id"] == last["id"])
    got = [(f["id"], f["data"]) for f in ws.events()]
    assert got == [*accepted, (last["id"], "still delivering")], "in order, intact, no gaps"
    # and every stored message can be replayed
    late = await watcher(hub, since=0)
    await late.wait(lambda f: f.get("type") == "event" and f["id"] == last["id"])
    assert [(f["id"], f["data"]) for f in late.events()] == got
    assert "Traceback" not in hub.text and "Unhandled" not in hub.text, hub.text


@pytest.mark.parametrize("count", [3])
def test_the_fuzz_examples_are_the_same_every_run(count: int) -> None:
    assert examples(_bodies, count) == examples(_bodies, count)
