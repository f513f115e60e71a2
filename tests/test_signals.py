"""Signals: blinker/Django-style API on the dispatcher's engine, Deferred-aware."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from twisted_event_dispatcher.signals import (
    ANY,
    NamedSignal,
    Namespace,
    Signal,
    receiver_connected,
    receiver_disconnected,
    signal,
)
from twisted_event_dispatcher.sync import call_blocking
from twisted_event_dispatcher.testing import (
    assert_no_result,
    captured_failures,
    success_result_of,
)


class Recorder:
    """A receiver that records ``(sender, kwargs)`` and returns ``result``."""

    def __init__(self, result: object = None) -> None:
        self.result = result
        self.calls: list[tuple[object, dict[str, Any]]] = []

    def __call__(self, sender: object, **kwargs: Any) -> object:
        self.calls.append((sender, kwargs))
        return self.result


class Model:
    """A sender object (matched by identity, weakly referenceable)."""

    def __init__(self, name: str = "m") -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:  # equal models are still different senders
        return isinstance(other, Model) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def send(sig: Signal, sender: object = None, **kwargs: Any) -> list[tuple[Any, Any]]:
    return success_result_of(sig.send(sender, **kwargs))


# -- declaring -----------------------------------------------------------------------------


def test_signal_returns_the_same_named_signal_for_a_name() -> None:
    first = signal("test-signals-same", doc="Saved.")
    assert signal("test-signals-same") is first
    assert isinstance(first, NamedSignal) and first.name == "test-signals-same"
    assert first.__doc__ == "Saved."
    assert signal("test-signals-other") is not first
    assert "test-signals-same" in repr(first)


def test_namespaces_are_independent() -> None:
    one, two = Namespace(), Namespace()
    assert one.signal("x") is one.signal("x")
    assert one.signal("x") is not two.signal("x")
    assert list(one) == ["x"]
    with pytest.raises(TypeError, match="name must be str"):
        one.signal(42)  # type: ignore[arg-type]


def test_anonymous_signal_and_any() -> None:
    sig = Signal(doc="Request started.")
    assert sig.__doc__ == "Request started."
    assert repr(ANY) == "ANY"
    assert "0 receiver(s)" in repr(sig)


# -- connecting and sending ------------------------------------------------------------------


def test_receivers_are_called_with_sender_and_kwargs_in_connection_order() -> None:
    sig = Signal()
    order: list[str] = []
    first = sig.connect(lambda sender, **kw: order.append("first") or "a")

    @sig.connect
    def second(sender: object, **kw: Any) -> str:
        order.append("second")
        return f"b:{sender}:{kw['size']}"

    third = Recorder("c")
    sig.connect(third, sender="upload")
    results = send(sig, "upload", size=3)
    assert order == ["first", "second"]
    assert results == [(first, "a"), (second, "b:upload:3"), (third, "c")]
    assert third.calls == [("upload", {"size": 3})]


def test_str_and_int_senders_match_by_value_objects_by_identity() -> None:
    sig = Signal()
    by_name, by_number, by_model = Recorder(), Recorder(), Recorder()
    sig.connect(by_name, sender="".join(["us", "er"]))
    sig.connect(by_number, sender=1234567)
    model = Model("a")
    sig.connect(by_model, sender=model)
    send(sig, "user")
    send(sig, int("1234567"))
    send(sig, Model("a"))  # equal, but another object
    assert [c[0] for c in by_name.calls] == ["user"]
    assert [c[0] for c in by_number.calls] == [1234567]
    assert by_model.calls == []
    send(sig, model)
    assert by_model.calls == [(model, {})]


def test_the_sender_may_be_given_as_a_keyword() -> None:
    class App:
        pass

    sig = Signal()
    recorder = Recorder("reached")
    sig.connect(recorder, sender=App)
    with captured_failures() as logged:
        keyword = success_result_of(sig.send(sender=App, instance="x"))
        positional = success_result_of(sig.send(App, instance="x"))
    assert keyword == positional == [(recorder, "reached")]  # results, not Failures
    assert recorder.calls == [(App, {"instance": "x"})] * 2
    assert logged == []
    recorder.calls.clear()
    send(sig, instance="y")  # no sender at all: None, as before
    assert recorder.calls == []


def test_the_sender_given_both_ways_is_refused_at_once() -> None:
    sig = Signal()
    recorder = Recorder()
    sig.connect(recorder)
    with pytest.raises(TypeError, match="sender both positionally and as sender="):
        sig.send("app", sender="app")
    with pytest.raises(TypeError, match="both"):
        sig.send(None, sender="app")
    assert recorder.calls == []


def test_any_receivers_get_every_sender() -> None:
    sig = Signal()
    everything, only_a = Recorder(), Recorder()
    sig.connect(everything)
    sig.connect(only_a, sender="a")
    for sender in ("a", "b", None):
        send(sig, sender)
    assert [s for s, _ in everything.calls] == ["a", "b", None]
    assert [s for s, _ in only_a.calls] == ["a"]


def test_connecting_twice_is_one_connection_and_methods_are_keyed_by_their_parts() -> None:
    sig = Signal()
    model = Model()
    calls: list[object] = []

    class Listener:
        def on_signal(self, sender: object, **kw: Any) -> None:
            calls.append(sender)

    listener = Listener()
    sig.connect(listener.on_signal)
    sig.connect(listener.on_signal)  # a new bound-method object, the same receiver
    sig.connect(listener.on_signal, sender=model)
    send(sig, "x")
    assert calls == ["x"]
    send(sig, model)
    assert calls == ["x", model], "connected for ANY and for the model: called once"
    sig.disconnect(listener.on_signal)
    send(sig, model)
    assert calls == ["x", model]
    assert sig.receivers == ()


def test_connect_via_and_disconnect_one_sender() -> None:
    sig = Signal()
    calls: list[object] = []

    @sig.connect_via("a")
    @sig.connect_via("b")
    def receiver(sender: object, **kw: Any) -> None:
        calls.append(sender)

    send(sig, "a")
    send(sig, "b")
    sig.disconnect(receiver, sender="a")
    send(sig, "a")
    send(sig, "b")
    assert calls == ["a", "b", "b"]
    sig.disconnect(receiver)  # ANY: from every sender
    send(sig, "b")
    assert calls == ["a", "b", "b"]
    sig.disconnect(receiver)  # not connected: nothing happens
    assert not sig.has_receivers_for("b")


def test_connected_to_and_muted() -> None:
    sig = Signal()
    recorder = Recorder()
    with sig.connected_to(recorder, sender="s") as connected:
        assert connected is recorder
        send(sig, "s")
        with sig.muted():
            assert sig.is_muted
            assert send(sig, "s") == []
        assert not sig.is_muted
        send(sig, "s")
    send(sig, "s")
    assert len(recorder.calls) == 2


def test_temporarily_connected_to_is_blinkers_alias_of_connected_to() -> None:
    sig = Signal()
    recorder = Recorder("r")
    with sig.temporarily_connected_to(recorder, sender="a") as inside:
        assert inside is recorder
        assert send(sig, "a") == [(recorder, "r")]
        assert send(sig, "b") == []
    assert send(sig, "a") == [] and sig.receivers == ()
    with pytest.raises(KeyError):
        with sig.temporarily_connected_to(recorder):
            raise KeyError("boom")
    assert sig.receivers == ()


def test_connected_to_disconnects_when_the_block_raises() -> None:
    sig = Signal()
    recorder = Recorder()
    with pytest.raises(RuntimeError), sig.connected_to(recorder):
        raise RuntimeError("boom")
    send(sig, "s")
    assert recorder.calls == []


def test_receivers_for_and_has_receivers_for() -> None:
    sig = Signal()
    assert not sig.has_receivers_for("a")
    specific = sig.connect(Recorder(), sender="a")
    assert sig.has_receivers_for("a") and not sig.has_receivers_for("b")
    assert not sig.has_receivers_for(ANY)
    general = sig.connect(Recorder())
    assert list(sig.receivers_for("a")) == [specific, general]
    assert list(sig.receivers_for("b")) == [general]
    assert list(sig.receivers_for(ANY)) == [general]
    assert sig.has_receivers_for("anything")
    assert sig.receivers == (specific, general)


def test_receiver_connected_and_disconnected_signals() -> None:
    sig = Signal()
    connected: list[tuple[object, dict[str, Any]]] = []
    disconnected: list[tuple[object, dict[str, Any]]] = []

    # their keyword arguments include ``sender``: the positional one needs another name
    def on_connect(signal: object, **kw: Any) -> None:
        connected.append((signal, kw))

    def on_disconnect(signal: object, **kw: Any) -> None:
        disconnected.append((signal, kw))

    receiver = Recorder()
    with receiver_connected.connected_to(on_connect, sender=sig):
        with receiver_disconnected.connected_to(on_disconnect, sender=sig):
            sig.connect(receiver, sender="x", weak=True)
            sig.disconnect(receiver, sender="x")
            sig.disconnect(receiver, sender="x")  # nothing removed: not announced
    assert Signal.receiver_connected is receiver_connected
    assert connected == [(sig, {"receiver": receiver, "sender": "x", "weak": True})]
    assert disconnected == [(sig, {"receiver": receiver, "sender": "x"})]


def test_connecting_to_receiver_connected_is_not_reported_by_it() -> None:
    announced: list[dict[str, Any]] = []

    def on_connect(signal: object, **kw: Any) -> None:
        announced.append(kw)

    other = Recorder()
    with receiver_connected.connected_to(on_connect):
        receiver_connected.connect(other)  # a connection to the meta-signal itself
        receiver_connected.disconnect(other)
        sig = Signal()
        sig.connect(other)  # connections elsewhere are still reported
    assert announced == [{"receiver": other, "sender": ANY, "weak": False}]


# -- references ----------------------------------------------------------------------------


def test_strong_by_default_weak_opt_in() -> None:
    sig = Signal()
    sig.connect(lambda sender, **kw: "kept")
    weak = Recorder("weak")
    sig.connect(weak, weak=True)
    gc.collect()
    assert [r for _, r in send(sig)] == ["kept", "weak"]
    del weak
    gc.collect()
    assert [r for _, r in send(sig)] == ["kept"]
    assert len(sig.receivers) == 1


def test_a_receiver_for_a_sender_and_for_any_runs_once_per_send() -> None:
    sig = Signal()
    model = Model()
    first, both, last = Recorder(1), Recorder(2), Recorder(3)
    sig.connect(first)
    sig.connect(both, sender=model, weak=True)
    sig.connect(last, sender=model)
    sig.connect(both, weak=True)  # the same receiver, now also for ANY
    assert [r for _, r in send(sig, model)] == [1, 2, 3]  # once, at its first connection
    assert [r for _, r in send(sig, "other")] == [1, 2]
    assert list(sig.receivers_for(model)) == [first, both, last]
    assert len(both.calls) == 2
    sig.disconnect(both, sender=model)  # ANY only: no longer doubled
    assert sig._doubled == 0
    assert [r for _, r in send(sig, model)] == [1, 3, 2]


def test_has_receivers_for_is_false_once_weak_receivers_are_collected() -> None:
    sig = Signal()
    model = Model()
    both, one = Recorder(), Recorder()
    sig.connect(both, sender=model, weak=True)
    sig.connect(both, weak=True)
    sig.connect(one, sender="s", weak=True)
    assert sig.has_receivers_for(model) and sig.has_receivers_for("s")
    del both, one
    gc.collect()
    assert not sig.has_receivers_for(model)
    assert not sig.has_receivers_for("s")
    assert not sig.has_receivers_for(ANY)
    assert sig.receivers == () and sig._doubled == 0
    assert send(sig, model) == []


def test_a_dead_sender_drops_its_receivers() -> None:
    sig = Signal()
    model = Model()
    recorder = Recorder()
    sig.connect(recorder, sender=model)
    sig.connect(Recorder(), sender=model)
    assert sig.has_receivers_for(model)
    del model
    gc.collect()
    assert sig.receivers == ()
    assert sig._by_sender == {} and sig._sender_refs == {}
    assert recorder.calls == []


def test_senders_that_cannot_be_weakly_referenced_are_kept_alive() -> None:
    sig = Signal()
    sender = (1, 2)  # hashable, matched by identity, no weak references
    recorder = Recorder()
    sig.connect(recorder, sender=sender)
    send(sig, sender)
    send(sig, tuple([1, 2]))  # equal, but another object
    assert recorder.calls == [(sender, {})]
    sig.disconnect(recorder, sender=sender)
    assert sig._sender_refs == {}


# -- results and failures ------------------------------------------------------------------


def test_send_waits_for_deferreds_and_coroutines(clock: Clock) -> None:
    sig = Signal()
    gate: Deferred[str] = Deferred()

    async def slow(sender: object, **kw: Any) -> str:
        await deferLater(clock, 1, lambda: None)
        return "coroutine"

    sig.connect(slow)
    sig.connect(lambda sender, **kw: gate)
    sig.connect(lambda sender, **kw: "sync")
    d = sig.send("s")
    assert_no_result(d)
    clock.advance(1)
    assert_no_result(d)
    gate.callback("deferred")
    assert [r for _, r in success_result_of(d)] == ["coroutine", "deferred", "sync"]


def test_a_receiver_returning_an_already_failed_deferred() -> None:
    from twisted.internet.defer import fail

    sig = Signal()
    sig.connect(lambda sender, **kw: fail(KeyError("gone")))
    with captured_failures() as logged:
        results = send(sig, "s")
    assert results[0][1].check(KeyError) and len(logged) == 1


def test_sync_receivers_take_the_fast_path() -> None:
    sig = Signal()
    sig.connect(lambda sender, **kw: 1)
    d = sig.send("s")
    assert d.called
    assert Signal().send("nobody listens").called


def test_a_failing_receiver_does_not_stop_the_others() -> None:
    sig = Signal()
    after = Recorder("after")

    def broken(sender: object, **kw: Any) -> None:
        raise KeyError("missing")

    failing: Deferred[None] = Deferred()
    sig.connect(broken)
    sig.connect(lambda sender, **kw: failing)
    sig.connect(after)
    with captured_failures() as logged:
        d = sig.send("s")
        failing.errback(ValueError("late"))
        results = success_result_of(d)
        del d
        gc.collect()
    assert [r for r, _ in results][0] is broken
    assert results[0][1].check(KeyError) and results[1][1].check(ValueError)
    assert results[2] == (after, "after")
    assert len(logged) == 2, "each failure logged once, no 'Unhandled error in Deferred'"


# -- re-entrancy ---------------------------------------------------------------------------


def test_a_receiver_disconnecting_itself_does_not_skip_the_next() -> None:
    """PyDispatcher's bug #8: disconnecting during send skipped another receiver."""
    sig = Signal()
    calls: list[str] = []

    def once(sender: object, **kw: Any) -> None:
        calls.append("once")
        sig.disconnect(once)

    sig.connect(once)
    sig.connect(lambda sender, **kw: calls.append("next"))
    sig.connect(lambda sender, **kw: calls.append("last"))
    send(sig)
    send(sig)
    assert calls == ["once", "next", "last", "next", "last"]


