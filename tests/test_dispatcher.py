"""EventDispatcher: every rule of "Core semantics" in DESIGN.md, with a Clock, no reactor."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from twisted_event_dispatcher import AnyOf, EventDispatcher, FireResult
from twisted_event_dispatcher.errors import (
    BufferFullError,
    EventDispatcherError,
    HandlerTimeoutError,
    KeywordInUseError,
    ReservedKeywordError,
    UnhashableValueError,
    UnknownHandlerError,
    UnknownKeywordError,
    UnknownPhaseError,
)
from twisted_event_dispatcher.testing import (
    DeferredHandler,
    RecordingHandler,
    assert_no_result,
    captured_failures,
    failure_result_of,
    success_result_of,
)

Make = Callable[..., EventDispatcher]


def add(dispatcher: EventDispatcher, handler: Any, phase: str = "during", **kw: Any) -> int:
    return success_result_of(dispatcher.add_event_handler(handler, phase, **kw))


def fire(dispatcher: EventDispatcher, event: Any = "e", **keywords: Any) -> FireResult:
    return success_result_of(dispatcher.fire_event(event, **keywords))


# -- matching ------------------------------------------------------------------------------


def test_readme_flow(dispatcher: EventDispatcher) -> None:
    everyone, users_only = RecordingHandler(), RecordingHandler()
    handler_id = add(dispatcher, everyone)
    add(dispatcher, users_only, role="user")
    fire(dispatcher, "e1", event_type="new", role="user", user="bob")
    fire(dispatcher, "e2", event_type="new", role="admin", user="ann")
    assert everyone.events == ["e1", "e2"]
    assert users_only.events == ["e1"]
    assert success_result_of(dispatcher.remove_event_handler(handler_id)) is None
    fire(dispatcher, "e3", role="user")
    assert everyone.events == ["e1", "e2"]
    assert users_only.events == ["e1", "e3"]


def test_subset_matching_and_empty_spec(dispatcher: EventDispatcher) -> None:
    catch_all, by_role, by_both = RecordingHandler(), RecordingHandler(), RecordingHandler()
    add(dispatcher, catch_all)
    add(dispatcher, by_role, role="admin")
    add(dispatcher, by_both, role="admin", user="ann")
    fire(dispatcher, "bare")
    fire(dispatcher, "admin-bob", role="admin", user="bob")
    fire(dispatcher, "admin-ann", role="admin", user="ann", event_type="x")
    fire(dispatcher, "ann-only", user="ann")
    assert catch_all.events == ["bare", "admin-bob", "admin-ann", "ann-only"]
    assert by_role.events == ["admin-bob", "admin-ann"]
    assert by_both.events == ["admin-ann"]


def test_any_of(dispatcher: EventDispatcher) -> None:
    handler = RecordingHandler()
    add(dispatcher, handler, role=AnyOf("admin", "owner"))
    for role in ("admin", "guest", "owner"):
        fire(dispatcher, role, role=role)
    assert handler.events == ["admin", "owner"]


def test_handler_gets_the_event_object_itself(dispatcher: EventDispatcher) -> None:
    handler = RecordingHandler()
    add(dispatcher, handler)
    event = object()
    result = fire(dispatcher, event, user="x")
    assert handler.events[0] is event
    assert result.event is event and result.keywords == {"user": "x"}


# -- bad input -----------------------------------------------------------------------------


def test_unknown_keyword_at_registration_names_it_and_changes_nothing(
    dispatcher: EventDispatcher,
) -> None:
    with pytest.raises(UnknownKeywordError, match="'colour'") as info:
        dispatcher.add_event_handler(RecordingHandler(), "during", colour="red")
    assert isinstance(info.value, ValueError) and isinstance(info.value, EventDispatcherError)
    assert "event_type, role, user" in str(info.value)
    assert dispatcher.handler_count == 0
    # the failed call did not consume an id
    assert add(dispatcher, RecordingHandler()) == 1


def test_unknown_keyword_at_firing_names_it_and_calls_nothing(
    dispatcher: EventDispatcher,
) -> None:
    handler = RecordingHandler()
    add(dispatcher, handler)
    with pytest.raises(UnknownKeywordError, match="'colour'"):
        dispatcher.fire_event("e", colour="red", role="user")
    assert handler.events == []


def test_unhashable_values_raise_type_error_naming_the_keyword(
    make_dispatcher: Make,
) -> None:
    dispatcher = make_dispatcher(start=False)
    handler = RecordingHandler()
    with pytest.raises(UnhashableValueError, match="'user'") as info:
        dispatcher.add_event_handler(handler, "during", role="a", user=["bob"])
    assert isinstance(info.value, TypeError)
    assert dispatcher.handler_count == 0
    add(dispatcher, handler)
    with pytest.raises(TypeError, match="'user'"):
        dispatcher.fire_event("e", user={"name": "bob"})
    # nothing was buffered by the refused firing
    assert dispatcher.buffered_count == 0
    dispatcher.start()
    assert handler.events == []


def test_unknown_phase(dispatcher: EventDispatcher) -> None:
    with pytest.raises(UnknownPhaseError, match="'later'") as info:
        dispatcher.add_event_handler(RecordingHandler(), "later")
    assert isinstance(info.value, ValueError)
    assert "('before', 'during', 'after')" in str(info.value)
    with pytest.raises(UnknownPhaseError):
        dispatcher.add_event_handler(RecordingHandler(), ["during"])  # type: ignore[arg-type]
    assert dispatcher.handler_count == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"priority": "high"}, TypeError, "priority"),
        ({"priority": True}, TypeError, "priority"),
        ({"times": 0}, ValueError, "times"),
        ({"times": 1.5}, TypeError, "times"),
        ({"times": 2, "once": True}, ValueError, "once"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
    ],
)
def test_bad_handler_options(
    dispatcher: EventDispatcher, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        dispatcher.add_event_handler(RecordingHandler(), "during", **kwargs)
    assert dispatcher.handler_count == 0


def test_non_callable_handler(dispatcher: EventDispatcher) -> None:
    with pytest.raises(TypeError, match="callable"):
        dispatcher.add_event_handler("not a function", "during")  # type: ignore[arg-type]


def test_weak_needs_a_weakly_referenceable_handler(dispatcher: EventDispatcher) -> None:
    class NoWeakReferences:
        __slots__ = ()

        def __call__(self, event: object) -> None:
            pass

    with pytest.raises(TypeError, match="weak"):
        dispatcher.add_event_handler(NoWeakReferences(), "during", weak=True)
    assert dispatcher.handler_count == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("user",), {"phases": ()}, ValueError),
        (("user",), {"phases": ("a", "a")}, ValueError),
        (("user",), {"phases": "before"}, TypeError),
        (("user",), {"phases": ("a", 1)}, TypeError),
        ("user", {}, TypeError),
        ((1,), {}, TypeError),
        (("not-an-identifier",), {}, ValueError),
        (("priority",), {}, ReservedKeywordError),
        (("user",), {"buffer_size": -1}, ValueError),
        (("user",), {"abort_on_failure": ("nope",)}, UnknownPhaseError),
        (("user",), {"handler_timeout": -1}, ValueError),
    ],
)
def test_bad_constructor_arguments(
    args: Any, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        EventDispatcher(args, **kwargs)


def test_remove_unknown_or_already_removed_handler(dispatcher: EventDispatcher) -> None:
    with pytest.raises(UnknownHandlerError, match="42") as info:
        dispatcher.remove_event_handler(42)
    assert isinstance(info.value, KeyError)
    handler_id = add(dispatcher, RecordingHandler())
    dispatcher.remove_event_handler(handler_id)
    with pytest.raises(UnknownHandlerError):
        dispatcher.remove_event_handler(handler_id)
    with pytest.raises(UnknownHandlerError):
        dispatcher.remove_event_handler([1])  # type: ignore[arg-type]


# -- phases, order, waiting ----------------------------------------------------------------


def test_custom_phases_run_in_the_given_order(make_dispatcher: Make) -> None:
    dispatcher = make_dispatcher(phases=("validate", "commit", "notify", "cleanup"))
    calls: list[str] = []
    for phase in ("cleanup", "notify", "validate", "commit"):
        add(dispatcher, lambda e, phase=phase: calls.append(phase), phase)
    result = fire(dispatcher)
    assert calls == ["validate", "commit", "notify", "cleanup"]
    assert [o.phase for o in result.outcomes] == calls
    assert dispatcher.phases == ("validate", "commit", "notify", "cleanup")
    with pytest.raises(UnknownPhaseError):
        dispatcher.add_event_handler(RecordingHandler(), "during")


def test_priority_then_registration_order(dispatcher: EventDispatcher) -> None:
    calls: list[str] = []
    add(dispatcher, lambda e: calls.append("p0-first"))
    add(dispatcher, lambda e: calls.append("p5"), priority=5)
    add(dispatcher, lambda e: calls.append("p-1"), priority=-1, role="r")
    add(dispatcher, lambda e: calls.append("p0-second"), user="u")
    add(dispatcher, lambda e: calls.append("before"), "before", priority=100)
    fire(dispatcher, role="r", user="u")
    assert calls == ["before", "p-1", "p0-first", "p0-second", "p5"]


def test_each_phase_waits_for_every_deferred_before_the_next(
    dispatcher: EventDispatcher,
) -> None:
    slow, fast = DeferredHandler(), DeferredHandler()
    after = RecordingHandler()
    add(dispatcher, slow, "before")
    add(dispatcher, fast, "before")
    add(dispatcher, after, "after")
    d = dispatcher.fire_event("e")
    # both handlers of the phase were started without waiting for each other
    assert slow.events == ["e"] and fast.events == ["e"]
    fast.calls[0][1].callback("fast")
    assert after.events == []
    assert_no_result(d)
    slow.calls[0][1].callback("slow")
    assert after.events == ["e"]
    result = success_result_of(d)
    assert result.results == ["slow", "fast", None]
    assert dispatcher.in_flight_count == 0


def test_coroutines_and_deferreds_with_the_clock(
    dispatcher: EventDispatcher, clock: Clock
) -> None:
    order: list[str] = []

    async def coroutine_handler(event: str) -> str:
        await deferLater(clock, 2, lambda: None)
        order.append("coroutine")
        return "c"

    def deferred_handler(event: str) -> Deferred[str]:
        return deferLater(clock, 1, lambda: order.append("deferred") or "d")

    add(dispatcher, coroutine_handler, "during")
    add(dispatcher, deferred_handler, "during")
    add(dispatcher, lambda e: order.append("after"), "after")
    d = dispatcher.fire_event("e")
    clock.advance(1)
    assert order == ["deferred"]
    assert_no_result(d)
    clock.advance(1)
    assert order == ["deferred", "coroutine", "after"]
    assert success_result_of(d).results == ["c", "d", None]


def test_plain_awaitables_are_awaited(dispatcher: EventDispatcher) -> None:
    gate: Deferred[str] = Deferred()

    class Awaitable:
        def __await__(self) -> Any:
            return (yield from gate.__await__())

    add(dispatcher, lambda e: Awaitable())
    d = dispatcher.fire_event("e")
    assert_no_result(d)
    gate.callback("done")
    assert success_result_of(d).results == ["done"]


def test_sync_firing_completes_immediately(dispatcher: EventDispatcher) -> None:
    add(dispatcher, lambda e: 1)
    add(dispatcher, lambda e: succeed(2))
    d = dispatcher.fire_event("e")
    assert d.called
    assert success_result_of(d).results == [1, 2]
    assert dispatcher.in_flight_count == 0


# -- results and failures ------------------------------------------------------------------


def test_failures_do_not_stop_other_handlers_and_are_logged_once(
    dispatcher: EventDispatcher,
) -> None:
    ok_before, ok_same, ok_after = RecordingHandler(1), RecordingHandler(2), RecordingHandler(3)
    boom = RecordingHandler(exception=RuntimeError("boom"))
    failing: DeferredHandler = DeferredHandler()
    add(dispatcher, ok_before, "during", priority=-1)
    add(dispatcher, boom, "during")
    add(dispatcher, failing, "during")
    add(dispatcher, ok_same, "during", priority=1)
    add(dispatcher, ok_after, "after")
    with captured_failures() as logged:
        d = dispatcher.fire_event("e")
        failing.calls[0][1].errback(KeyError("async boom"))
        result = success_result_of(d)
    assert [o.succeeded for o in result.outcomes] == [True, False, False, True, True]
    assert result.results == [1, 2, 3]
    assert not result.succeeded and not result.aborted
    assert [f.failure.type for f in result.failures if f.failure] == [RuntimeError, KeyError]
    assert ok_after.events == ["e"]
    assert len(logged) == 2
    assert {e["log_failure"].type for e in logged} == {RuntimeError, KeyError}
    with pytest.raises(RuntimeError, match="boom"):
        result.raise_first_failure()
    assert "2 failed" in repr(result)


def test_already_failed_deferreds_finish_at_once_and_are_not_left_in_flight(
    dispatcher: EventDispatcher,
) -> None:
    from twisted.internet.defer import fail

    later = RecordingHandler()
    add(dispatcher, lambda e: fail(ValueError("refused at once")), "before")
    add(dispatcher, later, "after")
    with captured_failures() as logged:
        d = dispatcher.fire_event("e")
    result = success_result_of(d)
    assert result.failures[0].failure is not None
    assert result.failures[0].failure.check(ValueError)
    assert later.events == ["e"] and len(logged) == 1
    assert dispatcher.in_flight_count == 0
    success_result_of(dispatcher.stop())


def test_no_unhandled_error_in_deferred(dispatcher: EventDispatcher) -> None:
    handler = DeferredHandler()
    add(dispatcher, handler)
    with captured_failures() as logged:
        d = dispatcher.fire_event("e")
        handler.calls[0][1].errback(ValueError("x"))
        success_result_of(d)
        del d, handler
        gc.collect()
    # exactly the one log entry from the dispatcher, none from a garbage-collected Deferred
    assert len(logged) == 1
    assert "Unhandled error" not in str(logged[0].get("log_format"))


def test_outcomes_per_phase(dispatcher: EventDispatcher) -> None:
    first = add(dispatcher, lambda e: "b", "before")
    second = add(dispatcher, lambda e: "a", "after")
    result = fire(dispatcher)
    assert [o.handler_id for o in result.for_phase("before")] == [first]
    assert [o.result for o in result.for_phase("after")] == ["a"]
    assert result.for_phase("during") == ()
    assert result.outcomes[1].handler_id == second
    assert result.handler_count == 2 and result.succeeded


def test_abort_policy_veto_from_before(make_dispatcher: Make) -> None:
    dispatcher = make_dispatcher(abort_on_failure=("before",))
    same_phase, later = RecordingHandler(), RecordingHandler()
    add(dispatcher, RecordingHandler(exception=PermissionError("no")), "before")
    add(dispatcher, same_phase, "before")
    add(dispatcher, later, "during")
    with captured_failures():
        result = fire(dispatcher)
    assert same_phase.events == ["e"], "the rest of the failing phase still runs"
    assert later.events == []
    assert result.aborted and result.aborted_phase == "before"
    assert "aborted in 'before'" in repr(result)


def test_abort_policy_only_for_named_phases(make_dispatcher: Make) -> None:
    dispatcher = make_dispatcher(abort_on_failure="before")
    later = RecordingHandler()
    add(dispatcher, RecordingHandler(exception=ValueError()), "during")
    add(dispatcher, later, "after")
    with captured_failures():
        result = fire(dispatcher)
    assert later.events == ["e"] and not result.aborted


def test_abort_policy_true_waits_for_the_phase(make_dispatcher: Make) -> None:
    dispatcher = make_dispatcher(abort_on_failure=True)
    pending = DeferredHandler()
    later = RecordingHandler()
    add(dispatcher, pending, "during")
    add(dispatcher, later, "after")
    with captured_failures():
        d = dispatcher.fire_event("e")
        assert_no_result(d)
        pending.calls[0][1].errback(ValueError("late"))
    result = success_result_of(d)
    assert result.aborted_phase == "during" and later.events == []


def test_default_policy_runs_every_phase(dispatcher: EventDispatcher) -> None:
    later = RecordingHandler()
    add(dispatcher, RecordingHandler(exception=ValueError()), "before")
    add(dispatcher, later, "after")
    with captured_failures():
        result = fire(dispatcher)
    assert later.events == ["e"] and not result.aborted


def test_handler_timeout_cancels_and_reports(dispatcher: EventDispatcher, clock: Clock) -> None:
    cancelled: list[bool] = []
    waiting: Deferred[None] = Deferred(lambda d: cancelled.append(True))
    next_phase = RecordingHandler()
    add(dispatcher, lambda e: waiting, timeout=5)
    add(dispatcher, next_phase, "after")
    with captured_failures() as logged:
        d = dispatcher.fire_event("e")
        clock.advance(4.9)
        assert_no_result(d)
        clock.advance(0.2)
    result = success_result_of(d)
    assert cancelled == [True]
    (outcome,) = result.for_phase("during")
    assert outcome.timed_out
    assert outcome.failure is not None and outcome.failure.check(HandlerTimeoutError)
    assert "within 5s" in outcome.failure.getErrorMessage()
    assert next_phase.events == ["e"]
    assert len(logged) == 1


def test_dispatcher_default_timeout_and_timeout_none_override(
    make_dispatcher: Make, clock: Clock
) -> None:
    dispatcher = make_dispatcher(handler_timeout=1)
    add(dispatcher, lambda e: Deferred())
    patient: Deferred[str] = Deferred()
    add(dispatcher, lambda e: patient, timeout=None)
    with captured_failures():
        d = dispatcher.fire_event("e")
        clock.advance(1)
        assert_no_result(d)
        patient.callback("late")
    result = success_result_of(d)
    assert [o.timed_out for o in result.outcomes] == [True, False]
    assert result.outcomes[1].result == "late"


def test_timeout_does_not_touch_handlers_that_finish_in_time(
    dispatcher: EventDispatcher, clock: Clock
) -> None:
    add(dispatcher, lambda e: deferLater(clock, 1, lambda: "ok"), timeout=2)
    d = dispatcher.fire_event("e")
    clock.advance(1)
    assert success_result_of(d).results == ["ok"]
    assert clock.getDelayedCalls() == []


def test_a_cancelled_coroutine_handler_is_a_timeout(
    dispatcher: EventDispatcher, clock: Clock
) -> None:
    cleaned_up: list[str] = []

    async def stuck(event: str) -> None:
        try:
            await Deferred()
        except CancelledError:
            cleaned_up.append(event)
            raise

    add(dispatcher, stuck, timeout=3)
    with captured_failures():
        d = dispatcher.fire_event("e")
        clock.advance(3)
    assert cleaned_up == ["e"]
    assert success_result_of(d).outcomes[0].timed_out


# -- lifecycle -----------------------------------------------------------------------------


def test_created_stopped_buffers_in_order_until_start(make_dispatcher: Make) -> None:
    dispatcher = make_dispatcher(start=False)
    assert dispatcher.running is False
    handler = RecordingHandler()
    add(dispatcher, handler)
    first = dispatcher.fire_event("first", role="r")
    second = dispatcher.fire_event("second")
    late_handler = RecordingHandler()
    add(dispatcher, late_handler, role="r")
    assert handler.events == [] and dispatcher.buffered_count == 2
    assert_no_result(first)
    assert dispatcher.start() is None
    assert dispatcher.running is True
    assert handler.events == ["first", "second"]
    # handlers are chosen when a buffered event is dispatched, i.e. at start()
    assert late_handler.events == ["first"]
    assert success_result_of(first).handler_count == 2
    assert success_result_of(second).handler_count == 1
    assert dispatcher.buffered_count == 0


def test_buffer_is_bounded_with_a_clear_error(make_dispatcher: Make) -> None:
    dispatcher = make_dispatcher(start=False, buffer_size=2)
    handler = RecordingHandler()
    add(dispatcher, handler)
    kept = [dispatcher.fire_event(n) for n in (1, 2)]
    failure = failure_result_of(dispatcher.fire_event(3), BufferFullError)
    assert "2 events" in failure.getErrorMessage()
    dispatcher.start()
    assert handler.events == [1, 2]
    assert all(success_result_of(d).handler_count == 1 for d in kept)


def test_zero_buffer_refuses_every_early_event(make_dispatcher: Make) -> None:
    dispatcher = make_dispatcher(start=False, buffer_size=0)
    failure_result_of(dispatcher.fire_event("e"), BufferFullError)


def test_cancelling_a_buffered_event_drops_it(make_dispatcher: Make) -> None:
    dispatcher = make_dispatcher(start=False)
    handler = RecordingHandler()
    add(dispatcher, handler)
    dropped = dispatcher.fire_event("dropped")
    kept = dispatcher.fire_event("kept")
    dropped.cancel()
    failure_result_of(dropped, CancelledError)
    dispatcher.start()
    assert handler.events == ["kept"]
    success_result_of(kept)


def test_stop_waits_for_in_flight_events_and_buffers_new_ones(
    dispatcher: EventDispatcher,
) -> None:
    pending = DeferredHandler()
    add(dispatcher, pending)
    in_flight = dispatcher.fire_event("in-flight")
    stopped = dispatcher.stop()
    assert dispatcher.running is False
    assert_no_result(stopped)
    later = dispatcher.fire_event("later")
    assert pending.events == ["in-flight"]
    pending.succeed_all()
    assert success_result_of(stopped) is None
    success_result_of(in_flight)
    assert_no_result(later)
    dispatcher.start()
    assert pending.events == ["in-flight", "later"]


def test_stop_when_idle_or_twice(make_dispatcher: Make) -> None:
    dispatcher = make_dispatcher(start=False)
    assert success_result_of(dispatcher.stop()) is None
    dispatcher.start()
    dispatcher.start()  # idempotent
    assert success_result_of(dispatcher.stop()) is None
    assert success_result_of(dispatcher.stop()) is None


def test_cascade_from_a_handler_during_stop_is_not_buffered(
    dispatcher: EventDispatcher, clock: Clock
) -> None:
    """A handler that fires and waits on a follow-up event while stopping: no deadlock."""
    follow_up = RecordingHandler("followed")

    async def cascade(event: str) -> object:
        await deferLater(clock, 1, lambda: None)
        result = await dispatcher.fire_event("follow-up", event_type="follow")
        return result.results

    add(dispatcher, cascade, event_type="start")
    add(dispatcher, follow_up, event_type="follow")
    d = dispatcher.fire_event("e", event_type="start")
    stopped = dispatcher.stop()
    clock.advance(1)
    assert follow_up.events == ["follow-up"]
    assert success_result_of(d).results == [["followed"]]
    success_result_of(stopped)


def test_cancelling_a_firing_cancels_its_handlers_and_skips_later_phases(
    dispatcher: EventDispatcher,
) -> None:
    cancelled: list[str] = []
    stubborn: Deferred[None] = Deferred()  # no canceller: cancel() errbacks it anyway
    add(dispatcher, lambda e: Deferred(lambda d: cancelled.append(e)), "before")
    add(dispatcher, lambda e: stubborn, "before")
    later = RecordingHandler()
    add(dispatcher, later, "after")
    with captured_failures() as logged:
        d = dispatcher.fire_event("e")
        stopped = dispatcher.stop()
        d.cancel()
    failure_result_of(d, CancelledError)
    assert cancelled == ["e"] and later.events == []
    assert logged == [], "cancellation the caller asked for is not logged as a failure"
    assert dispatcher.in_flight_count == 0
    success_result_of(stopped)


def test_a_handler_cancelling_its_own_firing_stops_it(dispatcher: EventDispatcher) -> None:
    gate = DeferredHandler()
    firings: list[Deferred[FireResult]] = []
    started: list[str] = []

    def cancel_own_firing(event: str) -> None:
        started.append("canceller")
        firings[0].cancel()

    def not_started(event: str) -> Deferred[None]:
        started.append("too late")
        return Deferred()

    add(dispatcher, gate, "before")
    add(dispatcher, cancel_own_firing, "during", priority=1)
    add(dispatcher, not_started, "during", priority=2)
    add(dispatcher, RecordingHandler(), "after")
    firings.append(dispatcher.fire_event("e"))
    gate.succeed_all()
    failure_result_of(firings[0], CancelledError)
    assert started == ["canceller"]
    assert dispatcher.in_flight_count == 0


def test_cancelling_a_buffered_event_after_start_cancels_the_firing(
    make_dispatcher: Make,
) -> None:
    dispatcher = make_dispatcher(start=False)
    pending = DeferredHandler()
    add(dispatcher, pending)
    d = dispatcher.fire_event("e")
    dispatcher.start()
    assert pending.events == ["e"]
    d.cancel()
    failure_result_of(d, CancelledError)
    assert pending.calls[0][1].called, "the handler's Deferred was cancelled"
    assert dispatcher.in_flight_count == 0


def test_ids_are_never_reused(dispatcher: EventDispatcher) -> None:
    seen = set()
    for _ in range(5):
        handler_id = add(dispatcher, RecordingHandler())
        assert handler_id not in seen
        seen.add(handler_id)
        dispatcher.remove_event_handler(handler_id)
    assert dispatcher.has_handler(handler_id) is False
    assert dispatcher.handler_count == 0


# -- handler options -----------------------------------------------------------------------


def test_times_and_once(dispatcher: EventDispatcher) -> None:
    twice, once = RecordingHandler(), RecordingHandler()
    twice_id = add(dispatcher, twice, times=2)
    once_id = add(dispatcher, once, once=True)
    for n in range(4):
        fire(dispatcher, n)
    assert twice.events == [0, 1] and once.events == [0]
    assert not dispatcher.has_handler(twice_id) and not dispatcher.has_handler(once_id)
    with pytest.raises(UnknownHandlerError):
        dispatcher.remove_event_handler(once_id)


def test_times_is_respected_by_concurrent_firings(dispatcher: EventDispatcher) -> None:
    gate = DeferredHandler()
    once = RecordingHandler()
    add(dispatcher, gate, "before")
    add(dispatcher, once, "during", once=True)
    first, second = dispatcher.fire_event(1), dispatcher.fire_event(2)
    gate.succeed_all()
    assert once.events == [1]
    assert success_result_of(second).handler_count == 1
    success_result_of(first)


def test_strong_references_by_default(dispatcher: EventDispatcher) -> None:
    calls: list[str] = []
    add(dispatcher, lambda e: calls.append(e))
    gc.collect()
    fire(dispatcher, "still here")
    assert calls == ["still here"] and dispatcher.handler_count == 1


def test_weak_handlers_are_really_removed_when_collected(
    dispatcher: EventDispatcher,
) -> None:
    class Listener:
        def __init__(self) -> None:
            self.events: list[str] = []

        def on_event(self, event: str) -> None:
            self.events.append(event)

    listener = Listener()
    method_id = add(dispatcher, listener.on_event, weak=True)
    function = RecordingHandler()
    function_id = add(dispatcher, function, weak=True, role="r")
    fire(dispatcher, "alive", role="r")
    assert listener.events == ["alive"] and function.events == ["alive"]
    del listener, function
    gc.collect()
    assert not dispatcher.has_handler(method_id)
    assert not dispatcher.has_handler(function_id)
    assert dispatcher.handler_count == 0
    assert dispatcher._handlers.index.bucket_count == 0
    assert fire(dispatcher, "gone", role="r").handler_count == 0


def test_allowed_keywords_can_be_extended_and_reduced(dispatcher: EventDispatcher) -> None:
    handler = RecordingHandler()
    with pytest.raises(UnknownKeywordError):
        dispatcher.add_event_handler(handler, "during", tenant="t1")
    dispatcher.add_match_spec_keywords("tenant")
    assert "tenant" in dispatcher.allowed_match_spec_keywords
    handler_id = add(dispatcher, handler, tenant="t1")
    fire(dispatcher, "t1", tenant="t1")
    with pytest.raises(KeywordInUseError, match="'tenant'"):
        dispatcher.remove_match_spec_keywords("tenant")
    assert "tenant" in dispatcher.allowed_match_spec_keywords
    dispatcher.remove_event_handler(handler_id)
    dispatcher.remove_match_spec_keywords("tenant")
    with pytest.raises(UnknownKeywordError):
        dispatcher.fire_event("e", tenant="t1")
    with pytest.raises(UnknownKeywordError):
        dispatcher.remove_match_spec_keywords("tenant")
    with pytest.raises(ReservedKeywordError, match="'weak'"):
        dispatcher.add_match_spec_keywords("weak")
    assert handler.events == ["t1"]


# -- re-entrancy and mutation during firing ------------------------------------------------


def test_handler_can_fire_and_wait_for_another_event(dispatcher: EventDispatcher) -> None:
    inner = RecordingHandler("inner result")

    async def outer(event: str) -> list[object]:
        result = await dispatcher.fire_event("inner", event_type="inner")
        return result.results

    add(dispatcher, outer, event_type="outer")
    add(dispatcher, inner, event_type="inner")
    assert fire(dispatcher, "outer", event_type="outer").results == [["inner result"]]
    assert inner.events == ["inner"]


def test_handler_added_during_firing_applies_from_the_next_event(
    dispatcher: EventDispatcher,
) -> None:
    added = RecordingHandler()
    add(dispatcher, lambda e: dispatcher.add_event_handler(added, "after") and None, once=True)
    fire(dispatcher, 1)
    assert added.events == []
    fire(dispatcher, 2)
    assert added.events == [2]


def test_handler_removed_before_its_phase_is_skipped(dispatcher: EventDispatcher) -> None:
    victim = RecordingHandler()
    victim_id = add(dispatcher, victim, "after")
    add(dispatcher, lambda e: dispatcher.remove_event_handler(victim_id) and None, "before")
    result = fire(dispatcher)
    assert victim.events == []
    assert [o.phase for o in result.outcomes] == ["before"]


def test_handler_removed_while_event_waits_in_earlier_phase(
    dispatcher: EventDispatcher,
) -> None:
    gate = DeferredHandler()
    victim = RecordingHandler()
    add(dispatcher, gate, "before")
    victim_id = add(dispatcher, victim, "after")
    d = dispatcher.fire_event("e")
    dispatcher.remove_event_handler(victim_id)
    gate.succeed_all()
    assert victim.events == [] and success_result_of(d).handler_count == 1


def test_handler_can_remove_itself(dispatcher: EventDispatcher) -> None:
    calls: list[int] = []
    ids: list[int] = []

    def self_removing(event: int) -> None:
        calls.append(event)
        dispatcher.remove_event_handler(ids[0])

    ids.append(add(dispatcher, self_removing))
    other = RecordingHandler()
    add(dispatcher, other)
    fire(dispatcher, 1)
    fire(dispatcher, 2)
    assert calls == [1] and other.events == [1, 2]


def test_repr(dispatcher: EventDispatcher) -> None:
    assert "running" in repr(dispatcher) and "handlers=0" in repr(dispatcher)


def test_failure_result_is_a_failure(dispatcher: EventDispatcher) -> None:
    add(dispatcher, RecordingHandler(exception=ValueError("v")))
    with captured_failures():
        outcome = fire(dispatcher).outcomes[0]
    assert isinstance(outcome.result, Failure) and outcome.failure is outcome.result
    assert not outcome.timed_out
