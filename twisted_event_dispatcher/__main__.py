"""
Command line::

    python -m twisted_event_dispatcher serve [options]   # the event hub (default)
    python -m twisted_event_dispatcher demo              # fire example events, log phases
    python -m twisted_event_dispatcher client [options] VERB ...   # drive a hub's control plane

``serve`` takes the same options as ``twistd -n event-hub``; ``serve --help`` lists them;
``client --help`` lists the client's verbs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    globalLogBeginner,
)
from twisted.python import usage

USAGE = """Usage: python -m twisted_event_dispatcher [serve|demo|client] [options]

  serve   run the event hub (the default); 'serve --help' lists its options
  demo    fire example events through a dispatcher's phases and log what ran
  client  drive a running hub's control plane (create channels, register listeners,
          dispatch, broadcast, listen, watch); 'client --help' lists its verbs
"""


def _log_to_stdout(level: LogLevel) -> None:
    """
    Log events of ``level`` and above to stdout, one message a line, each failure followed
    by its traceback (an event may have no message but a failure: Twisted logs
    ``Unhandled error in Deferred`` and failures in a resource or protocol that way).
    """

    def text(event: LogEvent) -> str | None:
        line = eventAsText(event, includeTimestamp=False, includeSystem=False).strip("\n")
        return f"{line}\n" if line.strip() else None

    observer = FilteringLogObserver(
        cast(ILogObserver, FileLogObserver(sys.stdout, text)),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def serve(argv: Sequence[str]) -> int:
    """Run the hub until SIGINT/SIGTERM; then drain and close clients."""
    from twisted.internet import reactor

    from .hub.options import HubOptions
    from .hub.service import make_service

    options = HubOptions()
    try:
        options.parseOptions(list(argv))  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        sys.stderr.write(f"{options}\nerror: {e}\n")
        return 2
    _log_to_stdout(options["level"])
    service = make_service(options, reactor)
    failed: list[Any] = []
    service.ready.addErrback(failed.append)
    if options["level"] > LogLevel.info:
        # The address is this command's output, whatever the log level.
        service.ready.addCallback(
            lambda _: sys.stdout.write(f"event hub listening on {service.url}\n")
        )
    react: Any = reactor
    react.callWhenRunning(service.startService)
    react.addSystemEventTrigger("before", "shutdown", service.stopService)
    react.run()
    return 1 if failed else 0


def demo() -> None:
    """Fire example events through phases and log what happened."""
    from twisted.internet.task import react

    from ._demo import run_demo

    _log_to_stdout(LogLevel.info)

    def go(reactor: IReactorTime) -> Deferred[None]:
        return Deferred.fromCoroutine(run_demo(reactor))

    react(go)  # exits the process when the demo is done


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    command = args[0] if args and not args[0].startswith("-") else "serve"
    rest = args[1:] if args and args[0] == command else args
    if command == "serve":
        return serve(rest)
    if command == "client":
        from ._client_cli import run_client

        return run_client(rest)
    if command == "demo":
        demo()
    sys.stderr.write(f"{USAGE}\nerror: unknown command {command!r}\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
