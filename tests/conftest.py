"""Shared fixtures. pytest-twisted runs the reactor in this process's main thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import crochet
import pytest
from twisted.internet.task import Clock

from twisted_event_dispatcher import EventDispatcher

# The reactor is run by pytest-twisted, not by crochet: crochet must not start its own.
crochet.no_setup()

KEYWORDS = ("event_type", "user", "role")


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
