"""
Property-based fuzzing of the Python API: whatever a caller passes, the answer is a
result that holds what was given, or a specific exception raised before any state changed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from twisted_event_dispatcher import EventDispatcher
from twisted_event_dispatcher.channels import MemoryChannel
from twisted_event_dispatcher.channels.message import MAX_DEPTH
from twisted_event_dispatcher.errors import EventDispatcherError, InvalidDataError
from twisted_event_dispatcher.testing import RecordingCarrier, success_result_of

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from(["\ud800", "\udfff", "\x00", "\u2028", "]}\"\\"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=25,
)
_values = st.one_of(
    _json,
    st.builds(object),
    st.sets(st.integers(), max_size=2),
    st.integers(0, 3 * MAX_DEPTH).map(lambda n: _nested(n)),
    st.dictionaries(st.integers() | st.booleans() | st.none(), _scalars, max_size=2),
)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = {"k": value}
    return value


def _deliverable(value: Any, depth: int = 0) -> bool:
    """What a channel must accept: JSON with finite numbers, valid Unicode, bounded depth."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, list):
        return depth < MAX_DEPTH and all(_deliverable(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return depth < MAX_DEPTH and all(
            (isinstance(k, str) or k is None or isinstance(k, (int, float, bool)))
            and _deliverable(str(k) if not isinstance(k, str) else k)
            and _deliverable(v, depth + 1)
            for k, v in value.items()
        )
    return False


def _as_json(value: Any) -> Any:
    """``value`` after a JSON round trip (dict keys become strings)."""
    return json.loads(json.dumps(value))


@given(key=st.text(max_size=30) | st.sampled_from(["e", "*", "_e"]), data=_values)
def test_publish_stores_exactly_what_it_can_deliver(key: str, data: Any) -> None:
    channel = MemoryChannel("fuzz")
    carrier = RecordingCarrier()
    success_result_of(channel.subscribe("*", carrier))
    try:
        message = success_result_of(channel.publish(key, data))
    except InvalidDataError as e:
        assert not _deliverable(data), f"refused deliverable data: {e}"
        assert channel.last_id is None and carrier.messages == []
        return
    except (TypeError, ValueError) as e:
        assert isinstance(e, EventDispatcherError) or "name" in str(e)
        assert channel.last_id is None and carrier.messages == []
        return
    assert _deliverable(data), "accepted data that cannot be delivered"
    assert carrier.messages == [message] and message.event == key
    wire = message.json.encode("utf-8")
    assert json.loads(wire)["data"] == _as_json(data)
    replayed = success_result_of(channel.subscribe("*", RecordingCarrier(), since=0))
    assert replayed.replay == (message,) and replayed.gap is None


@given(
    since=st.none() | st.integers() | st.booleans() | st.text(max_size=3) | st.floats(),
    epoch=st.none() | st.text(max_size=20) | st.integers(),
    event=st.text(max_size=10) | st.just("*"),
)
def test_subscribe_answers_or_refuses_before_subscribing(
    since: Any, epoch: Any, event: Any
) -> None:
    channel = MemoryChannel("fuzz", history_size=3)
    for n in range(5):
        success_result_of(channel.publish("e", n))
    carrier = RecordingCarrier()
    try:
        subscription = success_result_of(channel.subscribe(event, carrier, since, epoch))
    except (TypeError, ValueError):
        assert channel.carrier_count == 0
        return
    assert channel.carrier_count == 1
    if subscription.gap is None:
        assert [m.id for m in subscription.replay] == [
            n for n in range(since + 1 if since is not None else 6, 6)
            if event in ("*", "e")
        ]
    else:
        assert subscription.replay == () and subscription.gap.reason in (
            "expired", "epoch", "unknown"
        )


@given(
    keywords=st.dictionaries(
        st.sampled_from(["user", "role", "colour"]),
        _scalars | st.lists(st.integers(), max_size=2) | st.builds(object),
        max_size=3,
    )
)
def test_fire_event_answers_or_refuses_before_anything_runs(keywords: dict[str, Any]) -> None:
    dispatcher = EventDispatcher(("user", "role"), clock=Clock())
    dispatcher.start()
    seen: list[Any] = []
    success_result_of(dispatcher.add_event_handler(seen.append, "during"))
    try:
        result = success_result_of(dispatcher.fire_event("e", **keywords))
    except EventDispatcherError as e:
        assert isinstance(e, (TypeError, ValueError))
        assert seen == [], "a refused event reached a handler"
        assert "colour" in keywords or any(isinstance(v, list) for v in keywords.values())
        return
    assert seen == ["e"] and result.handler_count == 1
