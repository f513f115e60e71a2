"""
Signal.send against blinker's ``send`` (and PyDispatcher's), interleaved in one run.

Run with ``bash scripts/bench``; see :mod:`bench._harness` for how peers are timed.
"""

from __future__ import annotations

import sys

import blinker
from pydispatch import dispatcher as pydispatcher

from twisted_event_dispatcher.signals import Signal

from ._harness import OURS, Workload, loop, options, report


def send_to(count: int, ops: int, target: float, target_text: str) -> Workload:
    """``send`` to ``count`` receivers connected for any sender."""
    w = Workload(f"send to {count} receiver(s)", ops, "blinker", target, target_text)
    receivers = [lambda sender, **kw: None for _ in range(count)]

    ours = Signal()
    theirs = blinker.Signal()
    for receiver in receivers:
        ours.connect(receiver)
        theirs.connect(receiver)
    w.peers[OURS] = loop(ops, lambda: ours.send("sender", value=1))
    w.peers["blinker"] = loop(ops, lambda: theirs.send("sender", value=1))

    for receiver in receivers:
        pydispatcher.connect(receiver, signal="bench-send", sender=pydispatcher.Any)
    w.peers["PyDispatcher"] = loop(
        ops, lambda: pydispatcher.send("bench-send", "sender", value=1)
    )

    def disconnect_all() -> None:
        for receiver in receivers:
            pydispatcher.disconnect(receiver, signal="bench-send", sender=pydispatcher.Any)

    w.cleanup.append(disconnect_all)
    return w


class Sender:
    """A sender object (both libraries match objects by identity)."""


def selective_send(count: int, ops: int) -> Workload:
    """``count`` receivers, each for its own sender; every send reaches exactly one."""
    w = Workload(
        f"send to 1 of {count:,} senders", ops, "blinker", 1.2, "<= 1.2x blinker"
    )
    senders = [Sender() for _ in range(count)]
    receivers = [lambda sender, **kw: None for _ in range(count)]
    picks = [senders[(i * 7919) % count] for i in range(ops)]
    ours = Signal()
    theirs = blinker.Signal()
    for sender, receiver in zip(senders, receivers):
        ours.connect(receiver, sender=sender)
        theirs.connect(receiver, sender=sender)

    def send_ours() -> None:
        send = ours.send
        for sender in picks:
            send(sender)

    def send_blinker() -> None:
        send = theirs.send
        for sender in picks:
            send(sender)

    w.peers[OURS] = send_ours
    w.peers["blinker"] = send_blinker
    w.cleanup.append(lambda: senders.clear())
    return w


def main(argv: list[str] | None = None) -> int:
    rounds, n = options("Signal.send against its peers", argv)
    _, missed = report(
        "Signal.send",
        [
            lambda: send_to(1, n(20_000), 1.5, "<= 1.5x blinker"),
            lambda: send_to(100, n(500), 0.5, "<= 0.5x blinker"),
            lambda: selective_send(10_000, n(20_000)),
        ],
        rounds,
    )
    sys.stdout.write(f"{missed} target(s) missed.\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
