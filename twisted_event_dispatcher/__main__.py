"""Command line: ``python -m twisted_event_dispatcher demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import react
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    formatEvent,
    globalLogBeginner,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m twisted_event_dispatcher",
        description="Multi-phase, Deferred-aware event dispatching for Twisted.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("demo", help="fire example events through phases and log what ran")
    args = parser.parse_args(argv)
    command = args.command or "demo"

    def text(event: LogEvent) -> str:
        return f"{formatEvent(event)}\n"

    observer = cast(ILogObserver, FileLogObserver(sys.stdout, text))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    if command == "demo":
        from ._demo import run_demo

        def go(reactor: IReactorTime) -> Deferred[None]:
            return Deferred.fromCoroutine(run_demo(reactor))

        react(go)


if __name__ == "__main__":
    main()
