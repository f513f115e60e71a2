"""
fire_event against its peers: blinker, PyDispatcher, zope.event and Twisted's own
system-event triggers (``twisted.internet.base._ThreePhaseEvent``).

Each workload builds every peer once, then times them interleaved, round after round, so
that all of them see the same machine state; the per-operation time of each is the median
over the rounds. Ratios are ours / reference peer, measured in the same run. Run with
``bash scripts/bench`` (``--quick`` for a smoke run); the output is a Markdown table.

This is a benchmark, not a test: nothing here fails the build. Targets are printed next to
the ratios so a regression is visible.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import blinker
import zope.event
from pydispatch import dispatcher as pydispatcher
from twisted.internet import defer
from twisted.internet.base import _ThreePhaseEvent

from twisted_event_dispatcher import EventDispatcher

Op = Callable[[], object]


@dataclass
class Workload:
    """A named comparison: per peer, a callable doing ``ops`` operations per call."""

    name: str
    ops: int
    reference: str
    target: float | None
    target_text: str
    peers: dict[str, Op] = field(default_factory=dict)
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def timed(function: Op) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def run(workload: Workload, rounds: int) -> dict[str, float]:
    """Median seconds per operation for each peer, interleaved over ``rounds``."""
    samples: dict[str, list[float]] = {name: [] for name in workload.peers}
    for function in workload.peers.values():  # warm up
        function()
    for round_number in range(rounds):
        names = list(workload.peers)
        if round_number % 2:
            names.reverse()
        for name in names:
            samples[name].append(timed(workload.peers[name]) / workload.ops)
    for cleanup in workload.cleanup:
        cleanup()
    return {name: statistics.median(values) for name, values in samples.items()}


def loop(ops: int, operation: Op) -> Op:
    def many() -> None:
        for _ in range(ops):
            operation()

    return many


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
    w.peers["twisted_event_dispatcher"] = loop(ops, lambda: ours.fire_event("e"))

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

    w.peers["twisted_event_dispatcher"] = fire_ours

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
    w.peers["twisted_event_dispatcher"] = loop(ops, lambda: ours.fire_event("e"))

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

    w.peers["twisted_event_dispatcher"] = ours_add_remove

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


# -- report --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per peer")
    parser.add_argument("--quick", action="store_true", help="few operations, for a smoke run")
    args = parser.parse_args(argv)
    scale = 0.05 if args.quick else 1.0
    rounds = 3 if args.quick else args.rounds

    def n(ops: int) -> int:
        return max(10, int(ops * scale))

    # Each workload is built just before it runs (and torn down after), so that peers with
    # a global registry (PyDispatcher, zope.event) see only that workload's receivers.
    workloads: list[Callable[[], Workload]] = [
        lambda: sync_handlers(1, n(20_000), 1.5, "<= 1.5x blinker"),
        lambda: sync_handlers(100, n(500), 0.5, "<= 0.5x blinker"),
        lambda: selective(10, n(20_000)),
        lambda: selective(10_000, n(20_000)),
        lambda: deferred_handler(n(20_000)),
        lambda: add_remove(n(20_000)),
    ]
    out = sys.stdout.write
    out(f"Python {sys.version.split()[0]}, {rounds} interleaved rounds, medians\n\n")
    out("| workload | peer | µs/op | ours / peer | target | met |\n")
    out("| --- | --- | ---: | ---: | --- | --- |\n")
    failures = 0
    per_op: dict[str, dict[str, float]] = {}
    for build in workloads:
        workload = build()
        medians = run(workload, rounds)
        per_op[workload.name] = medians
        ours = medians["twisted_event_dispatcher"]
        for name, seconds in medians.items():
            ratio = "" if name == "twisted_event_dispatcher" else f"{ours / seconds:.2f}x"
            target = met = ""
            if name == workload.reference and workload.target is not None:
                target = workload.target_text
                ok = ours / seconds <= workload.target
                met = "yes" if ok else "**no**"
                failures += not ok
            out(
                f"| {workload.name} | {name} | {seconds * 1e6:.3f} | {ratio} | {target} "
                f"| {met} |\n"
            )
    small, large = per_op["1 matching among 10"], per_op["1 matching among 10,000"]
    growth = large["twisted_event_dispatcher"] / small["twisted_event_dispatcher"]
    blinker_growth = large["blinker"] / small["blinker"]
    ok = growth <= 1.3
    failures += not ok
    out(
        f"\nCost growth from 10 to 10,000 handlers: ours {growth:.2f}x (target <= 1.3x: "
        f"{'met' if ok else 'MISSED'}), blinker {blinker_growth:.2f}x.\n"
    )
    out(f"{failures} target(s) missed.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
