"""The hub's token-bucket rate limiter, on a Clock, and POST /events behind it."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet.task import Clock
from twisted.python import usage

from tests._local_hub import start_local_hub
from twisted_event_dispatcher._rate import RateLimiter
from twisted_event_dispatcher.hub.options import HubOptions


def test_bursts_then_the_rate_with_the_wait_until_the_next_token() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [None, None, None]
    wait = limiter.take("a")
    assert wait == pytest.approx(0.1)
    assert limiter.take("b") is None, "keys are independent"
    clock.advance(0.1)
    assert limiter.take("a") is None and limiter.take("a") is not None
    clock.advance(60)
    assert [limiter.take("a") for _ in range(4)][:3] == [None, None, None], "refills to burst"


def test_sustained_rate_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=50, burst=5, clock=clock)
    allowed = 0
    for _ in range(1000):  # 10 s of a client asking every 10 ms (100/s)
        allowed += limiter.take("peer") is None
        clock.advance(0.01)
    assert 500 <= allowed <= 506


def test_memory_is_bounded_by_max_keys() -> None:
    limiter = RateLimiter(rate=1, burst=1, clock=Clock(), max_keys=100)
    for n in range(10_000):
        limiter.take(n)
    assert len(limiter) == 100
    assert limiter.take(9_999) is not None, "the most recent keys are remembered"


def test_zero_rate_disables_and_bad_arguments_are_refused() -> None:
    limiter = RateLimiter(rate=0, burst=1, clock=Clock())
    assert all(limiter.take("a") is None for _ in range(100)) and len(limiter) == 0
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=-1, burst=1, clock=Clock())
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=float("nan"), burst=1, clock=Clock())
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(rate=1, burst=0, clock=Clock())


@pytest_twisted.ensureDeferred
async def test_post_events_past_the_rate_gets_429_with_retry_after() -> None:
    clock = Clock()
    local = await start_local_hub(max_rate=3, clock=clock)
    try:
        ws = await local.subscriber()
        codes = []
        for n in range(5):
            response = await treq.post(local.url + "events", json={"event": "e", "data": n})
            codes.append(response.code)
            if response.code == 429:
                assert response.phrase == b"Too Many Requests"
                assert response.headers.getRawHeaders("retry-after") == ["1"]
                answer = json.loads(await response.content())
                assert "at most 3 per second" in answer["error"]
            else:
                await response.content()
        assert codes == [202, 202, 202, 429, 429]
        clock.advance(1)
        response = await treq.post(local.url + "events", json={"event": "e", "data": "later"})
        assert response.code == 202
        await ws.wait(lambda f: f.get("data") == "later")
        assert [f["data"] for f in ws.events()] == [0, 1, 2, "later"], "refused: not published"
        assert local.problems() == []
    finally:
        await local.stop()


def test_max_rate_option() -> None:
    options = HubOptions()
    options.parseOptions(["--max-rate", "20"])  # type: ignore[no-untyped-call]
    assert options["max-rate"] == 20
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(usage.UsageError, match="max-rate"):
            HubOptions().parseOptions(["--max-rate", bad])  # type: ignore[no-untyped-call]
