"""
``python -m twisted_event_dispatcher client``: the hub's control verbs for shell scripts.

Each verb prints its answer as one JSON object on stdout. ``listen`` prints one JSON line
per mail and acknowledges each after it was printed (``--auto-ack``: the hub acknowledges
each as it writes it); ``watch`` prints one JSON line per event, ``gap`` or ``dropped``
notice. Both run until interrupted, until ``--count`` mails/events were printed, or until
stdout is closed (``| head -1``: the mail that could not be printed is not acknowledged,
so it is delivered again). ``--wait`` bounds every answer awaited: the connection, a
verb's answer, and for ``listen``/``watch`` the opening of the stream (not the streaming).

SIGINT or SIGTERM stops quietly: a stream or watch is closed (its unacknowledged mail
goes back to the hub), a verb awaiting its answer is abandoned (one line on stderr: it
may or may not have been carried out).

Exit status: 0 done (stdout closed included); 1 the hub refused the request or could not
be reached, or did not answer within ``--wait``; 2 a usage error: bad arguments, and
anything the client refuses before sending (DATA that is not JSON, has NaN or an
infinity, nests deeper than 64 levels or is too large; ``--max-in-flight`` over 1000);
130 SIGINT, 143 SIGTERM (128 + the signal). Errors are one line on stderr, ``error:
MESSAGE``, followed by `` (CODE)`` when the hub's answer gave an error code.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from .channels.message import MAX_DEPTH, encode_json, json_depth
from .errors import EventDispatcherError

__all__ = ["run_client"]

_T = TypeVar("_T")

#: The environment variable that may hold the WebSocket token (as for the hub).
TOKEN_VARIABLE = "EVENT_HUB_TOKEN"


class _Usage(Exception):
    """A usage error found after parsing (exit status 2)."""


class _StdoutClosed(Exception):
    """Nobody reads stdout any more (``| head -1``): stop quietly, exit status 0."""


class _Parser(argparse.ArgumentParser):
    """argparse with the command's one error format: the usage, then ``error: MESSAGE``."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def _json_argument(text: str) -> Any:
    """DATA as JSON the hub takes: the client's refusals are usage errors (exit 2)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    if json_depth(text) > MAX_DEPTH:
        raise argparse.ArgumentTypeError(f"DATA must not nest deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text, parse_constant=refuse)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"DATA must be JSON (e.g. '{{\"x\": 1}}' or '\"text\"'): {e}"
        ) from None
    try:
        encode_json(value)  # 1e999 (an infinity), a lone surrogate
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"DATA: {e}") from None
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _in_flight(text: str) -> int:
    value = _count(text)
    if value > 1000:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 1000, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m twisted_event_dispatcher client",
        description="Drive an event hub's control plane: channels, listeners, mail.",
        epilog="Exit status: 0 done, 1 the hub refused, could not be reached or did not "
               "answer within --wait, 2 usage (or refused by the client before sending), "
               "130/143 interrupted by SIGINT/SIGTERM.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--control", metavar="ENDPOINT",
                       help="the hub's control socket: unix:/path/hub.sock (or another "
                            "Twisted client endpoint)")
    where.add_argument("--url", metavar="URL",
                       help="the hub's WebSocket: ws://127.0.0.1:8080/ws")
    parser.add_argument("--token",
                        help=f"the hub's token, with --url (default: ${TOKEN_VARIABLE})")
    parser.add_argument("--wait", type=_positive, default=30.0, metavar="SECONDS",
                        help="how long to wait for each answer: the connection, the verb's "
                             "answer, the opening of a listen or watch (default 30)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=help, description=help)

    p = verb("create-channel", "create a channel (NAME, or a generated one)")
    p.add_argument("name", nargs="?", metavar="NAME")
    p = verb("register", "register a listener on CHANNEL")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("--id", metavar="ID", help="the listener's id (default: generated)")
    p.add_argument("--group", metavar="GROUP", help="join this group")
    p.add_argument("--mailbox-size", type=_count, metavar="N",
                   help="bound of its mailbox (hub default 1000)")
    p.add_argument("--ack-timeout", type=_positive, metavar="SECONDS",
                   help="how long a stream may hold a group mail")
    p = verb("dispatch", "put EVENT (with DATA) in LISTENER's mailbox")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("listener", metavar="LISTENER")
    p.add_argument("event", metavar="EVENT")
    p.add_argument("data", nargs="?", type=_json_argument, metavar="DATA_JSON")
    p = verb("dispatch-group", "give EVENT (with DATA) to one member of GROUP")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("group", metavar="GROUP")
    p.add_argument("event", metavar="EVENT")
    p.add_argument("data", nargs="?", type=_json_argument, metavar="DATA_JSON")
    p = verb("broadcast", "broadcast EVENT (with DATA) on CHANNEL")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("event", metavar="EVENT")
    p.add_argument("data", nargs="?", type=_json_argument, metavar="DATA_JSON")
    p = verb("request", "send a request to LISTENER (or GROUP) and print its reply")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("target", metavar="LISTENER")
    p.add_argument("event", metavar="EVENT")
    p.add_argument("data", nargs="?", type=_json_argument, metavar="DATA_JSON")
    p.add_argument("--group", action="store_true", help="LISTENER names a group")
    p.add_argument("--timeout", type=_positive, default=10.0, metavar="SECONDS",
                   help="how long to wait for the reply (default 10)")
    p = verb("listen", "print LISTENER's mail, one JSON line each, acknowledging it")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("listener", metavar="LISTENER")
    p.add_argument("--auto-ack", action="store_true",
                   help="the hub acknowledges each mail as it sends it (at most once)")
    p.add_argument("--count", type=_count, metavar="N", help="exit after N mails")
    p.add_argument("--max-in-flight", type=_in_flight, default=100, metavar="N",
                   help="mails sent before the first is acknowledged (default 100, at "
                        "most 1000)")
    p = verb("watch", "print CHANNEL's broadcasts, one JSON line each")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("--since", type=int, metavar="N", help="start after offset N")
    p.add_argument("--epoch", metavar="EPOCH", help="the epoch of --since")
    p.add_argument("--count", type=_count, metavar="N", help="exit after N events")
    p = verb("remove-listener", "remove LISTENER from CHANNEL")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("listener", metavar="LISTENER")
    p = verb("remove-channel", "remove CHANNEL")
    p.add_argument("channel", metavar="CHANNEL")
    return parser


def _out(value: Any) -> None:
    """Print ``value`` as one JSON line; :class:`_StdoutClosed` once nobody reads stdout."""
    stdout = sys.stdout
    if stdout is None:  # started with stdout closed (>&-)
        raise _StdoutClosed()
    try:
        stdout.write(encode_json(value) + "\n")
        stdout.flush()
    except BrokenPipeError:
        # The reader is gone: what is still buffered (flushed at exit) goes nowhere,
        # instead of "Exception ignored ... BrokenPipeError" on stderr.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        os.close(devnull)
        raise _StdoutClosed() from None


def _sent(make: Callable[[], _T]) -> _T:
    """
    ``make()``, a call of the client: what it refuses before sending anything (bad data,
    a request too large, a bound out of range) is a usage error.
    """
    try:
        return make()
    except (ValueError, TypeError) as e:
        raise _Usage(str(e)) from None


class _Session:
    """
    One run of the command: its reactor, and what SIGINT/SIGTERM must stop (the answer
    being awaited, the stream or watch being printed).
    """

    def __init__(self, reactor: Any, url: str) -> None:
        self.reactor = reactor
        self.url = url
        #: The signal that interrupted the run, if one did.
        self.signal: int | None = None
        #: A verb was sent and awaits its answer (interrupted: it may have been done).
        self.calling = False
        self._waiting: Deferred[Any] | None = None
        self.stream: Any = None

    def install(self) -> None:
        """
        Handle SIGINT and SIGTERM ourselves: the reactor's handlers stop it at once,
        which breaks the stream's connection (a reconnect warning, exit status 0).
        """
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._signalled)

    def _signalled(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self._interrupt, signum)

    def _interrupt(self, signum: int) -> None:
        if self.signal is not None:  # a second signal: do not wait for the closing
            if self.reactor.running:
                self.reactor.stop()
            return
        self.signal = signum
        stream = self.stream
        if stream is not None:  # its iteration ends; unacknowledged mail goes back
            stream.close().addErrback(lambda _: None)
        waiting = self._waiting
        if waiting is not None:  # (a no-op if it fired; forwarded if it waits on another)
            waiting.cancel()

    async def within(self, d: Deferred[_T], seconds: float, what: str) -> _T:
        """``d``'s result, or a clear error after ``seconds`` (never a hang on an answer)."""
        from twisted.internet.defer import TimeoutError as DeferredTimeout

        from ._client_errors import HubConnectionError

        if self.signal is not None:
            d.cancel()
        d.addTimeout(seconds, self.reactor)
        self._waiting = d
        try:
            return await d
        except DeferredTimeout:
            raise HubConnectionError(f"{what}: no answer within {seconds:g} s (--wait)") from None
        finally:
            self._waiting = None

    async def call(self, make: Callable[[], Deferred[_T]], seconds: float) -> _T:
        """Send a verb (see :func:`_sent`) and await its answer."""
        d = _sent(make)
        self.calling = True
        result = await self.within(d, seconds, f"the hub at {self.url}")
        self.calling = False
        return result


