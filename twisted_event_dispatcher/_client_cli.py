"""
``python -m twisted_event_dispatcher client``: the hub's control verbs for shell scripts.

Each verb prints its answer as one JSON object on stdout. ``listen`` prints one JSON line
per mail and acknowledges each after it was printed (``--auto-ack``: the hub acknowledges
each as it writes it); ``watch`` prints one JSON line per event, ``gap`` or ``dropped``
notice. Both run until interrupted, or until ``--count`` mails/events were printed.

Exit status: 0 done; 1 the hub refused the request or could not be reached (the message
on stderr); 2 a usage error (bad arguments, DATA that is not JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from .errors import EventDispatcherError

__all__ = ["run_client"]

#: The environment variable that may hold the WebSocket token (as for the hub).
TOKEN_VARIABLE = "EVENT_HUB_TOKEN"


class _Usage(Exception):
    """A usage error found after parsing (exit status 2)."""


def _json_argument(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"DATA must be JSON (e.g. '{{\"x\": 1}}' or '\"text\"'): {e}"
        ) from None


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m twisted_event_dispatcher client",
        description="Drive an event hub's control plane: channels, listeners, mail.",
        epilog="Exit status: 0 done, 1 the hub refused or could not be reached, 2 usage.",
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
                        help="how long to wait for an answer (default 30)")
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
    p.add_argument("--max-in-flight", type=_count, default=100, metavar="N",
                   help="mails sent before the first is acknowledged (default 100)")
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
    from .channels.message import encode_json

    sys.stdout.write(encode_json(value) + "\n")
    sys.stdout.flush()


async def _run(reactor: Any, args: argparse.Namespace) -> None:
    from .client import HubClient

    url = args.control or args.url
    token = args.token if args.token is not None else os.environ.get(TOKEN_VARIABLE)
    try:
        connecting = HubClient.connect(url, token=token if args.url else None, reactor=reactor)
    except ValueError as e:
        raise _Usage(str(e)) from None
    client = await _within(connecting, args.wait, reactor, f"connecting to {url}")
    try:
        verb = args.verb
        if verb == "listen":
            await _listen(client, args)
            return
        if verb == "watch":
            await _watch(client, args)
            return
        wait = args.wait + (args.timeout if verb == "request" else 0.0)
        answer: Any
        if verb == "create-channel":
            answer = {"channel": await _within(client.create_channel(args.name), wait, reactor)}
        elif verb == "register":
            listener = await _within(client.register(
                args.channel, args.id, group=args.group, mailbox_size=args.mailbox_size,
                ack_timeout=args.ack_timeout,
            ), wait, reactor)
            answer = {"listener": listener, "channel": args.channel}
        elif verb == "dispatch":
            answer = {"id": await _within(client.dispatch(
                args.channel, args.listener, args.event, args.data), wait, reactor)}
        elif verb == "dispatch-group":
            answer = {"id": await _within(client.dispatch_group(
                args.channel, args.group, args.event, args.data), wait, reactor)}
        elif verb == "broadcast":
            answer = {"id": await _within(client.broadcast_message(
                args.channel, args.event, args.data), wait, reactor)}
        elif verb == "request":
            answer = {"reply": await _within(client.request(
                args.channel, args.target, args.event, args.data, group=args.group,
                timeout=args.timeout,
            ), wait, reactor)}
        elif verb == "remove-listener":
            await _within(client.remove_listener(args.channel, args.listener), wait, reactor)
            answer = {"ok": True}
        else:
            await _within(client.remove_channel(args.channel), wait, reactor)
            answer = {"ok": True}
        _out(answer)
    finally:
        await client.close()


async def _within(d: Deferred[Any], seconds: float, reactor: Any, what: str = "") -> Any:
    """``d``'s result, or a clear error after ``seconds`` (the CLI never hangs on an answer)."""
    from twisted.internet.defer import TimeoutError as DeferredTimeout

    from ._client_errors import HubConnectionError

    d.addTimeout(seconds, reactor)
    try:
        return await d
    except DeferredTimeout:
        raise HubConnectionError(
            f"{what or 'the hub'}: no answer within {seconds:g} s (--wait)"
        ) from None


async def _listen(client: Any, args: argparse.Namespace) -> None:
    stream = client.stream(
        args.channel, args.listener, auto_ack=args.auto_ack, max_in_flight=args.max_in_flight
    )
    printed = 0
    try:
        async for mail in stream:
            line: dict[str, Any] = {
                "id": mail.id, "event": mail.event, "data": mail.data,
                "deliveries": mail.deliveries, "source": mail.source,
                "channel": mail.channel, "listener": mail.listener,
            }
            if mail.is_request:
                line["request"] = True
            _out(line)
            await mail.ack()  # (nothing to send with auto-ack, except for a request)
            printed += 1
            if args.count is not None and printed >= args.count:
                break
    finally:
        await stream.close()


async def _watch(client: Any, args: argparse.Namespace) -> None:
    from .client import ClientEvent

    watch = client.watch(args.channel, since=args.since, epoch=args.epoch)
    printed = 0
    try:
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
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False,
    )
    status: list[int] = [0]

    async def main(reactor: Any) -> None:
        try:
            await _run(reactor, args)
        except _Usage as e:
            parser.print_usage(sys.stderr)
            sys.stderr.write(f"error: {e}\n")
            status[0] = 2
        except (EventDispatcherError, ConnectionError, TimeoutError, ValueError,
                TypeError, KeyError) as e:
            sys.stderr.write(f"error: {_message(e)}\n")
            status[0] = 1

    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code if isinstance(e.code, int) else 1
    return status[0]


def _message(error: BaseException) -> str:
    text = str(error)
    code = getattr(error, "code", None)
    return f"{text} ({code})" if isinstance(code, str) else text
