"""
The other side of a cross-process benchmark: a ``python -m bench.<module>`` child that
prints ``READY`` once set up, then one JSON line of results.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import react


class BenchProcess(ProcessProtocol):
    """Its ``READY`` line, its JSON result line, and its end."""

    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.result: Deferred[dict[str, Any]] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.out = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        while b"\n" in self.out:
            line, self.out = self.out.split(b"\n", 1)
            if line == b"READY":
                self.ready.callback(None)
            elif line.startswith(b"{"):
                self.result.callback(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(data.decode(errors="replace"))

    def processEnded(self, reason: Any) -> None:
        for d in (self.ready, self.result):
            if not d.called:
                d.errback(RuntimeError(f"benchmark process ended early: {reason.value}"))
        self.ended.callback(None)


async def spawn_ready(module: str, *args: object) -> BenchProcess:
    """Start ``python -m <module> args...`` and wait for its READY line."""
    process = BenchProcess()
    argv = [sys.executable, "-m", module, *map(str, args)]
    reactor.spawnProcess(
        process, sys.executable, argv, env=dict(os.environ), path=os.getcwd()
    )
    await process.ready
    return process


def keep_best(
    best: dict[str, dict[str, float]], mode: str, result: dict[str, float]
) -> None:
    """Merge one round into ``best[mode]``: the highest throughput, the lowest others."""
    previous = best.get(mode, result)
    best[mode] = {
        key: max(previous[key], value) if key == "throughput" else min(previous[key], value)
        for key, value in result.items()
    }


#: One row of an ours-versus-raw table: label, result key, number format, and the
#: (target text, met) checks of that row.
Row = tuple[str, str, str, list[tuple[str, bool]]]


def ours_vs_raw_table(
    heading: str, ours: dict[str, float], raw: dict[str, float], rows: list[Row]
) -> int:
    """Write ``heading`` and a Markdown table of ``rows`` (ours, raw, ratio, targets) to
    stdout; return how many targets were missed."""
    out = sys.stdout.write
    out(
        f"{heading}\n\n"
        "| metric | ours | raw txredisapi | ours / raw | target | met |\n"
        "| --- | ---: | ---: | ---: | --- | --- |\n"
    )
    missed = 0
    for label, key, fmt, checks in rows:
        target = "; ".join(t for t, _ in checks)
        met = "; ".join("yes" if ok else "**no**" for _, ok in checks)
        missed += sum(1 for _, ok in checks if not ok)
        out(
            f"| {label} | {fmt.format(ours[key])} | {fmt.format(raw[key])} "
            f"| {ours[key] / raw[key]:.2f}x | {target} | {met} |\n"
        )
    out(f"\n{missed} target(s) missed.\n\n")
    return missed


def react_main(run: Callable[[list[str]], Coroutine[Any, Any, None]]) -> None:
    """Run ``run(argv)`` under the reactor; ``react`` exits the process when it is done."""
    args = sys.argv[1:]
    react(lambda _: Deferred.fromCoroutine(run(args)))