async def _run(session: _Session, args: argparse.Namespace) -> None:
    from .client import HubClient

    url = session.url
    token = args.token if args.token is not None else os.environ.get(TOKEN_VARIABLE)
    try:
        connecting = HubClient.connect(url, token=token if args.url else None,
                                       reactor=session.reactor)
    except ValueError as e:
        raise _Usage(str(e)) from None
    client = await session.within(connecting, args.wait, f"connecting to {url}")
    try:
        verb = args.verb
        if verb == "listen":
            await _listen(session, client, args)
            return
        if verb == "watch":
            await _watch(session, client, args)
            return
        wait = args.wait + (args.timeout if verb == "request" else 0.0)
        answer: Any
        if verb == "create-channel":
            answer = {"channel": await session.call(
                lambda: client.create_channel(args.name), wait)}
        elif verb == "register":
            listener = await session.call(lambda: client.register(
                args.channel, args.id, group=args.group, mailbox_size=args.mailbox_size,
                ack_timeout=args.ack_timeout,
            ), wait)
            answer = {"listener": listener, "channel": args.channel}
        elif verb == "dispatch":
            answer = {"id": await session.call(lambda: client.dispatch(
                args.channel, args.listener, args.event, args.data), wait)}
        elif verb == "dispatch-group":
            answer = {"id": await session.call(lambda: client.dispatch_group(
                args.channel, args.group, args.event, args.data), wait)}
        elif verb == "broadcast":
            answer = {"id": await session.call(lambda: client.broadcast_message(
                args.channel, args.event, args.data), wait)}
        elif verb == "request":
            answer = {"reply": await session.call(lambda: client.request(
                args.channel, args.target, args.event, args.data, group=args.group,
                timeout=args.timeout,
            ), wait)}
        elif verb == "remove-listener":
            await session.call(lambda: client.remove_listener(args.channel, args.listener),
                               wait)
            answer = {"ok": True}
        else:
            await session.call(lambda: client.remove_channel(args.channel), wait)
            answer = {"ok": True}
        _out(answer)
    finally:
        await client.close()


