"""Shared fixtures. pytest-twisted runs the reactor in this process's main thread."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import crochet
import pytest
import pytest_twisted
from hypothesis import HealthCheck, settings
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from tests._deps import require_binary
from tests._log import LogCapture
from tests._redis import RedisServer
from twisted_event_dispatcher import EventDispatcher

# The reactor is run by pytest-twisted, not by crochet: crochet must not start its own.
crochet.no_setup()

# Property-based fuzzing: "ci" (the default) is derandomized, so every run of the suite
# tries the same examples; "long" explores new ones: pytest --hypothesis-profile=long.
_FUZZ_CHECKS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None, database=None,
    suppress_health_check=_FUZZ_CHECKS, print_blob=True,
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=_FUZZ_CHECKS,
    print_blob=True,
)
settings.load_profile("ci")

KEYWORDS = ("event_type", "user", "role")


@pytest.fixture
def redis_binary() -> str:
    """
    redis-server's path: without one on PATH the test skips, saying how to install it
    (fails in CI). A plain fixture, which the Redis fixtures below depend on: an async
    pytest-twisted fixture that skips breaks the next test that uses it.
    """
    return require_binary("redis-server")


@pytest_twisted.async_yield_fixture
async def redis(redis_binary: str) -> AsyncIterator[RedisServer]:
    """A private redis-server with an append-only file (a restart keeps the streams)."""
    server = RedisServer()
    await server.start()
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def volatile(redis_binary: str) -> AsyncIterator[RedisServer]:
    """A Redis without persistence: a restart loses every stream."""
    server = RedisServer(persistent=False)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def log() -> Iterator[LogCapture]:
    """Every event logged through twisted.logger while the test runs."""
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_dispatcher(clock: Clock) -> Callable[..., EventDispatcher]:
    """Build a dispatcher on the test's Clock; started unless ``start=False``."""

    def make(*keywords: str, start: bool = True, **options: Any) -> EventDispatcher:
        options.setdefault("clock", clock)
        dispatcher = EventDispatcher(keywords or KEYWORDS, **options)
        if start:
            dispatcher.start()
        return dispatcher

    return make


@pytest.fixture
def dispatcher(make_dispatcher: Callable[..., EventDispatcher]) -> EventDispatcher:
    return make_dispatcher()
