"""
fire_event against its peers: blinker, PyDispatcher, zope.event and Twisted's own
system-event triggers (``twisted.internet.base._ThreePhaseEvent``).

Run with ``bash scripts/bench`` (``--quick`` for a smoke run); see :mod:`bench._harness`
for how peers are timed. The output is a Markdown table.

This is a benchmark, not a test: nothing here fails the build. Targets are printed next to
the ratios so a regression is visible.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import blinker
import zope.event
from pydispatch import dispatcher as pydispatcher
from twisted.internet import defer
from twisted.internet.base import _ThreePhaseEvent

from twisted_event_dispatcher import EventDispatcher

from ._harness import OURS, Workload, loop, options, report

# -- workloads -----------------------------------------------------------------------------


def sync_handlers(count: int, ops: int, target: float, target_text: str) -> Workload:
    """``count`` synchronous handlers, all matching."""
    w = Workload(f"{count} sync handler(s)", ops, "blinker", target, target_text)
    receivers = [lambda sender, **kw: None for _ in range(count)]
    handlers = [lambda event: None for _ in range(count)]

    ours = EventDispatcher(("user",))
    for handler in handlers:
        ours.add_event_handler(handler, "during")
    ours.start()
    w.peers[OURS] = loop(ops, lambda: ours.fire_event("e"))

    signal = blinker.Signal()
    for receiver in receivers:
        signal.connect(receiver)
    w.peers["blinker"] = loop(ops, lambda: signal.send("e"))

    for receiver in receivers:
        pydispatcher.connect(receiver, signal="bench-sync", sender=pydispatcher.Any)
    w.peers["PyDispatcher"] = loop(ops, lambda: pydispatcher.send("bench-sync", "e"))

    def disconnect_all() -> None:
        for receiver in receivers:
            pydispatcher.disconnect(receiver, signal="bench-sync", sender=pydispatcher.Any)

    w.cleanup.append(disconnect_all)

    subscribers = list(handlers)
    saved = zope.event.subscribers

    def zope_notify() -> None:
        zope.event.subscribers = subscribers
        try:
            for _ in range(ops):
                zope.event.notify("e")
        finally:
            zope.event.subscribers = saved

    w.peers["zope.event"] = zope_notify

    triggers: list[tuple[Callable[[], object], tuple[()], dict[str, object]]] = [
        (lambda: None, (), {}) for _ in range(count)
    ]
    three_phase = _ThreePhaseEvent()

    def twisted_triggers() -> None:
        for _ in range(ops):
            # system-event triggers are one-shot: re-arm them for every firing
            three_phase.during = list(triggers)
            three_phase.fireEvent()

    w.peers["Twisted _ThreePhaseEvent"] = twisted_triggers
    return w


class Sender:
    """A sender object for blinker and PyDispatcher (both match objects by identity)."""


def selective(count: int, ops: int) -> Workload:
    """``count`` handlers, each for a different user; every firing matches exactly one."""
    w = Workload(
        f"1 matching among {count:,}", ops, "blinker", 1.2 if count >= 10_000 else None,
        "<= 1.2x blinker" if count >= 10_000 else "(growth baseline)",
    )
    picks = [(i * 7919) % count for i in range(ops)]
    handlers = [lambda event: None for _ in range(count)]
    receivers = [lambda sender, **kw: None for _ in range(count)]
    senders = [Sender() for _ in range(count)]

    ours = EventDispatcher(("user",))
    for user, handler in enumerate(handlers):
        ours.add_event_handler(handler, "during", user=user)
    ours.start()

    def fire_ours() -> None:
        fire = ours.fire_event
        for user in picks:
            fire("e", user=user)

    w.peers[OURS] = fire_ours

    signal = blinker.Signal()
    for sender, receiver in zip(senders, receivers):
        signal.connect(receiver, sender=sender)

    def send_blinker() -> None:
        send = signal.send
        for user in picks:
            send(senders[user])

    w.peers["blinker"] = send_blinker

    for sender, receiver in zip(senders, receivers):
        pydispatcher.connect(receiver, signal="bench-selective", sender=sender)

    def send_pydispatcher() -> None:
        for user in picks:
            pydispatcher.send("bench-selective", senders[user])

    w.peers["PyDispatcher"] = send_pydispatcher

    def disconnect_all() -> None:
        for sender, receiver in zip(senders, receivers):
            pydispatcher.disconnect(receiver, signal="bench-selective", sender=sender)

    w.cleanup.append(disconnect_all)
    return w


def deferred_handler(ops: int) -> Workload:
    """One handler returning an already-fired Deferred, in the first phase."""
    w = Workload(
        "1 handler returning a fired Deferred", ops, "Twisted _ThreePhaseEvent", 0.5,
        "<= 0.5x Twisted (DeferredList)",
    )
    ours = EventDispatcher()
    ours.add_event_handler(lambda event: defer.succeed(None), "before")
    ours.start()
    w.peers[OURS] = loop(ops, lambda: ours.fire_event("e"))

    trigger: tuple[Callable[[], object], tuple[()], dict[str, object]] = (
        lambda: defer.succeed(None),
        (),
        {},
    )
    three_phase = _ThreePhaseEvent()

    def twisted_before() -> None:
        for _ in range(ops):
            three_phase.before = [trigger]
            three_phase.fireEvent()

    w.peers["Twisted _ThreePhaseEvent"] = twisted_before
    return w


def add_remove(ops: int) -> Workload:
    """Register then unregister one handler, on a dispatcher already holding 100."""
    w = Workload(
        "add + remove a handler", ops, "blinker", 1.0, "<= 1x blinker connect+disconnect"
    )
    ours = EventDispatcher(("user",))
    existing = [lambda event: None for _ in range(100)]
    for handler in existing:
        ours.add_event_handler(handler, "during")
    results: list[int] = []

    def new_handler(event: object) -> None:
        pass

    def ours_add_remove() -> None:
        add, remove, store = ours.add_event_handler, ours.remove_event_handler, results.append
        for _ in range(ops):
            add(new_handler, "during").addCallback(store)
            remove(results.pop())

    w.peers[OURS] = ours_add_remove

    signal = blinker.Signal()
    receivers = [lambda sender, **kw: None for _ in range(100)]
    for receiver in receivers:
        signal.connect(receiver)

    def new_receiver(sender: object, **kw: object) -> None:
        pass

    def blinker_connect_disconnect() -> None:
        for _ in range(ops):
            signal.connect(new_receiver)
            signal.disconnect(new_receiver)

    w.peers["blinker"] = blinker_connect_disconnect

    def pydispatcher_connect_disconnect() -> None:
        for _ in range(ops):
            pydispatcher.connect(new_receiver, signal="bench-add", sender=pydispatcher.Any)
            pydispatcher.disconnect(new_receiver, signal="bench-add", sender=pydispatcher.Any)

    w.peers["PyDispatcher"] = pydispatcher_connect_disconnect
    return w


def main(argv: list[str] | None = None) -> int:
    rounds, n = options("fire_event against its peers", argv)
    per_op, missed = report(
        "EventDispatcher.fire_event",
        [
            lambda: sync_handlers(1, n(20_000), 1.5, "<= 1.5x blinker"),
            lambda: sync_handlers(100, n(500), 0.5, "<= 0.5x blinker"),
            lambda: selective(10, n(20_000)),
            lambda: selective(10_000, n(20_000)),
            lambda: deferred_handler(n(20_000)),
            lambda: add_remove(n(20_000)),
        ],
        rounds,
    )
    small, large = per_op["1 matching among 10"], per_op["1 matching among 10,000"]
    growth = large[OURS] / small[OURS]
    blinker_growth = large["blinker"] / small["blinker"]
    ok = growth <= 1.3
    missed += not ok
    sys.stdout.write(
        f"Cost growth from 10 to 10,000 handlers: ours {growth:.2f}x (target <= 1.3x: "
        f"{'met' if ok else 'MISSED'}), blinker {blinker_growth:.2f}x.\n\n"
        f"{missed} target(s) missed.\n\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