async def _listen(session: _Session, client: Any, args: argparse.Namespace) -> None:
    stream = _sent(lambda: client.stream(
        args.channel, args.listener, auto_ack=args.auto_ack, max_in_flight=args.max_in_flight
    ))
    session.stream = stream
    printed = 0
    try:
        await session.within(
            stream.wait_open(), args.wait,
            f"opening the stream of listener {args.listener!r} on channel {args.channel!r} "
            f"at {session.url}",
        )
        async for mail in stream:
            line: dict[str, Any] = {
                "id": mail.id, "event": mail.event, "data": mail.data,
                "deliveries": mail.deliveries, "source": mail.source,
                "channel": mail.channel, "listener": mail.listener,
            }
            if mail.is_request:
                line["request"] = True
            _out(line)  # (stdout closed: not acknowledged, so delivered again)
            await mail.ack()  # (nothing to send with auto-ack, except for a request)
            printed += 1
            if args.count is not None and printed >= args.count:
                break
    finally:
        await stream.close()


async def _watch(session: _Session, client: Any, args: argparse.Namespace) -> None:
    from .client import ClientEvent

    watch = _sent(lambda: client.watch(args.channel, since=args.since, epoch=args.epoch))
    session.stream = watch
    printed = 0
    try:
        await session.within(
            watch.wait_open(), args.wait,
            f"opening the watch of channel {args.channel!r} at {session.url}",
        )
        async for item in watch:
            if isinstance(item, ClientEvent):
                _out({"type": "event", "id": item.id, "epoch": item.epoch,
                      "channel": item.channel, "event": item.event, "data": item.data})
                printed += 1
            else:
                fields = {k: v for k, v in vars(item).items() if v is not None}
                _out(fields)
            if args.count is not None and printed >= args.count:
                break
    finally:
        await watch.close()


def run_client(argv: Sequence[str]) -> int:
    """Run the ``client`` command with ``argv``; its exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, already printed)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if args.token is not None and args.control:
        parser.print_usage(sys.stderr)
        sys.stderr.write("error: --token goes with --url (the control socket has no token)\n")
        return 2
    # Reconnect notices and the like, on stderr; stdout carries only the JSON lines.
    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    levels.setLogLevelForNamespace("twisted_event_dispatcher.client", LogLevel.info)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [levels])],
        redirectStandardIO=False,
    )
    status: list[int] = [0]

    async def main(reactor: Any) -> None:
        session = _Session(reactor, args.control or args.url)
        reactor.callWhenRunning(session.install)  # (after the reactor's own handlers)
        try:
            await _run(session, args)
        except _Usage as e:
            parser.print_usage(sys.stderr)
            sys.stderr.write(f"error: {e}\n")
            status[0] = 2
        except _StdoutClosed:
            pass  # (the reader is gone: nothing to say, and nowhere to say it)
        except (EventDispatcherError, ConnectionError, TimeoutError, ValueError,
                TypeError, KeyError, CancelledError) as e:
            if session.signal is None:
                sys.stderr.write(f"error: {_message(e)}\n")
                status[0] = 1
            elif session.calling:
                sys.stderr.write(
                    "interrupted before the hub answered: the request may or may not have "
                    "been carried out\n"
                )
        if session.signal is not None:
            status[0] = 128 + session.signal

    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code if isinstance(e.code, int) else 1
    return status[0]


def _message(error: BaseException) -> str:
    """The error's message, with `` (CODE)`` when it carries the hub's error code."""
    text = str(error)
    code = getattr(error, "code", None)
    return f"{text} ({code})" if isinstance(code, str) else text
