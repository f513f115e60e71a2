"""
The benchmark harness: peers timed interleaved in one run, medians, ratios, a Markdown table.

Each workload builds every peer once, then times them round after round, alternating the
order, so that all of them see the same machine state; the per-operation time of each is
the median over the rounds. Ratios are ours / reference peer, measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

OURS = "twisted_event_dispatcher"

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


def options(description: str, argv: list[str] | None) -> tuple[int, Callable[[int], int]]:
    """Parse ``--rounds`` and ``--quick``; the round count and an operation-count scaler."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per peer")
    parser.add_argument("--quick", action="store_true", help="few operations, for a smoke run")
    args = parser.parse_args(argv)
    scale = 0.05 if args.quick else 1.0

    def n(ops: int) -> int:
        return max(10, int(ops * scale))

    return (3 if args.quick else args.rounds), n


def report(
    title: str, workloads: list[Callable[[], Workload]], rounds: int
) -> tuple[dict[str, dict[str, float]], int]:
    """
    Build, run and tear down each workload in turn (so that peers with a global registry,
    like PyDispatcher, see only that workload's receivers) and print one table.

    :return: per workload, per peer, seconds per operation; and the number of missed targets.
    """
    out = sys.stdout.write
    python = sys.version.split()[0]
    out(f"### {title}\n\nPython {python}, {rounds} interleaved rounds, medians\n\n")
    out("| workload | peer | µs/op | ours / peer | target | met |\n")
    out("| --- | --- | ---: | ---: | --- | --- |\n")
    missed = 0
    per_op: dict[str, dict[str, float]] = {}
    for build in workloads:
        workload = build()
        medians = run(workload, rounds)
        per_op[workload.name] = medians
        ours = medians[OURS]
        for name, seconds in medians.items():
            ratio = "" if name == OURS else f"{ours / seconds:.2f}x"
            target = met = ""
            if name == workload.reference and workload.target is not None:
                target = workload.target_text
                ok = ours / seconds <= workload.target
                met = "yes" if ok else "**no**"
                missed += not ok
            out(
                f"| {workload.name} | {name} | {seconds * 1e6:.3f} | {ratio} | {target} "
                f"| {met} |\n"
            )
    out("\n")
    return per_op, missed