def test_receivers_may_connect_and_send_during_a_send() -> None:
    sig, other = Signal(), Signal()
    late = Recorder("late")
    nested = Recorder("nested")
    other.connect(nested)

    def connecting(sender: object, **kw: Any) -> object:
        sig.connect(late)
        inner = success_result_of(sig.send("inner")) if sender == "outer" else None
        return (inner, success_result_of(other.send(sender)))

    sig.connect(connecting)
    results = send(sig, "outer")
    assert late.calls == [("inner", {})], "connected during the outer send: next send only"
    assert results[0][1][1] == [(nested, "nested")]
    assert len(results) == 1


# -- bad input -----------------------------------------------------------------------------


def test_bad_input() -> None:
    sig = Signal()
    with pytest.raises(TypeError, match="callable"):
        sig.connect("not callable")  # type: ignore[type-var]
    with pytest.raises(TypeError, match="hashable.*list"):
        sig.connect(Recorder(), sender=["unhashable"])
    with pytest.raises(TypeError, match="hashable.*dict"):
        sig.send({"unhashable": True})

    class NoWeakReferences:
        __slots__ = ()

        def __call__(self, sender: object, **kw: Any) -> None:
            pass

    with pytest.raises(TypeError, match="weak"):
        sig.connect(NoWeakReferences(), weak=True)
    assert sig.receivers == ()


# -- threads -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_send_from_another_thread_runs_receivers_in_the_reactor() -> None:
    sig = Signal()
    ran_in: list[threading.Thread] = []

    async def receiver(sender: object, **kw: Any) -> str:
        ran_in.append(threading.current_thread())
        return f"{sender}:{kw['n']}"

    def from_thread() -> tuple[object, object]:
        sig.connect(receiver, sender="worker")  # connect is safe in any thread
        blocking = call_blocking(sig.send, "worker", timeout=5, n=1)
        handed_over = sig.send("worker", n=2)  # a Deferred fired in the reactor thread
        return blocking, handed_over

    blocking, handed_over = await threads.deferToThread(from_thread)
    assert blocking == [(receiver, "worker:1")]
    assert await handed_over == [(receiver, "worker:2")]  # type: ignore[misc]
    assert ran_in == [threading.main_thread()] * 2
