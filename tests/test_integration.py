"""zope registration, the IService wrapper and the crochet facade, on the real reactor."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IService, MultiService
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from zope.interface.registry import Components
from zope.interface.verify import verifyObject

from twisted_event_dispatcher import (
    EventDispatcher,
    EventDispatcherService,
    IEventDispatcher,
    get_dispatcher,
    query_dispatcher,
    register_dispatcher,
    unregister_dispatcher,
)
from twisted_event_dispatcher.errors import (
    ReactorThreadError,
    SyncTimeoutError,
    UnknownKeywordError,
)
from twisted_event_dispatcher.registry import ComponentLookupError
from twisted_event_dispatcher.sync import BlockingEventDispatcher, call_blocking
from twisted_event_dispatcher.testing import RecordingHandler, success_result_of

Make = Callable[..., EventDispatcher]


def test_verify_object(dispatcher: EventDispatcher) -> None:
    assert verifyObject(IEventDispatcher, dispatcher)


def test_register_in_global_site_manager_named_and_unnamed(dispatcher: EventDispatcher) -> None:
    other = EventDispatcher(("user",))
    register_dispatcher(dispatcher)
    register_dispatcher(other, name="users")
    try:
        assert get_dispatcher() is dispatcher
        assert get_dispatcher("users") is other
        from zope.component import getUtility

        assert getUtility(IEventDispatcher, "users") is other
    finally:
        assert unregister_dispatcher() is True
        assert unregister_dispatcher("users") is True
    assert unregister_dispatcher("users") is False
    with pytest.raises(ComponentLookupError):
        get_dispatcher("users")
    assert query_dispatcher("users") is None
    sentinel = object()
    assert query_dispatcher("users", default=sentinel) is sentinel


def test_register_in_a_given_registry(dispatcher: EventDispatcher) -> None:
    registry = Components("test")
    register_dispatcher(dispatcher, name="orders", registry=registry)
    assert get_dispatcher("orders", registry=registry) is dispatcher
    assert query_dispatcher("orders") is None, "the global registry is untouched"
    assert registry.getUtility(IEventDispatcher, "orders") is dispatcher


def test_register_refuses_non_dispatchers() -> None:
    with pytest.raises(TypeError, match="IEventDispatcher"):
        register_dispatcher(object())


def test_service_starts_and_drains(make_dispatcher: Make) -> None:
    dispatcher = make_dispatcher(start=False)
    pending: Deferred[None] = Deferred()
    success_result_of(dispatcher.add_event_handler(lambda e: pending, "during"))
    parent = MultiService()
    service = EventDispatcherService(dispatcher, name="events")
    service.setServiceParent(parent)  # type: ignore[no-untyped-call]
    assert verifyObject(IService, service)
    assert parent.getServiceNamed("events") is service
    early = dispatcher.fire_event("early")
    parent.startService()
    assert dispatcher.running and service.running
    stopping = parent.stopService()
    assert not dispatcher.running
    assert not stopping.called
    pending.callback(None)
    success_result_of(stopping)
    success_result_of(early)


@pytest_twisted.ensureDeferred
async def test_real_reactor_phases_with_coroutines() -> None:
    dispatcher = EventDispatcher(("user",))
    dispatcher.start()
    order: list[str] = []

    async def slow(event: str) -> str:
        await deferLater(reactor, 0.02, lambda: None)
        order.append("slow")
        return "slow"

    await dispatcher.add_event_handler(slow, "before")
    await dispatcher.add_event_handler(lambda e: order.append("during"), "during")
    result = await dispatcher.fire_event("e", user="u")
    assert order == ["slow", "during"]
    assert result.results == ["slow", None]
    await dispatcher.stop()


def _in_thread(function: Callable[[], Any]) -> Deferred[Any]:
    """Run ``function`` in a real non-reactor thread; its result, and the thread used."""

    def run() -> Any:
        assert threading.current_thread() is not threading.main_thread()
        return function()

    return threads.deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_blocking_facade_from_a_real_thread() -> None:
    dispatcher = EventDispatcher(("user",))
    handler = RecordingHandler("handled")
    seen_threads: list[threading.Thread] = []

    def threaded_client() -> tuple[int, list[object], int]:
        blocking = BlockingEventDispatcher(dispatcher, timeout=5)

        def record_thread(event: object) -> None:
            seen_threads.append(threading.current_thread())

        handler_id = blocking.add_event_handler(handler, "during", user="bob")
        blocking.add_event_handler(record_thread, "after")
        blocking.start()
        assert blocking.running
        result = blocking.fire_event("from a thread", user="bob")
        blocking.remove_event_handler(handler_id)
        after_removal = blocking.fire_event("again", user="bob")
        blocking.stop()
        return handler_id, result.results, after_removal.handler_count

    handler_id, results, count_after = await _in_thread(threaded_client)
    assert handler_id == 1
    assert results == ["handled", None]
    assert count_after == 1
    assert handler.events == ["from a thread"]
    assert seen_threads == [threading.main_thread()] * 2, "handlers run in the reactor thread"
    assert not dispatcher.running


@pytest_twisted.ensureDeferred
async def test_blocking_facade_reraises_exceptions_in_the_thread() -> None:
    dispatcher = EventDispatcher(("user",))

    def threaded_client() -> BaseException | None:
        blocking = BlockingEventDispatcher(dispatcher, timeout=5)
        try:
            blocking.fire_event("e", colour="red")
        except UnknownKeywordError as e:
            return e
        return None

    error = await _in_thread(threaded_client)
    assert isinstance(error, UnknownKeywordError) and "colour" in str(error)


@pytest_twisted.ensureDeferred
async def test_blocking_facade_times_out_and_cancels() -> None:
    dispatcher = EventDispatcher(("user",))
    dispatcher.start()
    cancelled: list[bool] = []
    await dispatcher.add_event_handler(
        lambda e: Deferred(lambda d: cancelled.append(True)), "during"
    )

    def threaded_client() -> BaseException | None:
        blocking = BlockingEventDispatcher(dispatcher, timeout=0.1)
        try:
            blocking.fire_event("e")
        except SyncTimeoutError as e:
            return e
        return None

    error = await _in_thread(threaded_client)
    assert isinstance(error, SyncTimeoutError) and isinstance(error, TimeoutError)
    assert "0.1s" in str(error)
    # giving up cancelled the firing, and with it the handler's Deferred
    assert cancelled == [True]
    assert dispatcher.in_flight_count == 0


def test_blocking_facade_refuses_the_reactor_thread(dispatcher: EventDispatcher) -> None:
    # pytest-twisted runs the reactor in this (main) thread
    blocking = BlockingEventDispatcher(dispatcher, setup=False)
    with pytest.raises(ReactorThreadError, match="reactor thread"):
        blocking.fire_event("e")
    with pytest.raises(ReactorThreadError):
        call_blocking(dispatcher.stop, timeout=1)


def test_blocking_facade_checks_its_arguments(dispatcher: EventDispatcher) -> None:
    with pytest.raises(TypeError, match="IEventDispatcher"):
        BlockingEventDispatcher(object(), setup=False)
    with pytest.raises(ValueError, match="timeout"):
        BlockingEventDispatcher(dispatcher, timeout=0, setup=False)


def test_demo_program_runs() -> None:
    import subprocess

    completed = subprocess.run(
        [sys.executable, "-m", "twisted_event_dispatcher", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = completed.stdout
    assert "before: audit log records {'name': 'alice'" in out
    assert "results: [None, None, 'mail sent to alice', '/home/alice', None]" in out
    assert "mallory: <FireResult" in out and "aborted in 'before'" in out
    assert out.index("start()") < out.index("audit log records")


@pytest_twisted.ensureDeferred
async def test_direct_calls_from_another_thread_are_handed_to_the_reactor() -> None:
    dispatcher = EventDispatcher(("user",))
    ran_in: list[threading.Thread] = []

    def handler(event: object) -> str:
        ran_in.append(threading.current_thread())
        return "ok"

    def from_thread() -> list[Deferred[Any]]:
        # each call is queued for the reactor thread, in order; none runs in this thread
        results: list[Deferred[Any]] = [dispatcher.add_event_handler(handler, "during")]
        dispatcher.start()
        results.append(dispatcher.fire_event("e", user="u"))
        results.append(dispatcher.remove_event_handler(1))
        results.append(dispatcher.fire_event("after removal", user="u"))
        results.append(dispatcher.stop())
        return results

    added, fired, removed, fired_again, stopped = await _in_thread(from_thread)
    assert await added == 1
    assert (await fired).results == ["ok"]
    assert await removed is None
    assert (await fired_again).handler_count == 0
    assert await stopped is None
    assert ran_in == [threading.main_thread()]


@pytest_twisted.ensureDeferred
async def test_bad_input_from_another_thread_still_raises_in_that_thread() -> None:
    dispatcher = EventDispatcher(("user",))

    def from_thread() -> list[BaseException]:
        errors: list[BaseException] = []
        try:
            dispatcher.fire_event("e", colour="red")
        except UnknownKeywordError as e:
            errors.append(e)
        return errors

    (error,) = await _in_thread(from_thread)
    assert "colour" in str(error)
