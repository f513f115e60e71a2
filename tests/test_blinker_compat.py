"""
twisted_event_dispatcher.compat.blinker: what blinker's own suite (tests/test_blinker_suite.py)
does not cover: Deferreds and coroutines, weak references, threads, unhashable senders.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import CoroutineType
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed

from twisted_event_dispatcher import signals
from twisted_event_dispatcher.compat import blinker
from twisted_event_dispatcher.compat.blinker import ANY, AsyncResultError, Signal
from twisted_event_dispatcher.testing import (
    assert_no_result,
    failure_result_of,
    success_result_of,
)


def as_coroutine_function(
    receiver: Callable[..., Any],
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """A ``_sync_wrapper``: the receiver's result (a Deferred, say) is send_async's to await."""

    async def call(sender: Any, **kwargs: Any) -> Any:
        return receiver(sender, **kwargs)

    return call


def test_the_module_can_stand_in_for_blinker_in_sys_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # doc/signals.rst's recipe for code that imports blinker itself
    monkeypatch.setitem(sys.modules, "blinker", blinker)
    monkeypatch.setitem(sys.modules, "blinker.base", blinker)
    assert importlib.import_module("blinker").Signal is Signal
    assert importlib.import_module("blinker.base").Namespace is blinker.Namespace


# -- send: results at once -----------------------------------------------------------------


def test_send_returns_the_results_at_once_in_connection_order() -> None:
    sig = Signal()
    calls: list[str] = []

    def first(sender: Any, **kwargs: Any) -> str:
        calls.append("first")
        return f"1:{sender}:{kwargs['size']}"

    def second(sender: Any, **kwargs: Any) -> str:
        calls.append("second")
        return "2"

    sig.connect(second, sender="upload")
    sig.connect(first)
    assert sig.send("upload", size=3) == [(second, "2"), (first, "1:upload:3")]
    assert calls == ["second", "first"]  # connection order


def test_a_receiver_returning_a_deferred_makes_send_raise_naming_it() -> None:
    sig = Signal()
    pending: Deferred[str] = Deferred()
    later: list[object] = []

    def fetch(sender: Any) -> Deferred[str]:
        return pending

    def after(sender: Any) -> None:
        later.append(sender)

    sig.connect(fetch)
    sig.connect(after)
    with pytest.raises(AsyncResultError) as raised:
        sig.send("s")
    message = str(raised.value)
    assert "fetch" in message and "returned a Deferred" in message
    assert "send_async" in message and "twisted_event_dispatcher.signals.Signal" in message
    assert isinstance(raised.value, RuntimeError)
    assert raised.value.receiver is fetch and raised.value.result is pending
    assert later == []  # the error propagates like any receiver's, as in blinker
    pending.callback("done")  # the caller may still pick the Deferred up from the error


def test_a_receiver_returning_a_coroutine_makes_send_raise_and_closes_it() -> None:
    sig = Signal()

    async def work() -> str:
        return "never run"

    def starts_work(sender: Any) -> Coroutine[Any, Any, str]:
        return work()

    sig.connect(starts_work)
    with pytest.raises(AsyncResultError, match="starts_work returned a coroutine") as raised:
        sig.send()
    coroutine = raised.value.result
    assert isinstance(coroutine, CoroutineType)
    assert coroutine.cr_frame is None  # closed: no "never awaited" warning later


def test_an_async_receiver_needs_async_wrapper_in_send() -> None:
    sig = Signal()

    async def notify(sender: Any) -> str:
        return f"notified {sender}"

    sig.connect(notify)
    with pytest.raises(AsyncResultError, match="Cannot send to a coroutine function") as raised:
        sig.send("s")
    assert "notify" in str(raised.value) and "send_async" in str(raised.value)
    assert raised.value.result is None
    # With _async_wrapper, what the wrapper returns is the result, even a Deferred.
    [(receiver, result)] = sig.send(
        "s", _async_wrapper=lambda fn: lambda *a, **kw: Deferred.fromCoroutine(fn(*a, **kw))
    )
    assert receiver is notify and success_result_of(result) == "notified s"


def test_send_runs_receivers_in_the_calling_thread() -> None:
    sig = Signal()
    threads: list[int] = []

    def where(sender: Any) -> None:
        threads.append(threading.get_ident())

    sig.connect(where)
    worker = threading.Thread(target=sig.send)
    worker.start()
    worker.join(10)
    assert threads == [worker.ident]


# -- send_async: Deferreds are awaited -----------------------------------------------------


def test_send_async_under_twisted_awaits_deferreds() -> None:
    sig = Signal()
    pending: Deferred[str] = Deferred()
    inner: Deferred[str] = Deferred()

    async def awaits(sender: Any, **kwargs: Any) -> str:
        return f"awaited {await inner}"

    async def returns_one(sender: Any, **kwargs: Any) -> Deferred[str]:
        return succeed("returned")

    def plain(sender: Any, **kwargs: Any) -> Deferred[str]:
        return pending

    for receiver in (awaits, returns_one, plain):
        sig.connect(receiver)
    d = Deferred.fromCoroutine(sig.send_async("s", _sync_wrapper=as_coroutine_function, x=1))
    assert_no_result(d)
    inner.callback("a")
    assert_no_result(d)
    pending.callback("p")
    assert success_result_of(d) == [
        (awaits, "awaited a"), (returns_one, "returned"), (plain, "p")
    ]


def test_send_async_inside_an_asyncio_task_awaits_deferreds_as_futures() -> None:
    sig = Signal()

    def plain(sender: Any) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        asyncio.get_running_loop().call_soon(d.callback, f"fired for {sender}")
        return d

    async def native(sender: Any) -> str:
        await asyncio.sleep(0)
        return "native"

    sig.connect(plain)
    sig.connect(native)
    results = asyncio.run(sig.send_async("s", _sync_wrapper=as_coroutine_function))
    assert results == [(plain, "fired for s"), (native, "native")]


def test_send_async_propagates_a_failed_deferred() -> None:
    sig = Signal()
    sig.connect(lambda sender: Deferred.fromCoroutine(_fail("disk full")), weak=False)
    d = Deferred.fromCoroutine(sig.send_async(_sync_wrapper=as_coroutine_function))
    assert failure_result_of(d, OSError).getErrorMessage() == "disk full"


async def _fail(message: str) -> None:
    raise OSError(message)


def test_send_async_refuses_a_plain_receiver_without_sync_wrapper() -> None:
    sig = Signal()

    def plain(sender: Any) -> None:
        pass

    sig.connect(plain)
    d = Deferred.fromCoroutine(sig.send_async())
    error = failure_result_of(d, AsyncResultError).value
    assert "Cannot send to a non-coroutine function" in str(error) and "plain" in str(error)


def test_muted_signals_send_nothing_either_way() -> None:
    sig = Signal()
    sig.connect(lambda sender: "x", weak=False)
    with sig.muted():
        assert sig.is_muted
        assert sig.send() == []
        assert success_result_of(Deferred.fromCoroutine(sig.send_async())) == []
    assert not sig.is_muted and len(sig.send()) == 1


# -- references ----------------------------------------------------------------------------


def test_receivers_are_weak_by_default_and_disconnected_when_collected() -> None:
    sig = Signal()
    calls: list[object] = []

    def receiver(sender: Any) -> None:
        calls.append(sender)

    sig.connect(receiver, sender="a")
    sig.connect(lambda sender: calls.append("lambda"))  # weak: gone at once, as in blinker
    assert sig.send("a") == [(receiver, None)]
    del receiver
    gc.collect()
    assert sig.send("a") == []
    assert not sig.receivers and not sig.has_receivers_for("a")
    assert calls == ["a"]


def test_the_last_connect_decides_whether_a_receiver_is_held_strongly() -> None:
    sig = Signal()
    strong_then_weak = _receiver("strong then weak")
    sig.connect(strong_then_weak, sender="x", weak=False)
    sig.connect(strong_then_weak, sender="y", weak=True)
    weak_then_strong = _receiver("weak then strong")
    sig.connect(weak_then_strong, sender="x", weak=True)
    sig.connect(weak_then_strong, sender="y", weak=False)
    del strong_then_weak, weak_then_strong  # the signal holds the second one only
    gc.collect()
    assert [result for _, result in sig.send("x")] == ["weak then strong"]
    assert [result for _, result in sig.send("y")] == ["weak then strong"]
    assert len(sig.receivers) == 1


def test_receivers_for_a_collected_sender_are_dropped() -> None:
    class Sender:
        pass

    sig = Signal()
    sender = Sender()

    def receiver(sender: Any) -> str:
        return "r"

    sig.connect(receiver, sender=sender)
    assert sig.has_receivers_for(sender)
    del sender
    gc.collect()
    assert list(sig.receivers_for(ANY)) == []
    assert not any(sig._by_sender.values()) and not any(sig._by_receiver.values())
    assert sig.receivers  # the receiver stays known, as in blinker


def test_a_receiver_that_cannot_be_weakly_referenced_needs_weak_false() -> None:
    class Slotted:
        __slots__ = ()

        def __call__(self, sender: Any) -> str:
            return "slotted"

    sig = Signal()
    with pytest.raises(TypeError, match="cannot be weakly referenced: connect this receiver"):
        sig.connect(Slotted())
    assert not sig.receivers
    receiver = sig.connect(Slotted(), weak=False)
    assert sig.send() == [(receiver, "slotted")]


def test_unhashable_senders_match_by_identity() -> None:
    @dataclass
    class Event:  # eq=True: unhashable, like many dataclasses
        name: str

    sig = Signal()
    event = Event("saved")
    sig.connect(lambda sender: sender.name, sender=event, weak=False)
    assert [result for _, result in sig.send(event)] == ["saved"]
    assert sig.send(Event("saved")) == []  # equal, but another object
    assert sig.has_receivers_for(event) and not sig.has_receivers_for(Event("saved"))


# -- meta-signals --------------------------------------------------------------------------


def test_meta_signals_are_per_signal_and_the_project_s_stay_silent() -> None:
    sig = Signal()
    project_seen: list[object] = []
    legacy_seen: list[dict[str, Any]] = []
    own_seen: list[dict[str, Any]] = []

    # The meta-signals pass the connect call's ``sender`` as a keyword argument.
    def project(signal: Any, **kwargs: Any) -> None:
        project_seen.append(kwargs)

    def legacy(signal: Any, **kwargs: Any) -> None:
        legacy_seen.append(dict(kwargs, signal=signal))

    def own(signal: Any, **kwargs: Any) -> None:
        own_seen.append(kwargs)

    def receiver(sender: Any) -> None:
        pass

    with signals.receiver_connected.connected_to(project):
        with blinker.receiver_connected.connected_to(legacy):
            sig.receiver_connected.connect(own)
            sig.connect(receiver, sender="s", weak=False)
    assert own_seen == [{"receiver": receiver, "sender": "s", "weak": False}]
    assert legacy_seen == [
        {"signal": sig.receiver_connected, "receiver_arg": own, "sender_arg": ANY,
         "weak_arg": True},
        {"signal": sig, "receiver_arg": receiver, "sender_arg": "s", "weak_arg": False},
    ]
    assert project_seen == []
    assert Signal().receiver_connected is not sig.receiver_connected


def test_temporarily_connected_to_is_connected_to() -> None:
    sig = Signal()

    def receiver(sender: Any) -> str:
        return "r"

    with sig.temporarily_connected_to(receiver, sender="a"):
        assert sig.send("a") == [(receiver, "r")]
    assert sig.send("a") == [] and not sig.receivers


# -- threads -------------------------------------------------------------------------------


def test_connect_and_disconnect_from_threads_while_sending() -> None:
    sig = Signal()
    rounds, workers = 200, 4
    errors: list[BaseException] = []
    kept: list[Callable[[Any], str]] = []
    done = threading.Event()

    def churn(number: int) -> None:
        try:
            mine = [_receiver(f"{number}:{i}") for i in range(rounds)]
            for i, receiver in enumerate(mine):
                sig.connect(receiver, sender=SENDERS[i % 3], weak=False)
                sig.connect(receiver)
                if i % 2:
                    sig.disconnect(receiver, sender=SENDERS[i % 3])
                    sig.disconnect(receiver)
            kept.extend(mine[::2])
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def send() -> None:
        try:
            while not done.is_set():
                for sender in SENDERS:
                    sig.send(sender)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    sender_thread = threading.Thread(target=send)
    sender_thread.start()
    threads = [threading.Thread(target=churn, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    done.set()
    sender_thread.join(30)
    assert errors == []
    expected = workers * rounds // 2
    assert len(kept) == expected == len(sig.receivers)
    results = sig.send("a")
    assert len(results) == expected  # each once, though connected for ANY and for "a"
    assert {result for _, result in results} == {receiver("a") for receiver in kept}


SENDERS = ("a", "b", "c")


def _receiver(name: str) -> Callable[[Any], str]:
    return lambda sender: name
